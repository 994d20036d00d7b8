"""Test setup: 8 simulated CPU devices (set before JAX is imported anywhere)."""

import atexit
import contextlib
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One persistent XLA compilation cache for this test run, shared by the xdist workers and the processes
# tests start (they inherit the environment): the same programs (tiny models, train steps, transfers)
# are compiled in many tests and processes. Made here, in the first process, and removed when it exits.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="rcjax-tests-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


import pytest  # noqa: E402


@contextlib.contextmanager
def fast_compiles():
  """XLA's optimizations off, for code that compiles many tiny programs (compile time dominates on CPU,
  not run time): `with fast_compiles(): ...` (`from conftest import fast_compiles`), or the fixtures below."""
  old = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", True)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", old)


@pytest.fixture(scope="module", name="fast_compiles")
def fast_compiles_module():
  """`fast_compiles` for a module: `pytestmark = pytest.mark.usefixtures("fast_compiles")`."""
  with fast_compiles():
    yield


@pytest.fixture
def fast_compiles_here():
  """`fast_compiles` for one test: `@pytest.mark.usefixtures("fast_compiles_here")`."""
  with fast_compiles():
    yield
