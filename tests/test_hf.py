"""rcjax.hf: tiny HF-format checkpoints written in the test, read back as RC leaves (layouts, bf16, shards, errors)."""

import json
import os

import ml_dtypes
import numpy as np
import pytest

from rcjax import diagnostics as diag
from rcjax import hf
from rcjax.hf.synthetic import write_synthetic

E, H, KV, D, M = 16, 4, 2, 4, 24  # embed, heads, kv heads (Llama family), head dim, mlp


def f64(x):
  return np.asarray(x).astype(np.float64)


def rows_of(t, slices):
  return np.concatenate([t[s] for s in slices])


# Per family: {block tensor suffix: storage shape} and reference statistics computed straight from the
# stored tensors with PyTorch (out, in) / Conv1D (in, out) layout knowledge, independent of rcjax.hf.
def references(mt, t, i):
  if mt in ("llama", "mistral", "qwen2"):
    p = f"model.layers.{i}."
    up, q, k, o = (t[p + n] for n in ("mlp.up_proj.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                      "self_attn.o_proj.weight"))
    shapes = {"mlp.up_proj.weight": (M, E), "mlp.down_proj.weight": (E, M), "self_attn.q_proj.weight": (H * D, E),
              "self_attn.k_proj.weight": (KV * D, E), "self_attn.o_proj.weight": (E, H * D)}
    stats = {("embed", "mlp.up_proj.weight.R"): f64(up).mean(0), ("mlp", "mlp.up_proj.weight.C"): f64(up).mean(1),
             (diag.QK, "self_attn.q_proj.weight.C"): f64(q).mean(1),
             (diag.QK, "self_attn.k_proj.weight.C"): f64(k).mean(1),
             (diag.VO, "self_attn.o_proj.weight.R"): f64(o).mean(0),
             ("embed", "self_attn.o_proj.weight.C"): f64(o).mean(1)}
  elif mt == "gpt2":
    p = f"h.{i}."
    fc, attn, proj = t[p + "mlp.c_fc.weight"], t[p + "attn.c_attn.weight"], t[p + "attn.c_proj.weight"]
    shapes = {"mlp.c_fc.weight": (E, M), "mlp.c_proj.weight": (M, E), "attn.c_attn.weight": (E, 3 * E),
              "attn.c_proj.weight": (E, E)}
    stats = {("embed", "mlp.c_fc.weight.R"): f64(fc).mean(1), ("mlp", "mlp.c_fc.weight.C"): f64(fc).mean(0),
             (diag.QK, "attn.c_attn.k.weight.C"): f64(attn[:, E:2 * E]).mean(0),
             ("embed", "attn.c_attn.v.weight.R"): f64(attn[:, 2 * E:]).mean(1),
             (diag.VO, "attn.c_proj.weight.R"): f64(proj).mean(1),
             (diag.QK, "attn.c_attn.q.bias"): f64(t[p + "attn.c_attn.bias"][:E])}
  elif mt == "gpt_neox":
    p = f"gpt_neox.layers.{i}."
    fc, qkv = t[p + "mlp.dense_h_to_4h.weight"], t[p + "attention.query_key_value.weight"]
    k_rows = [slice(h * 3 * D + D, h * 3 * D + 2 * D) for h in range(H)]  # rows ordered (head, [q|k|v], head_dim)
    shapes = {"mlp.dense_h_to_4h.weight": (M, E), "attention.query_key_value.weight": (3 * E, E),
              "attention.dense.weight": (E, E)}
    stats = {("embed", "mlp.dense_h_to_4h.weight.R"): f64(fc).mean(0),
             (diag.QK, "attention.query_key_value.k.weight.C"): f64(rows_of(qkv, k_rows)).mean(1),
             ("embed", "attention.query_key_value.k.weight.R"): f64(rows_of(qkv, k_rows)).mean(0),
             (diag.QK, "attention.query_key_value.k.bias"):
                 f64(rows_of(t[p + "attention.query_key_value.bias"], k_rows))}
  else:  # bert
    p = f"bert.encoder.layer.{i}."
    fc, query = t[p + "intermediate.dense.weight"], t[p + "attention.self.query.weight"]
    shapes = {"intermediate.dense.weight": (M, E), "output.dense.weight": (E, M), "attention.self.query.weight": (E, E)}
    stats = {("embed", "intermediate.dense.weight.R"): f64(fc).mean(0),
             ("mlp", "output.dense.weight.R"): f64(t[p + "output.dense.weight"]).mean(0),
             (diag.QK, "attention.self.query.weight.C"): f64(query).mean(1),
             ("embed", "output.LayerNorm.weight"): f64(t[p + "output.LayerNorm.weight"])}
  return {p + k: v for k, v in shapes.items()}, stats


@pytest.mark.parametrize("mt", ["llama", "mistral", "qwen2", "gpt2", "gpt_neox", "bert"])
def test_mapping_against_numpy(tmp_path, mt):
  t = write_synthetic(tmp_path, mt, num_blocks=2, embed=E, heads=H, kv_heads=KV, mlp=M, seed=1)
  ck = hf.Checkpoint(tmp_path)
  assert ck.num_blocks == 2 and ck.model_type == mt
  shapes, stats = references(mt, t, 1)
  for name, shape in shapes.items():
    assert t[name].shape == shape, name
  leaves = ck.load_block(1)
  for path, box in leaves.items():
    assert box.value.ndim == len(box.axes) and box.width_dims == tuple(range(len(box.axes)))
    size = {"embed": E, "mlp": M, "heads": H, "kv_heads": KV if mt != "gpt2" else H, "head_dim": D}
    assert box.shape == tuple(size[a] for a in box.axes), (path, box)
  mlp_in = [p for p, b in leaves.items() if b.axes == ("embed", "mlp")]
  assert mlp_in and all(leaves[p].fan_in == (0,) for p in mlp_in)
  for (axis, name), ref in stats.items():
    got = diag.neuron_stats(leaves, axis)
    np.testing.assert_allclose(got[name].ravel(), ref, rtol=1e-5, atol=1e-6, err_msg=name)  # attention: (heads, D)
  # Qwen2 has q/k/v biases, Llama/Mistral do not; rotary buffers and GPT-2's causal-mask buffer are skipped
  assert any(p.endswith("q_proj.bias") for p in leaves) == (mt == "qwen2")
  expected = {"gpt2": ["attn.bias"], "bert": [], "gpt_neox": ["attention.rotary_emb.inv_freq"]}
  assert ck.skipped == expected.get(mt, ["self_attn.rotary_emb.inv_freq"])


def test_bf16_sharded_and_raw_fallback(tmp_path, monkeypatch):
  t = write_synthetic(tmp_path, "llama", num_blocks=3, embed=E, heads=H, kv_heads=KV, mlp=M, dtype="bfloat16",
                         shards=3)
  index = json.load(open(tmp_path / "model.safetensors.index.json"))["weight_map"]
  assert len(set(index.values())) == 3
  name = "model.layers.2.mlp.down_proj.weight"
  assert t[name].dtype == ml_dtypes.bfloat16
  ck = hf.Checkpoint(tmp_path)
  box = ck.load_block(2)["mlp.down_proj.weight"]
  assert box.value.dtype == ml_dtypes.bfloat16 and box.axes == ("mlp", "embed")
  np.testing.assert_array_equal(np.asarray(box.value, np.float32), t[name].astype(np.float32).T)

  def no_bf16(fname):  # what older safetensors do with bf16 and framework='numpy'
    raise TypeError("data type 'bfloat16' not understood")

  monkeypatch.setattr(hf.reader, "_safe_open", no_bf16)
  raw = hf.Checkpoint(tmp_path).load_block(2)["mlp.down_proj.weight"]
  np.testing.assert_array_equal(np.asarray(raw.value, np.float32), np.asarray(box.value, np.float32))


def test_block_leaves_stream_one_tensor_at_a_time(tmp_path, monkeypatch):
  write_synthetic(tmp_path, "gpt2", num_blocks=2, embed=E, heads=H, mlp=M)
  ck = hf.Checkpoint(tmp_path)
  reads = []
  real = hf.Checkpoint.read
  monkeypatch.setattr(hf.Checkpoint, "read",
                      lambda self, name, handles=None: reads.append(name) or real(self, name, handles))
  it = ck.block_leaves(1)
  next(it)
  assert len(reads) == 1 and reads[0].startswith("h.1.")
  rest = list(it)
  assert len(reads) == 12 and len(rest) == 15  # 12 tensors (the mask buffer unread) -> 16 leaves (c_attn split)


def test_planted_structure_found_and_random_within_null(tmp_path):
  for name, planted in (("rand", 0.0), ("planted", 0.5)):
    write_synthetic(tmp_path / name, "gpt_neox", num_blocks=2, embed=64, heads=4, mlp=256, planted=planted)
    ck = hf.Checkpoint(tmp_path / name)
    sums = [diag.summarize_block(diag.block_stats(ck.load_block(i)), block=i, key=0) for i in range(2)]
    r = diag.combine_blocks(sums)
    if planted:
      assert r["max_abs_corr"] > 0.9 and r["max_abs_corr"] > 2 * r["max_abs_corr_null"], r
    else:
      assert r["max_abs_corr"] < r["max_abs_corr_null"], r


def test_reads_the_files_transformers_reads(tmp_path):
  """model.safetensors if present, else the index's shards, else every *.safetensors (shards without an
  index): a consolidated.safetensors beside model.safetensors (Mistral repos ship their original weights
  so) is read by neither reader, as transformers ignores it."""
  from safetensors.numpy import save_file

  from hf_reference import write_tiny
  d = tmp_path / "mistral"
  write_tiny(d, "mistral", kv_heads=2)
  save_file({"tok_embeddings.weight": np.zeros((64, 32), np.float32)}, str(d / "consolidated.safetensors"))
  assert hf.shard_files(str(d)) == ([str(d / "model.safetensors")], None)
  hf.load(d)
  assert hf.Checkpoint(d).num_blocks == 2
  write_tiny(tmp_path / "shards", "llama", shards=2)
  files = hf.shard_files(str(tmp_path / "shards"))[0]
  os.remove(tmp_path / "shards" / "model.safetensors.index.json")
  assert hf.shard_files(str(tmp_path / "shards")) == (files, None) and len(files) == 2
  hf.load(tmp_path / "shards")


def test_llama_attention_and_mlp_biases(tmp_path):
  """Llama's attention_bias / mlp_bias checkpoints: o_proj and gate/up/down biases are leaves, none skipped."""
  from safetensors.numpy import load_file

  from hf_reference import write_tiny

  write_tiny(tmp_path, "llama", kv_heads=2, head_dim=16, attention_bias=True, mlp_bias=True)
  ck = hf.Checkpoint(tmp_path)
  assert not any(s.endswith("bias") for s in ck.skipped), ck.skipped
  leaves, t = ck.load_block(1), load_file(str(tmp_path / "model.safetensors"))
  for s, axes in (("self_attn.o_proj", ("embed",)), ("mlp.gate_proj", ("mlp",)), ("mlp.up_proj", ("mlp",)),
                  ("mlp.down_proj", ("embed",)), ("self_attn.k_proj", ("kv_heads", "head_dim"))):
    box = leaves[f"{s}.bias"]
    assert box.axes == axes
    np.testing.assert_array_equal(np.asarray(box.value).reshape(-1), t[f"model.layers.1.{s}.bias"])


def test_errors(tmp_path):
  write_synthetic(tmp_path / "ok", "llama", num_blocks=2, embed=E, heads=H, kv_heads=KV, mlp=M, shards=2)
  cfg = json.load(open(tmp_path / "ok" / "config.json"))
  # unsupported architecture
  d = tmp_path / "t5"
  d.mkdir()
  json.dump({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]}, open(d / "config.json", "w"))
  supported = "supported model types: bert, gpt2, gpt_neox, llama, mistral, qwen2"
  with pytest.raises(ValueError, match=r"unsupported architecture.*'t5'.*" + supported):
    hf.Checkpoint(d)
  assert hf.family({"architectures": ["Qwen2ForCausalLM"]}) == "llama"
  # the index names a tensor that its shard lacks
  index = tmp_path / "ok" / "model.safetensors.index.json"
  good = json.load(open(index))
  json.dump({"weight_map": good["weight_map"] | {"model.layers.0.mlp.extra": "model-00001-of-00002.safetensors"}},
            open(index, "w"))
  with pytest.raises(ValueError, match="model.layers.0.mlp.extra listed in model.safetensors.index.json is missing"):
    hf.Checkpoint(tmp_path / "ok")
  json.dump(good, open(index, "w"))
  # a missing shard
  os.remove(tmp_path / "ok" / "model-00002-of-00002.safetensors")
  with pytest.raises(FileNotFoundError, match="missing shard model-00002-of-00002.safetensors"):
    hf.Checkpoint(tmp_path / "ok")
  # a truncated file
  write_synthetic(tmp_path / "cut", "bert", num_blocks=2, embed=E, heads=H, mlp=M)
  f = tmp_path / "cut" / "model.safetensors"
  f.write_bytes(f.read_bytes()[:-100])
  with pytest.raises(ValueError, match="truncated safetensors file .*model.safetensors"):
    hf.Checkpoint(tmp_path / "cut")
  f.write_bytes(b"\x01\x02")
  with pytest.raises(ValueError, match="truncated"):
    hf.Checkpoint(tmp_path / "cut")
  # config.json promising more blocks than stored
  write_synthetic(tmp_path / "short", "gpt2", num_blocks=2, embed=E, heads=H, mlp=M)
  cfg = json.load(open(tmp_path / "short" / "config.json"))
  json.dump(cfg | {"n_layer": 3}, open(tmp_path / "short" / "config.json", "w"))
  with pytest.raises(ValueError, match=r"no tensors for block\(s\) \[2\]"):
    hf.Checkpoint(tmp_path / "short")
  json.dump(cfg | {"n_embd": 12}, open(tmp_path / "short" / "config.json", "w"))
  with pytest.raises(ValueError, match="does not fit config.json"):
    hf.Checkpoint(tmp_path / "short").load_block(0)
  with pytest.raises(FileNotFoundError, match="no config.json"):
    hf.Checkpoint(tmp_path)


@pytest.mark.parametrize("mt,kv", [("llama", 8), ("llama", 2), ("gpt2", 8), ("gpt_neox", 8)])
def test_planted_value_output_structure_found(tmp_path, mt, kv):
  """Value neurons (kv head, d) carry a type theta: v.C[kv, d] and o.R[h, d] (h in kv's query group) follow
  it. It is found on the v·o set for Llama stored MHA (kv_heads = heads), GQA, GPT-2 and GPT-NeoX layouts;
  q·k shows nothing, and no statistic of q or k is paired with v or o."""
  from safetensors.numpy import save_file

  E, H, D = 64, 8, 8
  t = write_synthetic(tmp_path, mt, num_blocks=1, embed=E, heads=H, kv_heads=kv, mlp=96, seed=3)
  theta = np.random.default_rng(4).normal(size=(kv, D))
  per_q = np.repeat(theta, H // kv, axis=0).reshape(-1)  # query head h reads kv head h // (H // kv)
  if mt == "llama":
    t["model.layers.0.self_attn.v_proj.weight"] += theta.reshape(-1, 1)  # (out = (kv, d), in)
    t["model.layers.0.self_attn.o_proj.weight"] += per_q.reshape(1, -1)  # (out, in = (h, d))
  elif mt == "gpt2":
    t["h.0.attn.c_attn.weight"][:, 2 * E:] += theta.reshape(1, -1)  # Conv1D (in, out = [q | k | v])
    t["h.0.attn.c_proj.weight"] += theta.reshape(-1, 1)  # (in = (h, d), out)
  else:  # query_key_value rows ordered (head, [q|k|v], d)
    t["gpt_neox.layers.0.attention.query_key_value.weight"].reshape(H, 3, D, E)[:, 2] += theta[:, :, None]
    t["gpt_neox.layers.0.attention.dense.weight"] += per_q.reshape(1, -1)
  save_file(t, str(tmp_path / "model.safetensors"))
  leaves = hf.Checkpoint(tmp_path).load_block(0)
  stats = diag.block_stats(leaves, kinds=("mean", "vector"))
  r = diag.summarize_block(stats, key=0, permutations=100)
  vo, qk = r["axes"][diag.VO], r["axes"][diag.QK]
  assert r["axis"] == diag.VO and vo["max_abs_corr"] > 0.9 > 2 * diag._nanquantile(vo["null_max"], 0.99), vo
  assert sorted(diag.leaf_of(n).split(".")[-2] for n in vo["pair"]) == (
      ["c_proj", "v"] if mt == "gpt2" else ["dense", "v"] if mt == "gpt_neox" else ["o_proj", "v_proj"])
  assert qk["max_abs_corr"] < diag._nanquantile(qk["null_max"], 0.99)
  roles = {a: {diag.attention_role(diag.leaf_of(n), leaves[diag.leaf_of(n)]) for n in r["axes"][a]["names"]}
           for a in (diag.QK, diag.VO)}
  assert roles == {diag.QK: {"q", "k"}, diag.VO: {"v", "o"}}


@pytest.mark.parametrize("fam", ["llama", "gpt2", "gpt_neox", "bert"])
def test_every_tensor_of_the_layout_table_is_covered_once_by_views_of_its_parts(fam):
  """rcjax.hf.layout: for every architecture flag, each HF tensor's parts are views (no copies) of the stored
  array whose elements together are the array's, each exactly once, in leaves of the sizes the axes name."""
  from rcjax.hf import layout

  dims = dict(embed=12, heads=3, kv_heads=1 if fam == "llama" else 3, head_dim=4, mlp=20, vocab=7, layers=2,
              max_len=5, type_vocab=2)
  flags = ["qkv_bias", "o_bias", "mlp_bias", "tied", "pooler", "mlm"]
  for bits in range(2 ** len(flags)):
    a = dict(dims, **{f: bool(bits >> i & 1) for i, f in enumerate(flags)})
    names, sizes = set(), layout.dims_of(a)
    for (_, _, t), e in zip(layout.tensors(fam, a), layout.entries(fam, a), strict=True):
      assert e.name not in names
      names.add(e.name)
      x = np.arange(int(np.prod(e.shape))).reshape(e.shape)
      seen = []
      for part in e.parts:
        v = part.view(x)
        assert np.may_share_memory(v, x) and v.shape == tuple(sizes[ax] for ax in t.rows + t.cols), e.name
        seen.append(v.reshape(-1))
      assert np.array_equal(np.sort(np.concatenate(seen)), x.reshape(-1)), e.name
    if fam != "bert":
      assert ("lm_head.weight" in names or "embed_out.weight" in names) == (not a["tied"])
