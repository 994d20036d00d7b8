"""Depth transfer (the `layers` axis of scanned stacks, rcjax.depth): the maps' properties, one map for
every leaf (params and AdamW moments), one code path with the width maps, exact growth (logits equal)
for every GPT style, the same result on 1 and 8 devices, no whole-stack gather when layers are sharded,
and one clear error per bad input."""

import dataclasses
import os
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rcjax
import rcjax.transfer  # noqa: F401  (the module; `rcjax.transfer` is also the function)
from rcjax import sharding
from rcjax.depth import DEPTH_MODES, GROW_MODES, depth_map, new_blocks
from test_gpt import gpt, logits

transfer_module = sys.modules["rcjax.transfer"]
pytestmark = pytest.mark.usefixtures("fast_compiles")


@pytest.mark.parametrize("n_old,n_new", [(4, 8), (4, 6), (3, 7), (5, 10), (6, 3), (8, 5), (4, 1)])
@pytest.mark.parametrize("mode", DEPTH_MODES)
def test_depth_map_properties(mode, n_old, n_new):
  grow = n_new > n_old
  if grow != (mode in GROW_MODES) or (mode == "middle" and n_new > 2 * n_old):
    with pytest.raises(ValueError, match="depth_mode"):
      depth_map(n_old, n_new, mode)
    return
  m = depth_map(n_old, n_new, mode)
  assert m.shape == (n_new,) and m.dtype == np.int32 and m.min() >= 0 and m.max() < n_old
  if grow:  # every old block once in order among the originals; the copies are the rest
    assert np.array_equal(m[~new_blocks(m)], np.arange(n_old))
    counts = np.bincount(m, minlength=n_old)
    assert counts.min() >= 1 and counts.max() - counts.min() <= 1 + (mode == "middle")
    if n_new % n_old == 0:
      k = n_new // n_old
      want = {"stack": np.tile(np.arange(n_old), k), "interleave": np.repeat(np.arange(n_old), k),
              "middle": np.tile(np.arange(n_old), k)}[mode]
      assert np.array_equal(m, want)
    if mode == "middle":  # one contiguous range repeated, in the middle
      twice = np.flatnonzero(counts == 2)
      assert len(twice) == n_new - n_old and np.all(np.diff(twice) == 1)
      assert abs(twice[0] - (n_old - 1 - twice[-1])) <= 1
  else:  # a subset, in order
    assert np.all(np.diff(m) > 0)
    want = {"first": np.arange(n_new), "last": np.arange(n_old - n_new, n_old)}.get(mode)
    assert want is None or np.array_equal(m, want)


def _adam_state(model, p):
  """An AdamW state of `p` with random moments (nu > 0): the properties hold for any moments."""
  s = optax.adamw(1e-2).init(p)
  rng = np.random.default_rng(1)
  fill = lambda b, f: b.replace(value=jnp.asarray(f(rng.standard_normal(b.shape)), jnp.float32))
  mu = jax.tree.map(lambda b: fill(b, lambda z: z), s[0].mu, is_leaf=rcjax.is_rc)
  nu = jax.tree.map(lambda b: fill(b, lambda z: z * z + 0.1), s[0].nu, is_leaf=rcjax.is_rc)
  return (s[0]._replace(mu=mu, nu=nu),) + tuple(s[1:])


def test_one_map_for_params_and_moments_leaf_by_leaf(mode="stack", L2=5):
  model, p = gpt("llama", "mup")
  s = _adam_state(model, p)
  pp, ss = rcjax.transfer((p, s), jax.random.key(3), {"layers": L2}, depth_mode=mode)
  m = depth_map(2, L2, mode)
  for old, new in ((p, pp), (s[0].mu, ss[0].mu), (s[0].nu, ss[0].nu)):
    for (path, a), (_, b) in zip(rcjax.rc.leaves_with_paths(old), rcjax.rc.leaves_with_paths(new)):
      want = a.value[m] if "layers" in a.axes else a.value  # copies: nothing rescaled along layers
      np.testing.assert_array_equal(b.value, want, err_msg=path)
  # one code path with the width maps: depth and width together = width, then depth (same key)
  both = rcjax.transfer((p, s), jax.random.key(3), {"layers": L2, "mlp": 160}, depth_mode=mode)
  wide = rcjax.transfer((p, s), jax.random.key(3), {"mlp": 160})
  chex.assert_trees_all_equal(rcjax.unbox(both), rcjax.unbox(
      rcjax.transfer(wide, jax.random.key(3), {"layers": L2}, depth_mode=mode)))
  # apply_maps takes the depth map as it takes width maps
  chex.assert_trees_all_equal(rcjax.unbox(rcjax.apply_maps((p, s), {"layers": jnp.asarray(m)})),
                              rcjax.unbox((pp, ss)))


EXACT = [("gpt2", "mup", "stack", 4), ("llama", "sp", "middle", 3), ("neox", "sp", "interleave", 3)]


@pytest.mark.parametrize("style,param,mode,L2", EXACT, ids=["-".join(map(str, e)) for e in EXACT])
def test_exact_depth_growth_keeps_logits(style, param, mode, L2):
  model, p = gpt(style, param, kv_heads=None if style != "llama" else 2)
  deep = model.clone(depth=L2)
  kw = dict(depth_mode=mode, exact=True)
  if style == "gpt2":  # with the AdamW state (once: a gradient to compile)
    s = _adam_state(model, p)
    pp, ss = rcjax.transfer_model(model, p, jax.random.key(3), {"layers": L2}, opt_state=s, **kw)
  else:
    pp = rcjax.transfer_model(model, p, jax.random.key(3), {"layers": L2}, **kw)
  np.testing.assert_allclose(logits(deep, pp), logits(model, p), rtol=1e-5, atol=1e-5)
  new = new_blocks(depth_map(2, L2, mode))
  for name in ("o", "down") + (("o_bias", "down_bias") if style != "llama" else ()):
    assert not np.any(pp["blocks"][name].value[new])  # new blocks' writers start at zero
    if style == "gpt2":  # and their momentum; nu is copied
      assert not np.any(ss[0].mu["blocks"][name].value[new])
      np.testing.assert_array_equal(ss[0].nu["blocks"][name].value, s[0].nu["blocks"][name].value[depth_map(2, L2, mode)])
  assert np.any(pp["blocks"]["q"].value[new])  # the rest copied, so the new blocks can learn
  if style == "llama":  # without exact, plain copies (G_stack): another function
    plain = rcjax.transfer_model(model, p, jax.random.key(3), {"layers": L2}, depth_mode=mode)
    assert float(jnp.max(jnp.abs(logits(deep, plain) - logits(model, p)))) > 1e-3


def test_exact_depth_and_width_together():
  model, p = gpt("llama", "sp", tied=True)
  sizes = {"layers": 3, "embed": 48, "mlp": 160, "heads": 8, "kv_heads": 4}
  pp = rcjax.transfer_model(model, p, jax.random.key(4), sizes, exact=True, depth_mode="middle")
  np.testing.assert_allclose(logits(model.clone(depth=3), pp), logits(model, p), rtol=1e-5, atol=1e-5)


def test_bad_depth_input_is_one_clear_error():
  model, p = gpt("llama")
  k = jax.random.key(0)
  for sizes, kw, msg in (({"layers": 0}, {}, "size of axis 'layers' must be positive"),
                         ({"layers": 4}, {"depth_mode": "zigzag"}, "unknown depth_mode 'zigzag'"),
                         ({"layers": 1}, {"exact": True}, "exact=True needs the depth to grow"),
                         ({"layers": 1}, {"depth_mode": "stack"}, "'stack' is for growth"),
                         ({"layers": 4}, {"depth_mode": "last"}, "'last' is for shrinking"),
                         ({"layers": 5}, {"depth_mode": "middle"}, "at most 2 x 2 = 4 blocks"),
                         ({"mlp": 200}, {"depth_mode": "stack"}, "no 'layers' entry")):
    with pytest.raises(ValueError, match=msg):
      rcjax.transfer_model(model, p, k, sizes, **kw)
  with pytest.raises(ValueError, match="needs residual_writers"):
    rcjax.transfer(p, k, {"layers": 4}, exact=True)
  with pytest.raises(ValueError, match="grow asked to shrink axis 'layers' from 2 to 1"):
    rcjax.grow(p, k, sizes={"layers": 1})
  flat, fp = gpt("llama", scan=False)
  with pytest.raises(ValueError, match="needs a scanned GPT"):
    rcjax.transfer_model(flat, fp, k, {"layers": 4})
  with pytest.raises(ValueError, match="no leaf has a 'layers' axis"):
    rcjax.transfer(fp, k, {"layers": 4})


def _lowered_depth_transfer(ps, sizes, mode):
  """The compiled program of `rcjax.transfer(ps, key, sizes, depth_mode=mode)` (as `transfer` calls it)."""
  target = dict(sizes)
  depth = transfer_module._depth_plan(ps, target, mode, False, (), "transfer")
  old = rcjax.sizes(ps)
  kw = dict(old=tuple(sorted((k, old[k]) for k in target)), new=tuple(sorted(target.items())),
            sampler="stratified", r1=0.0, r2=0.0, exact=False, moment=None, blocks=(),
            shardings=sharding.leaf_shardings(ps), depth=depth)
  return transfer_module._transfer_jit.lower(ps, jax.random.key(3), **kw).compile().as_text()


def test_sharded_depth_transfer_same_as_one_device_and_no_whole_stack_gather():
  from test_sharding import _collectives

  model, p = gpt("llama", "mup")
  mesh = sharding.make_mesh("data=2,fsdp=2,tensor=2")
  rules = sharding.RULES + (("layers", ("data",)),)  # the stack sharded over its layers axis
  ps = sharding.shard(p, mesh, rules)
  assert ps["blocks"]["up"].value.sharding.spec[0] == "data"
  for sizes, mode in (({"layers": 4}, "stack"), ({"layers": 4, "mlp": 192}, "stack")):
    big = rcjax.transfer(ps, jax.random.key(3), sizes, depth_mode=mode)
    chex.assert_trees_all_equal(rcjax.unbox(big), rcjax.unbox(rcjax.transfer(p, jax.random.key(3), sizes,
                                                                             depth_mode=mode)))
    hlo = _lowered_depth_transfer(ps, sizes, mode)
    boxes = [b for t in (p, big) for _, b in rcjax.rc.leaves_with_paths(t)]
    share = max(b.value.size // 8 for b in boxes)  # one device's share of the largest leaf
    assert all(n <= share for _, n in _collectives(hlo)), (sizes, _collectives(hlo))


def test_train_gpt_grows_width_and_depth_exactly_and_resumes_deep(tmp_path):
  import shutil

  from test_train_gpt import TINY, metrics
  from train import gpt as train_gpt

  out = str(tmp_path / "run")
  cfg = train_gpt.Config(**TINY, style="llama", kv_heads=2, param="mup", steps=2, grow_at=1, grow_to=64,
                         grow_to_depth=3, grow_depth_mode="middle", grow_exact=True, save_steps="1",
                         mesh="data=2,fsdp=2,tensor=2", out=out)
  summary = train_gpt.run(cfg)
  grow = [r for r in metrics(out) if r.get("event") == "grow"]
  assert len(grow) == 1 and grow[0]["sizes"]["layers"] == 3 and grow[0]["sizes"]["embed"] == 64
  np.testing.assert_allclose(grow[0]["loss_after"], grow[0]["loss_before"], rtol=1e-6)
  assert summary["sizes"]["layers"] == 3
  # killed before step 2 was saved (step 1's checkpoint holds the grown state): resumes at depth 3
  shutil.rmtree(os.path.join(out, "checkpoints", "2"))
  again = train_gpt.run(cfg)
  assert again["sizes"]["layers"] == 3 and [r["step"] for r in metrics(out) if r.get("event") == "resume"] == [1]
  for bad, msg in ((dict(grow_to_depth=2), "grow_to_depth must exceed depth 2"),
                   (dict(grow_to_depth=3, grow_depth_mode="stride"), "grow_depth_mode must be one of"),
                   (dict(grow_to=0, grow_to_depth=0), "grow_at needs grow_to")):
    with pytest.raises(ValueError, match=msg):
      train_gpt.validate(dataclasses.replace(cfg, **bad))
