"""grow / shrink / transfer: function preservation, agreement with a numpy reference, determinism."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import rcjax
from conftest import fast_compiles
from reference import apply_maps_np

PARAMS = ("sp", "ntk", "mup", "mf")
X = jax.random.normal(jax.random.key(42), (16, 7))


def mlp(param, width=10, bias_init="normal", depth=2, activation=jnp.tanh):
  model = rcjax.nn.MLP(features=(width,) * depth, out_features=3, param=param, bias_init=bias_init,
                       activation=activation)
  return model, model.init(jax.random.key(0), X)["params"]


def out(model, p, x=X):
  return model.apply({"params": p}, x)


@pytest.mark.parametrize("param", PARAMS)
@pytest.mark.parametrize("factor", [2, 3, 4])
def test_integer_growth_preserves_function(param, factor):
  model, p = mlp(param)
  big = rcjax.grow(p, jax.random.key(1), factor=factor)
  assert rcjax.width_axes(big) == {"hidden_0": 10 * factor, "hidden_1": 10 * factor}
  np.testing.assert_allclose(out(model, big), out(model, p), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("param", PARAMS)
@pytest.mark.parametrize("old,new", [(10, 100), (10, 26), (7, 8), (10, 10)])
def test_exact_growth_preserves_function_at_any_ratio(param, old, new):
  model, p = mlp(param, width=old, activation=jax.nn.relu)
  big = rcjax.grow(p, jax.random.key(3), sizes={"hidden_0": new, "hidden_1": new}, exact=True)
  np.testing.assert_allclose(out(model, big), out(model, p), rtol=1e-5, atol=1e-6)


def test_100_to_1000_and_257_exact():
  model, p = mlp("sp", width=100, depth=1)
  for new in (257, 1000):
    big = rcjax.grow(p, jax.random.key(0), sizes={"hidden_0": new}, exact=True)
    np.testing.assert_allclose(out(model, big), out(model, p), rtol=1e-5, atol=1e-5)


def test_non_exact_non_integer_growth_changes_function():
  # The count correction is what makes non-integer ratios exact under SP: without it they are not.
  model, p = mlp("sp", width=10)
  big = rcjax.grow(p, jax.random.key(3), sizes={"hidden_0": 26, "hidden_1": 26})
  assert np.max(np.abs(out(model, big) - out(model, p))) > 1e-3


@pytest.mark.usefixtures("fast_compiles_here")
@pytest.mark.parametrize("param", PARAMS)
def test_cnn_growth_preserves_function(param):
  import flax.linen as nn

  class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(rcjax.nn.Conv(6, axes=("rgb", "c1"), base=(None, 6), param=param, bias_init="normal")(x))
      x = nn.relu(rcjax.nn.Conv(5, axes=("c1", "c2"), base=(6, 5), param=param, strides=(2, 2))(x))
      x = x.mean(axis=(1, 2))
      return rcjax.nn.Dense(4, axes=("c2", "classes"), base=(5, None), param=param)(x)

  model = CNN()
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  p = model.init(jax.random.key(1), x)["params"]
  assert p["Conv_0"]["kernel"].axes == ("kernel_h", "kernel_w", "rgb", "c1")
  for kw in ({"factor": 3}, {"sizes": {"c1": 13, "c2": 11}, "exact": True}):
    big = rcjax.grow(p, jax.random.key(2), **kw)
    np.testing.assert_allclose(model.apply({"params": big}, x), model.apply({"params": p}, x),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("param", PARAMS)
@pytest.mark.parametrize("sampler,exact", [("stratified", False), ("stratified", True), ("iid", False),
                                           ("stride", False), ("stride", True)])  # exact rejects iid
def test_matches_numpy_reference(param, sampler, exact):
  _, p = mlp(param, width=6)
  old = rcjax.sizes(p)
  maps = rcjax.index_maps(jax.random.key(5), old, {"hidden_0": 15, "hidden_1": 9}, sampler)
  for m in maps.values():
    assert m.dtype == jnp.int32 and bool(jnp.all(m[1:] >= m[:-1]))  # sorted
  got = rcjax.apply_maps(p, maps, exact=exact)
  want = apply_maps_np(p, maps, exact=exact)
  for path, box in rcjax.rc.leaves_with_paths(got):
    np.testing.assert_allclose(np.asarray(box.value), want[path], rtol=1e-6, atol=1e-7, err_msg=path)
  # grow(key) is index_maps(key) + apply_maps when r1 = r2 = 0.
  grown = rcjax.transfer(p, jax.random.key(5), {"hidden_0": 15, "hidden_1": 9}, sampler=sampler, exact=exact)
  chex.assert_trees_all_equal(rcjax.unbox(grown), rcjax.unbox(got))


@pytest.mark.usefixtures("fast_compiles_here")
@settings(max_examples=4, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(param=st.sampled_from(PARAMS), old=st.lists(st.integers(1, 9), min_size=1, max_size=3),
       new=st.lists(st.integers(1, 30), min_size=3, max_size=3), sampler=st.sampled_from(["stratified", "iid", "stride"]),
       exact=st.booleans(), dtype=st.sampled_from(["float32", "bfloat16"]))
@example(param="mf", old=[4, 3], new=[4, 7, 1], sampler="stratified", exact=True, dtype="float32")  # kept + grown
@example(param="sp", old=[6, 5, 1], new=[2, 5, 3], sampler="iid", exact=False, dtype="float32")  # pruned, kept, 1 -> 3
@example(param="ntk", old=[1, 1], new=[3, 1, 1], sampler="stride", exact=True, dtype="float32")
def test_random_widths_and_directions_match_the_numpy_reference(param, old, new, sampler, exact, dtype):
  """Any depth and widths, each axis grown, pruned or kept (sizes of 1 included): transfer equals the numpy
  reference on its maps, donating gives the same bits, and growth with exact=True keeps the function
  (checked in float32)."""
  model = rcjax.nn.MLP(features=tuple(old), out_features=3, param=param, activation=jax.nn.relu)
  rng = np.random.default_rng(sum(old))  # values from numpy: an eager init compiles op by op (seconds)
  p = jax.tree.map(lambda b: b.replace(value=jnp.asarray(rng.standard_normal(b.shape), dtype)),
                   jax.eval_shape(lambda k: model.init(k, X)["params"], jax.random.key(0)), is_leaf=rcjax.is_rc)
  sizes = {f"hidden_{i}": new[i] for i in range(len(old))}
  exact = exact and sampler != "iid" and all(n >= o for n, o in zip(new, old))
  got = rcjax.transfer(p, jax.random.key(5), sizes, sampler=sampler, exact=exact)
  want = apply_maps_np(p, rcjax.index_maps(jax.random.key(5), rcjax.sizes(p), sizes, sampler), exact=exact)
  tol = 1e-6 if dtype == "float32" else 1e-2
  for path, box in rcjax.rc.leaves_with_paths(got):
    assert box.value.dtype == dtype, path
    np.testing.assert_allclose(np.asarray(box.value, np.float64), want[path], rtol=tol, atol=tol, err_msg=path)
  if exact and dtype == "float32":
    np.testing.assert_allclose(out(model, got), out(model, p), rtol=1e-5, atol=1e-5)
  copy = jax.tree.map(lambda b: b.replace(value=b.value.copy()), p, is_leaf=rcjax.is_rc)
  donated = rcjax.transfer(copy, jax.random.key(5), sizes, sampler=sampler, exact=exact, donate=True)
  chex.assert_trees_all_equal(rcjax.unbox(donated), rcjax.unbox(got))



def test_apply_maps_takes_unsorted_maps_without_promising_sorted_indices():
  """apply_maps takes any in-range maps (e.g. another order of the new neurons): equal to the numpy
  reference, and its gathers are promised sorted indices only for sorted maps (a broken promise is
  undefined behaviour on accelerators)."""
  _, p = mlp("sp", width=6)
  unsorted = {"hidden_0": jnp.array([5, 0, 3, 3, 1, 2, 4, 0, 1], jnp.int32), "hidden_1": jnp.array([4, 2, 0, 1, 5, 3, 2])}
  for exact, jit in ((False, False), (True, False), (True, True)):  # under jit the maps are traced
    fn = lambda p, maps: rcjax.apply_maps(p, maps, exact=exact)
    got = (jax.jit(fn) if jit else fn)(p, unsorted)
    want = apply_maps_np(p, unsorted, exact=exact)
    for path, box in rcjax.rc.leaves_with_paths(got):
      np.testing.assert_allclose(np.asarray(box.value), want[path], rtol=1e-6, atol=1e-7, err_msg=path)
  sorted_maps = {k: jnp.sort(m) for k, m in unsorted.items()}
  promised = lambda maps: "indices_are_sorted=True" in str(jax.make_jaxpr(lambda: rcjax.apply_maps(p, maps))())
  assert promised(sorted_maps) and not promised(unsorted)

def test_stratified_map_counts():
  m = rcjax.index_maps(jax.random.key(0), {"h": 100}, {"h": 257})["h"]
  counts = np.bincount(np.asarray(m), minlength=100)
  assert sorted(set(counts.tolist())) == [2, 3] and counts.sum() == 257 and (counts == 3).sum() == 57
  m = rcjax.index_maps(jax.random.key(0), {"h": 100}, {"h": 30})["h"]
  assert len(set(np.asarray(m).tolist())) == 30  # a subset without replacement
  assert rcjax.index_maps(jax.random.key(0), {"h": 10}, {"h": 4}, "stride")["h"].tolist() == [0, 2, 5, 7]


def test_stratified_subsets_are_the_smallest_draws_and_uniform():
  from rcjax.maps import _smallest, _subset

  def reference(bits, k):  # the first k of a stable sort of the draws
    return np.isin(np.arange(len(bits)), np.argsort(np.asarray(bits), kind="stable")[:k])
  subset = jax.jit(lambda key, n, k: (_subset(key, n, k), jax.random.bits(key, (n,), jnp.uint32)),
                   static_argnums=(1, 2))
  for n, k, seed in ((1000, 100, 0), (4096, 1000, 1), (7, 7, 2), (5, 0, 3), (1, 1, 4)):
    got, bits = subset(jax.random.key(seed), n, k)
    np.testing.assert_array_equal(got, reference(bits, k))
  ties = jnp.array([5, 3, 5, 1, 5, 3, 5], jnp.uint32)  # ties at the k-th value go to the lower index
  for k in range(8):
    np.testing.assert_array_equal(_smallest(ties, k), reference(ties, k))
  # every 2-subset of 5 neurons equally often: 20000 draws, 2000 expected each (sd 42)
  draw = lambda seed, n: jax.vmap(lambda k: rcjax.index_maps(k, {"h": 5}, {"h": n})["h"])(
      jax.random.split(jax.random.key(seed), 20000))
  maps = draw(1, 2)
  counts = np.bincount(np.asarray(maps[:, 0] * 5 + maps[:, 1]), minlength=25)
  pairs = [i * 5 + j for i in range(5) for j in range(i + 1, 5)]
  assert counts.sum() == counts[pairs].sum() and np.all(np.abs(counts[pairs] - 2000) < 200), counts[pairs]
  twice = np.asarray(jax.vmap(lambda m: jnp.bincount(m, length=5))(draw(2, 7)))  # 2 of 5 neurons drawn twice
  assert np.all(twice.sum(1) == 7) and np.all(np.abs((twice == 2).sum(0) - 8000) < 400)


def test_iid_growth_preserves_function_in_expectation():
  model, p = mlp("mf", width=12, depth=1, activation=jnp.tanh)
  small = out(model, p)
  sizes = {"hidden_0": 30}
  draws = jnp.stack([out(model, rcjax.grow(p, jax.random.key(100 + i), sizes=sizes, sampler="iid"))
                     for i in range(64)])
  err_single = jnp.sqrt(jnp.mean((draws - small) ** 2, axis=(1, 2)))   # per draw
  err_mean = float(jnp.sqrt(jnp.mean((draws.mean(0) - small) ** 2)))
  assert float(err_single.min()) > 0  # single iid draws are not exact ...
  assert err_mean < 0.25 * float(jnp.median(err_single))  # ... but their mean is close (~1/sqrt(64))


@pytest.mark.parametrize("param", PARAMS)
@pytest.mark.parametrize("factor", [2, 4])
def test_shrink_inverts_grow_bitwise(param, factor):
  # Bitwise when the fan-in rescale factors are powers of two (NTK rescales by sqrt(N/N')).
  if param == "ntk" and factor == 2:
    factor = 16
  _, p = mlp(param, width=8)
  old = rcjax.width_axes(p)
  maps = rcjax.index_maps(jax.random.key(7), old, {k: v * factor for k, v in old.items()})
  big = rcjax.apply_maps(p, maps)
  back = rcjax.apply_maps(big, rcjax.inverse_maps(maps, old))
  chex.assert_trees_all_equal(rcjax.unbox(back), rcjax.unbox(p))


@pytest.mark.parametrize("param", PARAMS)
def test_shrink_inverts_grow_at_non_integer_ratio(param):
  _, p = mlp(param, width=10)
  old = rcjax.width_axes(p)
  maps = rcjax.index_maps(jax.random.key(7), old, {"hidden_0": 37, "hidden_1": 23})
  back = rcjax.apply_maps(rcjax.apply_maps(p, maps), rcjax.inverse_maps(maps, old))
  chex.assert_trees_all_close(rcjax.unbox(back), rcjax.unbox(p), rtol=1e-6, atol=0)


def test_shrink_prunes_and_rescales():
  model, p = mlp("sp", width=12)
  small = rcjax.shrink(p, jax.random.key(0), factor=0.5)
  assert rcjax.width_axes(small) == {"hidden_0": 6, "hidden_1": 6}
  small = rcjax.shrink(p, jax.random.key(0), sizes={"hidden_1": 4}, sampler="stride")
  assert rcjax.width_axes(small) == {"hidden_0": 12, "hidden_1": 4}
  # Output weights of kept neurons are scaled by N/N' = 3 under SP.
  np.testing.assert_allclose(small["Dense_2"]["kernel"].value,
                             3 * p["Dense_2"]["kernel"].value[np.array([0, 3, 6, 9])], rtol=1e-6)


def test_same_key_same_result_and_different_keys_differ():
  _, p = mlp("mup", width=10)
  kw = dict(sizes={"hidden_0": 23, "hidden_1": 17}, random_rate=0.3, norm_rate=0.1)
  a = rcjax.grow(p, jax.random.key(9), **kw)
  b = rcjax.grow(p, jax.random.key(9), **kw)
  c = rcjax.grow(p, jax.random.key(10), **kw)
  chex.assert_trees_all_equal(rcjax.unbox(a), rcjax.unbox(b))
  assert not np.array_equal(a["Dense_1"]["kernel"].value, c["Dense_1"]["kernel"].value)


def test_leaf_keys_come_from_paths_not_traversal_order():
  _, p = mlp("mup", width=10)
  kw = dict(factor=2, random_rate=0.5, norm_rate=0.1)
  a = rcjax.grow(p, jax.random.key(9), **kw)
  # Removing an unrelated leaf changes the traversal order but not the other leaves' draws.
  p2 = {k: v for k, v in p.items() if k != "Dense_0"}
  p2["Dense_0"] = {"kernel": p["Dense_0"]["kernel"]}
  b = rcjax.grow(p2, jax.random.key(9), **kw)
  np.testing.assert_array_equal(a["Dense_1"]["kernel"].value, b["Dense_1"]["kernel"].value)
  np.testing.assert_array_equal(a["Dense_0"]["kernel"].value, b["Dense_0"]["kernel"].value)


def test_jit_and_no_jit_agree():
  _, p = mlp("mf", width=10)
  kw = dict(sizes={"hidden_0": 23, "hidden_1": 17}, random_rate=0.3, norm_rate=0.1)
  a = rcjax.grow(p, jax.random.key(3), **kw)
  b = jax.jit(lambda p, k: rcjax.grow(p, k, **kw))(p, jax.random.key(3))
  with jax.disable_jit(), fast_compiles():  # op by op: each op compiles on its own
    c = rcjax.grow(p, jax.random.key(3), **kw)
  # Equal up to float reassociation (XLA fuses the noise RMS reduction differently op by op).
  chex.assert_trees_all_close(rcjax.unbox(a), rcjax.unbox(b), rtol=1e-6, atol=1e-6)
  chex.assert_trees_all_close(rcjax.unbox(a), rcjax.unbox(c), rtol=1e-6, atol=1e-6)


def test_one_device_and_eight_device_mesh_agree():
  _, p = mlp("mup", width=16)
  mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("a", "b"))

  def shard(box):
    spec = [None] * box.value.ndim
    for d in box.width_dims:
      spec[d] = "a" if box.axes[d] == "hidden_0" else "b"
    return box.replace(value=jax.device_put(box.value, NamedSharding(mesh, P(*spec))))

  ps = jax.tree.map(shard, p, is_leaf=rcjax.is_rc)
  assert len(ps["Dense_1"]["kernel"].value.sharding.device_set) == 8
  kw = dict(sizes={"hidden_0": 40, "hidden_1": 24}, random_rate=0.25, norm_rate=0.05)
  a = rcjax.grow(p, jax.random.key(4), **kw)
  b = rcjax.grow(ps, jax.random.key(4), **kw)
  chex.assert_trees_all_close(rcjax.unbox(a), rcjax.unbox(b), rtol=1e-6, atol=1e-7)


def test_random_rate_one_is_a_fresh_init():
  model = rcjax.nn.MLP(features=(64, 64), out_features=3, param="mup", kernel_init="normal:1,3", base=64)
  p = model.init(jax.random.key(0), X)["params"]
  # Make the source obviously "trained": far from the init distribution.
  p = jax.tree.map(lambda b: b.replace(value=b.value * 5 + 2), p, is_leaf=rcjax.is_rc)
  fresh = model.clone(features=(256, 256)).init(jax.random.key(1), X)["params"]
  big = rcjax.grow(p, jax.random.key(2), factor=4, random_rate=1.0)
  for layer in ("Dense_0", "Dense_1", "Dense_2"):
    got, want = big[layer]["kernel"].value, fresh[layer]["kernel"].value
    n = got.size
    assert abs(float(got.mean() - want.mean())) < 5 * float(want.std()) / np.sqrt(n) + 1e-6, layer
    assert abs(float(got.std() / want.std()) - 1) < 0.05, layer
  # Biases touch a width axis, so they are fresh too (init 'zeros').
  assert float(jnp.abs(big["Dense_0"]["bias"].value).max()) == 0.0


def test_random_rate_fraction_of_fresh_neurons():
  _, p = mlp("mf", width=200, depth=1)
  p = jax.tree.map(lambda b: b.replace(value=b.value + 100.0), p, is_leaf=rcjax.is_rc)  # trained = far from init
  big = rcjax.grow(p, jax.random.key(0), factor=5, random_rate=0.3)
  fresh = np.abs(np.asarray(big["Dense_1"]["kernel"].value[:, 0])) < 50  # per hidden neuron (rows)
  assert abs(fresh.mean() - 0.3) < 0.05


@pytest.mark.parametrize("r2", [0.01, 0.1, 0.5])
def test_norm_rate_noise_size(r2):
  _, p = mlp("mup", width=64)
  clean = rcjax.grow(p, jax.random.key(0), factor=2)
  noisy = rcjax.grow(p, jax.random.key(0), factor=2, norm_rate=r2)
  for layer in ("Dense_0", "Dense_1", "Dense_2"):
    w, n = clean[layer]["kernel"].value, noisy[layer]["kernel"].value - clean[layer]["kernel"].value
    ratio = float(jnp.linalg.norm(n) / jnp.linalg.norm(w))
    assert abs(ratio / r2 - 1) < 0.1, (layer, ratio)


def test_grow_moves_optimizer_state_with_the_params_maps():
  import optax
  _, p = mlp("mf", width=10)
  s = optax.adam(1e-3).init(p)
  s = (s[0]._replace(mu=p),) + tuple(s[1:])  # first moments = the params themselves, entry for entry
  # non-integer sizes: the extra neurons are a random subset, so two independent draws would differ
  big_p, big_s = rcjax.grow((p, s), jax.random.key(0), sizes={"hidden_0": 15, "hidden_1": 17})
  flat_p = jax.tree_util.tree_leaves_with_path(rcjax.unbox(big_p))
  flat_mu = dict(jax.tree_util.tree_leaves_with_path(rcjax.unbox(big_s[0].mu)))
  assert len(flat_p) == len(flat_mu) == 6
  for path, w in flat_p:
    mu = np.asarray(flat_mu[path])
    assert mu.shape == w.shape, path
    ratio = mu / np.asarray(w)  # the same maps: one scale factor per leaf (the state's rescaling), no shuffle
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-6, err_msg=str(path))
  assert int(big_s[0].count) == 0


def test_donate_passes_untouched_leaves_through_and_gives_the_same_bits():
  import warnings

  _, p = mlp("mup", width=10)
  tree = (p, {"count": jnp.zeros([], jnp.int32)})  # a non-RC leaf, as an optimizer's step count
  copy = lambda t: jax.tree.map(jnp.copy, t)
  kw = dict(sizes={"hidden_1": 23}, norm_rate=0.1)  # Dense_0 has no hidden_1 axis; noise keys come from paths
  want = rcjax.grow(tree, jax.random.key(5), **kw)
  given = copy(tree)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    got = rcjax.grow(given, jax.random.key(5), donate=True, **kw)
  assert not [w for w in caught if "donat" in str(w.message)]
  chex.assert_trees_all_equal(rcjax.unbox(got), rcjax.unbox(want))
  assert got[0]["Dense_0"]["kernel"].value is given[0]["Dense_0"]["kernel"].value  # not copied
  assert got[1]["count"] is given[1]["count"]  # non-RC leaves too
  # Without donate every output leaf is a new array and the input stays usable.
  assert want[0]["Dense_0"]["kernel"].value is not p["Dense_0"]["kernel"].value
  assert not any(x.is_deleted() for x in jax.tree.leaves(rcjax.unbox(tree)))
  # Under an outer jit (nothing to donate there) it is the same transfer.
  traced = jax.jit(lambda t, k: rcjax.grow(t, k, donate=True, **kw))(copy(tree), jax.random.key(5))
  chex.assert_trees_all_close(rcjax.unbox(traced), rcjax.unbox(want), rtol=1e-6, atol=1e-6)


def test_donate_reuses_the_buffers_of_leaves_remapped_at_their_size():
  _, p = mlp("mup", width=10)
  mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("a", "b"))
  for shard in (False, True):
    given = jax.tree.map(jnp.copy, p)
    if shard:
      last = lambda x: "b" if x.shape[-1] % 2 == 0 else None
      given = jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, P(*[None] * (x.ndim - 1), last(x)))),
                           given)
    want = rcjax.transfer(given, jax.random.key(2), {"hidden_1": 10}, sampler="iid")  # same size, new neurons
    got = rcjax.transfer(given, jax.random.key(2), {"hidden_1": 10}, sampler="iid", donate=True)
    chex.assert_trees_all_equal(rcjax.unbox(got), rcjax.unbox(want))
    assert given["Dense_1"]["kernel"].value.is_deleted()  # its buffer now holds the output
    assert got["Dense_0"]["kernel"].value is given["Dense_0"]["kernel"].value
    assert not given["Dense_0"]["kernel"].value.is_deleted()
  # One array in two places (a tied table, an optimizer state holding the params): not donated (XLA
  # refuses a buffer donated twice, and a donated one must not also pass through untouched).
  x = jnp.ones((4, 8))
  shared = {"a": rcjax.RC(x, axes=("input", "hidden_1"), fan_in=(0,), base=(None, 8)),
            "b": rcjax.RC(x, axes=("input", "hidden_1"), fan_in=(0,), base=(None, 8)),
            "c": rcjax.RC(x, axes=("input", "other"), fan_in=(0,), base=(None, 8))}
  got = rcjax.transfer(shared, jax.random.key(2), {"hidden_1": 8}, sampler="iid", donate=True)
  assert not x.is_deleted() and got["c"].value is x
  chex.assert_trees_all_equal(rcjax.unbox(got), rcjax.unbox(rcjax.transfer(shared, jax.random.key(2), {"hidden_1": 8},
                                                                            sampler="iid")))
  maps = {"hidden_1": jnp.arange(10)[::-1]}  # apply_maps: the same with given maps
  want = rcjax.apply_maps(p, maps)
  given = jax.tree.map(jnp.copy, p)
  got = rcjax.apply_maps(given, maps, donate=True)
  chex.assert_trees_all_equal(rcjax.unbox(got), rcjax.unbox(want))
  assert given["Dense_1"]["kernel"].value.is_deleted() and got["Dense_0"]["bias"].value is given["Dense_0"]["bias"].value
