"""The command-line entry points: `python -m rcjax.grow/shrink` run `rcjax.cli.grow/shrink`, and
`rcjax.grow` / `rcjax.shrink` stay the library functions whatever is imported (rcjax/grow.py and
rcjax/shrink.py are scripts that refuse to be imported)."""

import importlib
import os
import subprocess
import sys

import pytest

import rcjax
from rcjax import transfer as _  # noqa: F401 - the module rcjax.transfer, loaded

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUNCTIONS = {"grow": sys.modules["rcjax.transfer"].grow, "shrink": sys.modules["rcjax.transfer"].shrink}


@pytest.mark.parametrize("name", ["grow", "shrink"])
def test_the_package_attribute_stays_the_function_after_every_import_spelling(name):
  fn = FUNCTIONS[name]
  importlib.import_module(f"rcjax.cli.{name}")  # the command
  importlib.import_module("rcjax.cli.hf")
  importlib.import_module("rcjax.hf")
  for spelling in (f"import rcjax.{name}", f"from rcjax import {name}", f"import rcjax.{name} as m",
                   f"from rcjax.{name} import main"):
    scope: dict = {}
    try:
      exec(spelling, scope)
    except ImportError as e:  # the script refuses to be imported, naming where the command lives
      assert f"rcjax.cli.{name}" in str(e) and spelling.startswith(("import rcjax.", "from rcjax."))
    else:
      assert spelling == f"from rcjax import {name}" and scope[name] is fn
    assert getattr(rcjax, name) is fn and f"rcjax.{name}" not in sys.modules
  with pytest.raises(ImportError, match=f"rcjax.cli.{name}"):
    importlib.import_module(f"rcjax.{name}")
  assert getattr(rcjax, name) is fn
  from rcjax import grow, shrink
  assert (grow, shrink) == (FUNCTIONS["grow"], FUNCTIONS["shrink"])


def test_python_m_spellings_run_the_commands():
  # one interpreter for both spellings (a fresh one per command costs seconds); runpy is what `-m` uses
  code = ("import runpy, sys\n"
          "for name in ('grow', 'shrink'):\n"
          "  sys.argv = ['x', '--help']\n"
          "  try:\n"
          "    runpy.run_module('rcjax.' + name, run_name='__main__', alter_sys=True)\n"
          "  except SystemExit as e:\n"
          "    print('exit', name, e.code)\n")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                     env={**os.environ, "JAX_PLATFORMS": "cpu"}, cwd=ROOT)
  assert r.returncode == 0, r.stderr[-2000:]
  for name in ("grow", "shrink"):
    assert f"usage: python -m rcjax.{name} [-h]" in r.stdout and f"exit {name} 0" in r.stdout
  assert "--scores" in r.stdout.split("usage: python -m rcjax.shrink")[1]  # shrink's own flags
  assert "--scores" not in r.stdout.split("usage: python -m rcjax.shrink")[0]


def test_python_m_rcjax_grow_exits_2_with_one_line_for_a_missing_src(tmp_path):
  r = subprocess.run([sys.executable, "-m", "rcjax.grow", str(tmp_path / "nope"), str(tmp_path / "out"),
                      "--factor", "2"], capture_output=True, text=True, timeout=300,
                     env={**os.environ, "JAX_PLATFORMS": "cpu"}, cwd=ROOT)
  assert r.returncode == 2 and r.stderr.strip().startswith("rcjax.grow: error:") and len(r.stderr.splitlines()) == 1
