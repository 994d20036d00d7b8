"""Every public function rejects bad input with a clear error naming the axis or leaf path."""

import jax
import jax.numpy as jnp
import pytest

import rcjax
from rcjax import RC

KEY = jax.random.key(0)


@pytest.fixture
def params():
  model = rcjax.nn.MLP(features=(4, 4), out_features=2, param="mf")
  return model.init(KEY, jnp.ones((1, 3)))["params"]


def test_unknown_axis(params):
  with pytest.raises(ValueError, match=r"unknown axis 'hiden_0'.*hidden_0"):
    rcjax.grow(params, KEY, sizes={"hiden_0": 8})


@pytest.mark.parametrize("size", [0, -3])
def test_non_positive_size(params, size):
  with pytest.raises(ValueError, match="'hidden_0' must be positive"):
    rcjax.transfer(params, KEY, {"hidden_0": size})


def test_non_int_size(params):
  with pytest.raises(TypeError, match="'hidden_0' must be an int"):
    rcjax.grow(params, KEY, sizes={"hidden_0": 8.0})
  with pytest.raises(TypeError, match="sizes must be a dict"):
    rcjax.grow(params, KEY, sizes=[("hidden_0", 8)])


def test_direction(params):
  with pytest.raises(ValueError, match="grow asked to shrink axis 'hidden_1' from 4 to 2"):
    rcjax.grow(params, KEY, sizes={"hidden_1": 2})
  with pytest.raises(ValueError, match="grow asked to shrink"):
    rcjax.grow(params, KEY, factor=0.5)
  with pytest.raises(ValueError, match="shrink asked to grow axis 'hidden_0'"):
    rcjax.shrink(params, KEY, sizes={"hidden_0": 5})


@pytest.mark.parametrize("factor", [0, -1.0])
def test_bad_factor(params, factor):
  with pytest.raises(ValueError, match="factor must be positive"):
    rcjax.grow(params, KEY, factor=factor)


def test_factor_type(params):
  with pytest.raises(TypeError, match="factor"):
    rcjax.grow(params, KEY, factor="2")


@pytest.mark.parametrize("r1", [-0.1, 1.5, float("nan")])
def test_random_rate_range(params, r1):
  with pytest.raises(ValueError, match="random_rate must be in"):
    rcjax.grow(params, KEY, random_rate=r1)


@pytest.mark.parametrize("r2", [-0.01, float("inf")])
def test_norm_rate_range(params, r2):
  with pytest.raises(ValueError, match="norm_rate must be in"):
    rcjax.grow(params, KEY, norm_rate=r2)


def test_no_rc_leaves():
  with pytest.raises(ValueError, match="no RC leaves"):
    rcjax.grow({"w": jnp.ones((3, 3))}, KEY)
  with pytest.raises(ValueError, match="no RC leaves"):
    rcjax.sizes([])


def test_disagreeing_leaves_name_both_paths():
  bad = {"a": RC(jnp.ones((3, 4)), axes=("i", "h"), fan_in=(0,), base=(None, 4)),
         "b": RC(jnp.ones((5,)), axes=("h",), base=(4,))}
  with pytest.raises(ValueError, match=r"'h' has size 4 at \['a'\] but 5 at \['b'\]"):
    rcjax.grow(bad, KEY)


def test_fixed_axis_cannot_change(params):
  with pytest.raises(ValueError, match=r"'classes' is a fixed \(non-width\) axis at \['Dense_2'\]"):
    rcjax.grow(params, KEY, sizes={"classes": 4})
  rcjax.grow(params, KEY, sizes={"classes": 2, "hidden_0": 8})  # unchanged fixed size is fine


def test_check_finite_names_the_leaf(params):
  params["Dense_1"]["kernel"] = params["Dense_1"]["kernel"].replace(
      value=params["Dense_1"]["kernel"].value.at[0, 0].set(jnp.nan))
  with pytest.raises(ValueError, match=r"non-finite.*\['Dense_1'\]\['kernel'\]"):
    rcjax.grow(params, KEY, check_finite=True)
  rcjax.grow(params, KEY)  # without the check, NaN is carried along


def test_key_sampler_exact(params):
  with pytest.raises(TypeError, match="jax.random key"):
    rcjax.grow(params, 0)
  with pytest.raises(ValueError, match="unknown sampler 'random'"):
    rcjax.grow(params, KEY, sampler="random")
  with pytest.raises(ValueError, match="exact=True needs sampler"):
    rcjax.grow(params, KEY, sampler="iid", exact=True)
  with pytest.raises(ValueError, match="exact=True needs new sizes >= old sizes"):
    rcjax.transfer(params, KEY, {"hidden_0": 2}, exact=True)
  rcjax.grow(params, jax.random.PRNGKey(0))  # legacy uint32 keys work


def test_index_map_errors():
  with pytest.raises(ValueError, match="axis 'h' missing from old_sizes"):
    rcjax.index_maps(KEY, {}, {"h": 3})
  with pytest.raises(ValueError, match="positive"):
    rcjax.index_maps(KEY, {"h": 3}, {"h": 0})
  with pytest.raises(ValueError, match="misses some"):
    m = rcjax.index_maps(KEY, {"h": 6}, {"h": 3})
    rcjax.inverse_maps(m, {"h": 6})


def test_apply_maps_errors(params):
  with pytest.raises(TypeError, match="1-D integer array"):
    rcjax.apply_maps(params, {"hidden_0": jnp.ones(3)})
  with pytest.raises(ValueError, match="moment"):
    rcjax.apply_maps(params, {}, moment=3)
  with pytest.raises(ValueError, match="map of axis 'hidden_0' is empty"):
    rcjax.apply_maps(params, {"hidden_0": jnp.zeros((0,), jnp.int32)})
  for bad in ([0, 4, 1], [0, -1, 1]):  # hidden_0 has 4 neurons
    with pytest.raises(ValueError, match=rf"axis 'hidden_0' holds {bad[1]}, outside \[0, 4\)"):
      rcjax.apply_maps(params, {"hidden_0": jnp.array(bad, jnp.int32)})
  prune = jnp.array([0, 2], jnp.int32)  # exact=True would drop the N/N' fan-in rescaling silently
  with pytest.raises(ValueError, match="exact=True needs every old neuron mapped to.*misses 2 of its 4"):
    rcjax.apply_maps(params, {"hidden_0": prune}, exact=True)
  rcjax.apply_maps(params, {"hidden_0": prune})


def test_boxes_rejects_rank_mismatch(params):
  with pytest.raises(ValueError, match="does not fit"):
    rcjax.boxes({"Dense_0": {"kernel": jnp.ones(3), "bias": jnp.ones(4)}}, {"Dense_0": params["Dense_0"]})


def test_no_width_axes_and_sizes_not_a_dict(params):
  fixed = {"w": RC(jnp.ones((3, 4)), axes=("i", "h"), fan_in=(0,))}  # rcjax.nn.Dense's default base
  for fn in (rcjax.grow, rcjax.shrink):
    with pytest.raises(ValueError, match="no width axis.*give the width dimensions a base"):
      fn(fixed, KEY)
  with pytest.raises(TypeError, match="sizes must be a dict"):
    rcjax.transfer(params, KEY, None)
  # 0-d arrays are numbers: jnp sizes and factors work as Python ones do
  want = rcjax.sizes(rcjax.grow(params, KEY, sizes={"hidden_0": 8}))
  assert rcjax.sizes(rcjax.grow(params, KEY, sizes={"hidden_0": jnp.int32(8)})) == want
  assert rcjax.sizes(rcjax.grow(params, KEY, factor=jnp.float32(2))) == rcjax.sizes(rcjax.grow(params, KEY))


def test_plain_leaves_next_to_a_changing_axis_are_warned_about(params):
  tree = {"params": params, "stats": jnp.ones(4), "other": jnp.ones(3), "count": jnp.zeros((), jnp.int32)}
  with pytest.warns(UserWarning, match=r"\['stats'\]: a plain \(non-RC\) array of shape \(4,\).*'hidden_0'") as rec:
    out = rcjax.grow(tree, KEY, sizes={"hidden_0": 8})
  assert len(rec) == 1 and rec[0].filename == __file__  # points at the caller
  assert out["stats"].shape == (4,)
  with pytest.warns(UserWarning, match=r"\['stats'\]"):
    rcjax.apply_maps(tree, rcjax.index_maps(KEY, {"hidden_0": 4}, {"hidden_0": 8}))


def test_optimizer_names_a_plain_leaf(params):
  mixed = {**params, "scale": jnp.ones(())}
  opt = rcjax.sgd(0.1)
  with pytest.raises(ValueError, match=r"1 of 7 are plain arrays, e.g. \['scale'\]"):
    opt.update(mixed, opt.init(mixed), mixed)


def test_non_float_leaves_are_gathered_only():
  p = {"w": RC(jnp.ones((4, 2)), axes=("h", "o"), fan_in=(0,), base=(4, None)),
       "mask": RC(jnp.array([True, False, True, True]), axes=("h",), base=(4,)),
       "n": RC(jnp.arange(4, dtype=jnp.int32), axes=("h",), base=(4,))}
  g = rcjax.grow(p, KEY, norm_rate=0.5, random_rate=0.5)  # no noise, no fresh draws on masks and counters
  assert g["mask"].value.tolist() == [True, True, False, False, True, True, True, True]
  assert g["n"].value.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
  p["k"] = RC(jnp.ones((4, 2), jnp.int32), axes=("h", "o"), fan_in=(0,), base=(4, None))
  with pytest.raises(ValueError, match=r"\['k'\]: this transfer rescales .* int32"):
    rcjax.grow(p, KEY)
