"""The abc table, muP == SP at base width, init specs, the optax transformation, and a coordinate check."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rcjax
from rcjax import parametrization as pz

X = jax.random.normal(jax.random.key(0), (64, 16))
Y = jax.random.normal(jax.random.key(1), (64, 4))


def train(param, width, *, base=64, steps=3, lr=0.05, opt="sgd", bias_init="zeros", key=2):
  model = rcjax.nn.MLP(features=(width, width), out_features=4, param=param, base=base,
                       activation=jnp.tanh, bias_init=bias_init)
  p = model.init(jax.random.key(key), X)["params"]
  tx = rcjax.sgd(lr) if opt == "sgd" else rcjax.adamw(lr)
  s = tx.init(p)

  def loss(p):
    return jnp.mean((model.apply({"params": p}, X) - Y) ** 2)

  @jax.jit
  def step(p, s):
    u, s = tx.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, u), s

  trajectory = [p]
  for _ in range(steps):
    p, s = step(p, s)
    trajectory.append(p)
  return model, trajectory


def test_mup_equals_sp_at_base_width():
  for opt in ("sgd", "adam"):
    _, sp = train("sp", 32, base=32, opt=opt)
    _, mup = train("mup", 32, base=32, opt=opt)
    for a, b in zip(sp, mup):
      chex.assert_trees_all_equal(rcjax.unbox(a), rcjax.unbox(b))


def test_mup_differs_from_sp_off_base():
  _, sp = train("sp", 128, base=32)
  _, mup = train("mup", 128, base=32)
  assert not np.array_equal(sp[-1]["Dense_2"]["kernel"].value, mup[-1]["Dense_2"]["kernel"].value)


def slopes(param, widths=(64, 128, 256, 512, 1024)):
  """log-log slopes over width of: RMS change of the output, of the last hidden activations, and
  RMS of the last hidden activations, after 3 SGD steps at a fixed base learning rate."""
  rows = []
  for n in widths:
    model, traj = train(param, n, bias_init="normal" if param == "mf" else "zeros")
    f0, h0 = model.apply({"params": traj[0]}, X, return_hidden=True)
    f1, h1 = model.apply({"params": traj[-1]}, X, return_hidden=True)
    rms = lambda a: float(jnp.sqrt(jnp.mean(a ** 2)))
    rows.append((rms(f1 - f0), rms(h1[-1] - h0[-1]), rms(h1[-1])))
  return np.polyfit(np.log(widths), np.log(np.array(rows)), 1)[0]


@pytest.mark.usefixtures("fast_compiles_here")
def test_coordinate_check():
  # muP and mean-field: updates of outputs and features, and the features themselves, are O(1) in width.
  for param in ("mup", "mf"):
    d_out, d_hidden, hidden = slopes(param)
    assert abs(d_out) < 0.25 and abs(d_hidden) < 0.25 and abs(hidden) < 0.1, (param, d_out, d_hidden, hidden)
  # SP at a fixed learning rate: the output update blows up with width.
  d_out, _, _ = slopes("sp")
  assert d_out > 0.4, d_out
  # NTK: features stop moving (lazy training) as width grows.
  _, d_hidden, _ = slopes("ntk")
  assert d_hidden < -0.35, d_hidden


def box(shape, axes, fan_in, base, param):
  return rcjax.RC(jax.ShapeDtypeStruct(shape, jnp.float32), axes=axes, fan_in=fan_in, base=base, param=param)


def test_table_values():
  hidden = box((256, 512), ("a", "b"), (0,), (64, 128), "mup")  # m_in = 4, m_out = 4
  assert pz.leaf_class(hidden) == "hidden"
  assert pz.init_scale(hidden) == pytest.approx(1 / 16)
  assert pz.lr_multiplier(hidden, "sgd") == pytest.approx(1.0)
  assert pz.lr_multiplier(hidden, "adam") == pytest.approx(1 / 4)
  out = box((256, 10), ("a", "c"), (0,), (64, None), "mup")
  assert pz.multiplier(out) == pytest.approx(1 / 4) and pz.lr_multiplier(out, "sgd") == pytest.approx(4)
  assert pz.init_scale(out) == pytest.approx(math.sqrt(4 / 256))
  inp = box((784, 512), ("i", "b"), (0,), (None, 128), "mup")
  assert pz.lr_multiplier(inp, "sgd") == pytest.approx(4) and pz.lr_multiplier(inp, "adam") == 1
  mf = box((300, 200), ("a", "b"), (0,), (300, 200), "mf")
  assert pz.multiplier(mf) == pytest.approx(1 / 300) and pz.lr_multiplier(mf, "sgd") == pytest.approx(60000)
  ntk = box((300, 200), ("a", "b"), (0,), (300, 200), "ntk")
  assert pz.multiplier(ntk) == pytest.approx(1 / math.sqrt(300)) and pz.init_scale(ntk) == 1
  conv = box((3, 3, 16, 32), ("h", "w", "c1", "c2"), (0, 1, 2), (None, None, 16, 32), "mf")
  assert pz.leaf_class(conv) == "hidden" and pz.multiplier(conv) == pytest.approx(1 / 144)
  with pytest.raises(ValueError, match="optimizer"):
    pz.lr_multiplier(mf, "lion")


@pytest.mark.parametrize("spec,mean,std", [("normal", 0, 1), ("gaussian", 0, 1), ("normal:1,3", 1, math.sqrt(3)),
                                           ("uniform", 0, 1 / math.sqrt(3)), ("uniform:0,2", 1, 1 / math.sqrt(3))])
def test_init_distributions(spec, mean, std):
  z = rcjax.sample(spec, jax.random.key(0), (200_000,), scale=2.0)
  assert float(z.mean()) == pytest.approx(2 * mean, abs=0.02)
  assert float(z.std()) == pytest.approx(2 * std, rel=0.02)


def test_init_constants_and_errors():
  assert float(rcjax.sample("ones", jax.random.key(0), (3,), 5.0)[0]) == 1.0
  assert float(rcjax.sample("constant:0.25", jax.random.key(0), (3,))[1]) == 0.25
  for bad in ("laplace", "normal:1", "normal:0,-1", "uniform:2,1", "normal:a,b"):
    with pytest.raises(ValueError):
      rcjax.sample(bad, jax.random.key(0), (3,))
  with pytest.raises(TypeError):
    rcjax.sample(3, jax.random.key(0), (3,))


def test_shifted_gaussian_init_in_a_model():
  model = rcjax.nn.MLP(features=(512,), out_features=2, param="mf", kernel_init="normal:1,3")
  p = model.init(jax.random.key(0), X)["params"]
  w = p["Dense_1"]["kernel"].value  # mf: init scale 1, so entries are N(1, 3)
  assert float(w.mean()) == pytest.approx(1, abs=0.2) and float(w.var()) == pytest.approx(3, rel=0.2)


def test_scale_by_parametrization_uses_boxes_or_params():
  _, traj = train("mf", 16, steps=0)
  p = traj[0]
  g = jax.tree.map(lambda b: b.replace(value=jnp.ones_like(b.value)), p, is_leaf=rcjax.is_rc)
  tx = rcjax.scale_by_parametrization("sgd")
  u, _ = tx.update(g, tx.init(p))
  assert float(u["Dense_1"]["kernel"].value[0, 0]) == pytest.approx(16 * 16)  # n_in * N_out
  u2, _ = tx.update(rcjax.unbox(g), tx.init(p), p)
  assert float(u2["Dense_1"]["kernel"][0, 0]) == pytest.approx(256)
  with pytest.raises(ValueError, match="RC leaves"):
    tx.update(rcjax.unbox(g), tx.init(p), rcjax.unbox(p))
  with pytest.raises(ValueError, match="optimizer"):
    rcjax.scale_by_parametrization("rmsprop")
