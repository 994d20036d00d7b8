"""rcjax.nn.Bert, the bert family of rcjax.hf.load/save and `python -m rcjax.grow/shrink` on BERT
checkpoints, against transformers and the numpy forward pass of tests/hf_reference.py."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rcjax
from hf_reference import BERT_WORDS, reference_bert, write_tiny_bert
from rcjax import hf
from rcjax.cli import hf as hf_cli
from rcjax.nn.bert import mean_pool

pytestmark = pytest.mark.usefixtures("fast_compiles")
rng = np.random.default_rng(0)
TOKENS = rng.integers(0, len(BERT_WORDS), (3, 9))
MASK = np.ones((3, 9), np.int64)
MASK[1, 6:] = 0
MASK[2, 4:] = 0
TYPES = (np.arange(9)[None] >= 5).astype(np.int64).repeat(3, 0)


def _src(tmp_path, name="src", **kw):
  d = str(tmp_path / name)
  write_tiny_bert(d, **kw)
  return d


def _ours(path):
  model, params = hf.load(path, dtype=jnp.float32)
  out = jax.jit(model.apply)({"params": params}, jnp.asarray(TOKENS), jnp.asarray(MASK), jnp.asarray(TYPES))
  return model, params, {k: np.asarray(v, np.float64) for k, v in out.items()}


def _ref(path):
  return reference_bert(path, TOKENS, MASK, TYPES)


def _close(a, b, tol=1e-5):
  assert a.shape == b.shape and np.max(np.abs(a - b)) < tol * max(1.0, np.max(np.abs(b))), np.max(np.abs(a - b))


def _grow(src, dst, *flags, capsys, direction="grow"):
  code = hf_cli.main([src, dst, *flags], direction=direction)
  return code, capsys.readouterr()


def _duplicated(small, big, tol=1e-5):
  """Every column (embed neuron) of `big` is a copy of a column of `small`, and every column of `small` is copied."""
  s, b = small.reshape(-1, small.shape[-1]), big.reshape(-1, big.shape[-1])
  d = np.max(np.abs(b[:, :, None] - s[:, None, :]), axis=0)  # (E', E)
  assert np.all(d.min(1) < tol), d.min(1).max()
  assert set(d.argmin(1)) == set(range(s.shape[1]))


def _cosines(e):
  return e @ e.T


@pytest.mark.parametrize("mlm", [False, True], ids=["BertModel", "BertForMaskedLM"])
def test_load_reproduces_transformers_and_the_reference(tmp_path, mlm):
  torch = pytest.importorskip("torch")
  import transformers

  src = _src(tmp_path, mlm=mlm)
  model, _, ours = _ours(src)
  assert (model.mlm, model.pooler) == (mlm, not mlm)
  ref = _ref(src)
  torch_model = getattr(transformers, "BertForMaskedLM" if mlm else "BertModel").from_pretrained(src).eval()
  with torch.no_grad():
    o = torch_model(torch.tensor(TOKENS), attention_mask=torch.tensor(MASK), token_type_ids=torch.tensor(TYPES),
           output_hidden_states=True)
  theirs = {"last_hidden_state": o.hidden_states[-1].double().numpy()}
  theirs.update({"logits": o.logits.double().numpy()} if mlm else {"pooler_output": o.pooler_output.double().numpy()})
  assert set(ours) == set(theirs)
  for k in theirs:
    assert np.max(np.abs(theirs[k])) > 0.5  # O(1) outputs: the tolerance means something
    _close(ours[k], theirs[k])
    _close(ref[k], theirs[k])
  _close(np.asarray(mean_pool(jnp.asarray(ours["last_hidden_state"]), jnp.asarray(MASK))), ref["sentence"])


def test_round_trip_is_bit_identical_and_sharded(tmp_path):
  from safetensors.numpy import load_file

  src = _src(tmp_path, mlm=True, shards=3)
  model, params = hf.load(src)
  out = hf.save(model, params, tmp_path / "out", config=json.load(open(os.path.join(src, "config.json"))),
                      max_shard_size=20_000)
  assert len(out["files"]) > 1 and os.path.isfile(os.path.join(out["path"], "model.safetensors.index.json"))
  model2, params2 = hf.load(out["path"])
  assert model2 == model
  same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8)),
                      rcjax.unbox(params), rcjax.unbox(params2))
  assert all(jax.tree.leaves(same))
  read = lambda d: {k: v for f in sorted(os.listdir(d)) if f.endswith(".safetensors")
                    for k, v in load_file(os.path.join(d, f)).items()}
  a, b = read(src), read(out["path"])
  assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_leaf_axes_follow_the_diagnostics_table(tmp_path):
  """The blocks are converted through rcjax.hf.layout's BERT table: its axes are the model's (kv_heads aside)."""
  from rcjax.hf import Checkpoint
  from rcjax.hf.layout import TABLES

  src = _src(tmp_path)
  _, params = hf.load(src)
  leaves = {t.name: t.leaf for t in TABLES["bert"].block}
  for suffix, leaf in Checkpoint(src).load_block(0).items():
    axes = params["blocks"][leaves[suffix]].axes[1:]
    assert tuple(a.replace("kv_heads", "heads") for a in axes) == leaf.axes, suffix


@pytest.mark.parametrize("mlm", [False, True], ids=["BertModel", "BertForMaskedLM"])
def test_grow_2x_keeps_hidden_states_sentence_embeddings_and_logits(tmp_path, capsys, mlm):
  src = _src(tmp_path, mlm=mlm)
  dst = str(tmp_path / "dst")
  checked = ["--check-batch", "2", "--check-len", "8"] if mlm else ["--no-check"]  # the check compiles: once
  code, out = _grow(src, dst, "--factor", "2", *checked, capsys=capsys)
  assert code == 0, out.err
  if mlm:
    assert "function-preserving by construction" in out.out and "not function" not in out.out
    assert float(out.out.split("max |logit difference| ")[1].split()[0]) < 1e-5
  cfg = json.load(open(os.path.join(dst, "config.json")))
  assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["intermediate_size"]) == (64, 8, 128)
  a, b = _ref(src), _ref(dst)
  _duplicated(a["last_hidden_state"], b["last_hidden_state"])
  _close(_cosines(b["sentence"]), _cosines(a["sentence"]))
  if mlm:
    _close(b["logits"], a["logits"])
  else:
    _duplicated(a["pooler_output"], b["pooler_output"])


def test_non_integer_ratios(tmp_path, capsys):
  """embed at 1.5x (--factor 1.5 --exact) cannot be exact under post-LN LayerNorm and is reported so; heads
  and mlp at 1.5x with exact=True are exact (heads with a fixed head_dim: rcjax.nn.Bert, as an HF BERT
  derives head_dim = embed / heads, so there heads grow with embed)."""
  src = _src(tmp_path, mlm=True)
  code, out = _grow(src, str(tmp_path / "wide"), "--factor", "1.5", "--exact", "--check-batch", "2", "--check-len",
                    "8", capsys=capsys)
  assert code == 0, out.err
  assert "not function-preserving by construction: non-integer embed ratio 48/32" in out.out
  wide = _ref(str(tmp_path / "wide"))["logits"]
  assert wide.shape == (3, 9, len(BERT_WORDS)) and np.max(np.abs(wide - _ref(src)["logits"])) > 1e-3

  model, params = hf.load(src, dtype=jnp.float32)  # sizes are read from the params: heads 6, head_dim 8
  grown = rcjax.transfer_model(model, params, jax.random.key(2), {"heads": 6, "kv_heads": 6, "mlp": 96}, exact=True)
  run = jax.jit(lambda p: model.apply({"params": p}, jnp.asarray(TOKENS), jnp.asarray(MASK)))
  assert grown["blocks"]["q"].shape == (2, 32, 6, 8) and grown["blocks"]["up"].shape == (2, 32, 96)
  _close(np.asarray(run(grown)["logits"], np.float64), reference_bert(src, TOKENS, MASK)["logits"])


def test_shrink_writes_a_model_transformers_loads(tmp_path, capsys):
  import transformers

  src = _src(tmp_path)
  dst = str(tmp_path / "dst")
  code, out = _grow(src, dst, "--factor", "0.5", "--no-check", capsys=capsys, direction="shrink")
  assert code == 0, out.err
  m = transformers.BertModel.from_pretrained(dst)
  assert m.config.hidden_size == 16 and m.config.num_attention_heads == 2 and m.config.intermediate_size == 32
  assert _ref(dst)["last_hidden_state"].shape == (3, 9, 16)


def test_sentence_transformers_layout(tmp_path, capsys):
  src = _src(tmp_path, sentence_transformers=True)
  dst = str(tmp_path / "dst")
  code, out = _grow(src, dst, "--factor", "2", "--no-check", capsys=capsys)
  assert code == 0, out.err
  pooling = json.load(open(os.path.join(dst, "1_Pooling", "config.json")))
  assert pooling["word_embedding_dimension"] == 64
  for name in ("modules.json", "sentence_bert_config.json", "2_Normalize/config.json", "vocab.txt",
               "tokenizer_config.json"):
    assert open(os.path.join(dst, name)).read() == open(os.path.join(src, name)).read(), name
  _close(_cosines(_ref(dst)["sentence"]), _cosines(_ref(src)["sentence"]))
  st = pytest.importorskip("sentence_transformers")
  sentences = ["the cat sat on the mat", "a dog ran far away", "big red cat", "one two three four"]
  e_src, e_dst = (st.SentenceTransformer(d, device="cpu").encode(sentences) for d in (src, dst))
  assert e_src.shape == (4, 32) and e_dst.shape == (4, 64)
  np.testing.assert_allclose(e_dst @ e_dst.T, e_src @ e_src.T, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(e_dst, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("edit, flags, message", [
    ({"position_embedding_type": "relative_key"}, ["--factor", "2"], "position_embedding_type 'relative_key'"),
    ({"model_type": "roberta", "architectures": ["RobertaModel"]}, ["--factor", "2"], "RoBERTa"),
    ({"model_type": "distilbert", "architectures": ["DistilBertModel"]}, ["--factor", "2"], "DistilBERT"),
    ({"is_decoder": True}, ["--factor", "2"], "decoder"),
    ({}, ["--heads", "8"], "bert derives head_dim from embed / heads"),
    ({}, ["--kv-heads", "2", "--heads", "4"], "kv_heads"),
    ("dense", ["--factor", "2"], "module Dense"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, edit, flags, message):
  src = _src(tmp_path, sentence_transformers=edit == "dense")
  if edit == "dense":
    modules = json.load(open(os.path.join(src, "modules.json")))
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    json.dump(modules, open(os.path.join(src, "modules.json"), "w"))
  else:
    cfg = json.load(open(os.path.join(src, "config.json")))
    json.dump({**cfg, **edit}, open(os.path.join(src, "config.json"), "w"))
  code, out = _grow(src, str(tmp_path / "dst"), *flags, capsys=capsys)
  assert code == 2 and message in out.err, out.err
  assert len(out.err.strip().splitlines()) == 1 and out.err.startswith("rcjax.grow: error:")
  assert not os.path.exists(tmp_path / "dst") and not os.path.exists(str(tmp_path / "dst") + ".rcjax-tmp")


def test_mup_bert_grows_exactly_and_saves_as_its_sp_equivalent(tmp_path):
  """Parametrization-aware: the SP checkpoint relabelled muP (equal at base width), grown 2x: the tied
  decoder's 1/m_in readout multiplier keeps the logits (no norm correction). Its tied embedding then has
  different input and readout multipliers, which an HF BERT cannot hold: save refuses it, as for GPT."""
  src = _src(tmp_path, mlm=True)
  sp_model, params = hf.load(src, dtype=jnp.float32)
  model = sp_model.clone(param="mup")
  params = jax.tree.map(lambda b: b.replace(param="mup"), params, is_leaf=rcjax.is_rc)
  grown = rcjax.transfer_model(model, params, jax.random.key(0), {"embed": 64, "heads": 8, "kv_heads": 8, "mlp": 128})
  assert float(grown["mlm"]["norm_scale"].value[0]) in set(np.asarray(params["mlm"]["norm_scale"].value).tolist())
  logits = jax.jit(lambda p: model.apply({"params": p}, jnp.asarray(TOKENS), jnp.asarray(MASK), jnp.asarray(TYPES)))
  ref = _ref(src)["logits"]
  _close(np.asarray(logits(grown)["logits"], np.float64), ref)
  with pytest.raises(ValueError, match="no SP equivalent with tied embeddings"):  # as for GPT (rcjax.hf.model)
    hf.save(model.clone(width=64, heads=8, mlp=128), grown, tmp_path / "out")
  assert not os.path.exists(tmp_path / "out")
