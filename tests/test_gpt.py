"""rcjax.nn.GPT: transfer is exact where DESIGN.md's math says so, and not exact where it says not.

Exact (logits to float tolerance): growing mlp, heads (query heads per kv head) and kv_heads with heads
(whole GQA groups) under every parametrization (o's fan-in is rescaled); embed by an integer factor
(LayerNorm / RMSNorm statistics are those of the duplicated vector) untied under every parametrization,
tied only under mup / mf (the readout multiplier 1/m_in absorbs the duplication; SP sums k copies);
head_dim without RoPE under mup / mf (logit scale 1/d). With exact=True also non-integer ratios of mlp,
heads and kv_heads. Not exact: head_dim under sp / ntk (1/sqrt(d) scale: logits grow by sqrt(k)) and
head_dim with RoPE (pair i rotates at base**(-2i/D), which moves when D grows) - both still exact at
position 0, whose only key is itself.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rcjax
from rcjax.nn.gpt import logit_scale

X = jax.random.randint(jax.random.key(1), (2, 10), 0, 32)


pytestmark = pytest.mark.usefixtures("fast_compiles")


def gpt(style="llama", param="mup", seed=0, **kw):
  """A tiny model and params with random values. Values come from numpy at the parametrization's init
  scale (norm scales and biases random too): the properties tested hold for any weights, and XLA
  compiles a GPT's threefry init slowly on CPU (seconds; train tests cover model.init)."""
  kw = {"vocab": 32, "width": 32, "depth": 2, "heads": 4, "kv_heads": 2, "max_len": 16, **kw}
  model = rcjax.nn.GPT(style=style, param=param, **kw)
  abstract = jax.eval_shape(lambda k: model.init(k, X)["params"], jax.random.key(0))
  rng = np.random.default_rng(seed)

  def fill(b):
    z = rng.standard_normal(b.shape)
    v = z * rcjax.init_scale(b) if b.fan_in else (1.0 + 0.3 * z if b.init == "ones" else 0.3 * z)
    return b.replace(value=jnp.asarray(v, jnp.float32))
  return model, jax.tree.map(fill, abstract, is_leaf=rcjax.is_rc)


_APPLY = {}


def logits(model, p, x=X):
  if model not in _APPLY:
    _APPLY[model] = jax.jit(lambda p, x: model.apply({"params": p}, x))
  return _APPLY[model](p, x)


def rel_diff(model, a, b):
  la, lb = logits(model, a), logits(model, b)
  return float(jnp.max(jnp.abs(la - lb)) / jnp.max(jnp.abs(la)))


EXACT = [  # (style, param, tied, sizes to grow to); from embed 32, heads 4, kv 2, head_dim 8, mlp 96/128
    ("llama", "sp", False, {"mlp": 288}),
    ("llama", "sp", False, {"heads": 8}),
    ("llama", "sp", False, {"kv_heads": 4, "heads": 8}),
    ("llama", "sp", False, {"embed": 64}),
    ("llama", "mf", False, {"embed": 96, "mlp": 192, "heads": 8, "kv_heads": 4}),
    ("gpt2", "ntk", False, {"embed": 64, "mlp": 256, "heads": 8}),
    ("gpt2", "mup", True, "factor 2"),  # every width axis, head_dim included
]


@pytest.mark.parametrize("style,param,tied,sizes", EXACT, ids=[f"{s}-{p}-{z}" for s, p, _, z in EXACT])
def test_growth_is_exact(style, param, tied, sizes):
  model, p = gpt(style, param, tied=tied, kv_heads=None if style == "gpt2" else 2)
  kw = {"factor": 2} if sizes == "factor 2" else {"sizes": sizes}
  assert rel_diff(model, p, rcjax.grow(p, jax.random.key(2), **kw)) < 2e-6


@pytest.mark.parametrize("param", ["sp", "mf"])
def test_non_integer_ratios_exact_with_count_correction(param):
  # heads 4 -> 6 and kv_heads 2 -> 3 (GQA groups of 2 kept), mlp 96 -> 131, exact=True.
  model, p = gpt("llama", param)
  big = rcjax.grow(p, jax.random.key(3), sizes={"heads": 6, "kv_heads": 3, "mlp": 131}, exact=True)
  assert big["blocks"]["q"].shape[2] == 6 and big["blocks"]["k"].shape[2] == 3
  assert rel_diff(model, p, big) < 2e-6


def test_query_heads_stay_with_their_kv_head():
  for new in ({"heads": 8}, {"kv_heads": 4, "heads": 8}, {"kv_heads": 3, "heads": 6}):
    maps = rcjax.index_maps(jax.random.key(5), {"heads": 4, "kv_heads": 2}, {"heads": 4, "kv_heads": 2, **new},
                            blocks={"heads": "kv_heads"})
    g_new = len(maps["heads"]) // len(maps["kv_heads"])
    for h, src in enumerate(np.asarray(maps["heads"])):  # new head h copies old head src (group of 2)
      assert src // 2 == int(maps["kv_heads"][h // g_new]), (new, h)


def test_rope_pairs_stay_together():
  m = np.asarray(rcjax.index_maps(jax.random.key(0), {"head_dim": 8}, {"head_dim": 14},
                                  blocks={"head_dim": 2})["head_dim"])
  np.testing.assert_array_equal(m[7:], m[:7] + 4)  # new pair (i, i + 7) copies old pair (j, j + 4)
  assert np.all(np.diff(m) >= 0)  # still sorted


@pytest.mark.parametrize("style,param", [("llama", "mup"), ("gpt2", "sp")])
def test_head_dim_growth_is_not_exact_as_stated(style, param):
  model, p = gpt(style, param, kv_heads=None, tied=False)
  big = rcjax.grow(p, jax.random.key(4), sizes={"head_dim": 16})
  a, b = logits(model, p), logits(model, big)
  np.testing.assert_allclose(b[:, 0], a[:, 0], rtol=1e-5, atol=1e-5)  # position 0 attends to itself only
  assert float(jnp.max(jnp.abs(b[:, 1:] - a[:, 1:]))) > 1e-3


def test_head_dim_growth_is_exact_without_rope_under_mf():
  model, p = gpt("gpt2", "mf", kv_heads=None)  # (mup: the factor-2 case of test_growth_is_exact)
  assert rel_diff(model, p, rcjax.grow(p, jax.random.key(4), sizes={"head_dim": 16})) < 2e-6


def test_tied_embed_growth_not_exact_under_sp():
  model, p = gpt("gpt2", "sp", kv_heads=None, tied=True)
  assert rel_diff(model, p, rcjax.grow(p, jax.random.key(4), sizes={"embed": 64})) > 1e-2


def test_mup_equals_sp_at_base_width_including_logit_scale():
  m_sp, p = gpt("llama", "sp")
  m_mup = m_sp.clone(param="mup")
  p_mup = jax.tree.map(lambda b: b.replace(param="mup"), p, is_leaf=rcjax.is_rc)
  np.testing.assert_array_equal(logits(m_mup, p_mup), logits(m_sp, p))
  assert logit_scale("mup", 8, 8) == logit_scale("sp", 8, 8) and logit_scale("mf", 16, 8) == 1 / 16
  assert logit_scale("mup", 32, 8) == pytest.approx(np.sqrt(8) / 32)


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_causal(style):
  model, p = gpt(style, "mup", tied=False)
  x2 = X.at[:, 6].set((X[:, 6] + 1) % 32)
  a, b = logits(model, p), logits(model, p, x2)
  np.testing.assert_array_equal(a[:, :6], b[:, :6])
  assert float(jnp.max(jnp.abs(a[:, 6:] - b[:, 6:]))) > 0


def test_axes():
  _, p = gpt("llama", "mf")
  b = p["blocks"]
  assert b["up"].axes == ("layers", "embed", "mlp") and b["down"].axes == ("layers", "mlp", "embed")
  assert b["gate"].axes == ("layers", "embed", "mlp") and b["o"].fan_in == (1, 2)
  assert b["q"].blocks == (("head_dim", 2), ("heads", "kv_heads")) and b["k"].blocks == (("head_dim", 2),)
  assert set(rcjax.width_axes(p)) == {"embed", "heads", "kv_heads", "head_dim", "mlp"}
  assert rcjax.sizes(p)["layers"] == 2 and "readout" in p and "positions" not in p
  _, p = gpt("gpt2", "mup", kv_heads=None)
  assert "readout" not in p and p["positions"].axes == ("positions", "embed") and "q_bias" in p["blocks"]


def test_bad_sizes_are_clear_errors():
  with pytest.raises(ValueError, match="heads must be a positive int, got 0"):
    gpt(heads=0)
  with pytest.raises(ValueError, match="width 30 is not divisible by heads 4"):
    gpt(width=30)
  with pytest.raises(ValueError, match="heads 4 must be a positive multiple of kv_heads 3"):
    gpt(kv_heads=3)
  _, p = gpt("llama")
  with pytest.raises(ValueError, match="'heads'.*multiple of 3"):
    rcjax.grow(p, jax.random.key(0), sizes={"kv_heads": 3})
  with pytest.raises(ValueError, match="grow would shrink the blocks of axis 'heads'.*grow 'heads' to 8"):
    rcjax.grow(p, jax.random.key(0), sizes={"kv_heads": 4})
  for fn in (rcjax.transfer, lambda p, k, s: rcjax.transfer_model(gpt("llama")[0], p, k, s)):
    with pytest.raises(ValueError, match=r"transfer \(no axis shrinks\) would shrink the blocks of axis 'heads'"):
      fn(p, jax.random.key(0), {"kv_heads": 4})  # would drop query heads while nothing shrinks
  rcjax.transfer(p, jax.random.key(0), {"kv_heads": 4, "embed": 16})  # with a shrink: query heads sampled
  with pytest.raises(ValueError, match="'head_dim'.*2 blocks.*multiple of 2"):
    rcjax.grow(p, jax.random.key(0), sizes={"head_dim": 9})
  q = p["blocks"]["q"]
  with pytest.raises(ValueError, match="in blocks per 'kv_heads' at .* but per 'embed'"):
    rcjax.grow({"a": q, "b": q.replace(blocks=(("heads", "embed"),))}, jax.random.key(0))


def test_unrolled_scan_keeps_params_and_function():
  # `unroll` (train.gpt's default: all blocks) changes how the scan compiles, not the params or the function.
  model, p = gpt("gpt2", "mup", depth=3)
  unrolled = model.clone(unroll=3)
  abstract = jax.eval_shape(lambda k: unrolled.init(k, X)["params"], jax.random.key(0))
  assert jax.tree.map(lambda b: (b.shape, b.axes), abstract, is_leaf=rcjax.is_rc) == \
      jax.tree.map(lambda b: (b.shape, b.axes), p, is_leaf=rcjax.is_rc)
  np.testing.assert_allclose(logits(unrolled, p), logits(model, p), rtol=1e-5, atol=1e-5)
  grads = [jax.grad(lambda q, m=m: jnp.sum(m.apply({"params": q}, X) ** 2))(p) for m in (model, unrolled)]
  for a, b in zip(jax.tree.leaves(rcjax.unbox(grads[0])), jax.tree.leaves(rcjax.unbox(grads[1]))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_residual_and_logits_dtypes():
  model, p = gpt("llama", "mup", dtype=jnp.bfloat16)
  base = logits(model, p)
  assert base.dtype == jnp.float32  # the default: float32 logits, residual in the params' dtype
  lm = model.clone(logits_dtype=jnp.bfloat16)
  np.testing.assert_array_equal(np.asarray(logits(lm, p)), np.asarray(base.astype(jnp.bfloat16)))
  res = model.clone(residual_dtype=jnp.bfloat16)
  got = logits(res, p)
  assert got.dtype == jnp.float32 and not np.array_equal(np.asarray(got), np.asarray(base))
  assert float(jnp.max(jnp.abs(got - base)) / jnp.max(jnp.abs(base))) < 0.05  # bf16 rounding, not a bug


def test_fused_projections_keep_params_and_function():
  # fuse_projections computes q/k/v and SwiGLU's up/gate as one matmul each: same params (tree, and init
  # values: it creates them in the same order), same logits and gradients to float tolerance.
  model, p = gpt("llama", "mup", depth=1, qkv_bias=True, mlp_bias=True)
  fused = model.clone(fuse_projections=True)
  init = [jax.jit(lambda k, m=m: m.init(k, X)["params"])(jax.random.key(3)) for m in (model, fused)]
  assert jax.tree.structure(init[0]) == jax.tree.structure(init[1])
  for a, b in zip(jax.tree.leaves(init[0]), jax.tree.leaves(init[1])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_allclose(logits(fused, p), logits(model, p), rtol=1e-5, atol=1e-5)
  grads = [jax.grad(lambda q, m=m: jnp.sum(m.apply({"params": q}, X) ** 2))(p) for m in (model, fused)]
  leaves = [jax.tree.leaves(rcjax.unbox(g)) for g in grads]
  scale = max(float(np.abs(b).max()) for b in leaves[0])  # k's bias has zero gradient: roundoff only
  for a, b in zip(*leaves):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * scale)


def test_fused_projections_stay_local_under_tensor_parallelism():
  # Heads and mlp sharded over `tensor`: the fused weights are laid out so that the matmul and the split
  # need no communication (concatenating along heads needed collective permutes); the gradient's
  # all-reduces move no more bytes than unfused.
  import math
  import re
  from rcjax import sharding

  mesh = sharding.make_mesh("data=4,tensor=2")
  x = jnp.zeros((8, 10), jnp.int32)

  def comms(model, p):
    ps = jax.device_put(p, sharding.shardings(p, mesh))
    loss = lambda q: jnp.sum(model.apply({"params": q}, x).astype(jnp.float32) ** 2)
    hlo = jax.jit(jax.grad(loss)).lower(ps).compile().as_text()
    ops = re.findall(r"= (.+?) (all-reduce|all-gather|collective-permute|all-to-all|reduce-scatter)(?:-start)?\(", hlo)
    size = {"f32": 4, "bf16": 2}
    nbytes = sum(size[t] * math.prod(int(n) for n in dims.split(",") if n)
                 for shape, op in ops if op == "all-reduce" for t, dims in re.findall(r"(f32|bf16)\[([\d,]*)\]", shape))
    return {op for _, op in ops} - {"all-reduce"}, nbytes

  for style in ("llama", "gpt2"):
    model, p = gpt(style, "mup", depth=1, width=32, heads=4, kv_heads=2 if style == "llama" else None, mlp=64)
    other, plain = comms(model, p)
    other_fused, fused = comms(model.clone(fuse_projections=True), p)
    assert other_fused <= other, (style, other_fused)
    assert fused <= plain, (style, fused, plain)
