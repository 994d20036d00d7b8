"""Function-preserving symmetry breaking (`split_rate`, `cancel_rate`) and `rcjax.copy_spread`.

Properties: the function is kept (every parametrization, integer and count-corrected non-integer ratios,
GPT styles gpt2 / llama / neox, sharded params); the copies' incoming gradients differ after growth
with either knob and are identical without (the commutation result); optimizer moments scale with rho
(first) and rho**2 (second) with the draw of the params; `index_maps` gives the maps grow draws.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rcjax
from rcjax import sharding
from rcjax.maps import tree_blocks

pytestmark = pytest.mark.usefixtures("fast_compiles")

X = jax.random.normal(jax.random.key(5), (6, 4))
TOKENS = jax.random.randint(jax.random.key(1), (2, 8), 0, 32)
KEY = jax.random.key(3)


def mlp(param="mf", width=6):
  model = rcjax.nn.MLP(features=(width,), out_features=3, param=param)
  return model, model.init(jax.random.key(0), X)["params"]


def mlp_apply(p, x=X):
  return rcjax.nn.MLP(features=(rcjax.sizes(p)["hidden_0"],), out_features=3,
                      param=p["Dense_0"]["kernel"].param).apply({"params": p}, x)


def gpt(style, param, **kw):
  """A tiny GPT with random values at its init scale (norm scales and biases random too), from numpy."""
  kw = {"vocab": 32, "width": 16, "depth": 1, "heads": 4, "kv_heads": 2, "max_len": 8, **kw}
  model = rcjax.nn.GPT(style=style, param=param, **kw)
  abstract = jax.eval_shape(lambda k: model.init(k, TOKENS)["params"], jax.random.key(0))
  rng = np.random.default_rng(0)

  def fill(b):
    z = rng.standard_normal(b.shape)
    v = z * rcjax.init_scale(b) if b.fan_in else (1.0 + 0.3 * z if b.init == "ones" else 0.3 * z)
    return b.replace(value=jnp.asarray(v, jnp.float32))
  return model, jax.tree.map(fill, abstract, is_leaf=rcjax.is_rc)


def grown_model(model, p):
  s = rcjax.sizes(p)
  return model.clone(width=s["embed"], heads=s["heads"], kv_heads=s["kv_heads"], mlp=s["mlp"], head_dim=s["head_dim"],
                     depth=s["layers"])


@pytest.mark.parametrize("param,factor,exact", [("sp", 2, False), ("ntk", 1.5, True), ("mup", 2, False),
                                                ("mf", 1.5, True)])
def test_split_and_cancel_keep_the_function(param, factor, exact):
  _, p = mlp(param)
  big = rcjax.grow(p, KEY, factor=factor, exact=exact, split_rate=0.3, cancel_rate=0.3)
  np.testing.assert_allclose(mlp_apply(big), mlp_apply(p), rtol=1e-5, atol=1e-6)
  m = np.asarray(rcjax.index_maps(KEY, {"hidden_0": 6}, {"hidden_0": rcjax.sizes(big)["hidden_0"]})["hidden_0"])
  w_in, w_out = big["Dense_0"]["kernel"].value, big["Dense_1"]["kernel"].value  # (in, hidden), (hidden, out)
  j = int(np.flatnonzero(m[1:] == m[:-1])[0])  # new neurons j, j + 1 copy one neuron
  assert not np.allclose(w_out[j], w_out[j + 1])  # the copies' outgoing rows split
  np.testing.assert_array_equal(w_in[:, j], w_in[:, j + 1])  # their incoming weights stay copies
  if factor != 2:  # 6 -> 9: neurons with one copy are left alone
    single = np.bincount(m, minlength=6)[m] == 1
    plain = rcjax.grow(p, KEY, factor=factor, exact=exact)["Dense_1"]["kernel"].value
    np.testing.assert_array_equal(w_out[single], plain[single])
    assert single.any() and not np.allclose(w_out[~single], plain[~single])


def test_moments_scale_with_rho_and_noise_stays_in_params():
  _, p = mlp("mup")
  state = optax.adam(1e-2).init(p)
  state = jax.tree.map(lambda b: b.replace(value=b.value + 1.0) if rcjax.is_rc(b) else b, state,
                       is_leaf=rcjax.is_rc)  # nonzero moments
  p0, s0 = rcjax.grow((p, state), KEY)
  zero = rcjax.grow((p, state), KEY, split_rate=0.0, cancel_rate=0.0)  # rates 0: today's transfer, bitwise
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b, strict=True), zero, (p0, s0))
  p1, s1 = rcjax.grow((p, state), KEY, split_rate=0.5)
  p2, s2 = rcjax.grow((p, state), KEY, split_rate=0.5, cancel_rate=0.5)
  rho = (p1["Dense_1"]["kernel"].value / p0["Dense_1"]["kernel"].value)[:, 0]  # the params' draw
  np.testing.assert_allclose(p1["Dense_1"]["kernel"].value / p0["Dense_1"]["kernel"].value, rho[:, None] *
                             np.ones((1, 3)), rtol=1e-5)
  m = np.asarray(rcjax.index_maps(KEY, {"hidden_0": 6}, {"hidden_0": 12})["hidden_0"])
  np.testing.assert_allclose(jax.ops.segment_sum(rho, m, 6), 2.0 * np.ones(6), rtol=1e-5)  # mean 1 per source
  for field, power in (("mu", 1), ("nu", 2)):
    a, b = getattr(s1[0], field), getattr(s0[0], field)
    np.testing.assert_allclose(a["Dense_0"]["kernel"].value, b["Dense_0"]["kernel"].value * rho ** power,
                               rtol=1e-5)  # the copies' incoming weights: fan-out along hidden
    np.testing.assert_allclose(a["Dense_0"]["bias"].value, b["Dense_0"]["bias"].value * rho ** power, rtol=1e-5)
    np.testing.assert_array_equal(a["Dense_1"]["kernel"].value, b["Dense_1"]["kernel"].value)
  jax.tree.map(np.testing.assert_array_equal, s2, s1)  # the cancelling noise: params only
  assert not np.allclose(p2["Dense_1"]["kernel"].value, p1["Dense_1"]["kernel"].value)


def _incoming_grads(p):
  loss = lambda q: jnp.mean(jnp.square(mlp_apply(q) - 1.0))
  return jax.grad(loss)(p)["Dense_0"]["kernel"].value  # (in, hidden): the copies' incoming weights


@pytest.mark.parametrize("kw,differ", [({}, False), ({"split_rate": 0.5}, True), ({"cancel_rate": 0.5}, True)])
def test_one_step_separates_the_copies_only_with_symmetry_breaking(kw, differ):
  _, p = mlp("mf")
  big = rcjax.grow(p, KEY, **kw)
  g = _incoming_grads(big)
  pairs = g[:, 0::2], g[:, 1::2]  # factor 2: copies of neuron i are columns 2i, 2i + 1
  maps = rcjax.index_maps(KEY, {"hidden_0": 6}, {"hidden_0": 12})
  assert rcjax.copy_spread(big, maps) == {"hidden_0": 0.0}
  stepped = jax.tree.map(lambda b, d: b.replace(value=b.value - 0.5 * d.value), big, jax.grad(
      lambda q: jnp.mean(jnp.square(mlp_apply(q) - 1.0)))(big), is_leaf=rcjax.is_rc)
  spread = rcjax.copy_spread(stepped, maps)["hidden_0"]
  if differ:
    assert float(jnp.max(jnp.abs(pairs[0] - pairs[1]))) > 1e-3 * float(jnp.max(jnp.abs(g)))
    assert spread > 1e-6
  else:
    np.testing.assert_array_equal(pairs[0], pairs[1])
    assert spread == 0.0


GPT_CASES = [  # (style, param, model kw, sizes, exact, knobs); from embed 16, heads 4, kv 2, mlp 64
    ("gpt2", "sp", dict(kv_heads=None), dict(embed=32, heads=8, kv_heads=8, mlp=128), False,  # tied readout, SP
     dict(split_rate=0.5, cancel_rate=0.5)),
    ("gpt2", "mup", dict(kv_heads=None), dict(heads=6, kv_heads=6, mlp=96), True,  # (LayerNorm: embed at 1.5x
     dict(split_rate=0.5)),                                                         # is not exact anyway)
    ("llama", "sp", {}, dict(embed=24, heads=6, kv_heads=3, mlp=96), True, dict(split_rate=0.5, cancel_rate=0.5)),
    ("neox", "mf", {}, dict(embed=32, heads=8, kv_heads=4, mlp=128, layers=2), True,  # and deeper (exact: new
     dict(split_rate=0.5)),                                                           # blocks start as identity)
]
_APPLY = {}


def logits(model, p):
  if model not in _APPLY:
    _APPLY[model] = jax.jit(lambda p, x: model.apply({"params": p}, x))
  return _APPLY[model](p, TOKENS)


@pytest.mark.parametrize("style,param,kw,sizes,exact,knobs", GPT_CASES)
def test_gpt_styles_keep_the_function(style, param, kw, sizes, exact, knobs):
  # (llama at 2x with both knobs: test_gpt_copies_separate_...)
  model, p = gpt(style, param, **kw)
  big = rcjax.transfer_model(model, p, KEY, sizes, exact=exact, **knobs)
  np.testing.assert_allclose(logits(grown_model(model, big), big), logits(model, p), rtol=1e-4, atol=2e-5)
  m = np.asarray(rcjax.index_maps(KEY, {"mlp": rcjax.sizes(p)["mlp"]}, {"mlp": sizes["mlp"]})["mlp"])
  j = int(np.flatnonzero(m[1:] == m[:-1])[0])  # new neurons j, j + 1 copy one neuron
  down = np.asarray(big["blocks"]["down"].value)[0]  # (mlp, embed): fan-in mlp
  assert not np.allclose(down[j], down[j + 1])


def test_gpt_copies_separate_in_one_step_with_the_maps_of_index_maps_sharded_or_not():
  model, p = gpt("llama", "mup")
  sizes = dict(embed=32, heads=8, kv_heads=4, mlp=128)  # (head_dim with RoPE: not exact)
  old = rcjax.width_axes(p)
  maps = rcjax.index_maps(KEY, old, sizes, blocks=tree_blocks(p))  # heads in blocks per kv head
  plain = rcjax.transfer_model(model, p, KEY, sizes)
  assert rcjax.copy_spread(plain, maps) == {k: 0.0 for k in sizes}
  other = {k: jnp.roll(jnp.sort(m), 1) for k, m in maps.items()}  # wrong maps: groups of unrelated neurons
  assert min(rcjax.copy_spread(plain, other).values()) > 0.05
  assert rcjax.copy_spread(plain, rcjax.index_maps(KEY, old, sizes))["heads"] > 0.05  # blocks left out
  big = rcjax.transfer_model(model, p, KEY, sizes, split_rate=0.5, cancel_rate=0.5)
  wide = grown_model(model, big)
  np.testing.assert_allclose(logits(wide, big), logits(model, p), rtol=1e-4, atol=2e-5)
  sgd = jax.jit(lambda q: jax.tree.map(lambda b, d: b.replace(value=b.value - 0.1 * d.value), q, jax.grad(
      lambda q: wide.apply({"params": q}, TOKENS, TOKENS))(q), is_leaf=rcjax.is_rc))
  spread = rcjax.copy_spread(sgd(big), maps)
  assert all(spread[k] > 1e-8 for k in ("embed", "mlp", "heads")), spread
  assert max(rcjax.copy_spread(sgd(plain), maps).values()) < 1e-10
  mesh = sharding.make_mesh("data=1,fsdp=4,tensor=2")  # sharded (mlp on tensor, embed on fsdp): the same draws
  kw = dict(sizes={"mlp": 128}, split_rate=0.5, cancel_rate=0.5)
  one, many = rcjax.grow(p, KEY, **kw), rcjax.grow(sharding.shard(p, mesh), KEY, **kw)
  assert many["blocks"]["down"].value.sharding.spec == sharding.logical_spec(("layers", "mlp", "embed"),
                                                                             (1, 128, 16), mesh)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), one, many)
  assert rcjax.copy_spread(many, {"mlp": maps["mlp"]}) == rcjax.copy_spread(one, {"mlp": maps["mlp"]})


def test_bad_rates_and_maps_are_clear_errors():
  _, p = mlp()
  for bad, err in ((-0.1, ValueError), (float("inf"), ValueError), ("0.1", TypeError)):
    with pytest.raises(err, match="split_rate"):
      rcjax.grow(p, KEY, split_rate=bad)
    with pytest.raises(err, match="cancel_rate"):
      rcjax.grow(p, KEY, cancel_rate=bad)
  with pytest.raises(ValueError, match="map of axis 'hidden_0' has 6 entries, the tree's axis 12"):
    rcjax.copy_spread(rcjax.grow(p, KEY), {"hidden_0": jnp.arange(6)})
