"""The fast gather paths of transfer agree bit for bit with the slow reference (one jnp.take per axis)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rcjax
from rcjax.transfer import _gather

SHAPES = {  # leaf shape, mapped dims (the layouts rcjax meets: 1-D, 2-D, scanned, non-adjacent heads)
    "vector": ((12,), (0,)),
    "matrix": ((12, 10), (0, 1)),
    "scanned": ((3, 12, 10), (1, 2)),
    "qkv": ((2, 12, 3, 4, 5), (1, 3)),
    "one-of-two": ((12, 10), (1,)),
}
RATIOS = [2, 2.5, 0.5]


def slow(x, dims, maps):
  for d in dims:
    x = jnp.take(x, maps[d], axis=d)
  return x


@pytest.mark.parametrize("layout,dtype", [(k, jnp.float32) for k in SHAPES] + [("qkv", jnp.bfloat16), ("matrix", jnp.bfloat16)])
@pytest.mark.parametrize("sampler", ["stratified", "iid", "stride"])
def test_gather_paths_match_takes_bitwise(layout, sampler, dtype):
  # Eager (no jit): tiny arrays, and it keeps the suite fast by not compiling 300 programs.
  shape, dims = SHAPES[layout]
  x = jax.random.normal(jax.random.key(0), shape).astype(dtype)
  for ratio in RATIOS:
    names = [f"a{d}" for d in dims]
    old = {n: shape[d] for n, d in zip(names, dims)}
    new = {n: max(1, int(round(shape[d] * ratio))) for n, d in zip(names, dims)}
    maps = rcjax.index_maps(jax.random.key(1), old, new, sampler)
    want = slow(x, dims, {d: maps[n] for n, d in zip(names, dims)})
    repeats = {n: new[n] // old[n] for n in names
               if sampler != "iid" and new[n] % old[n] == 0}
    got = _gather(x, list(dims), names, maps, repeats)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=f"{layout} {sampler} {ratio}")
    got = _gather(x, list(dims), names, maps, {})  # the general gather path
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=f"{layout} {sampler} {ratio}")


def test_apply_maps_detects_repeats_and_agrees_with_transfer():
  model = rcjax.nn.MLP(features=(6, 6), out_features=2, param="sp")
  p = model.init(jax.random.key(0), jnp.ones((1, 3)))["params"]
  for sizes in ({"hidden_0": 12, "hidden_1": 18}, {"hidden_0": 13, "hidden_1": 6}):
    for exact in (False, True):
      maps = rcjax.index_maps(jax.random.key(4), rcjax.width_axes(p), sizes)
      a = rcjax.apply_maps(p, maps, exact=exact)
      b = rcjax.transfer(p, jax.random.key(4), sizes, exact=exact)
      for x, y in zip(jax.tree.leaves(rcjax.unbox(a)), jax.tree.leaves(rcjax.unbox(b))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
