"""The fast gather paths of transfer agree bit for bit with the slow reference (one jnp.take per axis)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rcjax
from rcjax.gather import _gather

SHAPES = {  # leaf shape, mapped dims (the layouts rcjax meets: 1-D, 2-D, scanned, non-adjacent heads)
    "vector": ((12,), (0,)),
    "matrix": ((12, 10), (0, 1)),
    "scanned": ((3, 12, 10), (1, 2)),
    "qkv": ((2, 12, 3, 4, 5), (1, 3)),
    "heads": ((2, 10, 3, 4), (1, 2, 3)),  # scanned (layers, embed, heads, head_dim)
    "q": ((2, 10, 3, 6), (1, 2)),  # (layers, embed, heads, head_dim), head_dim unmapped
    "o": ((2, 3, 6, 10), (1, 3)),  # (layers, heads, head_dim, embed)
    "one-of-two": ((12, 10), (1,)),
    "leading": ((12, 10), (0,)),
}
# Growth and pruning, integer and not (2.57: the benchmark's 100 -> 257).
RATIOS = [2, 1.5, 2.57, 0.5, 0.3]


def slow(x, dims, maps):
  for d in dims:
    x = jnp.take(x, maps[d], axis=d)
  return x


@functools.partial(jax.jit, static_argnames=("dims", "cases"))
def all_paths(x, maps, dims, cases):
  """Per case (names, repeats): the slow reference, then `_gather` on the CPU path and on the
  accelerators' path, with the repeats transfer would pass and (if any) with none (the general gather).
  One program per test: compiling hundreds of tiny ones would dominate the test's time."""
  out = []
  for m, (names, repeats) in zip(maps, cases):
    variants = [(cpu, r, False) for cpu in (True, False) for r in ((dict(repeats), {}) if repeats else ({},))]
    variants += [(False, dict(repeats), "interpret")] if repeats else []  # the Pallas kernel, interpreted
    out.append((slow(x, dims, {d: m[n] for n, d in zip(names, dims)}),
                {f"cpu={cpu} repeats={r} pallas={k}": _gather(x, list(dims), list(names), m, r, cpu=cpu,
                                                              pallas=(k, False))
                 for cpu, r, k in variants}))
  return out


def sizes_to_check(old):
  """Every ratio; with several axes, for some ratios also the last or the first axis kept at its size
  (head_dim in a GPT: identity maps, repeats of 1)."""
  out = []
  for ratio in RATIOS:
    new = [max(1, int(round(n * ratio))) for n in old]
    out.append(new)
    if len(old) > 1 and ratio in (1.5, 0.3):
      out += [new[:-1] + old[-1:], old[:1] + new[1:]]
  return out


def one_map(n_old, n_new, sampler, rng):
  """A map as `index_maps` draws it for `sampler`, built in numpy (compiling `index_maps` for every size
  would dominate this test's time; the transfer test below uses the real maps)."""
  if sampler == "stride":
    m = np.arange(n_new) * n_old // n_new
  elif sampler == "iid":
    m = np.sort(rng.integers(0, n_old, n_new))
  elif n_new < n_old:
    m = np.sort(rng.permutation(n_old)[:n_new])
  else:
    q, r = divmod(n_new, n_old)
    extra = np.zeros(n_old, int)
    extra[rng.permutation(n_old)[:r]] = 1
    m = np.repeat(np.arange(n_old), q + extra)
  return jnp.asarray(m, jnp.int32)


@pytest.mark.parametrize("layout,dtype", [(k, jnp.float32) for k in SHAPES]
                         + [(k, jnp.bfloat16) for k in ("matrix", "qkv", "heads", "q", "o")]
                         + [(k, jnp.float16) for k in ("o",)])
@pytest.mark.parametrize("sampler", ["stratified", "iid", "stride"])
def test_gather_paths_match_takes_bitwise(layout, sampler, dtype):
  shape, dims = SHAPES[layout]
  x = jax.random.normal(jax.random.key(0), shape).astype(dtype)
  names = tuple(f"a{d}" for d in dims)
  old = [shape[d] for d in dims]
  maps, cases, rng = [], [], np.random.default_rng(1)
  for new in sizes_to_check(old):
    maps.append({n: one_map(a, b, sampler, rng) for n, a, b in zip(names, old, new)})
    # What transfer passes as repeats: integer factors of stratified/stride maps (1 for a kept size).
    cases.append((names, tuple((n, b // a) for n, a, b in zip(names, old, new)
                               if sampler != "iid" and b % a == 0)))
  for new, (want, got) in zip(sizes_to_check(old), all_paths(x, maps, tuple(dims), tuple(cases))):
    want = np.asarray(want)
    for path, g in got.items():
      g = np.asarray(g)
      assert g.dtype == want.dtype and g.shape == want.shape
      np.testing.assert_array_equal(g.view(np.uint8), want.view(np.uint8),
                                    err_msg=f"{layout} {sampler} {old}->{new} {path}")


def test_transfer_cpu_path_matches_accelerator_path(monkeypatch):
  # The jitted transfer (maps computed inside and, on the CPU, materialised by a sort; the CPU gather
  # layout) is bitwise the transfer of the accelerators' path, for every sampler, on a scanned
  # attention-like leaf and a bias, with axes grown and shrunk by non-integer ratios and one kept.
  import sys
  mod = sys.modules["rcjax.transfer"]  # rcjax.transfer is the function
  x = jax.random.normal(jax.random.key(0), (3, 20, 4, 6)).astype(jnp.bfloat16)
  p = {"w": rcjax.RC(x, axes=("layers", "embed", "heads", "head_dim"), fan_in=(1,), base=(None, 20, 4, 6),
                     param="mup"),
       "b": rcjax.RC(x[:, :, 0, 0], axes=("layers", "embed"), base=(None, 20), param="mup")}
  sizes = {"embed": 51, "heads": 2, "head_dim": 6}
  for sampler in ("stratified", "iid", "stride"):
    got = rcjax.transfer(p, jax.random.key(3), sizes, sampler=sampler)
    with monkeypatch.context() as m:
      for module in (mod, sys.modules["rcjax.leafmap"]):  # the maps' path and the gathers' (rcjax.leafmap)
        m.setattr(module, "_on_cpu", lambda: False)
      mod._transfer_jit.clear_cache()
      want = rcjax.transfer(p, jax.random.key(3), sizes, sampler=sampler)
    mod._transfer_jit.clear_cache()
    for u, v in zip(jax.tree.leaves(rcjax.unbox(got)), jax.tree.leaves(rcjax.unbox(want))):
      assert u.shape == v.shape
      np.testing.assert_array_equal(np.asarray(u).view(np.uint8), np.asarray(v).view(np.uint8), err_msg=sampler)


def test_query_heads_follow_their_kv_heads_on_every_path(monkeypatch):
  # Growing kv heads repeats whole blocks of query heads: an unsorted map ([0, 1, 0, 1, 2, 3, 2, 3]),
  # which the CPU path must not sort and no gather may be promised sorted. grow == apply_maps(index_maps).
  import sys
  mod = sys.modules["rcjax.transfer"]
  q = jnp.arange(3 * 8, dtype=jnp.float32).reshape(3, 8)
  p = {"q": rcjax.RC(q, axes=("embed", "heads"), fan_in=(0,), base=(None, 8), param="mf",
                     blocks=(("heads", "kv_heads"),)),
       "k": rcjax.RC(q[:, :4], axes=("embed", "kv_heads"), fan_in=(0,), base=(None, 4), param="mf")}
  sizes, key = {"heads": 16, "kv_heads": 8}, jax.random.key(3)
  maps = rcjax.index_maps(key, {"heads": 8, "kv_heads": 4}, sizes, blocks={"heads": "kv_heads"})
  assert maps["heads"].tolist() == [0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7, 6, 7]
  want = rcjax.apply_maps(p, maps)
  for on_cpu in (True, False):
    with monkeypatch.context() as m:
      for module in (mod, sys.modules["rcjax.leafmap"]):  # the maps' path and the gathers' (rcjax.leafmap)
        m.setattr(module, "_on_cpu", lambda: on_cpu)
      mod._transfer_jit.clear_cache()
      got = rcjax.transfer(p, key, sizes)
    mod._transfer_jit.clear_cache()
    for name in p:
      np.testing.assert_array_equal(got[name].value, want[name].value, err_msg=f"{name} on_cpu={on_cpu}")


def test_stride_maps_do_not_overflow_at_large_widths():
  for old, new in ((50000, 75000), (60000, 45000)):  # old * new > 2**31
    m = rcjax.index_maps(jax.random.key(0), {"h": old}, {"h": new}, sampler="stride")["h"]
    np.testing.assert_array_equal(m, np.arange(new, dtype=np.int64) * old // new)


@pytest.mark.usefixtures("fast_compiles_here")  # the interpreted kernel compiles many small programs
def test_transfer_with_the_pallas_kernel_is_bitwise_the_same(monkeypatch):
  # rcjax.kernels.ENABLED routes the integer repeats of every leaf it takes through the kernel (here
  # interpreted on the CPU): a GPT grown 2x (1-D to 4-D leaves, bf16) and a 3x growth, bitwise as without.
  model = rcjax.nn.GPT(vocab=24, width=16, depth=2, heads=4, kv_heads=2, style="llama", dtype=jnp.bfloat16)
  p = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 4), jnp.int32))["params"], jax.random.key(0))
  p = jax.tree.map(lambda b: b.replace(value=jax.random.normal(jax.random.key(len(b.shape)), b.shape, jnp.bfloat16)),
                   p, is_leaf=rcjax.is_rc)
  for sizes in ({"embed": 32, "mlp": 128, "heads": 8, "kv_heads": 4}, {"embed": 48, "mlp": 192}):
    want = rcjax.transfer(p, jax.random.key(1), sizes)
    with monkeypatch.context() as m:
      m.setattr(rcjax.kernels, "ENABLED", "interpret")
      got = rcjax.transfer(p, jax.random.key(1), sizes)
    for u, v in zip(jax.tree.leaves(rcjax.unbox(got)), jax.tree.leaves(rcjax.unbox(want))):
      np.testing.assert_array_equal(np.asarray(u).view(np.uint16), np.asarray(v).view(np.uint16))
  assert not rcjax.kernels.supports((4, 6), {1: 3})  # a last dim repeated 3x: not a power of two
  assert not rcjax.kernels.supports((1000, 1000), {0: 2, 1: 2})  # rows of 8-entry blocks (1000 = 8 * 125)
  assert rcjax.kernels.supports((1000, 1024), {0: 2, 1: 2}) and rcjax.kernels.supports((24, 16), {1: 2})
  for shape, reps in (((24576, 16, 64), {0: 2, 1: 2}), ((1000, 96), {0: 3}), ((24 * 1024,), {0: 2})):
    _, blocks = rcjax.kernels._plan(shape, reps, 1 << 13)  # blocks tile the dims exactly (GPUs: see _plan)
    assert all(n % b == 0 for n, b in zip(shape, blocks)), (shape, blocks)
  # A fan-in leaf's rescaling in the kernel's pass: bitwise as XLA's multiply after the repeat.
  x = jax.random.normal(jax.random.key(2), (8, 12, 32), jnp.bfloat16)
  got = rcjax.kernels.repeat(x, {1: 2, 2: 2}, scale=0.5 / 3, interpret=True)
  want = (jnp.repeat(jnp.repeat(x, 2, 1), 2, 2).astype(jnp.float32) * (0.5 / 3)).astype(jnp.bfloat16)
  np.testing.assert_array_equal(np.asarray(got).view(np.uint16), np.asarray(want).view(np.uint16))
  assert not rcjax.kernels.supports((32, 4096, 11008), {1: 2, 2: 2})  # 2**32 entries out: int32 offsets
  with pytest.raises(ValueError, match="does not take shape"):
    rcjax.kernels.repeat(jnp.ones((4, 6)), {1: 3})


def test_pallas_kernel_lowers_to_triton_for_cuda():
  # Without a GPU: lowering for CUDA runs Pallas's Triton lowering (block shapes, index maps), which JAX's
  # default GPU backend (Mosaic GPU) would refuse for these blocks. Compiling the Triton IR needs a GPU.
  from jax import export

  for shape, reps in (((64, 320), {0: 2, 1: 2}), ((3, 16, 8, 96), {1: 2, 3: 2}), ((5120,), {0: 2}),
                      ((10, 64, 64), {1: 3})):
    fn = jax.jit(lambda x, reps=reps: rcjax.kernels.repeat(x, reps))
    try:
      exp = export.export(fn, platforms=["cuda"],
                          disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(
          jax.ShapeDtypeStruct(shape, jnp.bfloat16))
    except RuntimeError as e:  # JAX 0.11 lowers Triton only with a GPU present (seen on the GPU machine's CPUs)
      if "No supported GPU devices found" not in str(e):
        raise
      pytest.skip(f"this JAX ({jax.__version__}) lowers Pallas's Triton kernels only with a GPU: {e}")
    assert "xla.gpu.triton" in exp.mlir_module()
    assert exp.out_avals[0].shape == tuple(n * reps.get(d, 1) for d, n in enumerate(shape))


def test_transfer_holds_no_index_arrays_of_the_output_size():
  # Leaves of one shape share their gather's index; it must stay a fused broadcast, not an array as large
  # as the output (peak memory <= input + output + small maps).
  x = jnp.ones((1000, 64), jnp.bfloat16)
  p = {k: rcjax.RC(x, axes=("vocab", "embed"), base=(None, 64), param="mup") for k in "abc"}
  p["w"] = rcjax.RC(jnp.ones((2, 64, 40), jnp.bfloat16), axes=("layers", "embed", "mlp"), fan_in=(1,),
                    base=(None, 64, 40), param="mup")
  sizes = {"embed": 96, "mlp": 60}
  mem = jax.jit(lambda p, k: rcjax.grow(p, k, sizes=sizes)).lower(p, jax.random.key(0)).compile().memory_analysis()
  assert mem.temp_size_in_bytes < 0.1 * mem.output_size_in_bytes, (mem.temp_size_in_bytes, mem.output_size_in_bytes)


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


@pytest.mark.usefixtures("fast_compiles_here")  # the interpreted kernel compiles many small programs
def test_kernel_modes_and_configs():
  # 'auto' (the default) takes 16-bit leaves on GPUs only, as measured (benchmarks/README.md); f32 and the
  # CPU stay with XLA.
  k = rcjax.kernels
  assert k.ENABLED == "auto"
  assert k.chosen("auto", jnp.bfloat16, "gpu") == "gpu" and k.chosen("auto", jnp.float16, "gpu") == "gpu"
  assert k.chosen("auto", jnp.float32, "gpu") is None and k.chosen("auto", jnp.bfloat16, "cpu") is None
  assert k.chosen(True, jnp.float32, "gpu") == "gpu" and k.chosen(True, jnp.bfloat16, "cpu") is None
  assert k.chosen(False, jnp.bfloat16, "gpu") is None and k.chosen("interpret", jnp.float32, "cpu") == "interpret"
  small, large = k.AUTO_MIN_BYTES - 2, k.AUTO_MIN_BYTES  # 'auto' leaves small outputs (norms, biases) to XLA
  assert k.chosen("auto", jnp.bfloat16, "gpu", small) is None and k.chosen("auto", jnp.bfloat16, "gpu", large) == "gpu"
  assert k.chosen(True, jnp.bfloat16, "gpu", small) == "gpu"
  assert k.chosen("interpret", jnp.bfloat16, "cpu", 2) == "interpret"
  with pytest.raises(ValueError, match="ENABLED must be one of"):
    k.chosen("yes", jnp.bfloat16, "gpu")
  # Blocks: 16384 entries and 8 warps for 16-bit leaves with short unrepeated rows (q: head_dim last).
  assert k.config((24, 1024, 16, 64), {1: 2, 2: 2}, jnp.bfloat16) == (1 << 14, 8)
  assert k.config((24, 1024, 16, 64), {1: 2, 2: 2}, jnp.float32) == (1 << 13, 4)
  assert k.config((24, 1024, 4096), {1: 2, 2: 2}, jnp.bfloat16) == (1 << 13, 4)  # mlp: last dim repeated
  assert k.config((24, 16, 64, 1024), {1: 2, 3: 2}, jnp.bfloat16) == (1 << 13, 4)  # o
  x = jax.random.normal(jax.random.key(4), (2, 16, 4, 64), jnp.bfloat16)
  for reps in ({1: 2, 2: 2}, {1: 2}):  # the larger block, bitwise as jnp.repeat (interpreted)
    want = x
    for d, r in reps.items():
      want = jnp.repeat(want, r, d)
    got = k.repeat(x, reps, interpret=True)
    np.testing.assert_array_equal(np.asarray(got).view(np.uint16), np.asarray(want).view(np.uint16))
  # The word form (a doubled last dim of a 16-bit leaf as 32-bit words), bitwise too, alone and in a
  # whole transfer (interpreted), with the fan-in rescale; float32 and other last-dim repeats keep entries.
  assert k.packs((24, 1024, 4096), {1: 2, 2: 2}, jnp.bfloat16) and k.packs((50, 16), {1: 2}, jnp.float16)
  assert not k.packs((24, 1024, 4096), {1: 2, 2: 2}, jnp.float32) and not k.packs((8, 64), {1: 4}, jnp.bfloat16)
  assert not k.packs((24, 1024, 16, 64), {1: 2, 2: 2}, jnp.bfloat16)  # q: head_dim last, unrepeated
  for shape, reps in (((2, 16, 64), {1: 2, 2: 2}), ((2, 4, 8, 64), {1: 2, 3: 2}), ((5120,), {0: 2}),
                      ((3, 64, 32), {0: 3, 2: 2}), ((8, 64), {1: 4})):
    x = jax.random.normal(jax.random.key(5), shape, jnp.bfloat16)
    want = (x.astype(jnp.float32) * 0.3).astype(jnp.bfloat16)
    for d, r in reps.items():
      want = jnp.repeat(want, r, d)
    got = k.repeat(x, reps, scale=0.3, words=True, interpret=True)
    np.testing.assert_array_equal(np.asarray(got).view(np.uint16), np.asarray(want).view(np.uint16), str(shape))
  w = jax.random.normal(jax.random.key(6), (2, 16, 64), jnp.bfloat16)
  p = {"up": rcjax.RC(w, axes=("layers", "embed", "mlp"), fan_in=(1,), base=(None, 16, 64), param="mup"),
       "down": rcjax.RC(jnp.swapaxes(w, 1, 2), axes=("layers", "mlp", "embed"), fan_in=(1,), base=(None, 64, 16),
                        param="mup")}
  want = rcjax.grow(p, jax.random.key(1), factor=2)
  calls, repeat = [], k.repeat
  with pytest.MonkeyPatch.context() as m:
    m.setattr(k, "ENABLED", "interpret")
    m.setattr(k, "WORDS", True)
    m.setattr(k, "repeat", lambda x, reps, **kw: calls.append(kw["words"]) or repeat(x, reps, **kw))
    got = rcjax.grow(p, jax.random.key(1), factor=2)
  assert calls == [True, True]  # both leaves through the kernel's word form
  for u, v in zip(jax.tree.leaves(rcjax.unbox(got)), jax.tree.leaves(rcjax.unbox(want))):
    np.testing.assert_array_equal(np.asarray(u).view(np.uint16), np.asarray(v).view(np.uint16))
  # A bad mode is refused at the call, before any leaf is looked at.
  p = {"b": rcjax.RC(jnp.ones((4,)), axes=("embed",), base=(4,), param="mup")}
  with pytest.MonkeyPatch.context() as m:
    m.setattr(k, "ENABLED", "always")
    with pytest.raises(ValueError, match="ENABLED must be one of"):
      rcjax.grow(p, jax.random.key(0), sizes={"embed": 8})


def test_kernel_availability_probe_falls_back_to_xla(monkeypatch):
  # The probe runs the kernel once on a small leaf (interpreted here), also when first asked inside a
  # caller's jit; where the kernel fails (e.g. a JAX without Pallas's Triton backend), transfer on a GPU
  # takes XLA's path with a warning instead of failing.
  k = rcjax.kernels
  k.available.cache_clear()
  assert jax.jit(lambda x: x + k.available(interpret=True))(1) == 2
  k.available.cache_clear()

  def broken(*args, **kwargs):
    raise RuntimeError("no Triton here")

  monkeypatch.setattr(k, "repeat", broken)
  with pytest.warns(RuntimeWarning, match="does not run here .RuntimeError: no Triton here.; transfers use XLA"):
    assert k.available() is False
  assert k.available() is False  # checked once per process
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert k.mode() is False and k.chosen(k.mode(), jnp.bfloat16, "gpu") is None
  monkeypatch.setattr(k, "ENABLED", "interpret")
  assert k.mode() == "interpret"  # no probe for the interpreter
  k.available.cache_clear()
