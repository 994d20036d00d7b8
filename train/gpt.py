"""python -m train.gpt: GPT / Llama training on a device mesh, with growth mid-training.

    python -m train.gpt --preset tiny --steps 300 --out runs/tiny                  # CPU, ~1 min
    python -m train.gpt --preset tiny --mesh data=2,fsdp=2,tensor=2 --out runs/t8  # 8 devices
    python -m train.gpt --preset tiny --grow-at 150 --grow-to 128 --out runs/grow  # 64 -> 128 mid-run
    python -m train.gpt --preset tiny --grow-at 150 --grow-to-depth 4 --grow-exact true --out runs/deep  # 2 -> 4 blocks
    python -m train.gpt --preset tiny --width 128 --transfer-from runs/tiny --out runs/from_tiny
    python -m train.gpt --transfer-from gpt2-x2 --steps 100 --out runs/gpt2-x2   # an HF directory
    python -m train.gpt --preset gpt-small --steps 50 --log-every 10               # GPU: tokens/s, MFU
    python -m train.gpt --preset tiny --dataset markov --out runs/markov   # synthetic: an exact loss floor
    python -m train.gpt --preset tiny --dataset tiny_shakespeare --out runs/shakespeare   # TFDS, bytes
    # two hosts (or two local processes; each sees its own devices):
    python -m train.gpt --preset tiny --coordinator HOST:1234 --num-processes 2 --process-id 0 --out D
    python -m train.gpt --preset tiny --coordinator HOST:1234 --num-processes 2 --process-id 1 --out D

A run directory holds config.json, metrics.jsonl, checkpoints/ and loss.png. Restarting the same command
resumes from the last complete checkpoint, on any mesh.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import re
import sys
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from rcjax._progress import bar as progress_bar

import rcjax
from rcjax import sharding
from rcjax import _cli
from rcjax.checkpoint import Checkpointer
from rcjax.depth import GROW_MODES, depth_map
from rcjax.maps import tree_blocks
from rcjax.integrity import UnverifiedCheckpointWarning, check_writable, kill_point
from rcjax.rc import is_rc, leaves_with_paths
from train.text_data import DATASETS, TextData, default_dataset


@dataclasses.dataclass(frozen=True)
class Config:
  preset: str = "tiny"          # named defaults (PRESETS); flags override them
  style: str = "gpt2"           # gpt2 (LayerNorm, learned positions, GELU) | llama (RMSNorm, RoPE, SwiGLU) | neox
  vocab: int = 256              # vocabulary (data is bytes: ids >= 256 never occur)
  width: int = 64               # embed size N
  depth: int = 2                # blocks
  heads: int = 4                # query heads (width must be divisible by heads unless head_dim is set)
  kv_heads: int = 0             # kv heads for grouped-query attention (0: = heads)
  head_dim: int = 0             # 0: width // heads
  mlp: int = 0                  # MLP hidden size (0: 4N for gpt2, ~8N/3 for llama)
  tied: str = "auto"            # tie input and output embeddings: auto (style) | yes | no
  param: str = "mup"            # parametrization: sp | ntk | mup | mf
  init: str = "normal"          # init distribution of every weight matrix, e.g. normal:1,3
  base_width: int = 0           # width whose sizes are the muP base (0: this run's initial width, or with
                                # --transfer-from RUN_DIR the source run's base)
  seq_len: int = 64             # tokens per sequence
  batch_size: int = 16          # sequences per step (global, over all devices and processes)
  steps: int = 300              # training steps
  lr: float = 3e-3              # peak AdamW learning rate (times the parametrization's multipliers)
  warmup: int = 30              # linear warmup steps
  min_lr: float = 0.1           # cosine decay to min_lr * lr
  b1: float = 0.9               # AdamW beta1
  b2: float = 0.95              # AdamW beta2
  weight_decay: float = 0.0     # decoupled, on weight matrices only
  clip: float = 1.0             # global gradient-norm clip (0: off)
  dtype: str = "bfloat16"       # compute dtype: bfloat16 | float32; params and optimizer state stay float32
  attention: str = "auto"       # auto (cudnn on GPU when it applies, else xla) | xla | cudnn
  remat: bool = False           # rematerialise blocks in the backward pass
  unroll: int = 0               # blocks per iteration of the scan over blocks (0: all; 1: a loop, faster compiles)
  loss_chunks: int = 0          # fuse the readout into the loss over this many slices of the sequence: no
                                # (B, T, vocab) logits stored, for larger batches (0: off)
  residual_dtype: str = "float32"  # residual stream between blocks: float32 | compute (the compute dtype:
                                # less memory traffic, 42.9% vs 40.5% MFU for gpt-medium on an H100)
  fuse_projections: bool = False  # q/k/v (and SwiGLU up/gate) as one matmul each; same params (see rcjax.nn.GPT)
  mesh: str = "data=-1"         # device mesh, e.g. data=2,fsdp=2,tensor=2 (-1: the rest)
  seed: int = 0                 # init, data order and transfer keys
  dataset: str = default_dataset()  # shakespeare (offline real text, held out by play; the default where
                                # installed) | markov (synthetic, exact floor; the default otherwise) |
                                # tiny_shakespeare | lm1b (TFDS)
  markov_order: int = 2         # markov data: tokens of context
  markov_symbols: int = 16      # markov data: alphabet size
  markov_alpha: float = 0.2     # markov data: Dirichlet concentration (smaller: more predictable)
  data_dir: str = ""            # TFDS data dir ('' = TFDS default)
  out: str = ""                 # run directory ('' = nothing written)
  ckpt_every: int = 0           # checkpoint every k steps (0: only save_steps and the last step)
  save_steps: str = ""          # extra checkpoint steps, e.g. 4000,12000,20000,32000
  keep: int = 0                 # latest checkpoints kept (0: all), besides save_steps and the last step
  log_every: int = 10           # metrics.jsonl record every k steps
  eval_every: int = 0           # eval loss on eval_batches fixed batches every k steps (0: off)
  eval_batches: int = 2         # batches of each eval
  grow_at: int = 0              # grow after this step (0: never) ...
  grow_to: int = 0              # ... to this width; mlp, heads, kv_heads scale with it, head_dim fixed
  grow_to_depth: int = 0        # ... and/or to this depth (0: keep), blocks copied by grow_depth_mode
  grow_depth_mode: str = "stack"  # stack | interleave | middle (rcjax.depth); exact with --grow-exact
  random_rate: float = 0.0      # r1 of growth / transfer
  norm_rate: float = 0.0        # r2 of growth / transfer
  split_rate: float = 0.0       # growth / transfer: unequal fan-out split of copies (keeps the function)
  cancel_rate: float = 0.0      # growth / transfer: cancelling noise on copies' fan-out (docs/symmetry.md)
  grow_exact: bool = False      # count-corrected growth (exact for any ratio where the math allows)
  grow_warmup: int = 0          # after growth, re-warm the lr linearly over this many steps (0: the run's
                                # schedule continues)
  grow_opt: str = "transfer"    # AdamW state at growth: transfer (grown with the params) | reset-nu (second
                                # moments zeroed) | reset (both moments and Adam's count zeroed; lr schedule kept)
  transfer_from: str = ""       # start from another run's last checkpoint, or a HuggingFace checkpoint
                                # directory (its architecture; --width transfers it), at this width
  peak_flops: float = 0.0       # peak FLOP/s per device for MFU (0: from the device kind table)
  progress: bool = True         # tqdm progress bar


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
             "eval_every", "ckpt_every", "save_steps", "keep", "progress", "peak_flops", "attention", "preset")
# Dense bf16 peak FLOP/s per device (vendor data sheets); matched in order against jax device_kind.
# The more specific names first: "L4" is also in "L40S", "H100" in "H100 NVL".
PEAK_FLOPS = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
              ("GH200", 989e12), ("A100", 312e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12),
              ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12), ("TPU v5", 459e12),
              ("TPU v6", 918e12))


# --- model, optimizer, FLOPs --------------------------------------------------------------------

def scaled_sizes(cfg: Config, width: int) -> dict[str, int]:
  """Sizes of the width axes at `width`: embed, mlp, heads and kv_heads scale with it, head_dim is fixed.
  Raises ValueError if one of them would not be an integer."""
  sizes = build_model(cfg, base=False).arch()["sizes"]
  out = {}
  for name, n in sizes.items():
    scaled = n if name == "head_dim" else n * width / cfg.width
    if scaled != int(scaled) or scaled < 1:
      raise ValueError(f"width {width}: {name} would be {scaled:g} ({n} at width {cfg.width}); pick a width "
                       "that scales heads, kv_heads and mlp to integers")
    out[name] = int(scaled)
  return out


def hf_source(path: str) -> dict | None:
  """The config.json of `path` if it is a HuggingFace checkpoint directory (else None)."""
  from rcjax.hf import is_hf_checkpoint

  if not path or not is_hf_checkpoint(path):
    return None
  with open(os.path.join(path, "config.json")) as f:
    return json.load(f)


def hf_arch(path: str, config: dict) -> dict:
  """Config fields fixed by an HF checkpoint's architecture (flags that `--transfer-from HF_DIR` sets)."""
  from rcjax import hf_model

  m = hf_model.model_from_config(config, where=os.path.join(path, "config.json"))
  if hf_model.family_of(m) == "bert":
    raise ValueError(f"{path} is a BERT encoder: train.gpt trains decoders (grow BERTs with python -m rcjax.grow)")
  a = m.arch()
  style = {"llama": "llama", "gpt2": "gpt2", "gpt_neox": "neox"}[hf_model.family_of(m)]
  s = a["sizes"]
  return dict(style=style, vocab=m.vocab, width=s["embed"], depth=m.depth, heads=s["heads"],
              kv_heads=s["kv_heads"], head_dim=s["head_dim"], mlp=s["mlp"], tied="yes" if a["tied"] else "no")


def build_model(cfg: Config, base: bool = True) -> rcjax.nn.GPT:
  bases = scaled_sizes(cfg, cfg.base_width) if base and cfg.base_width else None
  tied = {"auto": None, "yes": True, "no": False}[cfg.tied]
  if (hf := hf_source(cfg.transfer_from)) is not None:  # the HF model's norms, RoPE, biases, ...
    from rcjax import hf_model

    m = hf_model.model_from_config(hf)
    max_len = m.max_len if m.arch()["positions"] == "learned" else cfg.seq_len
    return m.clone(width=cfg.width, depth=cfg.depth, heads=cfg.heads, kv_heads=cfg.kv_heads or None,
                   head_dim=cfg.head_dim or None, mlp=cfg.mlp or None, max_len=max_len, tied=tied,
                   param=cfg.param, kernel_init=cfg.init, base=bases, remat=cfg.remat, unroll=_unroll(cfg),
                   loss_chunks=cfg.loss_chunks, residual_dtype=_residual(cfg), dtype=jnp.dtype(cfg.dtype),
                   param_dtype=jnp.float32, attention=_attention(cfg), fuse_projections=cfg.fuse_projections)
  return rcjax.nn.GPT(vocab=cfg.vocab, width=cfg.width, depth=cfg.depth, heads=cfg.heads,
                      kv_heads=cfg.kv_heads or None, head_dim=cfg.head_dim or None, mlp=cfg.mlp or None,
                      max_len=cfg.seq_len, style=cfg.style, tied=tied, param=cfg.param, kernel_init=cfg.init,
                      base=bases, remat=cfg.remat, unroll=_unroll(cfg), loss_chunks=cfg.loss_chunks,
                      residual_dtype=_residual(cfg), dtype=jnp.dtype(cfg.dtype), attention=_attention(cfg),
                      fuse_projections=cfg.fuse_projections)


def _residual(cfg: Config):
  """The GPT's residual_dtype: None (float32, the params' dtype) or the compute dtype."""
  return None if cfg.residual_dtype == "float32" else jnp.dtype(cfg.dtype)


def _unroll(cfg: Config) -> int:
  """Fully unrolled by default: 44.0% vs 34.6% MFU for gpt-medium on an H200 (benchmarks/README.md); the
  scan's loop copies each block's params and activations in and out of the stacked arrays."""
  if cfg.unroll < 0:
    raise ValueError(f"unroll must be >= 0 (0: all blocks), got {cfg.unroll}")
  return cfg.unroll or cfg.depth


def _attention(cfg: Config) -> str | None:
  if cfg.attention != "auto":
    return None if cfg.attention == "xla" else cfg.attention
  d = cfg.head_dim or cfg.width // max(cfg.heads, 1)
  ok = jax.default_backend() == "gpu" and cfg.dtype in ("bfloat16", "float16") and d % 8 == 0 and d <= 128
  return "cudnn" if ok else None


def lr_schedule(cfg: Config):
  """The learning rate as a function of optax's update count c (0 for step 1): linear warmup, then cosine
  decay. Step s runs at the schedule's value at s, so step 1 trains (lr / warmup, or lr without warmup),
  step `warmup` is at the peak and the last step at min_lr * lr."""
  base = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, max(cfg.warmup, 1), max(cfg.steps, cfg.warmup + 1),
                                            cfg.lr * cfg.min_lr)
  if not (cfg.grow_at and cfg.grow_warmup):
    return lambda count: base(count + 1)
  # --grow-warmup: steps grow_at + 1 .. grow_at + grow_warmup run at (s - grow_at) / grow_warmup of it.
  rewarm = lambda s: jnp.clip((s - cfg.grow_at) / cfg.grow_warmup, 0.0, 1.0)
  return lambda count: base(count + 1) * jnp.where(count + 1 > cfg.grow_at, rewarm(count + 1), 1.0)


def build_optimizer(cfg: Config) -> optax.GradientTransformation:
  sched = lr_schedule(cfg)
  decay_mask = lambda p: jax.tree.map(lambda b: b.replace(value=bool(b.fan_in)), p, is_leaf=is_rc)
  adam = rcjax.adamw(sched, b1=cfg.b1, b2=cfg.b2, eps=1e-8, weight_decay=cfg.weight_decay, mask=decay_mask)
  return optax.chain(optax.clip_by_global_norm(cfg.clip), adam) if cfg.clip else adam


def flops_per_token(params: Any, seq_len: int) -> float:
  """Training FLOPs per token, 6 * (matmul params) + 12 * layers * heads * head_dim * seq_len (PaLM,
  appendix B; counts the full attention matrix and omits norms, softmax and the embedding lookup)."""
  leaves, sizes = dict(leaves_with_paths(params)), rcjax.sizes(params)
  n = sum(b.value.size for p, b in leaves.items() if b.fan_in and p not in ("['embed']", "['positions']"))
  if "['readout']" not in leaves:  # tied: the token table is also the readout matmul
    n += leaves["['embed']"].value.size
  # blocks: scanned (one q leaf with a `layers` axis) or unrolled (a q leaf per block)
  layers = sum(b.shape[b.axes.index("layers")] if "layers" in b.axes else 1
               for p, b in leaves.items() if p.endswith("['q']"))
  return 6.0 * n + 12.0 * layers * sizes["heads"] * sizes["head_dim"] * seq_len


def peak_flops(cfg: Config) -> float | None:
  if cfg.peak_flops:
    return cfg.peak_flops
  return peak_for(jax.devices()[0].device_kind)


def peak_for(kind: str) -> float | None:
  """Dense bf16 peak FLOP/s of a device kind (`PEAK_FLOPS`, the first name it contains), None if unknown."""
  return next((v for k, v in PEAK_FLOPS if k in kind), None)


class Trainer:
  """Jitted, sharded train and eval steps for one set of param shapes (rebuilt after growth)."""

  def __init__(self, model, tx, mesh, params, opt_state):
    self.p_sh, self.o_sh = sharding.shardings(params, mesh), sharding.shardings(opt_state, mesh)
    self.b_sh = sharding.batch_sharding(mesh)
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    # The model's loss: logits in the compute dtype, upcast inside the loss's reductions (no float32 copy
    # of (B, T, V)); with model.loss_chunks, fused with the readout (no (B, T, V) logits at all).
    loss_fn = lambda p, b: model.apply({"params": p}, b[:, :-1], b[:, 1:])

    def step_and_norm(p, s, b):
      loss, g = jax.value_and_grad(loss_fn)(p, b)
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s, loss, optax.tree.norm(g)

    # train: (params, opt_state, loss, gradient norm), what run() uses; step: the same without the norm
    self.train = jax.jit(step_and_norm, in_shardings=(self.p_sh, self.o_sh, self.b_sh),
                         out_shardings=(self.p_sh, self.o_sh, rep, rep), donate_argnums=(0, 1))
    self.step = jax.jit(lambda p, s, b: step_and_norm(p, s, b)[:3], in_shardings=(self.p_sh, self.o_sh, self.b_sh),
                        out_shardings=(self.p_sh, self.o_sh, rep), donate_argnums=(0, 1))
    self.loss = jax.jit(loss_fn, in_shardings=(self.p_sh, self.b_sh), out_shardings=rep)


# --- data ---------------------------------------------------------------------------------------

def global_batch(data: TextData, step: int, batch_size: int, b_sh, eval: bool = False) -> jax.Array:
  """The batch of `step` as a global array; each process builds only the rows of its own devices."""
  shape = (batch_size, data.seq_len + 1)
  cache: dict = {}

  def rows(index):
    sl = index[0]
    key = (sl.start, sl.stop)
    if key not in cache:
      cache[key] = data.batch(step, range(*sl.indices(batch_size)), eval=eval)
    return cache[key]
  return jax.make_array_from_callback(shape, b_sh, rows)


# --- run directory ------------------------------------------------------------------------------

def _check_run_dir(cfg: Config) -> None:
  path = os.path.join(cfg.out, "config.json")
  if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
    raise ValueError(f"--out {cfg.out} exists and is not a directory")
  if not os.path.exists(path):
    # A run writes config.json first (after creating checkpoints/): anything else is not ours to write into.
    other = [n for n in os.listdir(cfg.out) if n != "checkpoints" and not n.startswith(".config.json.")] \
        if os.path.isdir(cfg.out) else []
    if other:
      raise ValueError(f"--out {cfg.out} exists and is not a train.gpt run directory (no config.json; it holds "
                       f"{sorted(other)[:3]}); choose another --out")
    return
  try:
    with open(path) as f:
      old = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e}); fix or remove it") from None
  if not isinstance(old, dict):
    raise ValueError(f"{path} is not a JSON object (it holds a {type(old).__name__}); fix or remove it")
  def same(k, a, b):  # paths spelled another way (relative, ./, a trailing /) name the same folder
    return a == b or (k in ("out", "transfer_from", "data_dir") and bool(a and b) and isinstance(a, str)
                      and os.path.realpath(a) == os.path.realpath(b))

  diff = [k for k, v in dataclasses.asdict(cfg).items() if k not in RESUMABLE and not same(k, old.get(k), v)]
  if diff:
    theirs = ", ".join(f"{k}={old.get(k)!r}" for k in diff[:4])
    ours = ", ".join(f"{k}={getattr(cfg, k)!r}" for k in diff[:4])
    raise ValueError(f"{cfg.out} holds a run with another config ({theirs} vs {ours}); use a new --out")


def _check_arch(template: Any, abstract: Any, where: str, depths: tuple = ()) -> None:
  """Raise unless the checkpoint `template` has this model's leaves and fixed axes (its `layers` may
  also have a size in `depths`: a run resumed after its depth growth)."""
  saved = {p: b for p, b in leaves_with_paths(template)}
  ours = {p: b for p, b in leaves_with_paths(abstract)}
  for p in sorted(set(saved) ^ set(ours)):
    raise ValueError(f"{where} holds another architecture: leaf {p} is "
                     f"{'only in the checkpoint' if p in saved else 'missing from the checkpoint'}")
  for p, b in ours.items():
    s = saved[p]
    fixed = [(a, n, m) for a, n, m, w in zip(b.axes, s.shape, b.shape, b.base)
             if w is None and n != m and not (a == "layers" and n in depths)]
    if s.axes != b.axes or fixed:
      raise ValueError(f"{where} holds another architecture: leaf {p} has axes {s.axes} shape {s.shape}, "
                       f"this model {b.axes} shape {b.shape}")


def _check_source(template: Any, abstract: Any, cfg: Config) -> None:
  """Raise unless the run `cfg.transfer_from` (its checkpoint `template`) has this run's parametrization
  and init, and, if --base-width is given, its muP base: transfer keeps every leaf's RC metadata."""
  theirs, ours = rcjax.sizes(template).get("head_dim"), rcjax.sizes(abstract).get("head_dim")
  if theirs != ours:  # head_dim is fixed in train.gpt (growth and transfer keep it)
    hint = f"--heads {cfg.width // theirs}" if cfg.width % theirs == 0 and not cfg.head_dim else f"--head-dim {theirs}"
    raise ValueError(f"{cfg.transfer_from} has head_dim {theirs}, this run {ours} (width {cfg.width}, heads "
                     f"{cfg.heads}): train.gpt keeps head_dim fixed in a transfer; pass {hint}")
  saved = dict(leaves_with_paths(template))
  for p, b in leaves_with_paths(abstract):
    s = saved[p]
    for name, flag in (("param", "--param"), ("init", "--init")):
      if getattr(s, name) != getattr(b, name):
        raise ValueError(f"{cfg.transfer_from} was trained with {name} {getattr(s, name)!r} (leaf {p}), this "
                         f"run has {flag} {getattr(b, name)!r}: transfer keeps the source's parametrization "
                         f"and init; pass {flag} {getattr(s, name)}")
    if cfg.base_width and s.base != b.base:
      raise ValueError(f"{cfg.transfer_from} has the muP base {s.base} at leaf {p}, --base-width "
                       f"{cfg.base_width} gives {b.base}: transfer keeps the source's base; leave "
                       "--base-width out (0)")


def _changed(sizes: dict, params: Any) -> dict:
  """The entries of `sizes` that differ from the params' sizes: an axis kept at its size (head_dim) is
  left out of a transfer, so `--random-rate` draws no fresh neurons along it."""
  now = rcjax.sizes(params)
  return {k: v for k, v in sizes.items() if now[k] != v}


def load_params(run_dir: str, mesh, step: int | None = None) -> Any:
  """A run's params (latest or `step`), restored straight onto `mesh` sharded by `rcjax.sharding.RULES`."""
  ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), read_only=True)
  target = sharding.abstract(ckpt.params_template(step), mesh)
  return ckpt.restore(step, params=target)["params"]


def _resume_step(cfg: Config) -> int | None:
  """The newest checkpoint of --out that verifies (None: none saved). Every process verifies (one line
  per corrupt step, from process 0); then process 0 moves the corrupt steps after it to
  `checkpoints.corrupt/`. Raises `CorruptCheckpoint` if no step verifies."""
  own = os.path.join(cfg.out, "checkpoints") if cfg.out else None
  if not own or not os.path.isdir(own):
    return None
  main = jax.process_index() == 0
  report = (lambda message: print(f"train.gpt: {message}", file=sys.stderr)) if main else None
  ck = Checkpointer(own, read_only=True)
  good = ck.latest_good_step(report)
  sharding.sync("train.gpt:verified")
  if main:
    ck.set_aside_after(good, report)
  return good


def _preflight(cfg: Config, model) -> int | None:
  """Check the checkpoint this run would resume from (returned: its step, or None), or transfer from,
  against this architecture. Between two barriers, so every process sees the same files (orbax's
  managers synchronise processes)."""
  sharding.sync("train.gpt:preflight")
  abstract = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, cfg.seq_len), jnp.int32))["params"],
                            jax.random.key(0))
  own = os.path.join(cfg.out, "checkpoints") if cfg.out else None
  resume = _resume_step(cfg)
  if resume is not None:
    ckpt = Checkpointer(own, read_only=True)
    _check_arch(ckpt.params_template(resume), abstract, own, (cfg.grow_to_depth,))
  elif cfg.transfer_from and hf_source(cfg.transfer_from) is None:
    template = Checkpointer(os.path.join(cfg.transfer_from, "checkpoints"), read_only=True).params_template()
    _check_arch(template, abstract, cfg.transfer_from)
    _check_source(template, abstract, cfg)
  sharding.sync("train.gpt:preflight done")
  return resume


def _initial_state(cfg, model, tx, mesh, ckpt, log):
  key = jax.random.key(cfg.seed)
  x = jnp.zeros((1, cfg.seq_len), jnp.int32)
  init_fn = lambda k: model.init(k, x)["params"]
  abstract = jax.eval_shape(init_fn, key)
  latest = ckpt.latest_step() if ckpt else None
  if latest is not None:  # resume as saved (widths and RC metadata, e.g. a transferred muP base), onto this mesh
    template = ckpt.params_template(latest)
    _check_arch(template, abstract, ckpt.directory, (cfg.grow_to_depth,))
    r = ckpt.restore(latest, params=sharding.abstract(template, mesh),
                     opt_state=sharding.abstract(jax.eval_shape(tx.init, template), mesh))
    log({"event": "resume", "step": latest})
    return r["params"], r["opt_state"], latest, r["extra"].get("flops")
  if cfg.transfer_from and hf_source(cfg.transfer_from) is not None:
    params = _from_hf(cfg, model, abstract, mesh, jax.random.fold_in(key, 7))
    log({"event": "transfer", "step": 0, "from": cfg.transfer_from, "from_sizes": hf_arch(
        cfg.transfer_from, hf_source(cfg.transfer_from))})
  elif cfg.transfer_from:
    src = Checkpointer(os.path.join(cfg.transfer_from, "checkpoints"), read_only=True)
    template = src.params_template()
    _check_arch(template, abstract, cfg.transfer_from)
    params = src.restore(params=sharding.abstract(template, mesh))["params"]
    target = _changed(rcjax.width_axes(abstract), params)
    params = rcjax.nn.gpt.transfer(model, params, jax.random.fold_in(key, 7), target,
                                   random_rate=cfg.random_rate, norm_rate=cfg.norm_rate,
                                   split_rate=cfg.split_rate, cancel_rate=cfg.cancel_rate,
                                   exact=cfg.grow_exact and all(
                                       n >= rcjax.sizes(params)[k] for k, n in target.items()))
    params = jax.device_put(params, sharding.shardings(params, mesh))
    log({"event": "transfer", "step": 0, "from": cfg.transfer_from, "from_sizes": rcjax.width_axes(template),
         "sizes": rcjax.width_axes(params)})
  else:
    params = sharding.init(init_fn, key, mesh=mesh)
  opt_state = jax.jit(tx.init, out_shardings=sharding.shardings(jax.eval_shape(tx.init, params), mesh))(params)
  return params, opt_state, 0, 0.0


def _from_hf(cfg: Config, model, abstract, mesh, key) -> Any:
  """An HF checkpoint's params (standard parametrization, read sharded) in this run's parametrization
  and at this run's sizes: values divided by this model's multipliers (at the HF sizes, the muP base), so
  the function is unchanged, then `rcjax.nn.gpt.transfer` to this run's width."""
  from rcjax import hf_model

  _, sp = hf_model.load(cfg.transfer_from, dtype=jnp.float32, mesh=mesh)
  template = jax.tree.map(lambda t, v: t.replace(value=v.value), abstract, sp, is_leaf=is_rc)
  _, factors = hf_model.as_sp(model, template)
  params = jax.tree_util.tree_map_with_path(
      lambda kp, b: b.replace(value=b.value / factors.get(tuple(k.key for k in kp), 1.0)), template, is_leaf=is_rc)
  target = _changed(rcjax.width_axes(abstract), params)
  if target:
    params = rcjax.nn.gpt.transfer(model, params, key, target, random_rate=cfg.random_rate,
                                   norm_rate=cfg.norm_rate, exact=cfg.grow_exact, split_rate=cfg.split_rate,
                                   cancel_rate=cfg.cancel_rate)
  return jax.device_put(params, sharding.shardings(params, mesh))


# --- the run ------------------------------------------------------------------------------------

def validate(cfg: Config) -> None:
  """Raise ValueError for bad config (before anything is written)."""
  if cfg.dtype == "float16":
    raise ValueError("dtype float16 would need loss scaling, which train.gpt does not do (gradients of the mean "
                     "loss underflow in float16): use bfloat16 or float32")
  for name, value, choices in (("style", cfg.style, ("gpt2", "llama", "neox")), ("param", cfg.param, rcjax.rc.PARAMS),
                               ("dataset", cfg.dataset, DATASETS), ("tied", cfg.tied, ("auto", "yes", "no")),
                               ("attention", cfg.attention, ("auto", "xla", "cudnn")),
                               ("dtype", cfg.dtype, ("bfloat16", "float32")),
                               ("residual_dtype", cfg.residual_dtype, ("float32", "compute")),
                               ("grow_opt", cfg.grow_opt, ("transfer", "reset-nu", "reset"))):
    if value not in choices:
      raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
  rcjax.parametrization.parse_init(cfg.init)
  for name in ("width", "depth", "heads", "seq_len", "batch_size", "steps", "vocab", "log_every"):
    if getattr(cfg, name) <= 0:
      raise ValueError(f"{name} must be positive, got {getattr(cfg, name)}")
  for name in ("kv_heads", "head_dim", "mlp", "base_width", "grow_at", "grow_to", "grow_to_depth", "ckpt_every", "keep",
               "eval_every", "warmup", "markov_order", "grow_warmup"):
    if getattr(cfg, name) < 0:
      raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")
  for name in ("lr", "min_lr", "clip", "weight_decay", "norm_rate", "split_rate", "cancel_rate", "b1", "b2"):
    if not math.isfinite(getattr(cfg, name)):
      raise ValueError(f"{name} must be a finite number, got {getattr(cfg, name)}")
  for name, lo, hi in (("random_rate", 0, 1), ("norm_rate", 0, math.inf), ("split_rate", 0, math.inf),
                       ("cancel_rate", 0, math.inf), ("lr", 0, math.inf),
                       ("min_lr", 0, math.inf), ("clip", 0, math.inf), ("weight_decay", 0, math.inf)):
    if not lo <= getattr(cfg, name) <= hi:
      raise ValueError(f"{name} must be in [{lo}, {hi}], got {getattr(cfg, name)}")
  if not 0 <= cfg.loss_chunks <= cfg.seq_len:
    raise ValueError(f"loss_chunks must be in [0, seq_len {cfg.seq_len}] (0: off), got {cfg.loss_chunks}")
  if cfg.grow_at > cfg.steps:
    raise ValueError(f"grow_at {cfg.grow_at} is after the last step ({cfg.steps}): the run would never grow")
  if cfg.eval_every and cfg.eval_batches <= 0:
    raise ValueError(f"eval_batches must be positive with eval_every, got {cfg.eval_batches}")
  from train.text_data import ALPHABET
  if cfg.dataset == "markov" and not (1 <= cfg.markov_symbols <= len(ALPHABET) and cfg.markov_alpha > 0):
    raise ValueError(f"markov_symbols must be in [1, {len(ALPHABET)}] and markov_alpha positive, got "
                     f"{cfg.markov_symbols} and {cfg.markov_alpha}")
  build_model(cfg).arch()
  mesh = sharding.parse_mesh(cfg.mesh)
  shards = mesh["data"] * mesh["fsdp"]
  if cfg.batch_size % shards:
    raise ValueError(f"batch_size {cfg.batch_size} must be divisible by data*fsdp = {shards} "
                     f"of mesh {cfg.mesh}")
  if cfg.base_width:
    scaled_sizes(cfg, cfg.base_width)
  if cfg.grow_at:
    if not cfg.grow_to and not cfg.grow_to_depth:
      raise ValueError("grow_at needs grow_to (a width) or grow_to_depth (a depth), or both")
    if cfg.grow_to and cfg.grow_to <= cfg.width:
      raise ValueError(f"grow_to must exceed width {cfg.width}, got {cfg.grow_to}")
    if cfg.grow_to:
      scaled_sizes(cfg, cfg.grow_to)
  if cfg.grow_to_depth:
    if not cfg.grow_at:
      raise ValueError("grow_to_depth needs grow_at (the step to grow after)")
    if cfg.grow_to_depth <= cfg.depth:
      raise ValueError(f"grow_to_depth must exceed depth {cfg.depth}, got {cfg.grow_to_depth}")
    if cfg.grow_depth_mode not in GROW_MODES:
      raise ValueError(f"grow_depth_mode must be one of {GROW_MODES}, got {cfg.grow_depth_mode!r}")
    depth_map(cfg.depth, cfg.grow_to_depth, cfg.grow_depth_mode)
  if cfg.transfer_from and not os.path.isdir(os.path.join(cfg.transfer_from, "checkpoints")) \
      and hf_source(cfg.transfer_from) is None:
    raise ValueError(f"--transfer-from {cfg.transfer_from}: neither a run (no checkpoints/ folder) nor a "
                     "HuggingFace checkpoint (config.json + safetensors)")
  need = max(ALPHABET[:cfg.markov_symbols]) + 1 if cfg.dataset == "markov" else 256  # tokens are bytes
  if cfg.vocab < need:
    raise ValueError(f"vocab {cfg.vocab} is too small for dataset {cfg.dataset!r}, whose byte tokens need "
                     f"{need}")
  for s in filter(None, cfg.save_steps.split(",")):
    if not s.strip().isdigit():
      raise ValueError(f"save_steps must be comma-separated step numbers, got {cfg.save_steps!r}")


def _save_steps(cfg: Config) -> set[int]:
  """The steps saved whatever --ckpt-every says, and kept whatever --keep says: --save-steps and the last."""
  return {int(s) for s in filter(None, cfg.save_steps.split(","))} | {cfg.steps}


def run(cfg: Config) -> dict:
  """Train; returns a summary (final loss, loss floor, tokens/s, MFU, sizes)."""
  # Processes with other flags would mix two runs or wait in collectives that never match: refuse first.
  flags = {k: os.path.abspath(v) if k in ("out", "transfer_from") and v else v
           for k, v in dataclasses.asdict(cfg).items() if k not in ("progress", "data_dir")}
  sharding.check_same_on_every_process(flags, "train.gpt flags")
  validate(cfg)
  main = jax.process_index() == 0
  if cfg.out:
    _check_run_dir(cfg)
    check_writable(cfg.out)
  mesh = sharding.make_mesh(cfg.mesh)
  data = TextData(cfg.dataset, cfg.seq_len, cfg.seed, data_dir=cfg.data_dir or None,
                  markov=dict(order=cfg.markov_order, symbols=cfg.markov_symbols, alpha=cfg.markov_alpha))
  model, tx = build_model(cfg), build_optimizer(cfg)
  resume = _preflight(cfg, model)  # verifies checkpoints, reads metadata: a bad source fails before writing
  ckpt = Checkpointer(os.path.join(cfg.out, "checkpoints"), max_to_keep=cfg.keep or None,
                      keep_steps=_save_steps(cfg)) if cfg.out else None
  if ckpt and (done := _finished(cfg, ckpt)) is not None:
    return done
  metrics_file = None
  if cfg.out and main:
    os.makedirs(cfg.out, exist_ok=True)
    tmp = os.path.join(cfg.out, f".config.json.{os.getpid()}")
    with open(tmp, "w") as f:
      json.dump(dataclasses.asdict(cfg), f, indent=1)
    os.replace(tmp, os.path.join(cfg.out, "config.json"))  # atomic: other processes read it
    metrics_file = _open_metrics(os.path.join(cfg.out, "metrics.jsonl"), resume)

  def log(rec):
    if metrics_file:
      metrics_file.write(_cli.json_line(rec) + "\n")  # strict JSON: NaN/inf as null
      metrics_file.flush()

  params, opt_state, start, flops_done = _initial_state(cfg, model, tx, mesh, ckpt, log)
  model = _at_depth(model, cfg, params)  # a run resumed after a depth growth
  spread_maps = _spread_maps(cfg, params, start)  # copy_spread is logged after a growth / transfer
  trainer = Trainer(model, tx, mesh, params, opt_state)
  save_steps = _save_steps(cfg)
  peak, n_dev = peak_flops(cfg), jax.device_count()
  fpt = flops_per_token(params, cfg.seq_len)
  tokens_per_step = cfg.batch_size * cfg.seq_len
  eval_batches = [global_batch(data, i, cfg.batch_size, trainer.b_sh, eval=True)
                  for i in range(cfg.eval_batches if cfg.eval_every else 0)]
  bar = progress_bar(total=cfg.steps, initial=start, disable=not (main and cfg.progress), desc="train.gpt")
  speeds, t_last, steps_since, paused, loss = [], None, 0, 0.0, None
  # 4 * (the first step with a non-finite loss or gradient norm) + which: on the mesh, like the loss
  bad = jax.device_put(jnp.zeros((), jnp.int32), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  if flops_done is None:  # a checkpoint written before the FLOPs were saved with it
    flops_done = start * tokens_per_step * fpt
  for step in range(start + 1, cfg.steps + 1):
    batch = global_batch(data, step, cfg.batch_size, trainer.b_sh)
    if t_last is None and model.attention == "cudnn" and cfg.attention == "auto":
      try:  # compile ahead of the first call: a rejected shape fails here, before params are donated
        trainer.train.lower(params, opt_state, batch).compile()
      except Exception as e:  # noqa: BLE001 - cuDNN attention may reject a shape: use XLA's
        print(f"train.gpt: cuDNN attention did not compile ({type(e).__name__}: {str(e)[:200]}); using XLA "
              "attention", file=sys.stderr)
        model = model.clone(attention=None)
        trainer = Trainer(model, tx, mesh, params, opt_state)
    params, opt_state, loss, gnorm = trainer.train(params, opt_state, batch)
    bad = _first_bad(bad, step, loss, gnorm)  # on the device: no sync per step
    kill_point("train", step)
    flops_done += tokens_per_step * fpt
    steps_since += 1
    bar.update(1)
    if t_last is None:  # the first step compiles: time from its end
      loss.block_until_ready()
      t_last, steps_since, paused = time.perf_counter(), 0, 0.0
    if step % cfg.log_every == 0 or step == cfg.steps:
      _stop_if_diverged(bad, ckpt, cfg)
      loss_v = float(loss)
      now = time.perf_counter()
      rec = {"step": step, "loss": loss_v, "tokens": step * tokens_per_step, "flops": flops_done,
             "width": rcjax.sizes(params)["embed"]}
      if steps_since:  # time spent in steps only (evals and checkpoint saves are paused out)
        tps = steps_since * tokens_per_step / (now - t_last - paused)
        rec.update(tokens_per_s=tps, mfu=(tps * fpt / (peak * n_dev)) if peak else None)
        speeds.append(rec)
      t_last, steps_since, paused = now, 0, 0.0
      if spread_maps:
        rec["copy_spread"] = rcjax.copy_spread(params, spread_maps)
      log(rec)
      bar.set_postfix(loss=f"{loss_v:.3f}")
    if cfg.grow_at and step == cfg.grow_at and _growth_sizes(cfg, params):
      params, opt_state, trainer, rec, model = _grow(cfg, params, opt_state, model, tx, mesh, data, step)
      spread_maps = _spread_maps(cfg, params, step)
      fpt = flops_per_token(params, cfg.seq_len)
      log(rec)  # (before saving: the checkpoint of this step holds the grown state)
      t_last = None
    do_eval = cfg.eval_every and step % cfg.eval_every == 0
    do_save = ckpt and (step in save_steps or (cfg.ckpt_every and step % cfg.ckpt_every == 0))
    if do_eval or do_save:
      _stop_if_diverged(bad, ckpt, cfg)  # never save a non-finite state
      loss.block_until_ready()
      t0 = time.perf_counter()
      if do_eval:
        log({"step": step, "eval_loss": float(np.mean([float(trainer.loss(params, b)) for b in eval_batches]))})
      if do_save:
        ckpt.save(step, params=params, opt_state=opt_state, config=dataclasses.asdict(cfg),
                  extra={"tokens": step * tokens_per_step, "sizes": rcjax.sizes(params), "flops": flops_done})
      paused += time.perf_counter() - t0
  bar.close()
  _stop_if_diverged(bad, ckpt, cfg)
  if ckpt:
    ckpt.wait()
    ckpt.close()
  summary = {"steps": cfg.steps, "loss": None if loss is None else float(loss), "loss_floor": data.loss_floor(),
             "sizes": rcjax.sizes(params), "flops_per_token": fpt, "device": jax.devices()[0].device_kind,
             "devices": n_dev, "peak_flops_per_device": peak}
  if speeds:
    tail = speeds[len(speeds) // 2:] or speeds  # steady state: the second half of the intervals
    summary["tokens_per_s"] = float(np.mean([r["tokens_per_s"] for r in tail]))
    summary["mfu"] = (summary["tokens_per_s"] * fpt / (peak * n_dev)) if peak else None
  if metrics_file:
    log({"event": "end", **summary})
    metrics_file.close()
    _plot(cfg.out, data.loss_floor())
  return summary


class TrainingDiverged(_cli.RuntimeFailure):
  """The loss or the gradient norm became NaN or infinite (the last good checkpoint is kept)."""


@jax.jit
def _first_bad(bad, step, loss, gnorm):
  """`bad` if already set, else 4 * step + (1: loss, 2: gradient norm, 3: both) when one is not finite."""
  which = jnp.where(jnp.isfinite(loss), 0, 1) + jnp.where(jnp.isfinite(gnorm), 0, 2)
  return jnp.where((bad == 0) & (which > 0), 4 * step + which, bad).astype(jnp.int32)


def _stop_if_diverged(bad, ckpt: Checkpointer | None, cfg: Config) -> None:
  """Raise `TrainingDiverged` naming the first non-finite step, after the pending save is written."""
  b = int(bad)
  if not b:
    return
  step, which = divmod(b, 4)
  what = {1: "the loss", 2: "the gradient norm", 3: "the loss and the gradient norm"}[which]
  last = None
  if ckpt:
    ckpt.wait()
    last = ckpt.latest_step()
  kept = (f"the last good checkpoint is step {last} in {ckpt.directory}" if last is not None else
          "no checkpoint had been saved yet")
  raise TrainingDiverged(f"{what} became non-finite at step {step}; stopped without saving it ({kept}); try a "
                         f"smaller --lr (now {cfg.lr}) or --clip, with another --out")


def _finished(cfg: Config, ckpt: Checkpointer) -> dict | None:
  """For a run directory that already holds step `cfg.steps`: its summary (the `end` record of
  metrics.jsonl, or the step alone), and nothing is written; None if there is training left to do."""
  latest = ckpt.latest_step()
  if latest is None or latest < cfg.steps:
    return None
  ckpt.close()
  if latest > cfg.steps:
    raise ValueError(f"{cfg.out} holds step {latest}, past --steps {cfg.steps}; use a new --out (or more steps)")
  path = os.path.join(cfg.out, "metrics.jsonl")
  ends = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          rec = json.loads(line)
        except ValueError:  # a partial last line of a killed run
          continue
        if rec.get("event") == "end":
          ends.append(rec)
  summary = {k: v for k, v in ends[-1].items() if k != "event"} if ends else {"steps": latest, "loss": None}
  return {**summary, "finished_before": True}


def _growth_sizes(cfg, params) -> dict:
  """The sizes a growth at `grow_at` changes (empty: the params have them already, e.g. on resume): the
  width axes of `grow_to` and the depth `grow_to_depth` (`layers`)."""
  sizes = _changed(scaled_sizes(cfg, cfg.grow_to), params) if cfg.grow_to else {}
  if cfg.grow_to_depth and rcjax.sizes(params)["layers"] != cfg.grow_to_depth:
    sizes["layers"] = cfg.grow_to_depth
  return sizes


def _at_depth(model, cfg, params):
  """`model` with the depth of `params` (scanned blocks: the size of their `layers` axis)."""
  depth = rcjax.sizes(params).get("layers", model.depth)
  return model if depth == model.depth else model.clone(depth=depth, unroll=cfg.unroll or depth)


def _grow(cfg, params, opt_state, model, tx, mesh, data, step):
  """Grow params and AdamW state to `grow_to` / `grow_to_depth`; returns them, a new Trainer, a metrics
  record with the loss on one fixed batch right before and right after growth, and the model (at the new
  depth)."""
  trainer = Trainer(model, tx, mesh, params, opt_state)
  fixed = global_batch(data, 0, cfg.batch_size, trainer.b_sh, eval=True)
  before = float(trainer.loss(params, fixed))
  sizes = _growth_sizes(cfg, params)
  # rcjax.nn.gpt.transfer: the leaf-wise rules plus the GPT's own (a tied readout in SP, RMSNorm at
  # non-integer ratios with exact=True; new blocks as identities), so the function is kept wherever the
  # math allows.
  params, opt_state = rcjax.nn.gpt.transfer(model, params, jax.random.fold_in(jax.random.key(cfg.seed), step),
                                            sizes, opt_state=opt_state, random_rate=cfg.random_rate,
                                            norm_rate=cfg.norm_rate, exact=cfg.grow_exact,
                                            depth_mode=cfg.grow_depth_mode if "layers" in sizes else None,
                                            split_rate=cfg.split_rate, cancel_rate=cfg.cancel_rate)
  # grow keeps each leaf's mesh axes; put any leaf the rules shard differently at the new sizes on its rule.
  params = jax.device_put(params, sharding.shardings(params, mesh))
  opt_state = jax.device_put(reset_adam(opt_state, cfg.grow_opt), sharding.shardings(opt_state, mesh))
  model = _at_depth(model, cfg, params)
  trainer = Trainer(model, tx, mesh, params, opt_state)
  after = float(trainer.loss(params, fixed))
  return params, opt_state, trainer, {"event": "grow", "step": step, "loss_before": before, "loss_after": after,
                                      "sizes": rcjax.sizes(params)}, model


def _spread_maps(cfg: Config, params, step: int) -> dict | None:
  """The index maps of the growth (`--grow-at`, done by `step`) or transfer (`--transfer-from` a run
  directory) that made `params`, as `_grow` / `_initial_state` drew them (for `rcjax.copy_spread`);
  None without one, or if the source was an HF checkpoint."""
  key, blocks = jax.random.key(cfg.seed), tree_blocks(params)
  if cfg.grow_at and step >= cfg.grow_at and cfg.grow_to:  # (a depth growth alone copies no neuron)
    return rcjax.index_maps(jax.random.fold_in(key, cfg.grow_at), scaled_sizes(cfg, cfg.width),
                            scaled_sizes(cfg, cfg.grow_to), blocks=blocks)
  if cfg.transfer_from and hf_source(cfg.transfer_from) is None:
    old = rcjax.width_axes(Checkpointer(os.path.join(cfg.transfer_from, "checkpoints"),
                                        read_only=True).params_template())
    new = rcjax.width_axes(params)
    if all(new[k] >= n for k, n in old.items()):
      return rcjax.index_maps(jax.random.fold_in(key, 7), old, new, blocks=blocks)
  return None


def reset_adam(opt_state: Any, how: str) -> Any:
  """The optimizer state with Adam's moments reset (`--grow-opt`): `transfer` keeps it, `reset-nu` zeroes
  the second moments, `reset` both moments and Adam's bias-correction count (the lr schedule's count stays)."""
  if how == "transfer":
    return opt_state
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  zero = lambda t: jax.tree.map(jnp.zeros_like, t)

  def reset(x):
    if not is_adam(x):
      return x
    if how == "reset-nu":
      return x._replace(nu=zero(x.nu))
    return x._replace(count=jnp.zeros_like(x.count), mu=zero(x.mu), nu=zero(x.nu))
  return jax.tree.map(reset, opt_state, is_leaf=is_adam)


def _open_metrics(path: str, resume: int | None):
  """Open metrics.jsonl for appending, keeping only the records up to step `resume` (the checkpoint this
  run resumes from; None: a fresh start keeps none): a killed run's records after its last checkpoint,
  and a partial last line, are dropped, so no step is logged twice."""
  if os.path.exists(path):
    keep = []
    with open(path) as f:
      for line in f:
        try:
          rec = json.loads(line)
        except ValueError:  # a partial last line of a killed run
          continue
        at = rec.get("step", rec.get("steps")) if isinstance(rec, dict) else None
        if resume is not None and isinstance(at, int) and at <= resume:
          keep.append(line if line.endswith("\n") else line + "\n")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(keep)
    os.replace(tmp, path)
  return open(path, "a")


def _plot(out: str, floor: float | None) -> None:
  try:
    from rcjax import plots
    with open(os.path.join(out, "metrics.jsonl")) as f:
      recs = [json.loads(l) for l in f if l.strip()]
    plots.save(plots.lm_loss_curve(recs, floor=floor), os.path.join(out, "loss.png"))
  except Exception as e:  # noqa: BLE001 - a plot must never fail a run
    print(f"train.gpt: could not draw loss.png ({e})", file=sys.stderr)


# --- command line -------------------------------------------------------------------------------

def _bool(s: str) -> bool:
  if s.lower() in ("1", "true", "yes", "on"):
    return True
  if s.lower() in ("0", "false", "no", "off"):
    return False
  raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def _field_help() -> dict[str, str]:
  """Config's field comments (continuation lines joined): the --help of each flag."""
  out, name = {}, None
  for line in inspect.getsource(Config).splitlines()[1:]:
    field = re.match(r"\s+(\w+): [\w\[\], |]+ = [^#]*?(?:#\s*(.*))?$", line)
    more = re.match(r"\s+#\s*(.*)$", line)
    if field:
      name = field.group(1)
      out[name] = field.group(2) or ""
    elif more and name:
      out[name] += " " + more.group(1)
  return out


def parse(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
  """Flags -> (Config, launch flags). Preset values are defaults; explicit flags win."""
  ap = argparse.ArgumentParser(prog="python -m train.gpt", description=__doc__.split("\n")[0])
  helps = _field_help()
  for f in dataclasses.fields(Config):
    kind = {bool: _bool, int: int, float: float}.get(type(f.default), str)
    text = "; ".join(filter(None, (helps.get(f.name), f"default {f.default!r}")))
    ap.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None,
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


init_distributed = sharding.init_distributed


def main(argv: list[str] | None = None) -> int:
  """The command line (rcjax._cli's convention): bad input exits 2, runtime failures (a non-finite loss,
  a corrupt checkpoint, a full or read-only disk) exit 1, with one line `train.gpt: error: ...` (a
  traceback with --debug or RCJAX_DEBUG=1)."""
  return _cli.run("train.gpt", _main, argv)


def _main(argv: list[str]) -> int:
  cfg, args = parse(argv)
  if not _cli.debugging(None):  # a failed save is reported in one line, without orbax's tracebacks
    from rcjax.integrity import quiet_orbax_noise
    quiet_orbax_noise()
  init_distributed(args.coordinator, args.num_processes, args.process_id)
  with warnings.catch_warnings():  # _resume_step reported unverified steps in one line
    warnings.simplefilter("ignore", UnverifiedCheckpointWarning)
    summary = run(cfg)
  if summary.get("finished_before"):
    print(f"train.gpt: {cfg.out} already holds the last step ({cfg.steps}); nothing to train", file=sys.stderr)
  if summary.get("loss") is None:
    return 0
  tps, mfu = summary.get("tokens_per_s"), summary.get("mfu")
  print(f"process {jax.process_index()}: step {summary['steps']} loss {summary['loss']:.6f}"
        + (f" floor {summary['loss_floor']:.4f}" if summary["loss_floor"] is not None else "")
        + (f" | {tps:,.0f} tokens/s" if tps else "")
        + (f" | MFU {100 * mfu:.1f}% of {summary['peak_flops_per_device']:.3g} FLOP/s x {summary['devices']}"
           if mfu else "") + f" | {summary['device']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
