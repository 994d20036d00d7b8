"""The RC box and the tree helpers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rcjax
from rcjax import RC


def mlp_params(param="mup", width=8, key=0):
  model = rcjax.nn.MLP(features=(width, width), out_features=3, param=param)
  return model, model.init(jax.random.key(key), jnp.ones((2, 5)))["params"]


def test_box_metadata_and_repr():
  _, p = mlp_params()
  k = p["Dense_1"]["kernel"]
  assert k.axes == ("hidden_0", "hidden_1") and k.fan_in == (0,) and k.base == (8, 8)
  assert k.width_dims == (0, 1) and k.param == "mup"
  assert repr(k) == ("RC(float32[8, 8], axes=('hidden_0*', 'hidden_1*'), fan_in=(0,), base=(8, 8), "
                     "param='mup', init='normal')")
  assert rcjax.leaf_class(p["Dense_0"]["kernel"]) == "input"
  assert rcjax.leaf_class(k) == "hidden"
  assert rcjax.leaf_class(p["Dense_2"]["kernel"]) == "output"
  assert rcjax.leaf_class(p["Dense_2"]["bias"]) == "vector"


def test_partition_spec_and_logical_sharding():
  _, p = mlp_params()
  specs = nn.get_partition_spec(p)
  assert specs["Dense_1"]["kernel"] == jax.sharding.PartitionSpec("hidden_0", "hidden_1")
  rules = (("hidden_0", "x"), ("hidden_1", None), ("input", None), ("classes", None))
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(8), ("x",))
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  assert shardings["Dense_1"]["kernel"].spec == jax.sharding.PartitionSpec("x", None)


def test_sizes_unbox_boxes_roundtrip():
  _, p = mlp_params(width=8)
  assert rcjax.sizes(p) == {"input": 5, "hidden_0": 8, "hidden_1": 8, "classes": 3}
  assert rcjax.width_axes(p) == {"hidden_0": 8, "hidden_1": 8}
  plain = rcjax.unbox(p)
  assert isinstance(plain["Dense_0"]["kernel"], jax.Array)
  back = rcjax.boxes(plain, p)
  assert jax.tree.structure(back, is_leaf=rcjax.is_rc) == jax.tree.structure(p, is_leaf=rcjax.is_rc)
  np.testing.assert_array_equal(back["Dense_1"]["kernel"].value, p["Dense_1"]["kernel"].value)


def test_box_survives_jit_grad_and_optax():
  model, p = mlp_params()
  x = jnp.ones((2, 5))

  @jax.jit
  def loss(p):
    return jnp.mean(model.apply({"params": p}, x) ** 2)

  g = jax.grad(loss)(p)
  assert rcjax.is_rc(g["Dense_1"]["kernel"]) and g["Dense_1"]["kernel"].axes == ("hidden_0", "hidden_1")
  opt = optax.adam(1e-3)
  s = opt.init(p)
  u, s = opt.update(g, s, p)
  p2 = optax.apply_updates(p, u)
  assert rcjax.is_rc(p2["Dense_1"]["kernel"]) and rcjax.is_rc(s[0].mu["Dense_1"]["kernel"])


def test_layer_applies_to_plain_arrays_too():
  model, p = mlp_params()
  x = jnp.ones((2, 5))
  np.testing.assert_allclose(model.apply({"params": p}, x), model.apply({"params": rcjax.unbox(p)}, x))


def test_scan_adds_a_fixed_layers_axis():
  class Block(nn.Module):
    @nn.compact
    def __call__(self, x, _):
      return rcjax.nn.Dense(6, axes=("embed", "embed"), base=(6, 6), param="mup")(x), None

  class Model(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = rcjax.nn.Dense(6, axes=("input", "embed"), base=(None, 6), param="mup")(x)
      scan = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=3,
                     metadata_params={nn.PARTITION_NAME: "layers"})
      return scan()(x, None)[0]

  m = Model()
  x = jnp.ones((2, 4))
  p = m.init(jax.random.key(0), x)["params"]
  k = p["ScanBlock_0"]["Dense_0"]["kernel"]
  assert k.axes == ("layers", "embed", "embed") and k.fan_in == (1,) and k.base == (None, 6, 6)
  big = rcjax.grow(p, jax.random.key(1), factor=2)
  assert big["ScanBlock_0"]["Dense_0"]["kernel"].shape == (3, 12, 12)
  # The output lives on the grown 'embed' axis: each neuron is duplicated (integer factor, sorted map).
  np.testing.assert_allclose(m.apply({"params": big}, x)[:, ::2], m.apply({"params": p}, x), rtol=1e-5, atol=1e-6)


def test_sizes_errors_name_paths():
  a = RC(jnp.zeros((3, 4)), axes=("input", "hidden"), fan_in=(0,), base=(None, 4))
  b = RC(jnp.zeros((5,)), axes=("hidden",), base=(5,))
  with pytest.raises(ValueError, match=r"axis 'hidden' has size 4 at \['a'\] but 5 at \['b'\]"):
    rcjax.sizes({"a": a, "b": b})
  c = RC(jnp.zeros((4,)), axes=("hidden",), base=(None,))
  with pytest.raises(ValueError, match="width axis.*fixed axis"):
    rcjax.sizes({"a": a, "c": c})
  with pytest.raises(ValueError, match="no RC leaves"):
    rcjax.sizes({"w": jnp.zeros(3)})
  for shape in ((4, 6), (4,)):  # not one axis name per dimension (a stacked ensemble, a wrong box)
    w = RC(jnp.zeros(shape), axes=("hidden", "out")[:3 - len(shape)], base=(4, None)[:3 - len(shape)])
    with pytest.raises(ValueError, match=r"\['w'\]: a \d-D value of shape .* axis names"):
      rcjax.sizes({"w": w})
  with pytest.raises(ValueError, match=r"width axis 'hidden' has base 4 at \['a'\] but 8 at \['d'\]"):
    rcjax.sizes({"a": a, "d": RC(jnp.zeros((4,)), axes=("hidden",), base=(8,))})


def test_fixed_axes_may_differ_between_leaves():
  # A 5x5 and a 3x3 convolution: their window axes are fixed, left out of sizes(), and never resized.
  class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(rcjax.nn.Conv(4, (5, 5), axes=("rgb", "c1"), base=(None, 4), param="mf")(x))
      return rcjax.nn.Conv(4, (3, 3), axes=("c1", "c2"), base=(4, 4), param="mf")(x).mean((1, 2))

  x = jax.random.normal(jax.random.key(1), (2, 6, 6, 3))
  p = CNN().init(jax.random.key(0), x)["params"]
  assert rcjax.sizes(p) == {"rgb": 3, "c1": 4, "c2": 4}
  g = rcjax.grow(p, jax.random.key(1), sizes={"c1": 8})
  np.testing.assert_allclose(CNN().apply({"params": g}, x), CNN().apply({"params": p}, x), atol=1e-6)
  with pytest.raises(ValueError, match="'kernel_h' is a fixed.*different sizes"):
    rcjax.grow(p, jax.random.key(1), sizes={"kernel_h": 4})


def test_sizes_and_box_metadata_caches_give_what_the_walk_gives():
  # sizes() is cached per (structure, leaf shapes); boxes normalise their metadata through a cache.
  a = RC(jnp.zeros((3, 4)), axes=("input", "hidden"), fan_in=(0,), base=(None, 4))
  b = RC(jnp.zeros((4,)), axes=("hidden",), base=(4,))
  assert rcjax.sizes({"a": a, "b": b}) == {"input": 3, "hidden": 4}
  rcjax.sizes({"a": a, "b": b})["hidden"] = 99  # the caller's copy
  assert rcjax.width_axes({"a": a, "b": b}) == {"hidden": 4}
  wide = {"a": a.replace(value=jnp.zeros((3, 8))), "b": b.replace(value=jnp.zeros((8,)))}  # same treedef
  assert rcjax.sizes(wide) == {"input": 3, "hidden": 8}
  bad = {"a": a, "b": b.replace(value=jnp.zeros((5,)))}
  for _ in range(2):  # errors are not cached
    with pytest.raises(ValueError, match="axis 'hidden' has size 4"):
      rcjax.sizes(bad)
  for _ in range(2):  # unhashable metadata is normalised too (uncached), and cached tuples the same way
    r = RC(jnp.zeros((2, 3)), axes=["x", "y"], fan_in=[-1], base=[None, 3], blocks={"y": 3})
    assert (r.axes, r.fan_in, r.base, r.blocks) == (("x", "y"), (1,), (None, 3), (("y", 3),))
    t = RC(jnp.zeros((2, 3)), axes=("x", "y"), fan_in=(-1,), base=(None, 3.0))
    assert (t.axes, t.fan_in, t.base) == (("x", "y"), (1,), (None, 3)) and type(t.base[1]) is int


def test_box_rejects_bad_metadata():
  with pytest.raises(ValueError, match="unknown parametrization"):
    RC(jnp.zeros(3), axes=("a",), param="muP")
  with pytest.raises(ValueError, match="base"):
    RC(jnp.zeros((3, 4)), axes=("a", "b"), base=(3,))
  with pytest.raises(ValueError, match="fan_in"):
    RC(jnp.zeros(3), axes=("a",), fan_in=(1,))
  with pytest.raises(ValueError, match="repeated"):
    RC(jnp.zeros((3, 3)), axes=("a", "b"), fan_in=(0, 0))
  for bad in (0, -8):
    with pytest.raises(ValueError, match="positive size"):
      RC(jnp.zeros(3), axes=("a",), base=(bad,))
  with pytest.raises(TypeError, match="tuple of axis names"):
    RC(jnp.zeros(3), axes="a")
  with pytest.raises(TypeError, match="fan_in and base are tuples"):
    RC(jnp.zeros(3), axes=("a",), fan_in=0)
  with pytest.raises(ValueError, match=r"rc_param 'w'.*shape \(4, 6\) has 2 dimensions but axes \('h',\)"):
    class Bad(nn.Module):
      @nn.compact
      def __call__(self, x):
        return rcjax.nn.rc_param(self, "w", (4, 6), axes=("h",), fan_in=(), base=(6,), param="sp", init="normal")
    Bad().init(jax.random.key(0), jnp.ones(1))


def test_submodules_the_readme_names_are_attributes_of_the_package():
  # In a fresh interpreter (here other tests have imported them): `import rcjax` loads none of the heavy
  # ones, and `rcjax.checkpoint.Checkpointer` etc. import on first use.
  import subprocess
  import sys

  code = ("import sys, rcjax; lazy = ('analyze', 'checkpoint', 'diagnostics', 'hf', 'plots'); "
          "assert not [m for m in lazy if 'rcjax.' + m in sys.modules]; "
          "assert rcjax.checkpoint.Checkpointer and rcjax.hf.load and rcjax.diagnostics and rcjax.plots; "
          "assert 'rcjax.checkpoint' in sys.modules and set(lazy) <= set(dir(rcjax)); "
          "assert rcjax.grow.__name__ == 'grow'\n"
          "try:\n  rcjax.nope\nexcept AttributeError as e:\n  assert \"no attribute 'nope'\" in str(e)\n"
          "else:\n  raise SystemExit('rcjax.nope did not raise')")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                     env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
  assert r.returncode == 0, r.stderr[-2000:]
