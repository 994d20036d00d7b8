"""`python -m rcjax.grow/shrink SRC DST --depth L2` on HF checkpoints: exact depth growth (alone and with
width) loaded back by transformers gives the source's logits, config.json's layer count and per-layer
fields follow the blocks, a depth shrink keeps the chosen blocks, and bad input is one error line."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from hf_reference import reference_logits, write_tiny
from rcjax import hf
from rcjax.cli import hf as hf_cli
from rcjax.depth import depth_map

pytestmark = pytest.mark.usefixtures("fast_compiles")
TOKENS = np.random.default_rng(0).integers(0, 64, (2, 9))
CASES = {"qwen2": dict(kv_heads=2, layer_types=["full_attention"] * 2, max_window_layers=2),
         "gpt2": dict(mlp=48), "gpt_neox": dict(embed=64)}


def _config(d):
  with open(os.path.join(d, "config.json")) as f:
    return json.load(f)


@pytest.mark.parametrize("model_type,flags", [
    ("qwen2", ["--depth", "4", "--depth-mode", "stack"]),
    ("gpt2", ["--depth", "3", "--depth-mode", "interleave"]),
    ("gpt_neox", ["--depth", "3", "--depth-mode", "middle", "--factor", "2"]),  # parallel residual, wider too
], ids=["qwen2-stack", "gpt2-interleave", "neox-middle-and-width"])
def test_exact_depth_growth_loads_in_transformers_with_the_same_logits(tmp_path, capsys, model_type, flags):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  os.environ["HF_HUB_OFFLINE"] = "1"
  src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
  write_tiny(src, model_type, **CASES[model_type])
  check = [] if model_type == "gpt2" else ["--no-check"]  # (the CLI's own check of DST, once)
  assert hf_cli.main([src, dst, *flags, "--exact", "--dtype", "float32", *check]) == 0
  out = capsys.readouterr().out
  assert "layers" in out and (check or "function-preserving by construction" in out)
  L2 = int(flags[1])
  c = _config(dst)
  assert c.get("num_hidden_layers", c.get("n_layer")) == L2
  if model_type == "qwen2":
    assert c["layer_types"] == ["full_attention"] * L2 and c["max_window_layers"] == L2
  torch_model = transformers.AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32).eval()
  assert torch_model.config.num_hidden_layers == L2
  with torch.no_grad():
    theirs = torch_model(torch.as_tensor(TOKENS)).logits.double().numpy()
  ref = reference_logits(src, TOKENS)
  assert np.max(np.abs(theirs - ref)) < 1e-4 * max(1.0, np.max(np.abs(ref)))
  if model_type == "gpt2":  # without --exact: plain copies (G_stack), another function, said so
    assert hf_cli.main([src, dst, *flags, "--overwrite", "--dtype", "float32"]) == 0
    assert "without --exact (new blocks are plain copies)" in capsys.readouterr().out
    assert np.max(np.abs(reference_logits(dst, TOKENS) - ref)) > 1e-3


def test_depth_shrink_keeps_the_chosen_blocks(tmp_path, capsys):
  src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
  write_tiny(src, "llama", kv_heads=2, layers=3)
  assert hf_cli.main([src, dst, "--depth", "2", "--depth-mode", "last", "--no-check"], direction="shrink") == 0
  assert _config(dst)["num_hidden_layers"] == 2
  (_, a), (_, b) = (hf.load(d, dtype=jnp.float32) for d in (src, dst))
  for name, box in b["blocks"].items():
    np.testing.assert_array_equal(box.value, a["blocks"][name].value[depth_map(3, 2, "last")], err_msg=name)
  np.testing.assert_array_equal(b["embed"].value, a["embed"].value)


@pytest.mark.parametrize("direction,flags,message", [
    ("grow", ["--depth", "0"], "--depth must be at least 1"),
    ("grow", ["--depth", "1"], "grow would shrink the depth from 2 to 1"),
    ("grow", ["--depth", "5", "--depth-mode", "middle"], "at most 2 x 2 = 4 blocks"),
    ("grow", ["--depth", "4", "--depth-mode", "last"], "'last' is for shrinking"),
    ("grow", ["--depth-mode", "stack", "--factor", "2"], "--depth-mode needs --depth"),
    ("shrink", ["--depth", "1", "--exact"], "--exact needs the depth to grow"),
])
def test_cli_bad_depth_is_one_error_line_and_writes_nothing(tmp_path, capsys, direction, flags, message):
  src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
  write_tiny(src, "llama", kv_heads=2)
  assert hf_cli.main([src, dst, *flags], direction=direction) == 2
  err = capsys.readouterr().err
  assert message in err and err.count("\n") == 1 and err.startswith(f"rcjax.{direction}: error: "), err
  assert not os.path.exists(dst)
  # argparse (exit status 2 through rcjax._cli): an unknown mode
  assert hf_cli.main([src, dst, "--depth", "4", "--depth-mode", "zigzag"]) == 2 and not os.path.exists(dst)


def test_config_at_depth_keeps_qwen2_sliding_layers_consistent():
  c = {"num_hidden_layers": 4, "max_window_layers": 2, "use_sliding_window": True, "sliding_window": 8}
  # layers 2, 3 slide; stacked to 8: 0 1 2 3 0 1 2 3 -> the pattern is no longer a prefix
  out = hf.config_at_depth(c, depth_map(4, 8, "stack"))
  assert out["num_hidden_layers"] == 8 and out["max_window_layers"] == 2
  assert out["layer_types"] == ["full_attention"] * 2 + ["sliding_attention"] * 2 + ["full_attention"] * 2 + \
      ["sliding_attention"] * 2
  out = hf.config_at_depth(c, depth_map(4, 8, "interleave"))  # still a prefix: max_window_layers alone
  assert out["max_window_layers"] == 4 and "layer_types" not in out
  with pytest.raises(ValueError, match="layer_types has 3 entries for 4 layers"):
    hf.config_at_depth({**c, "layer_types": ["full_attention"] * 3}, [0, 1, 2, 3, 0])
