"""rcjax.nnx layers (the NNX twins of rcjax.nn): the same numbers as the linen layers given the same weights,
at the base width and away from it; growth with rcjax.nnx.grow keeps the function under sp/mup/mf and
carries the nnx.Optimizer state, and under muP/mean-field an Adam step commutes with growth."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import rcjax
import rcjax.nnx

X = jax.random.normal(jax.random.key(0), (5, 6))
Y = jax.random.normal(jax.random.key(1), (5, 3))
pytestmark = pytest.mark.usefixtures("fast_compiles")  # tiny programs: compile time dominates


def _copy_linen(model: rcjax.nnx.MLP, params) -> rcjax.nnx.MLP:
  """The linen MLP's weights (Dense_l) into the NNX MLP's layers[l]."""
  for l, layer in enumerate(model.layers):
    layer.kernel.set_value(rcjax.unbox(params)[f"Dense_{l}"]["kernel"])
    layer.bias.set_value(rcjax.unbox(params)[f"Dense_{l}"]["bias"])
  return model


@pytest.mark.parametrize("param", ["sp", "mup", "mf"])
def test_nnx_mlp_computes_what_the_linen_mlp_computes(param):
  # At the base width (multipliers 1 for muP) and at twice it (muP's readout 1/2, mean-field's 1/n_in):
  # the NNX layers read the multipliers off the actual shapes as the linen ones do.
  for width in (4, 8):
    linen = rcjax.nn.MLP(features=(width, width), out_features=3, param=param, base=4, activation=jnp.tanh)
    params = linen.init(jax.random.key(2), X)["params"]
    model = _copy_linen(rcjax.nnx.MLP(6, (width, width), 3, param=param, base=4, activation=jnp.tanh,
                                      rngs=nnx.Rngs(0)), params)
    for (_, l, name), ours in rcjax.nnx.boxes(model).items():  # the same RC structure, leaf by leaf
      assert ours == params[f"Dense_{l}"][name]
    np.testing.assert_allclose(model(X), linen.apply({"params": params}, X), rtol=1e-6, atol=1e-7)
    assert model.features == (width, width) and model.out_features == 3


def test_nnx_sgd_step_equals_the_linen_sgd_step():
  # Mean-field's per-leaf SGD rates (N_out, n_in * N_out, n_in): rcjax.nnx.sgd on the NNX MLP takes the
  # step rcjax.sgd takes on the linen MLP with the same weights.
  linen = rcjax.nn.MLP(features=(4, 4), out_features=3, param="mf", activation=jnp.tanh)
  params = linen.init(jax.random.key(2), X)["params"]
  model = _copy_linen(rcjax.nnx.MLP(6, (4, 4), 3, param="mf", activation=jnp.tanh, rngs=nnx.Rngs(0)), params)
  tx = rcjax.sgd(0.1, momentum=0.9)
  loss = lambda p: jnp.mean((linen.apply({"params": p}, X) - Y) ** 2)
  updates, _ = jax.jit(lambda p: tx.update(jax.grad(loss)(p), tx.init(p), p))(params)  # eager: op by op
  _step(model, nnx.Optimizer(model, rcjax.nnx.sgd(model, 0.1, momentum=0.9), wrt=nnx.Param))
  new = rcjax.unbox(optax.apply_updates(params, updates))
  for l, layer in enumerate(model.layers):
    np.testing.assert_allclose(layer.kernel.get_value(), new[f"Dense_{l}"]["kernel"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.bias.get_value(), new[f"Dense_{l}"]["bias"], rtol=1e-5, atol=1e-6)


def test_nnx_conv_computes_what_the_linen_conv_computes_and_grows():
  img = jax.random.normal(jax.random.key(3), (2, 5, 5, 3))
  linen = rcjax.nn.Conv(4, (3, 3), base=(None, 4), param="mup")
  params = linen.init(jax.random.key(4), img)["params"]
  conv = rcjax.nnx.Conv(3, 4, (3, 3), base=(None, 4), param="mup", rngs=nnx.Rngs(0))
  conv.kernel.set_value(rcjax.unbox(params)["kernel"])
  conv.bias.set_value(rcjax.unbox(params)["bias"])
  np.testing.assert_allclose(conv(img), linen.apply({"params": params}, img), rtol=1e-6, atol=1e-7)
  big = rcjax.nnx.grow(conv, jax.random.key(5), factor=2)  # a fan-out axis only: each channel twice
  assert big.out_features == 8 and conv.out_features == 4
  np.testing.assert_allclose(np.sort(np.asarray(big(img)), -1), np.sort(np.repeat(np.asarray(conv(img)), 2, -1), -1),
                             rtol=1e-5, atol=1e-6)


@nnx.jit
def _step(model, optimizer):
  loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(X) - Y) ** 2))(model)
  optimizer.update(model, grads)
  return loss


_apply = nnx.jit(lambda model: model(X))


@pytest.mark.parametrize("param", ["sp", "mup", "mf"])
def test_nnx_mlp_and_its_optimizer_grow_preserving_the_function(param):
  model = rcjax.nnx.MLP(6, (4, 4), 3, param=param, activation=jnp.tanh, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, rcjax.nnx.adamw(model, 1e-2, eps=0.0), wrt=nnx.Param)
  _step(model, optimizer)  # Adam's moments hold history
  for growth in (dict(factor=1.5, exact=True), dict(factor=2)):
    big, big_opt = rcjax.nnx.grow(model, jax.random.key(6), optimizer=optimizer, **growth)
    new = int(4 * growth["factor"])
    assert type(big) is rcjax.nnx.MLP and big.features == (new, new) and model.features == (4, 4)
    np.testing.assert_allclose(_apply(big), _apply(model), rtol=1e-5, atol=1e-6)
    mu = big_opt.opt_state[0].mu["layers"][1]["kernel"].get_value()
    assert mu.shape == (new, new) and np.abs(mu).sum() > 0  # the moments were grown, not restarted
    assert int(big_opt.step.get_value()) == 1
  if param == "sp":
    return
  # muP and mean-field: one Adam step (per-leaf rates of rcjax.nnx.adamw) then grow == grow then the step.
  after = nnx.clone(model), nnx.clone(optimizer)
  _step(*after)
  a = rcjax.nnx.grow(after[0], jax.random.key(6), factor=2)
  _step(big, big_opt)
  for x, z in zip(jax.tree.leaves(nnx.state(a, nnx.Param)), jax.tree.leaves(nnx.state(big, nnx.Param))):
    np.testing.assert_allclose(x, z, rtol=2e-5, atol=1e-6)


def test_bad_nnx_layer_input_is_refused_by_name():
  with pytest.raises(ValueError, match=r"shape \(3, 4\) has 2 dimensions but axes \('a',\)"):
    rcjax.nnx.rc_param(jax.random.key(0), (3, 4), axes=("a",))
  with pytest.raises(ValueError, match="kernel_init has 2 entries for 3 layers"):
    rcjax.nnx.MLP(6, (4, 4), 3, kernel_init=("normal", "normal"), rngs=nnx.Rngs(0))
  stock = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="'bias' has no rc metadata"):
    rcjax.nnx.adamw(stock, 1e-3)
