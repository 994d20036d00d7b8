"""rcjax.hf_model (HF checkpoints in and out) and `python -m rcjax.grow/shrink`, checked against the numpy
reference forward pass of tests/hf_reference.py and, where installed, against transformers."""

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rcjax
from hf_reference import reference_logits, write_tiny
from rcjax import hf_grow, hf_model, hf_write, sharding
from rcjax.hf_synthetic import write_synthetic
from rcjax.rc import is_rc

pytestmark = pytest.mark.usefixtures("fast_compiles")
TOKENS = np.random.default_rng(0).integers(0, 64, (2, 9))

CASES = {  # name -> (model_type, write_tiny kwargs)
    "llama-gqa": ("llama", dict(kv_heads=2)),
    "llama-tied-bias-headdim": ("llama", dict(kv_heads=2, head_dim=16, tied=True, attention_bias=True,
                                              mlp_bias=True)),
    "llama3-rope": ("llama", dict(kv_heads=2, rope_parameters={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 512, "rope_theta": 500000.0})),
    "mistral": ("mistral", dict(kv_heads=2)),
    "mistral-window": ("mistral", dict(kv_heads=2, sliding_window=3)),
    "qwen2-bf16": ("qwen2", dict(kv_heads=2, dtype="bfloat16")),
    "gpt2": ("gpt2", dict(mlp=48)),
    "gpt2-2files": ("gpt2", dict(shards=2)),
    "neox": ("gpt_neox", dict(embed=64)),
    "neox-sequential": ("gpt_neox", dict(embed=64, use_parallel_residual=False)),
}


def _tiny(tmp_path, case, name="src"):
  model_type, kw = CASES[case]
  d = str(tmp_path / name)
  write_tiny(d, model_type, **kw)
  return d


def _logits(path, tokens=TOKENS, **kw):
  model, params = hf_model.load(path, dtype=jnp.float32, **kw)
  return np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(tokens)), np.float64)


def _assert_close(a, b, tol=1e-4):
  err = np.max(np.abs(a - b))
  assert err < tol * max(1.0, np.max(np.abs(b))), f"max |diff| {err}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_load_reproduces_reference_logits(tmp_path, case):
  d = _tiny(tmp_path, case)
  ref = reference_logits(d, TOKENS)
  assert np.max(np.abs(ref)) > 0.5  # logits are O(1): the tolerance below means something
  _assert_close(_logits(d), ref)


@pytest.mark.parametrize("case", ["llama-tied-bias-headdim", "mistral-window", "qwen2-bf16", "gpt2", "neox"])
def test_round_trip_is_bit_identical(tmp_path, case):
  from safetensors.numpy import load_file

  src = _tiny(tmp_path, case)
  model, params = hf_model.load(src)
  out = hf_model.save(model, params, tmp_path / "out", config=json.load(open(os.path.join(src, "config.json"))))
  model2, params2 = hf_model.load(out["path"])
  assert model2 == model
  same = jax.tree.map(lambda a, b: a.dtype == b.dtype and np.array_equal(np.asarray(a).view(np.uint8),
                                                                         np.asarray(b).view(np.uint8)),
                      rcjax.unbox(params), rcjax.unbox(params2))
  assert all(jax.tree.leaves(same))
  strip = lambda t: {k.removeprefix("transformer."): v for k, v in t.items()}
  orig = strip({k: v for f in glob.glob(os.path.join(src, "*.safetensors")) for k, v in load_file(f).items()})
  saved = strip(load_file(os.path.join(out["path"], "model.safetensors")))
  assert set(saved) == set(orig)
  for k in orig:
    assert saved[k].dtype == orig[k].dtype and np.array_equal(saved[k].view(np.uint8), orig[k].view(np.uint8)), k
  # consume=True (the CLI's): the same bytes, and every param array is freed once written
  again = hf_model.save(model, params, tmp_path / "again", config=json.load(open(os.path.join(src, "config.json"))),
                        consume=True)
  assert all(x.is_deleted() for x in jax.tree.leaves(rcjax.unbox(params)))
  read = lambda d: open(os.path.join(d, "model.safetensors"), "rb").read()
  assert read(again["path"]) == read(out["path"])


def test_save_splits_into_indexed_shards(tmp_path):
  src = _tiny(tmp_path, "llama-gqa")
  model, params = hf_model.load(src)
  out = hf_model.save(model, params, tmp_path / "out", max_shard_size=20_000)
  assert len(out["files"]) > 2 and os.path.isfile(os.path.join(out["path"], "model.safetensors.index.json"))
  index = json.load(open(os.path.join(out["path"], "model.safetensors.index.json")))
  assert set(index["weight_map"].values()) == set(out["files"])
  _assert_close(_logits(out["path"]), reference_logits(src, TOKENS))
  _assert_close(reference_logits(out["path"], TOKENS), reference_logits(src, TOKENS), 1e-9)


def _grow(src, dst, *flags, direction="grow", capsys=None):
  code = hf_grow.main([src, dst, *flags], direction=direction)
  out = capsys.readouterr() if capsys else None
  return code, out


GROW = {  # case -> (exact 2x flags, exact non-integer flags)
    "llama-gqa": (["--factor", "2"], ["--factor", "1.5", "--exact"]),  # embed 32 -> 48: RMSNorm stays exact
    "llama-tied-bias-headdim": (["--factor", "2"], ["--embed", "48", "--heads", "6", "--kv-heads", "3",
                                                    "--mlp", "150", "--exact"]),
    "gpt2": (["--factor", "2"], ["--mlp", "77", "--exact"]),
    "llama3-rope": (["--factor", "2"], ["--factor", "1.5", "--exact"]),
    "neox": (["--factor", "2"], ["--mlp", "300", "--exact"]),
}


@pytest.mark.parametrize("case", sorted(GROW))
@pytest.mark.parametrize("which", [0, 1], ids=["2x", "non-integer"])
def test_grown_checkpoint_computes_the_same_function(tmp_path, capsys, case, which):
  """The grown checkpoint, run by the independent numpy forward pass, gives the source's logits."""
  src = _tiny(tmp_path, case)
  dst = str(tmp_path / "dst")
  code, out = _grow(src, dst, *GROW[case][which], capsys=capsys)
  assert code == 0, out.err
  assert "max |logit difference|" in out.out and "function-preserving by construction" in out.out
  cfg_src, cfg_dst = (json.load(open(os.path.join(d, "config.json"))) for d in (src, dst))
  assert cfg_dst["model_type"] == cfg_src["model_type"] and cfg_dst != cfg_src
  _assert_close(reference_logits(dst, TOKENS), reference_logits(src, TOKENS))
  diff = float(out.out.split("max |logit difference| ")[1].split()[0])
  assert diff < 1e-4


def test_tied_sp_growth_needs_the_final_norm_correction(tmp_path):
  """Without the correction in rcjax.transfer_model, a tied SP readout would double the logits."""
  src = _tiny(tmp_path, "gpt2")
  model, params = hf_model.load(src)
  sizes = {"embed": 64, "heads": 8, "kv_heads": 8, "mlp": 96}
  naive = rcjax.transfer(params, jax.random.key(0), sizes)
  fixed = rcjax.transfer_model(model, params, jax.random.key(0), sizes)
  f = lambda p: np.asarray(model.apply({"params": p}, jnp.asarray(TOKENS)), np.float64)
  ref = reference_logits(src, TOKENS)
  _assert_close(f(fixed), ref)
  _assert_close(f(naive), 2 * ref)


def test_non_integer_embed_under_layernorm_is_reported_inexact(tmp_path, capsys):
  src = _tiny(tmp_path, "gpt2")
  code, out = _grow(src, str(tmp_path / "dst"), "--embed", "48", "--heads", "6", "--exact", capsys=capsys)
  assert code == 0
  assert "not function-preserving by construction: non-integer embed ratio 48/32 (LayerNorm" in out.out
  diff = float(out.out.split("max |logit difference| ")[1].split()[0])
  assert diff > 1e-2  # and it really is not


def test_rmsnorm_non_integer_embed_needs_the_amplitude_correction(tmp_path):
  """Without the a_j = sqrt(N'/(N c_j)) residual amplitudes, --exact growth of embed 32 -> 48 is off."""
  src = _tiny(tmp_path, "llama-gqa")
  model, params = hf_model.load(src)
  sizes = {"embed": 48}
  f = lambda p: np.asarray(model.apply({"params": p}, jnp.asarray(TOKENS)), np.float64)
  ref = reference_logits(src, TOKENS)
  _assert_close(f(rcjax.transfer_model(model, params, jax.random.key(0), sizes, exact=True)), ref)
  assert np.max(np.abs(f(rcjax.transfer(params, jax.random.key(0), sizes, exact=True)) - ref)) > 1e-2


def test_shrink_cli(tmp_path, capsys):
  src = _tiny(tmp_path, "llama-gqa")
  dst = str(tmp_path / "small")
  code, out = _grow(src, dst, "--factor", "0.5", direction="shrink", capsys=capsys)
  assert code == 0, out.err
  cfg = json.load(open(os.path.join(dst, "config.json")))
  assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"]) \
      == (16, 2, 1, 64)
  _assert_close(_logits(dst), reference_logits(dst, TOKENS))
  assert "shrinking drops neurons" in out.out
  code, out = _grow(src, str(tmp_path / "x"), "--factor", "2", direction="shrink", capsys=capsys)
  assert code == 2 and "shrink needs a factor < 1" in out.err


@pytest.mark.parametrize("flags, message", [
    (["--heads", "5"], "heads 5 is not divisible by kv_heads 2"),
    (["--heads", "0"], "at least 1"),
    (["--factor", "1.25"], "not an integer"),
    ([], "give --factor"),
])
def test_cli_bad_sizes(tmp_path, capsys, flags, message):
  src = _tiny(tmp_path, "llama-gqa")
  code, out = _grow(src, str(tmp_path / "dst"), *flags, capsys=capsys)
  assert code == 2 and message in out.err, out.err
  assert not os.path.exists(tmp_path / "dst")


def test_cli_shrink_below_one_head(tmp_path, capsys):
  src = _tiny(tmp_path, "llama-gqa")
  code, out = _grow(src, str(tmp_path / "dst"), "--heads", "0", "--kv-heads", "0", direction="shrink",
                    capsys=capsys)
  assert code == 2 and "cannot shrink below 1 head" in out.err


@pytest.mark.parametrize("flags", [["--kv-heads", "4"], ["--heads", "8", "--kv-heads", "8"]])
def test_grow_refuses_fewer_query_heads_per_kv_head(tmp_path, capsys, monkeypatch, flags):
  """4 heads on 2 kv heads -> 1 query head per kv head would drop half the query heads (integer factors of
  heads and kv_heads, yet not a growth): refused, before SRC's tensors are read."""
  src = _tiny(tmp_path, "llama-gqa")
  monkeypatch.setattr(hf_model, "load", lambda *a, **k: pytest.fail("SRC's tensors were read"))
  code, out = _grow(src, str(tmp_path / "dst"), *flags, capsys=capsys)
  assert code == 2 and "query heads per kv head from 2 to 1" in out.err, out.err
  assert not os.path.exists(tmp_path / "dst")


def test_non_integer_query_heads_per_kv_head_is_reported_inexact(tmp_path, capsys):
  """heads x3 and kv_heads x2 are integer factors, but 2 -> 3 query heads per kv head is not: inexact
  without --exact (and said so), exact with it (Mistral: a Llama config needs embed 32 a multiple of heads)."""
  src = _tiny(tmp_path, "mistral")
  code, out = _grow(src, str(tmp_path / "dst"), "--heads", "12", "--kv-heads", "4", capsys=capsys)
  assert code == 0 and "non-integer ratio of query heads per kv head 3/2 without --exact" in out.out, out.out
  assert np.max(np.abs(reference_logits(str(tmp_path / "dst"), TOKENS) - reference_logits(src, TOKENS))) > 1e-2
  code, out = _grow(src, str(tmp_path / "dst2"), "--heads", "12", "--kv-heads", "4", "--exact", capsys=capsys)
  assert code == 0 and "function-preserving by construction" in out.out and "not function" not in out.out
  _assert_close(reference_logits(str(tmp_path / "dst2"), TOKENS), reference_logits(src, TOKENS))


def test_llama_output_needs_embed_a_multiple_of_heads(tmp_path, capsys, monkeypatch):
  """transformers' LlamaConfig refuses hidden_size % num_attention_heads != 0 even with an explicit head_dim:
  the CLI refuses such sizes before reading SRC, save before writing; Mistral takes them."""
  src = _tiny(tmp_path, "llama-gqa")  # embed 32, heads 4, kv_heads 2
  real = hf_model.load
  monkeypatch.setattr(hf_model, "load", lambda *a, **k: pytest.fail("SRC's tensors were read"))
  for flags in (["--heads", "6", "--exact"], ["--embed", "34", "--exact"]):
    code, out = _grow(src, str(tmp_path / "dst"), *flags, capsys=capsys)
    assert code == 2 and "not a multiple of num_attention_heads" in out.err, out.err
    assert not os.path.exists(tmp_path / "dst")
  monkeypatch.setattr(hf_model, "load", real)
  model, params = hf_model.load(src)
  grown = rcjax.transfer_model(model, params, jax.random.key(0), {"heads": 6, "kv_heads": 3}, exact=True)
  with pytest.raises(ValueError, match="hidden_size 32 is not a multiple of num_attention_heads 6"):
    hf_model.save(model.clone(heads=6, kv_heads=3), grown, tmp_path / "out")
  assert not os.path.exists(tmp_path / "out")
  mistral = _tiny(tmp_path, "mistral", "mistral")
  code, out = _grow(mistral, str(tmp_path / "m6"), "--heads", "6", "--kv-heads", "3", "--exact", capsys=capsys)
  assert code == 0 and "function-preserving by construction" in out.out, out.err
  _assert_close(reference_logits(str(tmp_path / "m6"), TOKENS), reference_logits(mistral, TOKENS))


def test_cli_refuses_existing_destination_and_unsupported_family(tmp_path, capsys):
  src = _tiny(tmp_path, "gpt2")
  dst = tmp_path / "dst"
  dst.mkdir()
  (dst / "keep.txt").write_text("mine")
  code, out = _grow(src, str(dst), "--factor", "2", capsys=capsys)
  assert code == 2 and "exists" in out.err and (dst / "keep.txt").read_text() == "mine"
  code, out = _grow(src, str(dst), "--factor", "2", "--overwrite", capsys=capsys)  # not a checkpoint: kept
  assert code == 2 and "not a HuggingFace checkpoint" in out.err and (dst / "keep.txt").read_text() == "mine"
  other = str(tmp_path / "t5")  # BERT is supported (tests/test_bert.py): an encoder-decoder is not
  write_synthetic(other, "bert", num_blocks=1, embed=8, heads=2)
  cfg = json.load(open(os.path.join(other, "config.json")))
  json.dump({**cfg, "model_type": "t5", "architectures": ["T5Model"]}, open(os.path.join(other, "config.json"), "w"))
  code, out = _grow(other, str(tmp_path / "b2"), "--factor", "2", capsys=capsys)
  assert code == 2 and "unsupported model type 't5'" in out.err


def test_truncated_source_and_rope_scaling_fail_cleanly(tmp_path, capsys):
  src = _tiny(tmp_path, "llama-gqa")
  f = os.path.join(src, "model.safetensors")
  with open(f, "r+b") as fh:
    fh.truncate(os.path.getsize(f) - 100)
  code, out = _grow(src, str(tmp_path / "dst"), "--factor", "2", capsys=capsys)
  assert code == 2 and "truncated" in out.err and not os.path.exists(tmp_path / "dst")
  src2 = str(tmp_path / "src2")
  write_tiny(src2, "llama", rope_scaling={"rope_type": "yarn", "factor": 8.0})
  with pytest.raises(ValueError, match="not supported"):
    hf_model.load(src2)


def test_grow_copies_tokenizer_and_chat_templates(tmp_path):
  """DST keeps SRC's tokenizer files, chat templates included (transformers >= 4.47 writes them apart:
  chat_template.jinja / .json and the additional_chat_templates/ directory)."""
  src = _tiny(tmp_path, "llama-gqa")
  files = {"tokenizer_config.json": '{"eos_token": "t1"}', "chat_template.jinja": "{{ messages[0]['content'] }}",
           "chat_template.json": '{"chat_template": "{{ messages }}"}',
           "additional_chat_templates/tool_use.jinja": "{{ tools }}"}
  for name, text in files.items():
    os.makedirs(os.path.dirname(os.path.join(src, name)), exist_ok=True)
    open(os.path.join(src, name), "w").write(text)
  dst = str(tmp_path / "dst")
  assert hf_grow.main([src, dst, "--factor", "2", "--no-check"]) == 0
  assert {n: open(os.path.join(dst, n)).read() for n in files} == files


def test_crash_mid_write_leaves_nothing(tmp_path, monkeypatch):
  src = _tiny(tmp_path, "llama-gqa")
  model, params = hf_model.load(src)
  calls = []

  def boom(x):
    calls.append(1)
    if len(calls) == 5:
      raise KeyboardInterrupt
    return real(x)

  real = hf_write._chunks
  monkeypatch.setattr(hf_write, "_chunks", boom)  # save's writer (rcjax.hf_write, re-exported by hf_model)
  with pytest.raises(KeyboardInterrupt):
    hf_model.save(model, params, tmp_path / "out")
  assert os.listdir(tmp_path) == ["src"]


def test_sharded_grow_writes_shards_without_gathering(tmp_path):
  """On an 8-device mesh: load sharded, grow sharded, write shard by shard; the files equal the
  unsharded result byte for byte and no single write held a whole tensor."""
  src = _tiny(tmp_path, "llama-gqa")
  mesh = sharding.make_mesh("fsdp=4,tensor=2")
  key = jax.random.key(3)
  sizes = {"embed": 64, "mlp": 256, "heads": 8, "kv_heads": 4}
  outs = {}
  for name, m in (("single", None), ("sharded", mesh)):
    model, params = hf_model.load(src, dtype=jnp.float32, mesh=m)
    if m is not None:
      q = params["blocks"]["q"].value
      assert len({s.device for s in q.addressable_shards}) == 8 and not q.sharding.is_fully_replicated
    grown = rcjax.transfer_model(model, params, key, sizes)
    outs[name] = hf_model.save(model, grown, tmp_path / name)
  a, b = (open(os.path.join(outs[n]["path"], "model.safetensors"), "rb").read() for n in ("single", "sharded"))
  assert a == b
  largest = 64 * 256 * 4 * 2  # one (embed, mlp) float32 matrix per layer, 2 layers stacked
  assert outs["single"]["max_chunk_bytes"] >= largest
  assert outs["sharded"]["max_chunk_bytes"] <= largest // 8
  _assert_close(reference_logits(outs["sharded"]["path"], TOKENS), reference_logits(src, TOKENS))


@pytest.mark.parametrize("param", ["mup", "mf"])
def test_save_folds_parametrization_into_sp(tmp_path, param):
  model = rcjax.nn.GPT(vocab=64, width=32, depth=2, heads=4, kv_heads=2, style="llama", param=param,
                       base={"embed": 16, "mlp": 48, "heads": 2, "kv_heads": 1})
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  params = jax.tree.map(lambda b: b.replace(value=b.value * 3.0), params, is_leaf=is_rc)  # O(1) logits
  ours = np.asarray(model.apply({"params": params}, jnp.asarray(TOKENS)), np.float64)
  out = hf_model.save(model, params, tmp_path / "out")
  assert json.load(open(os.path.join(out["path"], "config.json")))["model_type"] == "llama"
  _assert_close(reference_logits(out["path"], TOKENS), ours)


def test_importing_the_cli_module_keeps_rcjax_grow_callable():
  import importlib

  importlib.import_module("rcjax.grow")
  p = {"w": rcjax.RC(jnp.ones((2, 3)), axes=("i", "h"), fan_in=(0,), base=(None, 3), param="mf")}
  assert rcjax.grow(p, jax.random.key(0), factor=2)["w"].shape == (2, 6)


@pytest.mark.parametrize("case", ["llama-tied-bias-headdim", "llama3-rope", "mistral-window", "qwen2-bf16", "gpt2",
                                  "neox"])
def test_transformers_loads_the_grown_checkpoint(tmp_path, case):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  os.environ["HF_HUB_OFFLINE"] = "1"
  src = _tiny(tmp_path, case)
  dst = str(tmp_path / "dst")
  assert hf_grow.main([src, dst, "--factor", "2", "--dtype", "float32", "--no-check"]) == 0
  hf = transformers.AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32).eval()
  with torch.no_grad():
    theirs = hf(torch.as_tensor(TOKENS)).logits.double().numpy()
  _assert_close(_logits(dst), theirs)
  _assert_close(theirs, reference_logits(src, TOKENS))


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2"])
def test_embed_multiple_of_heads_rule_matches_transformers(model_type):
  """`hf_model.HEADS_DIVIDE_HIDDEN` lists exactly the model types whose transformers config refuses
  hidden_size 32 with 6 heads of head_dim 8."""
  transformers = pytest.importorskip("transformers")
  try:
    transformers.AutoConfig.for_model(model_type, hidden_size=32, num_attention_heads=6, num_key_value_heads=3,
                                      head_dim=8, intermediate_size=64)
    refused = False
  except Exception as e:  # noqa: BLE001 - transformers 5 raises huggingface_hub's StrictDataclassClassValidationError
    assert "attention heads" in str(e), e
    refused = True
  assert refused == (model_type in hf_model.HEADS_DIVIDE_HIDDEN)


@pytest.mark.parametrize("case, width", [("llama-gqa", None), ("llama-gqa", 64), ("gpt2", 64)])
def test_train_gpt_starts_from_an_hf_checkpoint(tmp_path, case, width):
  """`train.gpt --transfer-from HF_DIR [--width W]`: the run's first params (muP, at width W) compute the
  HF model's function; the run trains and resumes."""
  from train import gpt as tg, gpt_state

  model_type, kw = CASES[case]
  src = str(tmp_path / "src")
  write_tiny(src, model_type, **{**kw, "vocab": 128})  # byte tokens of the markov language need 113
  flags = ["--transfer-from", src, "--dtype", "float32", "--steps", "4", "--log-every", "2",
           "--progress", "false", "--dataset", "markov"] + (["--width", str(width)] if width else [])
  cfg, _ = tg.parse(flags)
  assert cfg.param == "mup" and cfg.base_width == 32 and cfg.width == (width or 32)
  model = tg.build_model(cfg)
  abstract = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 8), jnp.int32))["params"], jax.random.key(0))
  params = gpt_state._from_hf(cfg, model, abstract, sharding.make_mesh(cfg.mesh), jax.random.key(1))
  assert rcjax.sizes(params)["embed"] == cfg.width
  tokens = np.random.default_rng(0).integers(0, 128, (2, 9))
  ours = np.asarray(model.apply({"params": params}, jnp.asarray(tokens)), np.float64)
  _assert_close(ours, reference_logits(src, tokens))
  if width:
    return
  out = str(tmp_path / "run")
  assert tg.main(flags + ["--out", out]) == 0
  recs = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
  assert recs[0]["event"] == "transfer" and recs[0]["from_sizes"]["width"] == 32
  assert tg.main(flags[:4] + ["--steps", "6"] + flags[6:] + ["--out", out]) == 0  # resumes at step 4
  recs = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
  assert [r["event"] for r in recs if "event" in r].count("resume") == 1
  assert all(np.isfinite(r["loss"]) for r in recs if "loss" in r)
  assert tg.main(flags + ["--heads", "2"]) == 2  # contradicts the checkpoint


@pytest.mark.parametrize("case", ["llama-gqa", "gpt2", "neox"])
def test_loads_what_transformers_saves(tmp_path, case):
  """Checkpoints written by transformers' save_pretrained (its own names and config keys, e.g. only
  rope_parameters in 5.x) load and reproduce the logits."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  os.environ["HF_HUB_OFFLINE"] = "1"
  src = _tiny(tmp_path, case)
  transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).save_pretrained(tmp_path / "saved")
  _assert_close(_logits(str(tmp_path / "saved")), reference_logits(src, TOKENS))


def test_rope_scaling_is_written_without_a_base_config(tmp_path):
  """A model saved with no source config.json writes its RoPE scaling (classic and transformers 5 keys)."""
  src = _tiny(tmp_path, "llama3-rope")
  model, params = hf_model.load(src)
  assert dict(model.rope_scaling)["rope_type"] == "llama3"
  out = hf_model.save(model, params, tmp_path / "out")
  cfg = json.load(open(os.path.join(out["path"], "config.json")))
  assert cfg["rope_parameters"]["rope_type"] == "llama3" and cfg["rope_parameters"]["rope_theta"] == 500000.0
  _assert_close(reference_logits(out["path"], TOKENS), reference_logits(src, TOKENS), 1e-9)


def test_rotary_pct_round_trips_through_int_head_dim_times_pct():
  """transformers takes int(head_dim * rotary_pct) rotary dims; r / head_dim can round down to r - 1
  (44 * (30 / 44) = 29.999...), so the written pct must give r back, for every head_dim and r."""
  for d in range(1, 257):
    for r in range(d + 1):
      assert int(d * hf_model._rotary_pct(d, r)) == r, (d, r)
      assert int(d * hf_model._rotary_pct(d, r, keep=0.7)) == r, (d, r)
  assert hf_model._rotary_pct(44, 30, keep=0.7) == 0.7 and hf_model._rotary_pct(64, 16) == 0.25


def test_partial_rotary_with_an_inexact_pct_survives_save(tmp_path):
  """GPT-NeoX, head_dim 44, rotary_pct 0.7 (30 rotary dims): the saved config keeps 0.7 and, written
  without the source's config, still gives 30 dims."""
  src = str(tmp_path / "src")
  write_tiny(src, "gpt_neox", embed=88, heads=2, mlp=64, rotary_pct=0.7)
  model, params = hf_model.load(src)
  assert model.rotary_dim == 30
  for name, base in (("kept", json.load(open(os.path.join(src, "config.json")))), ("bare", None)):
    out = hf_model.save(model, params, tmp_path / name, config=base)["path"]
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert int(44 * cfg["rotary_pct"]) == int(44 * cfg["rope_parameters"]["partial_rotary_factor"]) == 30
    _assert_close(reference_logits(out, TOKENS), reference_logits(src, TOKENS), 1e-9)
  assert cfg["rotary_pct"] != 0.7 and json.load(open(tmp_path / "kept" / "config.json"))["rotary_pct"] == 0.7


def test_neox_without_rotary_pct_rotates_a_quarter(tmp_path):
  """A GPT-NeoX config.json without rotary_pct / partial_rotary_factor: transformers (GPTNeoXConfig)
  rotates 0.25 of each head, and so must load."""
  src = _tiny(tmp_path, "neox")
  cfg = json.load(open(os.path.join(src, "config.json")))
  assert cfg.pop("rotary_pct") == 0.25 and cfg["rope_parameters"].pop("partial_rotary_factor") == 0.25
  json.dump(cfg, open(os.path.join(src, "config.json"), "w"))
  model, _ = hf_model.load(src)
  assert model.rotary_dim == 4  # head_dim 16
  _assert_close(_logits(src), reference_logits(src, TOKENS))


def test_default_output_dtype_is_the_stored_one(tmp_path):
  """A bf16 checkpoint whose config.json names no dtype is grown into bf16 (the tensors' dtype), not float32."""
  from rcjax.hf import read_header

  src = _tiny(tmp_path, "qwen2-bf16")
  cfg = json.load(open(os.path.join(src, "config.json")))
  cfg.pop("torch_dtype", None), cfg.pop("dtype", None)
  json.dump(cfg, open(os.path.join(src, "config.json"), "w"))
  dst = str(tmp_path / "dst")
  assert hf_grow.main([src, dst, "--factor", "2", "--no-check"]) == 0
  assert {t["dtype"] for t in read_header(os.path.join(dst, "model.safetensors")).values()} == {"BF16"}
  assert json.load(open(os.path.join(dst, "config.json")))["torch_dtype"] == "bfloat16"


def test_transfer_in_the_source_dtype_is_bit_identical(tmp_path, monkeypatch):
  """--transfer-dtype source holds bf16 params (half the memory); the rescaling is computed in float32 inside
  the transfer either way, so the written files equal those of the float32 transfer, at 2x and 1.5x."""
  src = _tiny(tmp_path, "qwen2-bf16")
  loaded, real = [], hf_model.load
  monkeypatch.setattr(hf_model, "load", lambda *a, **k: loaded.append(real(*a, **k)) or loaded[-1])
  for factor in ("2", "1.5"):
    monkeypatch.setenv("RCJAX_STREAM", "0")  # the whole-model path, whose loaded params can be looked at
    for name, flag in (("f32", "float32"), ("native", "source")):
      dst = str(tmp_path / f"{name}{factor}")
      assert hf_grow.main([src, dst, "--factor", factor, "--transfer-dtype", flag, "--exact", "--no-check"]) == 0
      assert loaded[-1][1]["blocks"]["q"].value.dtype == (jnp.float32 if flag == "float32" else jnp.bfloat16)
    monkeypatch.setenv("RCJAX_STREAM", "1")  # and the streaming path (rcjax.hf_stream) in the source dtype
    dst = str(tmp_path / f"stream{factor}")
    assert hf_grow.main([src, dst, "--factor", factor, "--transfer-dtype", "source", "--exact", "--no-check"]) == 0
    a, b, c = (open(tmp_path / f"{n}{factor}" / "model.safetensors", "rb").read() for n in ("f32", "native", "stream"))
    assert a == b == c
