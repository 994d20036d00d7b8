"""tests/hf_reference.py: tiny HF checkpoints and the float64 numpy forward pass, checked against transformers
(where importable) and on their own (determinism, causality, every config knob read)."""

import json
import os

import numpy as np
import pytest

from hf_reference import MODEL_TYPES, reference_logits, write_tiny

os.environ["HF_HUB_OFFLINE"] = "1"  # no network: everything is read from tmp_path

TOKENS = np.random.default_rng(0).integers(0, 64, size=(2, 7))

# name: (model_type, write_tiny kwargs). GPT-NeoX uses embed 64 (head_dim 16) so that its partial rotary
# (rotary_pct 0.25) rotates 4 dims at 2 frequencies, which makes rotary_emb_base matter.
# Llama 3.1's scaled RoPE; with head_dim 8 the wavelengths 6.3, 167, 4457, 118000 fall in all three bands
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 512, "rope_theta": 500000.0}
CASES = {
    "llama": ("llama", {}),
    "llama-gqa": ("llama", dict(kv_heads=2)),
    "llama-tied": ("llama", dict(tied=True)),
    "llama-bias": ("llama", dict(attention_bias=True, mlp_bias=True)),
    "llama-head_dim": ("llama", dict(head_dim=16, kv_heads=2)),
    "llama-sharded-f16": ("llama", dict(shards=3, dtype="float16")),
    "llama-rope-llama3": ("llama", dict(rope_parameters=LLAMA3_ROPE)),
    "llama-rope-llama3-classic": ("llama", dict(rope_scaling={k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"})),
    "llama-rope-linear": ("llama", dict(rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 500000.0})),
    "mistral": ("mistral", dict(kv_heads=2)),
    "mistral-window": ("mistral", dict(sliding_window=3)),
    "qwen2": ("qwen2", dict(kv_heads=2)),
    "qwen2-bf16": ("qwen2", dict(dtype="bfloat16")),
    "gpt2": ("gpt2", dict(mlp=48)),
    "gpt2-sharded": ("gpt2", dict(shards=2)),
    "gpt_neox": ("gpt_neox", dict(embed=64)),
    "gpt_neox-sequential": ("gpt_neox", dict(embed=64, use_parallel_residual=False)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_transformers(case, tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  model_type, kw = CASES[case]
  cfg = write_tiny(tmp_path, model_type, **kw)
  ref = reference_logits(tmp_path, TOKENS)
  assert ref.dtype == np.float64 and ref.shape == (2, 7, cfg["vocab_size"])
  assert 0.3 < ref.std() < 3  # O(1) logits, so 1e-4 is a tight tolerance
  for attn in ("eager", "sdpa"):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=torch.float32, attn_implementation=attn, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    model.eval()
    with torch.no_grad():
      out = model(torch.tensor(TOKENS)).logits.double().numpy()
    diff = np.abs(out - ref).max()
    print(f"{case} {attn}: max |transformers - reference| = {diff:.2e}")
    assert diff < 1e-4, (case, attn, diff)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_transformers_reads_the_classic_keys_alike(model_type, tmp_path):
  """transformers 5.x reads `rope_parameters` first; the classic keys a plain reader uses must agree with it."""
  torch = pytest.importorskip("torch")  # noqa: F841
  transformers = pytest.importorskip("transformers")
  cfg = write_tiny(tmp_path, model_type)
  hf = transformers.AutoConfig.from_pretrained(tmp_path)
  if model_type in ("llama", "mistral", "qwen2"):
    assert hf.rope_parameters["rope_theta"] == cfg["rope_theta"] and hf.rms_norm_eps == cfg["rms_norm_eps"]
  elif model_type == "gpt_neox":
    assert hf.rope_parameters["rope_theta"] == cfg["rotary_emb_base"]
    assert hf.rope_parameters["partial_rotary_factor"] == cfg["rotary_pct"]
    assert hf.layer_norm_eps == cfg["layer_norm_eps"] and hf.use_parallel_residual == cfg["use_parallel_residual"]
  else:
    assert hf.layer_norm_epsilon == cfg["layer_norm_epsilon"] and hf.tie_word_embeddings


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_deterministic_and_causal(model_type, tmp_path):
  write_tiny(tmp_path / "a", model_type, seed=1)
  write_tiny(tmp_path / "b", model_type, seed=1)
  write_tiny(tmp_path / "c", model_type, seed=2)
  ref = reference_logits(tmp_path / "a", TOKENS)
  np.testing.assert_array_equal(ref, reference_logits(tmp_path / "a", TOKENS))
  np.testing.assert_array_equal(ref, reference_logits(tmp_path / "b", TOKENS))
  assert np.abs(ref - reference_logits(tmp_path / "c", TOKENS)).max() > 0.1

  last = TOKENS.copy()
  last[:, -1] = (last[:, -1] + 1) % 64
  changed = reference_logits(tmp_path / "a", last)
  np.testing.assert_allclose(changed[:, :-1], ref[:, :-1], rtol=0, atol=1e-12)  # the past ignores the future
  assert np.abs(changed[:, -1] - ref[:, -1]).max() > 1e-3
  first = TOKENS.copy()
  first[:, 0] = (first[:, 0] + 1) % 64
  changed = reference_logits(tmp_path / "a", first)
  assert (np.abs(changed - ref).max(axis=(0, 2)) > 1e-3).all()  # and every later position sees the first


# Each config knob must move the logits well past the 1e-4 tolerance, so a reader that ignores it fails.
KNOBS = [("llama", {}, dict(rms_norm_eps=1e-6)), ("llama", {}, dict(rope_theta=10000.0)),
         ("mistral", {}, dict(sliding_window=3)), ("qwen2", {}, dict(rope_theta=10000.0)),
         ("gpt2", {}, dict(layer_norm_epsilon=1e-5)), ("gpt2", {}, dict(activation_function="gelu")),
         ("gpt_neox", dict(embed=64), dict(layer_norm_eps=1e-5)),
         ("gpt_neox", dict(embed=64), dict(rotary_emb_base=10000.0)),
         ("gpt_neox", dict(embed=64), dict(rotary_pct=0.5)),
         ("gpt_neox", dict(embed=64), dict(use_parallel_residual=False)),
         ("llama", {}, dict(rope_parameters=LLAMA3_ROPE)),
         ("llama", {}, dict(rope_parameters={**LLAMA3_ROPE, "rope_type": "linear"}))]


@pytest.mark.parametrize("model_type,kw,change", KNOBS, ids=[f"{m}-{next(iter(c))}" for m, _, c in KNOBS])
def test_config_knobs_matter(model_type, kw, change, tmp_path):
  write_tiny(tmp_path / "a", model_type, **kw)
  cfg = write_tiny(tmp_path / "b", model_type, **kw, **change)  # same seed and tensors, one key changed
  if "rope_theta" in change or "rotary_emb_base" in change:
    assert cfg["rope_parameters"]["rope_theta"] == next(iter(change.values()))
  diff = np.abs(reference_logits(tmp_path / "a", TOKENS) - reference_logits(tmp_path / "b", TOKENS)).max()
  assert diff > 5e-4, (change, diff)


def test_layouts_shards_and_dtypes(tmp_path):
  from safetensors.numpy import load_file

  write_tiny(tmp_path / "one", "gpt_neox", embed=64)
  cfg = write_tiny(tmp_path / "three", "gpt_neox", embed=64, shards=3)
  with open(tmp_path / "three" / "model.safetensors.index.json") as f:
    files = sorted(set(json.load(f)["weight_map"].values()))
  assert files == [f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)]
  assert not (tmp_path / "three" / "model.safetensors").exists()
  one, three = (reference_logits(tmp_path / d, TOKENS) for d in ("one", "three"))
  np.testing.assert_array_equal(one, three)
  t = load_file(tmp_path / "one" / "model.safetensors")
  assert t["gpt_neox.layers.0.attention.query_key_value.weight"].shape == (3 * 64, 64)  # nn.Linear: (out, in)
  assert "embed_out.weight" in t and not cfg["tie_word_embeddings"]

  write_tiny(tmp_path / "gpt2", "gpt2", mlp=48)
  t = load_file(tmp_path / "gpt2" / "model.safetensors")
  assert t["h.0.attn.c_attn.weight"].shape == (32, 96) and t["h.0.mlp.c_fc.weight"].shape == (32, 48)  # Conv1D
  assert "lm_head.weight" not in t  # tied to wte

  write_tiny(tmp_path / "bf16", "llama", dtype="bfloat16", tied=True, kv_heads=2)
  t = load_file(tmp_path / "bf16" / "model.safetensors")
  assert t["model.layers.0.self_attn.k_proj.weight"].shape == (16, 32) and "lm_head.weight" not in t
  assert all(w.dtype.name == "bfloat16" for w in t.values())
  norm = t["model.layers.0.input_layernorm.weight"].astype(np.float64)
  assert np.abs(norm - 1).max() > 0.05 and np.abs(t["model.embed_tokens.weight"].astype(np.float64)).max() > 0.1


def test_unsupported_rope_raises(tmp_path):
  write_tiny(tmp_path / "a", "llama", rope_scaling={"rope_type": "dynamic", "factor": 2.0})
  with pytest.raises(NotImplementedError):
    reference_logits(tmp_path / "a", TOKENS)
  write_tiny(tmp_path / "b", "llama", rope_parameters={"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4})
  with pytest.raises(NotImplementedError):
    reference_logits(tmp_path / "b", TOKENS)
  cfg = write_tiny(tmp_path / "c", "gpt_neox")
  cfg["rotary_pct"] = 0.5  # disagrees with rope_parameters: refuse rather than guess
  with open(tmp_path / "c" / "config.json", "w") as f:
    json.dump(cfg, f)
  with pytest.raises(ValueError, match="rotary_pct"):
    reference_logits(tmp_path / "c", TOKENS)
