"""train.gpt's model, optimizer and jitted steps: `build_model` (and `validate`, which checks a config against
the model it builds), `build_optimizer`, the `Trainer` (train and
eval steps on a mesh), FLOPs per token and the global batches."""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import optax

import rcjax
from rcjax import sharding
from rcjax.depth import GROW_MODES, depth_map
from rcjax.rc import is_rc, leaves_with_paths
from train.text_data import ALPHABET, DATASETS, TextData
from train.gpt_config import Config, hf_source


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


def build_model(cfg: Config, base: bool = True) -> rcjax.nn.GPT:
  bases = scaled_sizes(cfg, cfg.base_width) if base and cfg.base_width else None
  tied = {"auto": None, "yes": True, "no": False}[cfg.tied]
  if (hf := hf_source(cfg.transfer_from)) is not None:  # the HF model's norms, RoPE, biases, ...
    from rcjax.hf import model_from_config

    m = model_from_config(hf)
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
  _validate_growth(cfg)
  _validate_source_and_data(cfg)


def _validate_growth(cfg: Config) -> None:
  """`validate`'s checks of --grow-at / --grow-to / --grow-to-depth."""
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


def _validate_source_and_data(cfg: Config) -> None:
  """`validate`'s checks of --transfer-from, the vocabulary the dataset needs and --save-steps."""
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
