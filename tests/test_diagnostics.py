"""rcjax.diagnostics: .R/.C statistics against numpy, blocks, permutation nulls (fresh init vs planted RC)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import rcjax
from rcjax import RC
from rcjax import diagnostics as diag


def mlp_params(width=64, depth=3, bias_init="normal", seed=0, bias=True):
  """Params shaped and named like `rcjax.nn.MLP((width,) * (depth - 1), 10, param='mf')` at init (mean-field:
  N(0, 1) entries), built in numpy: no compilation, so the statistical tests stay fast."""
  rng = np.random.default_rng(seed)
  names = ["input"] + [f"hidden_{l}" for l in range(depth - 1)] + ["classes"]
  sizes = [12] + [width] * (depth - 1) + [10]
  params = {}
  for l in range(depth):
    base = (None if l == 0 else width, None if l == depth - 1 else width)
    layer = {"kernel": RC(rng.normal(size=(sizes[l], sizes[l + 1])).astype(np.float32), axes=(names[l], names[l + 1]),
                          fan_in=(0,), base=base, param="mf")}
    if bias:
      b = rng.normal(size=sizes[l + 1]) if bias_init == "normal" else np.zeros(sizes[l + 1])
      layer["bias"] = RC(b.astype(np.float32), axes=(names[l + 1],), base=base[1:], param="mf", init=bias_init)
    params[f"Dense_{l}"] = layer
  return params


def gpt_params(L=3, E=32, H=4, D=8, M=128, V=50, planted=0.0, seed=0, scanned=True):
  """A hand-built GPT-like param dict with the common.md axis names; `planted > 0` plants an RC structure
  W[i, j] = planted * (theta_in[i] + theta_out[j]) + noise (one type per neuron of every axis)."""
  rng = np.random.default_rng(seed)
  th = {"embed": rng.normal(size=(1, E)).repeat(L, 0), "mlp": rng.normal(size=(L, M)),
        "hd": rng.normal(size=(L, H * D))}
  noise = lambda *s: rng.normal(size=s).astype(np.float32)
  def w(ti, to):
    return (planted * (ti[:, :, None] + to[:, None, :]) + noise(L, ti.shape[1], to.shape[1])).astype(np.float32)
  base = lambda shape, fixed=(): tuple(None if d in fixed else s for d, s in enumerate(shape))

  def box(v, axes, fan_in):
    fixed = [d for d, a in enumerate(axes) if a in ("layers", "vocab")]
    return RC(v, axes=axes, fan_in=fan_in, base=base(v.shape, fixed=fixed), param="mup")

  layers = {
      "attn": {s: {"kernel": box(w(th["embed"], th["hd"]).reshape(L, E, H, D),
                                 ("layers", "embed", "heads", "head_dim"), (1,))} for s in ("q", "k", "v")},
      "mlp": {"up": {"kernel": box(w(th["embed"], th["mlp"]), ("layers", "embed", "mlp"), (1,))},
              "gate": {"kernel": box(w(th["embed"], th["mlp"]), ("layers", "embed", "mlp"), (1,))},
              "down": {"kernel": box(w(th["mlp"], th["embed"]), ("layers", "mlp", "embed"), (1,))}},
      "ln1": {"scale": box((1 + planted * th["embed"] + 0.1 * noise(L, E)).astype(np.float32),
                           ("layers", "embed"), ())},
  }
  layers["attn"]["o"] = {"kernel": box(w(th["hd"], th["embed"]).reshape(L, H, D, E),
                                       ("layers", "heads", "head_dim", "embed"), (1, 2))}
  params = {"embed": {"embedding": box(noise(V, E), ("vocab", "embed"), (0,))},
            "final_norm": {"scale": box(np.ones(E, np.float32), ("embed",), ())},
            "lm_head": {"kernel": box(noise(E, V), ("embed", "vocab"), (0,))}}
  if scanned:
    params["layers"] = layers
  else:
    unstack = lambda b, i: RC(b.value[i], axes=b.axes[1:], fan_in=tuple(d - 1 for d in b.fan_in), base=b.base[1:],
                              param=b.param)
    for i in range(L):
      params[f"layers_{i}"] = jax.tree.map(lambda b: unstack(b, i), layers, is_leaf=rcjax.is_rc)
  return {"params": params}


def test_stats_match_numpy_reference():
  p = rcjax.nn.MLP((64, 64), 10, param="mf", bias_init="normal").init(jax.random.key(0), jnp.ones((1, 12)))["params"]
  assert jax.tree.structure(p, is_leaf=rcjax.is_rc) == jax.tree.structure(mlp_params(), is_leaf=rcjax.is_rc)
  s = diag.neuron_stats(p, "hidden_0")
  w0, w1 = np.asarray(p["Dense_0"]["kernel"].value), np.asarray(p["Dense_1"]["kernel"].value)  # (in, out)
  assert sorted(s) == ["Dense_0/bias", "Dense_0/kernel.C", "Dense_0/kernel.C_rms", "Dense_1/kernel.R",
                       "Dense_1/kernel.R_rms"]
  np.testing.assert_allclose(s["Dense_0/kernel.C"], w0.mean(axis=0), rtol=1e-5, atol=1e-7)  # mean on rows
  np.testing.assert_allclose(s["Dense_1/kernel.R"], w1.mean(axis=1), rtol=1e-5, atol=1e-7)  # mean on columns
  np.testing.assert_allclose(s["Dense_1/kernel.R_rms"], np.sqrt((w1 ** 2).mean(axis=1)), rtol=1e-5)
  np.testing.assert_array_equal(s["Dense_0/bias"], np.asarray(p["Dense_0"]["bias"].value))
  assert set(diag.neuron_stats(p, "hidden_0", kinds=("mean",))) == {"Dense_0/kernel.C", "Dense_1/kernel.R"}


@pytest.mark.parametrize("shape", [(5, 7), (16, 3)])
def test_layout_is_read_from_fan_in(shape):
  """A PyTorch-layout (out, in) weight with fan_in=(1,) gives the same .R/.C as its (in, out) transpose."""
  w = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  kw = dict(base=shape[::-1], param="sp")
  flax_like = {"w": RC(w, axes=("a", "b"), fan_in=(0,), base=shape)}
  torch_like = {"w": RC(np.ascontiguousarray(w.T), axes=("b", "a"), fan_in=(1,), **kw)}
  for axis, key in (("a", "w.R"), ("b", "w.C")):
    np.testing.assert_allclose(diag.neuron_stats(flax_like, axis)[key], diag.neuron_stats(torch_like, axis)[key],
                               rtol=1e-6)


def test_compound_attention_axis_and_blocks():
  p = gpt_params()
  blocks = diag.blocks(p)
  assert [i for i, _ in blocks] == [0, 1, 2]
  leaves = blocks[1][1]
  names = ("attn/q/kernel", "attn/k/kernel", "attn/v/kernel", "attn/o/kernel", "mlp/up/kernel", "mlp/gate/kernel",
           "mlp/down/kernel", "ln1/scale")
  assert sorted(leaves) == sorted(f"layers/{k}" for k in names)
  assert diag.neuron_axes(leaves) == ["embed", diag.QK, diag.VO, "mlp"]
  q = np.asarray(p["params"]["layers"]["attn"]["q"]["kernel"].value[1])  # (E, H, D)
  o = np.asarray(p["params"]["layers"]["attn"]["o"]["kernel"].value[1])  # (H, D, E)
  qk, vo = diag.neuron_stats(leaves, diag.QK), diag.neuron_stats(leaves, diag.VO)
  assert sorted(qk) == ["layers/attn/k/kernel.C", "layers/attn/k/kernel.C_rms", "layers/attn/q/kernel.C",
                        "layers/attn/q/kernel.C_rms"]
  assert sorted(vo) == ["layers/attn/o/kernel.R", "layers/attn/o/kernel.R_rms", "layers/attn/v/kernel.C",
                        "layers/attn/v/kernel.C_rms"]
  np.testing.assert_allclose(qk["layers/attn/q/kernel.C"], q.mean(0), rtol=1e-5, atol=1e-7)  # (heads, head_dim)
  np.testing.assert_allclose(vo["layers/attn/o/kernel.R"], o.mean(-1), rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="use diagnostics.QK or diagnostics.VO"):
    diag.neuron_stats(leaves, ("heads", "head_dim"))
  e = diag.neuron_stats(leaves, "embed", kinds=("mean",))
  assert set(e) == {f"layers/{k}" for k in ("attn/q/kernel.R", "attn/k/kernel.R", "attn/v/kernel.R", "attn/o/kernel.C",
                                            "mlp/up/kernel.R", "mlp/gate/kernel.R", "mlp/down/kernel.C")}
  # unrolled blocks (per-block leaf paths) give the same analysis as the scanned 'layers' axis
  un = diag.blocks(gpt_params(scanned=False))
  assert [i for i, _ in un] == [0, 1, 2]
  a = diag.max_abs_correlation(p, key=3, permutations=50)
  b = diag.max_abs_correlation(gpt_params(scanned=False), key=3, permutations=50)
  per_block = lambda r: [r[f"block/{i}/max_abs_corr"] for i in range(3)]
  assert per_block(a) == pytest.approx(per_block(b))


@pytest.mark.parametrize("make", ["mlp", "gpt"])
def test_fresh_init_is_within_the_null(make):
  p = mlp_params(width=256, depth=5) if make == "mlp" else gpt_params(E=256, M=512, H=8, D=32)
  r = diag.max_abs_correlation(p, key=0)
  assert r["max_abs_corr"] < r["max_abs_corr_null"], r
  above = total = 0
  maxima = []  # per (block, axis): is the maximum above its null's 99% quantile (1% expected)
  for _, leaves in diag.blocks(p):
    for axis in diag.neuron_axes(leaves):
      c = diag.rc_correlation(leaves, axis, key=1, kinds=("mean", "vector"))
      maxima.append((axis, c["pair"], c["max_abs_corr"], c["max_abs_corr_null"]))
      iu = np.triu_indices(len(c["names"]), 1)
      ok = ~np.isnan(c["corr"][iu])
      above += int((np.abs(c["corr"][iu])[ok] > c["null_q95"][iu][ok]).sum())
      total += int(ok.sum())
  assert total >= 10 and above / total < 0.2  # about 5% expected above the per-entry 95% quantile
  assert sum(m[2] >= m[3] for m in maxima) <= 1, maxima  # of 6 (mlp) or 12 (gpt)


def test_planted_rc_structure_is_far_above_the_null():
  p = gpt_params(E=128, H=8, D=16, M=256, planted=0.5)
  r = diag.max_abs_correlation(p, key=0)
  assert r["max_abs_corr"] > 0.9 and r["max_abs_corr"] > 2 * r["max_abs_corr_null"], r
  for i in range(3):
    assert r[f"block/{i}/max_abs_corr"] > 2 * r[f"block/{i}/max_abs_corr_null"]
  # a planted MLP: W[i, j] = tanh(theta_in[i] + theta_out[j] / 2) + noise, bias = sin(theta)
  rng = np.random.default_rng(0)
  p = mlp_params(width=128, depth=4)
  th = {f"hidden_{l}": rng.normal(size=128) for l in range(3)}
  planted = {}
  for path, b in diag.flat_leaves(p).items():
    if path.endswith("kernel"):
      ti, to = (th.get(a, np.zeros(n)) for a, n in zip(b.axes, b.shape))
      planted[path] = b.replace(value=np.tanh(ti[:, None] + to[None, :] / 2) + rng.normal(size=b.shape))
    else:
      planted[path] = b.replace(value=np.sin(th.get(b.axes[0], rng.normal(size=b.shape[0]))))
  c = diag.rc_correlation(planted, "hidden_1", kinds=("mean", "vector"))
  assert c["names"] == ["Dense_1/bias", "Dense_1/kernel.C", "Dense_2/kernel.R"]
  iu = np.triu_indices(3, 1)
  assert (np.abs(c["corr"][iu]) > 3 * c["null_q99"][iu]).all(), c["corr"]


def test_deterministic_and_key_dependent():
  p = mlp_params(width=32)
  a = diag.rc_correlation(p, "hidden_0", key=jax.random.key(5))
  b = diag.rc_correlation(p, "hidden_0", key=jax.random.key(5))
  c = diag.rc_correlation(p, "hidden_0", key=6)
  np.testing.assert_array_equal(a["null_q99"], b["null_q99"])
  np.testing.assert_array_equal(a["corr"], c["corr"])
  assert not np.array_equal(a["null_q99"], c["null_q99"])


def test_constant_statistics_are_undefined_not_correlated():
  p = mlp_params(width=32, bias_init="zeros")
  c = diag.rc_correlation(p, "hidden_0", kinds=("mean", "vector"))
  i = c["names"].index("Dense_0/bias")
  assert np.isnan(c["corr"][i]).all() and np.isnan(c["null_q99"][i]).all()
  assert c["pair"] == ("Dense_0/kernel.C", "Dense_1/kernel.R")


@pytest.mark.parametrize("sizes", [(5, 5), (7, 30), (256, 1024)])
def test_wasserstein_matches_scipy(sizes):
  rng = np.random.default_rng(sizes[0])
  a, b = rng.normal(size=sizes[0]), rng.standard_t(3, size=sizes[1]) + 0.3
  assert diag.wasserstein1(a, b) == pytest.approx(scipy.stats.wasserstein_distance(a, b), rel=1e-12)


def test_distribution_distance():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=256), rng.normal(size=1024)
  same = diag.distribution_distance(a, b, reference=(a, a + 1.0))
  assert same["w1"] < same["w1_null_q95"] * 1.5 and same["reference"] == pytest.approx(1.0)
  shifted = diag.distribution_distance(a, b + 1.0)
  assert shifted["w1"] > 5 * shifted["w1_null_q95"] and np.isnan(shifted["relative"])
  assert diag.distribution_distance(a, a)["w1"] == 0.0


def test_chunked_reduction_of_bf16(monkeypatch):
  import ml_dtypes

  w = np.random.default_rng(0).normal(size=(33, 17)).astype(ml_dtypes.bfloat16)
  from rcjax import rc_stats

  monkeypatch.setattr(rc_stats, "_CHUNK", 40)  # several chunks (the reductions live in rcjax.rc_stats)
  box = {"w": RC(w, axes=("a", "b"), fan_in=(0,), base=(33, 17))}
  ref = w.astype(np.float64)
  np.testing.assert_allclose(diag.neuron_stats(box, "a")["w.R"], ref.mean(1), rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(diag.neuron_stats(box, "b")["w.C_rms"], np.sqrt((ref ** 2).mean(0)), rtol=1e-6)


def test_errors():
  p = mlp_params(width=8)
  p["Dense_1"]["bias"].value[[2, 5]] = [np.nan, np.inf]
  with pytest.raises(ValueError, match=r"leaf Dense_1/bias has 2 non-finite \(NaN/inf\) of its 8 values"):
    diag.rc_correlation(p, "hidden_1")
  with pytest.raises(ValueError, match="no RC leaves"):
    diag.neuron_stats({"w": np.ones(3)}, "a")
  with pytest.raises(ValueError, match="unknown statistic kinds"):
    diag.neuron_stats(mlp_params(width=8), "hidden_0", kinds=("means",))
  with pytest.raises(ValueError, match="non-empty"):
    diag.wasserstein1([], [1.0])


def attention_params(E=32, H=8, K=2, D=16, seed=0, vo=0.0):
  """One attention block in rcjax.nn.GPT's names and axes (q/k/v/o with biases, GQA: query head h reads kv
  head h // (H // K)); `vo > 0` plants a structure on the value neurons: v.C[kv, d] and o.R[h, d] both
  follow theta[kv, d], kv = h // (H // K)."""
  rng = np.random.default_rng(seed)
  theta = rng.normal(size=(K, D))
  w = {"q": rng.normal(size=(E, H, D)), "k": rng.normal(size=(E, K, D)), "v": rng.normal(size=(E, K, D)) + vo * theta,
       "o": rng.normal(size=(H, D, E)) + vo * np.repeat(theta, H // K, axis=0)[:, :, None],
       "q_bias": rng.normal(size=(H, D)), "k_bias": rng.normal(size=(K, D)), "v_bias": rng.normal(size=(K, D))}
  axes = {"q": ("embed", "heads", "head_dim"), "k": ("embed", "kv_heads", "head_dim"),
          "v": ("embed", "kv_heads", "head_dim"), "o": ("heads", "head_dim", "embed"), "q_bias": ("heads", "head_dim"),
          "k_bias": ("kv_heads", "head_dim"), "v_bias": ("kv_heads", "head_dim")}
  fan_in = {"q": (0,), "k": (0,), "v": (0,), "o": (0, 1)}
  return {f"blocks/{n}": RC(x.astype(np.float32), axes=axes[n], fan_in=fan_in.get(n, ()), base=x.shape, param="sp")
          for n, x in w.items()}


def attend(p, x_TxE):
  """Causal softmax attention of `attention_params` in numpy (the function the permutations must keep)."""
  v = {n: np.asarray(b.value, np.float64) for n, b in p.items()}
  q = np.einsum("te,ehd->thd", x_TxE, v["blocks/q"]) + v["blocks/q_bias"]
  k = np.einsum("te,ekd->tkd", x_TxE, v["blocks/k"]) + v["blocks/k_bias"]
  val = np.einsum("te,ekd->tkd", x_TxE, v["blocks/v"]) + v["blocks/v_bias"]
  g = q.shape[1] // k.shape[1]
  k, val = np.repeat(k, g, axis=1), np.repeat(val, g, axis=1)  # query head h reads kv head h // g
  s = np.einsum("thd,shd->hts", q, k) + np.triu(np.full((len(x_TxE),) * 2, -np.inf), 1)
  a = np.exp(s - s.max(-1, keepdims=True))
  a /= a.sum(-1, keepdims=True)
  return np.einsum("hts,shd,hde->te", a, val, v["blocks/o"])


def test_attention_sets_pair_q_with_k_and_v_with_o():
  p = attention_params(D=32, vo=1.0)
  assert diag.neuron_axes(p) == ["embed", diag.QK, diag.VO]
  assert diag.attention_role("self_attn.o_proj.weight", p["blocks/o"]) == "o"
  assert diag.attention_role("blocks/q", p["blocks/o"]) is None  # the name says q, the axes say o
  qk, vo = (diag.rc_correlation(p, a, kinds=("mean", "vector"), key=0) for a in (diag.QK, diag.VO))
  assert sorted(qk["names"]) == ["blocks/k.C", "blocks/k_bias", "blocks/q.C", "blocks/q_bias"]
  assert sorted(vo["names"]) == ["blocks/o.R", "blocks/v.C", "blocks/v_bias"] and qk["n"] == vo["n"] == 8 * 32
  # the planted value neurons: v (on kv heads, broadcast to their query heads) against o
  assert vo["pair"] == ("blocks/o.R", "blocks/v.C") and vo["max_abs_corr"] > 0.9 > 2 * vo["max_abs_corr_null"]
  assert qk["max_abs_corr"] < qk["max_abs_corr_null"]
  # the null of two kv statistics permutes their 2 * 32 kv values, not the 256 copies: sqrt(4) = 2x wider
  i, j, l = (qk["names"].index(n) for n in ("blocks/k.C", "blocks/k_bias", "blocks/q.C"))
  assert 1.6 < qk["null_q95"][i, j] / qk["null_q95"][i, l] < 2.5
  np.testing.assert_allclose(qk["null_q95"][i, j], 1.96 / np.sqrt(64), rtol=0.25)
  # the max over blocks sees both sets
  r = diag.max_abs_correlation(p, kinds=("mean",))
  assert r["pair"] == ("blocks/o.R", "blocks/v.C")


@pytest.mark.parametrize("K", [8, 2])
def test_attention_statistics_are_invariant_to_head_dim_symmetries(K):
  """Permuting head_dim of q and k jointly, of v and o jointly (per kv head), or the kv heads together
  with their query heads keeps the function, so it must keep every reported correlation; before the
  q·k / v·o split, corr(q.C, o.R) on ('heads', 'head_dim') changed under the first two."""
  H, D, G = 8, 16, 8 // K
  p = attention_params(H=H, K=K, D=D, seed=1, vo=0.3)
  rng = np.random.default_rng(2)
  pk, pv = ([rng.permutation(D) for _ in range(K)] for _ in range(2))  # per kv head: q·k and v·o
  groups = rng.permutation(K)

  def sym(path, box):
    name = path.split("/")[-1]
    axes = [box.axes.index("kv_heads" if "kv_heads" in box.axes else "heads"), box.axes.index("head_dim")]
    x = np.moveaxis(np.asarray(box.value), axes, [0, 1]).copy()  # (heads, head_dim, ...)
    g = 1 if "kv_heads" in box.axes else G
    perms = pk if name[0] in "qk" else pv
    for h in range(x.shape[0]):
      x[h] = x[h][perms[h // g]]
    x = x[np.concatenate([np.arange(kv * g, (kv + 1) * g) for kv in groups])]  # whole groups move together
    return box.replace(value=np.moveaxis(x, [0, 1], axes))

  perm = {path: sym(path, box) for path, box in p.items()}
  x = rng.normal(size=(5, 32))
  np.testing.assert_allclose(attend(perm, x), attend(p, x), rtol=1e-9, atol=1e-9)  # a symmetry indeed
  a, b = diag.block_stats(p, kinds=diag.KINDS), diag.block_stats(perm, kinds=diag.KINDS)
  assert set(a) == set(b) == {"embed", diag.QK, diag.VO}
  for axis in a:
    ra, rb = (diag.correlate(s[axis], seed=[0], permutations=10) for s in (a, b))
    assert ra["names"] == rb["names"]
    np.testing.assert_allclose(rb["corr"], ra["corr"], atol=1e-6, err_msg=axis)  # float32 sums


def test_unknown_attention_leaves_are_left_out():
  p = attention_params()
  p["blocks/gate_heads"] = RC(np.ones((32, 8, 16), np.float32), axes=("embed", "heads", "head_dim"), fan_in=(0,),
                              base=(32, 8, 16))
  with pytest.warns(UserWarning, match=r"left out of the attention statistics.*blocks/gate_heads"):
    s = diag.block_stats(p)
  assert "blocks/gate_heads.C" not in s[diag.QK] and "blocks/gate_heads.R" in s["embed"]
  left = []
  assert diag.block_stats(p, left_out=left).keys() == s.keys() and left == ["blocks/gate_heads"]
