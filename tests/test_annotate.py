"""rcjax.annotate and rcjax.nnx: stock models (flax.linen, NNX, plain (out, in) arrays) grown with the function
preserved, their optimizer states transferred, and the cases annotate cannot decide refused by name."""

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import rcjax
import rcjax.nnx

X = jax.random.normal(jax.random.key(0), (5, 6))
IMG = jax.random.normal(jax.random.key(1), (2, 6, 6, 3))
pytestmark = pytest.mark.usefixtures("fast_compiles")  # tiny programs: compile time dominates
GROWTHS = [dict(factor=2), dict(factor=1.5, exact=True)]


class LinenMLP(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x):
    x = jnp.tanh(nn.Dense(self.width)(x))
    x = jnp.tanh(nn.Dense(self.width)(x))  # a square hidden kernel: both dims change
    return nn.Dense(3)(x)


class LinenCNN(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(self.width, (3, 3))(x))
    x = nn.relu(nn.Conv(2 * self.width, (3, 3), strides=2)(x))
    return nn.Dense(4)(x.mean(axis=(1, 2)))


def _linen(cls, width, x):
  return jax.jit(cls(width).init)(jax.random.key(2), x)["params"]  # jitted: eager flax runs op by op


def _apply(cls, width, params, x):
  return jax.jit(cls(width).apply)({"params": params}, x)


def _grown_linen(cls, x, width, growth):
  params = _linen(cls, width, x)
  delta = jax.eval_shape(lambda: _linen(cls, 2 * width, x))
  big = rcjax.grow(rcjax.annotate(params, delta), jax.random.key(3), **growth)
  new_width = rcjax.unbox(big)["Dense_0" if cls is LinenMLP else "Conv_0"]["kernel"].shape[-1]
  return _apply(cls, width, params, x), _apply(cls, new_width, rcjax.unbox(big), x), new_width


@pytest.mark.parametrize("growth", GROWTHS, ids=["2x", "1.5x-exact"])
@pytest.mark.parametrize("cls,x", [(LinenMLP, X), (LinenCNN, IMG)], ids=["mlp", "cnn"])
def test_linen_models_grow_preserving_the_function(cls, x, growth):
  small, big, new_width = _grown_linen(cls, x, 4, growth)
  assert new_width == int(4 * growth["factor"])
  np.testing.assert_allclose(big, small, rtol=1e-5, atol=1e-5)


class LinenTransformer(nn.Module):  # stock flax layers: Embed, LayerNorm, attention, MLP, residuals
  embed: int
  heads: int

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(11, self.embed)(tokens)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=4 * self.heads)(nn.LayerNorm()(x))
    x = x + nn.Dense(self.embed)(nn.gelu(nn.Dense(4 * self.embed)(nn.LayerNorm()(x))))
    return nn.Dense(11)(nn.LayerNorm()(x))


def test_linen_transformer_grows_preserving_the_function():
  tokens = jax.random.randint(jax.random.key(10), (2, 5), 0, 11)
  init = lambda e, h: LinenTransformer(e, h).init(jax.random.key(11), tokens)["params"]
  params = jax.jit(init, static_argnums=(0, 1))(8, 2)  # one compile, not op by op
  boxed = rcjax.annotate(params, jax.eval_shape(lambda: init(16, 4)))  # embed 8 -> 16, heads 2 -> 4
  attn = boxed["MultiHeadDotProductAttention_0"]
  assert attn["query"]["kernel"].fan_in == (0,) and attn["out"]["kernel"].fan_in == (0, 1)
  big = rcjax.unbox(rcjax.grow(boxed, jax.random.key(12), factor=2))
  apply = jax.jit(lambda e, h, p: LinenTransformer(e, h).apply({"params": p}, tokens), static_argnums=(0, 1))
  np.testing.assert_allclose(apply(16, 4, big), apply(8, 2, params), rtol=1e-5, atol=1e-5)


def test_names_follow_the_layers_and_fan_in_the_layouts():
  params = _linen(LinenCNN, 4, IMG)
  boxed = rcjax.annotate(params, jax.eval_shape(lambda: _linen(LinenCNN, 8, IMG)))
  conv0, conv1, dense = (boxed[k]["kernel"] for k in ("Conv_0", "Conv_1", "Dense_0"))
  assert conv0.axes[3] == conv1.axes[2] == boxed["Conv_0"]["bias"].axes[0]  # out of one, in of the next
  assert conv1.axes[3] == dense.axes[0] != conv0.axes[3]  # 8 channels -> 16 is another axis than 4 -> 8
  assert conv0.fan_in == (0, 1, 2) and dense.fan_in == (0,) and boxed["Dense_0"]["bias"].fan_in == ()
  assert rcjax.width_axes(boxed) == {conv0.axes[3]: 4, conv1.axes[3]: 8}


class EqxLinear(NamedTuple):  # Equinox's layout: weight (out, in), bias (out,)
  weight: jax.Array
  bias: jax.Array


@functools.partial(jax.jit, static_argnums=0)
def _eqx(width):
  k = jax.random.split(jax.random.key(4), 3)
  dims = [(width, 6), (width, width), (3, width)]
  return [EqxLinear(jax.random.normal(kk, d) / np.sqrt(d[1]), jax.random.normal(kk, d[:1])) for kk, d in zip(k, dims)]


@jax.jit
def _eqx_apply(layers, x):
  for i, layer in enumerate(layers):
    x = x @ layer.weight.T + layer.bias
    x = jnp.tanh(x) if i < len(layers) - 1 else x
  return x


@pytest.mark.parametrize("growth", GROWTHS, ids=["2x", "1.5x-exact"])
def test_plain_out_in_arrays_grow_preserving_the_function(growth):
  layers = _eqx(4)
  boxed = rcjax.annotate(layers, _eqx(8))
  assert boxed[1].weight.fan_in == (1,) and boxed[2].weight.base == (None, 4)
  big = rcjax.unbox(rcjax.grow(boxed, jax.random.key(5), **growth))
  assert big[1].weight.shape == (int(4 * growth["factor"]),) * 2 and isinstance(big[0], EqxLinear)
  np.testing.assert_allclose(_eqx_apply(big, X), _eqx_apply(layers, X), rtol=1e-5, atol=1e-5)


def test_mup_with_effective_weights_and_adam_state_commutes_with_growth():
  # A stock linen MLP under muP (annotate(param='mup'), computing with rcjax.effective, trained by
  # rcjax.adamw): one Adam step then grow == grow (params and Adam state) then one step.
  y = jax.random.normal(jax.random.key(6), (5, 3))
  tx = rcjax.adamw(1e-2, eps=0.0)

  def step(width):
    def fn(p, s):
      loss = lambda p: jnp.mean((LinenMLP(width).apply({"params": rcjax.effective(p)}, X) - y) ** 2)
      u, s = tx.update(jax.grad(loss)(p), s, p)
      return optax.apply_updates(p, u), s
    return jax.jit(fn)

  p = rcjax.annotate(_linen(LinenMLP, 4, X), jax.eval_shape(lambda: _linen(LinenMLP, 8, X)), param="mup")
  p, s = step(4)(p, tx.init(p))  # the state holds history
  a = rcjax.grow(step(4)(p, s), jax.random.key(7), factor=2)
  b = step(8)(*rcjax.grow((p, s), jax.random.key(7), factor=2))
  for x, z in zip(jax.tree.leaves(rcjax.unbox(a)), jax.tree.leaves(rcjax.unbox(b))):
    np.testing.assert_allclose(x, z, rtol=2e-5, atol=1e-6)
  assert rcjax.unbox(b[0])["Dense_1"]["kernel"].shape == (8, 8)


class NNXNet(nnx.Module):
  def __init__(self, width, rngs):
    self.fc1 = nnx.Linear(6, width, rngs=rngs)
    self.norm = nnx.LayerNorm(width, rngs=rngs)
    self.fc2 = nnx.Linear(width, 3, rngs=rngs)

  def __call__(self, x):
    return self.fc2(self.norm(jnp.tanh(self.fc1(x))))


@nnx.jit  # eager NNX runs op by op: 4x slower here than one compile per width
def _nnx_step(model, opt):
  opt.update(model, nnx.grad(lambda m: jnp.mean(m(X) ** 2))(model))


_nnx_apply = nnx.jit(lambda model: model(X))


def _trained_nnx(width=4):
  model = rcjax.nnx.annotate(NNXNet(width, nnx.Rngs(0)), nnx.eval_shape(lambda: NNXNet(2 * width, nnx.Rngs(0))))
  opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  _nnx_step(model, opt)
  return model, opt


def test_nnx_model_and_adam_state_grow():
  model, opt = _trained_nnx()
  before = np.asarray(model.fc1.kernel.get_value())
  big, big_opt = rcjax.nnx.grow(model, jax.random.key(8), factor=2, optimizer=opt)
  assert type(big) is NNXNet and big.fc1.out_features == 8 and big.norm.num_features == 8
  np.testing.assert_allclose(_nnx_apply(big), _nnx_apply(model), rtol=1e-5, atol=1e-5)  # LayerNorm: 2x keeps mean, var
  np.testing.assert_array_equal(model.fc1.kernel.get_value(), before)  # the input model is not changed
  # Adam's state, grown with the params' maps (2x stratified: each neuron twice): along a width fan-out
  # axis the first moment scales by 1/count and the second by 1/count^2; along fan-in it is copied.
  mu, nu = opt.opt_state[0].mu, opt.opt_state[0].nu
  big_mu, big_nu = big_opt.opt_state[0].mu, big_opt.opt_state[0].nu
  np.testing.assert_allclose(big_mu["fc1"]["kernel"].get_value(), np.repeat(mu["fc1"]["kernel"].get_value(), 2, 1) / 2,
                             rtol=1e-6)
  np.testing.assert_allclose(big_nu["fc1"]["kernel"].get_value(), np.repeat(nu["fc1"]["kernel"].get_value(), 2, 1) / 4,
                             rtol=1e-6)
  np.testing.assert_allclose(big_mu["fc2"]["kernel"].get_value(), np.repeat(mu["fc2"]["kernel"].get_value(), 2, 0),
                             rtol=1e-6)
  assert int(big_opt.step.get_value()) == 1 and int(big_opt.opt_state[0].count.get_value()) == 1
  _nnx_step(big, big_opt)  # the grown optimizer steps
  assert big.fc1.kernel.shape == (6, 8)


def test_nnx_params_declared_with_rc_metadata_grow():
  class Declared(nnx.Module):
    def __init__(self, width, rngs):
      self.w = nnx.Param(jax.random.normal(rngs.params(), (6, width)),
                         rc=dict(axes=("input", "hidden"), fan_in=(0,), base=(None, width)))
      self.v = nnx.Param(jax.random.normal(rngs.params(), (width, 3)),
                         rc=dict(axes=("hidden", "out"), fan_in=(0,), base=(width, None)))

    def __call__(self, x):
      return jnp.tanh(x @ self.w) @ self.v

  model = Declared(4, nnx.Rngs(0))
  big = rcjax.nnx.grow(model, jax.random.key(9), sizes={"hidden": 6}, exact=True)
  assert big.w.shape == (6, 6) and big.w.get_metadata()["rc"]["axes"] == ("input", "hidden")
  np.testing.assert_allclose(big(X), model(X), rtol=1e-5, atol=1e-5)


def test_what_annotate_cannot_infer_is_refused_by_leaf_name():
  small = {"encoder": {"w": jnp.ones((4, 4)), "b": jnp.zeros(4)}}
  wide = {"encoder": {"w": jnp.ones((8, 8)), "b": jnp.zeros(8)}}
  with pytest.raises(ValueError, match=r"'encoder/w'.*both of its dimensions change.*fan_in=\{'encoder/w'"):
    rcjax.annotate(small, wide)
  boxed = rcjax.annotate(small, wide, fan_in={"encoder/w": (1,)})
  assert boxed["encoder"]["w"].fan_in == (1,)
  assert rcjax.annotate(small, wide, layout="in_out")["encoder"]["w"].fan_in == (0,)
  with pytest.raises(ValueError, match="same shapes everywhere"):
    rcjax.annotate(small, small)
  with pytest.raises(ValueError, match=r"'encoder/b'.*shape \(4,\) in params but \(4, 2\)"):
    rcjax.annotate(small, {"encoder": {"w": jnp.ones((8, 8)), "b": jnp.zeros((4, 2))}}, layout="in_out")
  with pytest.raises(ValueError, match="differ in structure"):
    rcjax.annotate(small, {"encoder": {"w": jnp.ones((8, 8))}})
  with pytest.raises(ValueError, match="no variable of this module has rc metadata"):
    rcjax.nnx.grow(NNXNet(4, nnx.Rngs(0)), jax.random.key(0))
