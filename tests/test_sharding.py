"""rcjax.sharding: meshes, logical rules, sharded init, and growth of sharded params without a whole-leaf
gather (checked in the compiled HLO)."""

import math
import re
import sys

import chex
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import rcjax
import rcjax.transfer  # noqa: F401  (the module; `rcjax.transfer` is also the function)
from rcjax import sharding
from test_gpt import gpt

transfer_module = sys.modules["rcjax.transfer"]
X = jax.random.randint(jax.random.key(1), (8, 10), 0, 32)


pytestmark = pytest.mark.usefixtures("fast_compiles")


def test_parse_mesh():
  assert sharding.parse_mesh("data=2,fsdp=2,tensor=2", 8) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert sharding.parse_mesh("tensor=2,data=-1", 8) == {"data": 4, "fsdp": 1, "tensor": 2}
  assert sharding.parse_mesh({"fsdp": -1}, 8) == {"data": 1, "fsdp": 8, "tensor": 1}
  for bad, msg in (("data=3", "has 3 devices but there are 8"), ("data=-1,fsdp=-1", "at most one"),
                   ("data=3,fsdp=-1", "not divisible by 3"), ("model=8", "unknown axes"),
                   ("data:8", "expected e.g."), ("data=0,fsdp=-1", "must be positive")):
    with pytest.raises(ValueError, match=msg):
      sharding.parse_mesh(bad, 8)
  mesh = sharding.make_mesh("data=2,fsdp=2,tensor=2")
  assert mesh.axis_names == ("data", "fsdp", "tensor") and mesh.devices.size == 8
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_logical_spec_divisibility_and_no_reuse():
  mesh = sharding.make_mesh("data=2,fsdp=2,tensor=2")
  assert sharding.logical_spec(("layers", "embed", "heads", "head_dim"), (2, 32, 4, 8), mesh) == \
      P(None, "fsdp", "tensor", None)
  assert sharding.logical_spec(("kv_heads", "mlp"), (3, 8), mesh) == P(None, "tensor")  # 3 % 2: replicated
  assert sharding.logical_spec(("mlp", "heads"), (8, 8), mesh) == P("tensor", None)     # tensor used once
  assert sharding.batch_sharding(mesh).spec == P(("data", "fsdp"), None)


def test_one_device_and_mesh_agree():
  model = rcjax.nn.GPT(vocab=32, width=32, depth=2, heads=4, kv_heads=2, max_len=16, style="llama")
  init = lambda k: model.init(k, X)["params"]
  p1 = jax.jit(init)(jax.random.key(0))
  mesh = sharding.make_mesh("data=2,fsdp=2,tensor=2")
  p8 = sharding.init(init, jax.random.key(0), mesh=mesh)
  assert p8["blocks"]["q"].value.sharding.spec == P(None, "fsdp", "tensor", None)
  chex.assert_trees_all_equal(rcjax.unbox(p1), rcjax.unbox(p8))  # same key, same params
  apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
  y1 = apply(p1, X)
  y8 = apply(p8, jax.device_put(X, sharding.batch_sharding(mesh)))
  np.testing.assert_allclose(y8, y1, rtol=1e-5, atol=1e-5)


def _spec(x):
  s = tuple(x.sharding.spec)
  return s + (None,) * (x.ndim - len(s))


def _collectives(hlo: str) -> list[tuple[str, int]]:
  """(kind, elements of its largest result buffer) for every collective in compiled HLO text."""
  out = []
  for line in hlo.splitlines():
    m = re.search(r"= \(?(.*?)\)? (all-gather|all-reduce|all-to-all|collective-permute)(-start)?\(", line)
    if m:
      sizes = [math.prod(int(d) for d in s.split(",") if d) for s in re.findall(r"\w+\[([\d,]*)\]", m.group(1))]
      out.append((m.group(2), max(sizes, default=1)))
  return out


@pytest.mark.parametrize("sizes", [{"embed": 64, "mlp": 192}, {"embed": 48, "mlp": 144},
                                   {"embed": 20, "mlp": 40}],
                         ids=["integer (broadcast path)", "non-integer (gather path)",
                              "shrink (gather path)"])
def test_sharded_transfer_keeps_rules_and_never_gathers_a_matrix(sizes):
  model, p = gpt("llama", "mup")
  mesh = sharding.make_mesh("data=1,fsdp=4,tensor=2")
  ps = sharding.shard(p, mesh)
  big = rcjax.transfer(ps, jax.random.key(3), sizes)
  # Bitwise the same values as on one device, and sharded by the same rules at the new sizes.
  chex.assert_trees_all_equal(rcjax.unbox(big), rcjax.unbox(rcjax.transfer(p, jax.random.key(3), sizes)))
  for path, box in rcjax.rc.leaves_with_paths(big):
    want = sharding.logical_spec(box.axes, box.shape, mesh)
    assert _spec(box.value) == tuple(want) + (None,) * (box.value.ndim - len(want)), path
  # The compiled program: all-gathers / all-reduces only for vectors (per layer: O(N) values), and no
  # buffer larger than one device's share of the largest leaf (before or after); the plain XLA gather
  # (no sharding info) all-reduces whole matrices, which this check catches. In the shrink, `up`/`gate`/`down`
  # [2, 32, 96] -> [2, 20, 40] lose room for both mesh axes on one dim (96 % 8 but neither 40 nor 20):
  # they have to be split over two dims (moving them onto one dim, as before, gathered the leaf whole).
  old = rcjax.sizes(ps)
  blocks = transfer_module.tree_blocks(ps)
  kw = dict(old=tuple(sorted((k, old[k]) for k in set(sizes) | {"kv_heads"})), new=tuple(sorted(sizes.items())),
            sampler="stratified", r1=0.0, r2=0.0, exact=False, moment=None, blocks=(),
            shardings=sharding.leaf_shardings(ps))
  assert not any(k in sizes for k in blocks)
  hlo = transfer_module._transfer_jit.lower(ps, jax.random.key(3), **kw).compile().as_text()
  boxes = [b for t in (p, big) for _, b in rcjax.rc.leaves_with_paths(t)]
  vector = lambda b: b.value.ndim - ("layers" in b.axes) <= 1  # a vector per layer: nowhere to move axes
  vectors = max(b.value.size for b in boxes if vector(b))
  share = max(b.value.size // 8 for b in boxes)
  smallest_matrix = min(b.value.size for b in boxes if not vector(b))
  for kind, n in _collectives(hlo):
    assert n <= (vectors if kind in ("all-gather", "all-reduce") else share), (kind, n)
  # (The control uses iid maps: integer-factor stratified maps take the broadcast path, which XLA
  # partitions locally even without sharding info.)
  plain = transfer_module._transfer_jit.lower(ps, jax.random.key(3), **{**kw, "sampler": "iid", "shardings": ()}).compile()
  plain = _collectives(plain.as_text())
  assert any(k in ("all-gather", "all-reduce") and n >= smallest_matrix for k, n in plain)


def test_init_distributed_starts_nothing_for_one_process(monkeypatch):
  from rcjax import sharding

  def initialize(*a, **k):
    raise AssertionError("jax.distributed.initialize called")

  monkeypatch.setattr(jax.distributed, "initialize", initialize)
  monkeypatch.setenv("SLURM_NTASKS", "2")  # a multi-task allocation, but not a step of it (no srun)
  monkeypatch.delenv("SLURM_STEP_ID", raising=False)
  monkeypatch.delenv("TPU_WORKER_HOSTNAMES", raising=False)
  sharding.init_distributed()
  monkeypatch.setenv("SLURM_STEP_ID", "0")
  sharding.init_distributed(num_processes=1)  # explicit: one process, whatever the environment says
  with pytest.raises(AssertionError, match="initialize called"):
    sharding.init_distributed()
  sharding.check_same_on_every_process({"seed": 0})  # one process: nothing to compare
