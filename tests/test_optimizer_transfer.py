"""Optimizer-state transfer: one training step then grow == grow then one training step, where the math
says so (mean-field and muP, under SGD, momentum SGD and Adam with eps = 0), and not for SP or NTK."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rcjax

X = jax.random.normal(jax.random.key(0), (32, 6))
Y = jax.random.normal(jax.random.key(1), (32, 3))

OPTIMIZERS = {
    "sgd": lambda: rcjax.sgd(0.05),
    "momentum": lambda: rcjax.sgd(0.05, momentum=0.9),
    "adam": lambda: rcjax.adamw(1e-2, eps=0.0),
    # Adagrad (sum_of_squares) and AMSGrad (nu_max): the Adam rule, their second moments power 2
    "adagrad": lambda: optax.chain(optax.scale_by_rss(initial_accumulator_value=0.0, eps=0.0),
                                   rcjax.scale_by_parametrization("adam"), optax.scale(-1e-2)),
    "amsgrad": lambda: optax.chain(optax.scale_by_amsgrad(eps=0.0), rcjax.scale_by_parametrization("adam"),
                                   optax.scale(-1e-2)),
}


def setup(param, opt_name, width=8):
  model = rcjax.nn.MLP(features=(width, width), out_features=3, param=param, activation=jnp.tanh,
                       bias_init="normal")
  p = model.init(jax.random.key(2), X)["params"]
  tx = OPTIMIZERS[opt_name]()

  @jax.jit
  def step(p, s):
    g = jax.grad(lambda p: jnp.mean((model.apply({"params": p}, X) - Y) ** 2))(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  s = tx.init(p)
  p, s = step(p, s)  # one warm-up step, so the optimizer state holds history
  return model, step, p, s


def step_then_grow(param, opt_name, **kw):
  model, step, p, s = setup(param, opt_name)
  a = rcjax.grow(step(p, s), jax.random.key(3), **kw)
  b = step(*rcjax.grow((p, s), jax.random.key(3), **kw))
  return model, a, b


def max_rel_diff(a, b):
  la, lb = jax.tree.leaves(rcjax.unbox(a)), jax.tree.leaves(rcjax.unbox(b))
  return max(float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(x)) + 1e-30))
             for x, y in zip(la, lb) if jnp.issubdtype(x.dtype, jnp.floating))


@pytest.mark.parametrize("param", ["mf", "mup"])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("factor", [2, 3])
def test_step_commutes_with_growth(param, opt_name, factor):
  _, a, b = step_then_grow(param, opt_name, factor=factor)
  assert max_rel_diff(a, b) < 5e-6  # measured: ~4e-7 at most


@pytest.mark.parametrize("param", ["sp", "ntk"])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_step_does_not_commute_for_sp_and_ntk(param, opt_name):
  # The math says these dynamics are not width-consistent: a wrong implementation that commuted here
  # would be as suspicious as one that did not commute for mf/muP.
  _, a, b = step_then_grow(param, opt_name, factor=2)
  assert max_rel_diff(a, b) > 1e-3


def test_grown_state_keeps_function_and_trains():
  model, step, p, s = setup("mf", "adam")
  big_p, big_s = rcjax.grow((p, s), jax.random.key(0), factor=2)
  np.testing.assert_allclose(model.apply({"params": big_p}, X), model.apply({"params": p}, X), rtol=1e-5, atol=1e-6)
  loss = lambda p: float(jnp.mean((model.apply({"params": p}, X) - Y) ** 2))
  before = loss(big_p)
  for _ in range(5):
    big_p, big_s = step(big_p, big_s)
  assert loss(big_p) < before


def test_state_scaling_by_field_name():
  _, _, p, s = setup("mf", "adam")
  mu, nu = s[0].mu["Dense_2"]["kernel"].value, s[0].nu["Dense_2"]["kernel"].value
  big = rcjax.grow(s, jax.random.key(0), factor=2)
  # Output layer, mean-field: gradients of a duplicated fan-in neuron halve (multiplier 1/2N),
  # so mu scales by 1/2 and nu by 1/4, with the same map as params.
  m = rcjax.index_maps(jax.random.key(0), {"hidden_1": 8}, {"hidden_1": 16})["hidden_1"]
  np.testing.assert_allclose(big[0].mu["Dense_2"]["kernel"].value, mu[m] / 2, rtol=1e-6)
  np.testing.assert_allclose(big[0].nu["Dense_2"]["kernel"].value, nu[m] / 4, rtol=1e-6)
  # moment= overrides the field names (e.g. for a tree of gradients).
  g = rcjax.apply_maps(s[0].mu, {"hidden_1": m}, moment=1)
  np.testing.assert_allclose(g["Dense_2"]["kernel"].value, mu[m] / 2, rtol=1e-6)


def test_a_state_no_power_describes_is_refused():
  _, _, p, _ = setup("mf", "sgd")
  s = optax.adadelta(1.0).init(p)
  with pytest.raises(ValueError, match=r"'e_x' holds Adadelta's squared updates"):
    rcjax.grow((p, s), jax.random.key(0))
  factored = optax.adafactor(1e-3, min_dim_size_to_factor=4).init(p)  # row/column statistics, not mirrors
  for fn in (lambda: rcjax.grow((p, factored), jax.random.key(0)),
             lambda: rcjax.transfer((p, factored), jax.random.key(0), {"hidden_0": 8}),
             lambda: rcjax.apply_maps(factored, {"hidden_0": jnp.arange(4)})):
    with pytest.raises(ValueError, match=r"'v_row' holds Adafactor's factored second moments"):
      fn()


def test_fresh_neurons_get_empty_first_moments():
  _, _, p, s = setup("mup", "momentum")
  _, big_s = rcjax.grow((p, s), jax.random.key(0), factor=2, random_rate=1.0)
  trace = big_s[0].trace
  assert float(jnp.abs(trace["Dense_1"]["kernel"].value).max()) == 0.0
  assert float(jnp.abs(trace["Dense_2"]["bias"].value - s[0].trace["Dense_2"]["bias"].value).max()) == 0.0
