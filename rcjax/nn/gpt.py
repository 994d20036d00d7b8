"""A pre-norm decoder-only transformer whose params are RC leaves: GPT-2 and Llama styles, one code path.

Logical axes: `vocab`, `positions` (fixed), `embed`, `heads`, `kv_heads`, `head_dim`, `mlp` (width axes)
and `layers` (fixed, the leading axis of the scanned blocks). Query heads come in blocks per kv head
(grouped-query attention, `RC.blocks = (('heads', 'kv_heads'),)`) and RoPE heads in two halves
(`('head_dim', 2)`), so `rcjax.grow` keeps every query head with a copy of its own kv head and every
rotated pair together. GPT-2 style is the same code with kv_heads == heads.

Multipliers come from the parametrization table at the params' actual shapes, so one module applies to
grown params. The attention-logit scale is 1/sqrt(d) for 'sp' and 'ntk', sqrt(d0)/d for 'mup' (d0 = base
head_dim, so muP equals SP at base width) and 1/d for 'mf': with 1/d, duplicating head_dim entries keeps
the logits (q.k sums d terms).

Shape legend: B batch, T sequence, E embed, H query heads, K kv heads, D head_dim, F mlp, V vocab.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from rcjax import parametrization as pz
from rcjax.nn.layers import rc_param
from rcjax.nn.loss import cross_entropy, linear_cross_entropy

WIDTH_AXES = ("embed", "heads", "kv_heads", "head_dim", "mlp")
STYLES = {  # style -> defaults of (norm, positions, activation, tied, bias, parallel_residual)
    "gpt2": dict(norm="layernorm", positions="learned", activation="gelu", tied=True, bias=True,
                 parallel_residual=False),
    "llama": dict(norm="rmsnorm", positions="rope", activation="swiglu", tied=False, bias=False,
                  parallel_residual=False),
    "neox": dict(norm="layernorm", positions="rope", activation="gelu_exact", tied=False, bias=True,
                 parallel_residual=True),
}
# The Block leaves that write into the residual stream: zero in the new blocks of an exact depth growth
# (`rcjax.transfer_model(..., {'layers': L2}, exact=True)`), so that each new block is the identity
# (LLaMA Pro). In parallel-residual blocks (GPT-NeoX) too: x + attn(.) + mlp(.) with both outputs zero is x.
RESIDUAL_WRITERS = ("o", "o_bias", "down", "down_bias")
ACTIVATIONS = {"gelu": lambda x: jax.nn.gelu(x, approximate=True),  # GPT-2's gelu_new (tanh)
               "gelu_exact": lambda x: jax.nn.gelu(x, approximate=False),  # erf
               "relu": jax.nn.relu}


def _mm(x, box, spec: str, dtype):
  """`einsum(spec, x, W) * multiplier(W)` computed in `dtype`."""
  return _times_multiplier(jnp.einsum(spec, x.astype(dtype), box.value.astype(dtype), preferred_element_type=dtype),
                           box, dtype)


def _times_multiplier(y, box, dtype):
  """`y * multiplier(box)` in `dtype` (skipped when the multiplier is 1)."""
  m = pz.multiplier(box)
  return y if m == 1.0 else y * jnp.asarray(m, dtype)


def _plus(y, bias):
  """`y + bias` in y's dtype (None: no bias)."""
  return y if bias is None else y + bias.astype(y.dtype)


def _mm_qkv(x_BxTxE, wq, wk, wv, dtype) -> list:
  """`[_mm(x, W, 'bte,e...->bt...', dtype) for W in (wq, wk, wv)]` as one matmul. One larger GEMM reads x
  once and, in the backward pass, gives dx as one GEMM instead of a sum of three. Same FLOPs; rounding
  may differ from `_mm` by the GEMM's accumulation order.

  The weights are laid out (E, K, G + 2, D): per kv head, its G query heads (query heads are in blocks
  per kv head), then its k and its v head. A heads axis sharded over devices (tensor parallelism) stays
  sharded through the matmul and the split: the concatenation runs within each kv head. Concatenating
  the flattened weights along heads instead needed 12 (GPT-2) to 30 (Llama, GQA) collective permutes
  per train step on a data=4,tensor=2 mesh; this layout needs none (tests/test_gpt.py)."""
  e, h, d = wq.shape
  k = wk.shape[1]
  g = h // k
  w = jnp.concatenate([wq.value.astype(dtype).reshape(e, k, g, d), wk.value.astype(dtype)[:, :, None],
                       wv.value.astype(dtype)[:, :, None]], axis=2)
  y = jnp.einsum("bte,ekgd->btkgd", x_BxTxE.astype(dtype), w, preferred_element_type=dtype)
  q = y[:, :, :, :g].reshape(y.shape[:2] + (h, d))
  return [_times_multiplier(q, wq, dtype), _times_multiplier(y[:, :, :, g], wk, dtype),
          _times_multiplier(y[:, :, :, g + 1], wv, dtype)]


def _mm_stacked(x_BxTxE, boxes, dtype) -> list:
  """`[_mm(x, W, 'bte,ef->btf', dtype) for W in boxes]` (equal shapes: SwiGLU's up and gate) as one
  matmul over the weights stacked as (E, n, F), so that a sharded F stays sharded (see `_mm_qkv`)."""
  w = jnp.stack([box.value.astype(dtype) for box in boxes], axis=1)
  y = jnp.einsum("bte,enf->btnf", x_BxTxE.astype(dtype), w, preferred_element_type=dtype)
  return [_times_multiplier(y[:, :, i], box, dtype) for i, box in enumerate(boxes)]


ROPE_SCALINGS = {"linear": ("factor",),
                 "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}


def rope_frequencies(r: int, base: float, scaling: tuple | None = None) -> jax.Array:
  """The r/2 RoPE frequencies base**(-2i/r), float32, rescaled by `scaling` (`(('rope_type', t), (key,
  value), ...)`): 'linear' divides them by `factor`; 'llama3' (Llama 3.1+) divides the low frequencies
  (wavelength above original_max_position_embeddings / low_freq_factor) by `factor`, keeps the high ones
  (below ... / high_freq_factor) and interpolates smoothly in between."""
  inv = 1.0 / base ** (jnp.arange(0, r, 2, dtype=jnp.float32) / r)
  if not scaling:
    return inv
  s = dict(scaling)
  if s["rope_type"] == "linear":
    return inv / s["factor"]
  factor, lo, hi, old = (float(s[k]) for k in ROPE_SCALINGS["llama3"])
  wavelen = 2 * math.pi / inv
  scaled = jnp.where(wavelen > old / lo, inv / factor, inv)
  smooth = (old / wavelen - lo) / (hi - lo)
  medium = (wavelen >= old / hi) & (wavelen <= old / lo)
  return jnp.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)


def rope(x_BxTxHxD: jax.Array, base: float, rotary_dim: int | None = None, scaling: tuple | None = None
         ) -> jax.Array:
  """Rotary embedding on the first `rotary_dim` dims of each head (all: None), 'half' layout (pair i is
  (i, i + R/2), frequency base**(-2i/R), see `rope_frequencies`), computed in fp32; the other dims pass
  through (GPT-NeoX)."""
  _, t, _, d = x_BxTxHxD.shape
  r = d if rotary_dim is None else rotary_dim
  inv_freq = rope_frequencies(r, base, scaling)
  angle_TxR2 = jnp.arange(t, dtype=jnp.float32)[:, None] * inv_freq[None, :]
  cos, sin = jnp.cos(angle_TxR2)[None, :, None, :], jnp.sin(angle_TxR2)[None, :, None, :]
  x = x_BxTxHxD.astype(jnp.float32)
  x1, x2, rest = x[..., : r // 2], x[..., r // 2: r], x[..., r:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1).astype(x_BxTxHxD.dtype)


def logit_scale(param: str, head_dim: int, base_head_dim: int) -> float:
  """Attention-logit scale: 1/sqrt(d) (sp, ntk), sqrt(d0)/d (mup), 1/d (mf)."""
  if param == "mup":  # written so that it is bitwise 1/sqrt(d) at d = d0
    return 1.0 / math.sqrt(head_dim) * math.sqrt(base_head_dim / head_dim)
  if param == "mf":
    return 1.0 / head_dim
  return 1.0 / math.sqrt(head_dim)


class Block(nn.Module):
  """One pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)). Sizes are read from the params."""
  sizes: tuple[tuple[str, int], ...] = ()  # init sizes of embed, heads, kv_heads, head_dim, mlp
  bases: tuple[tuple[str, int], ...] = ()  # base sizes of the same axes
  param: str = "mup"
  kernel_init: str = "normal"
  norm: str = "layernorm"
  positions: str = "learned"
  activation: str = "gelu"
  bias: bool = True              # norm biases (LayerNorm)
  qkv_bias: bool = True
  o_bias: bool = True
  mlp_bias: bool = True
  parallel_residual: bool = False
  norm_eps: float = 1e-5
  rotary_dim: int | None = None
  rope_base: float = 10000.0
  rope_scaling: tuple | None = None
  sliding_window: int | None = None
  attention: str | None = None
  fuse_projections: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def rc(self, name, axes, fan_in, init, blocks=()):
    sizes, bases = dict(self.sizes), dict(self.bases)
    return rc_param(self, name, tuple(sizes[a] for a in axes), axes=axes, fan_in=fan_in,
                    base=tuple(bases.get(a) for a in axes), param=self.param, init=init,
                    dtype=self.param_dtype, blocks=blocks)

  def normalize(self, x_BxTxE, name):
    scale = self.rc(f"{name}_scale", ("embed",), (), "ones")
    x = x_BxTxE.astype(jnp.float32)
    if self.norm == "layernorm":
      x = x - x.mean(-1, keepdims=True)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), -1, keepdims=True) + self.norm_eps) * scale.value
    if self.norm == "layernorm" and self.bias:
      x = x + self.rc(f"{name}_bias", ("embed",), (), "zeros").value
    return x.astype(self.dtype)

  def bias_value(self, name, axes, blocks=(), on=True):
    """The value of bias leaf `name` (created on first use, so params follow the call order); None: off."""
    return self.rc(name, axes, (), "zeros", blocks).value if on else None

  def add_bias(self, y, name, axes, blocks=(), on=True):
    return _plus(y, self.bias_value(name, axes, blocks, on))

  def tap(self, name: str, x):
    """Identity: where `rcjax.nn.importance` reads the activations `name` ('heads', 'mlp') of a block."""
    return x

  @nn.compact
  def __call__(self, x_BxTxE, _=None):
    dt = self.dtype
    partial = self.rotary_dim is not None and self.rotary_dim != dict(self.sizes)["head_dim"]
    hb = (("head_dim", 2),) if self.positions == "rope" and not partial else ()
    qb = (("heads", "kv_heads"),) + hb
    h = self.normalize(x_BxTxE, "attn_norm")
    wq = self.rc("q", ("embed", "heads", "head_dim"), (0,), self.kernel_init, qb)
    wk = self.rc("k", ("embed", "kv_heads", "head_dim"), (0,), self.kernel_init, hb)
    wv = self.rc("v", ("embed", "kv_heads", "head_dim"), (0,), self.kernel_init)
    if self.fuse_projections:
      q, k, v = _mm_qkv(h, wq, wk, wv, dt)
    else:
      q, k, v = (_mm(h, wq, "bte,ehd->bthd", dt), _mm(h, wk, "bte,ekd->btkd", dt), _mm(h, wv, "bte,ekd->btkd", dt))
    q = self.add_bias(q, "q_bias", ("heads", "head_dim"), qb, self.qkv_bias)
    k = self.add_bias(k, "k_bias", ("kv_heads", "head_dim"), hb, self.qkv_bias)
    v = self.add_bias(v, "v_bias", ("kv_heads", "head_dim"), (), self.qkv_bias)
    d = q.shape[-1]
    if partial and d != dict(self.sizes)["head_dim"]:
      raise ValueError(f"partial rotary embedding (rotary_dim {self.rotary_dim} of head_dim "
                       f"{dict(self.sizes)['head_dim']}): head_dim cannot change, got params with head_dim {d}")
    if self.positions == "rope":
      r = self.rotary_dim if partial else None
      q, k = rope(q, self.rope_base, r, self.rope_scaling), rope(k, self.rope_base, r, self.rope_scaling)
    scale = logit_scale(self.param, d, wq.base[2])
    window = None if self.sliding_window is None else (self.sliding_window - 1, 0)  # itself + w-1 before
    o_BxTxHxD = self.tap("heads", jax.nn.dot_product_attention(
        q, k, v, scale=scale, is_causal=True, local_window_size=window, implementation=self.attention))
    wo = self.rc("o", ("heads", "head_dim", "embed"), (0, 1), self.kernel_init, (("heads", "kv_heads"),))
    attn = self.add_bias(_mm(o_BxTxHxD, wo, "bthd,hde->bte", dt), "o_bias", ("embed",), (), self.o_bias)
    if not self.parallel_residual:
      x_BxTxE = x_BxTxE + attn.astype(x_BxTxE.dtype)

    h = self.normalize(x_BxTxE, "mlp_norm")
    w_up = self.rc("up", ("embed", "mlp"), (0,), self.kernel_init)
    b_up = self.bias_value("up_bias", ("mlp",), (), self.mlp_bias)
    if self.activation == "swiglu":
      w_gate = self.rc("gate", ("embed", "mlp"), (0,), self.kernel_init)
      b_gate = self.bias_value("gate_bias", ("mlp",), (), self.mlp_bias)
      if self.fuse_projections:
        up, gate = _mm_stacked(h, (w_up, w_gate), dt)
      else:
        up, gate = _mm(h, w_up, "bte,ef->btf", dt), _mm(h, w_gate, "bte,ef->btf", dt)
      a_BxTxF = jax.nn.silu(_plus(gate, b_gate)) * _plus(up, b_up)
    else:
      a_BxTxF = ACTIVATIONS[self.activation](_plus(_mm(h, w_up, "bte,ef->btf", dt), b_up))
    a_BxTxF = self.tap("mlp", a_BxTxF)
    down = self.rc("down", ("mlp", "embed"), (0,), self.kernel_init)
    y = self.add_bias(_mm(a_BxTxF, down, "btf,fe->bte", dt), "down_bias", ("embed",), (), self.mlp_bias)
    if self.parallel_residual:  # GPT-NeoX: x + attn(norm1(x)) + mlp(norm2(x))
      return x_BxTxE + attn.astype(x_BxTxE.dtype) + y.astype(x_BxTxE.dtype), None
    return x_BxTxE + y.astype(x_BxTxE.dtype), None


class GPT(nn.Module):
  """Decoder-only transformer: tokens `int32[B, T]` -> logits `float32[B, T, vocab]`, or with
  `targets` (`int32[B, T]`) -> their mean cross-entropy (float32 scalar; logits in the compute dtype).

  Attributes:
    vocab: vocabulary size (a fixed axis).
    width: embed size E.
    depth: number of blocks (scanned: params carry a leading `layers` axis).
    heads: query heads H; `width` must be divisible by it unless `head_dim` is given.
    kv_heads: key/value heads K (grouped-query attention; None: K = H).
    head_dim: D (None: width // heads).
    mlp: hidden size F of the MLP (None: 4E for 'gelu', 8E/3 rounded up to a multiple of 32 for 'swiglu').
    max_len: learned position table size ('learned' positions only).
    style: 'gpt2' (LayerNorm, learned positions, tanh GELU, tied embeddings, biases), 'llama' (RMSNorm,
      RoPE, SwiGLU, untied, no biases) or 'neox' (LayerNorm, RoPE, erf GELU, untied, biases, parallel
      residual); `norm`, `positions`, `activation` ('gelu' | 'gelu_exact' | 'relu' | 'swiglu'), `tied`,
      `bias` and `parallel_residual` override it.
    qkv_bias / o_bias / mlp_bias: biases of q/k/v, of the attention output, of the MLP (None: `bias`);
      `bias` alone decides the LayerNorm biases. Qwen2 is llama style with qkv_bias=True.
    norm_eps: epsilon of every norm.
    rotary_dim: RoPE on the first `rotary_dim` dims of each head only (GPT-NeoX's partial rotary; None:
      all). A partial rotary head_dim cannot be transferred (params with another head_dim raise).
    param: parametrization 'sp' | 'ntk' | 'mup' | 'mf'.
    kernel_init: init distribution of every weight matrix (embeddings, attention, MLP, readout), e.g.
      'normal:1,3' (norm scales start at 1, biases at 0).
    base: base sizes `{axis: size}` of the width axes (missing: the init sizes, so muP equals SP).
    rope_base: RoPE frequency base.
    rope_scaling: `(('rope_type', 'linear' | 'llama3'), (key, value), ...)` (see `rope_frequencies`), or None.
    sliding_window: each token attends to itself and the `sliding_window - 1` tokens before it (Mistral).
    attention: `jax.nn.dot_product_attention` implementation (None: XLA; 'cudnn' on GPUs).
    fuse_projections: compute q, k, v (and SwiGLU's up and gate) as one matmul each over concatenated
      weights; the params stay separate leaves (same pytree, same transfer). Same FLOPs, one read of the
      normed input and one GEMM for its gradient; rounding may differ slightly.
    scan / remat: scan the blocks (one compiled block) / rematerialise them in the backward pass.
    unroll: blocks per iteration of the scan (`depth`: fully unrolled, the params keep their stacked
      `layers` axis; measured on an H200 in benchmarks/README.md).
    dtype / param_dtype: compute dtype (e.g. bfloat16) / storage dtype of the params (float32).
    residual_dtype: dtype of the residual stream between blocks (None: the embedding's, the params' dtype).
    logits_dtype: dtype of the returned logits (float32; a loss that upcasts inside its reductions can
      take `dtype` and skip a float32 copy of the (B, T, vocab) logits).
    loss_chunks: with `targets`, fuse the readout into the loss over this many slices of the sequence
      (`rcjax.nn.loss.linear_cross_entropy`: the (B, T, vocab) logits and their gradient are never
      stored, same FLOPs); 0: the readout's logits, then the loss.

  >>> import jax, jax.numpy as jnp, rcjax
  >>> model = GPT(vocab=16, width=32, depth=2, heads=4, kv_heads=2, style='llama', param='mup')
  >>> init = lambda key: model.init(key, jnp.zeros((1, 8), jnp.int32))['params']
  >>> p = jax.eval_shape(init, jax.random.key(0))     # (jax.jit(init)(key) for the values)
  >>> p['blocks']['q'].axes, p['blocks']['q'].shape
  (('layers', 'embed', 'heads', 'head_dim'), (2, 32, 4, 8))
  >>> grow = lambda p: rcjax.grow(p, jax.random.key(1), sizes={'heads': 8})  # 4 query heads per kv head
  >>> jax.eval_shape(grow, p)['blocks']['o'].shape
  (2, 8, 8, 32)
  """
  vocab: int = 256
  width: int = 128
  depth: int = 2
  heads: int = 4
  kv_heads: int | None = None
  head_dim: int | None = None
  mlp: int | None = None
  max_len: int = 1024
  style: str = "gpt2"
  norm: str | None = None
  positions: str | None = None
  activation: str | None = None
  tied: bool | None = None
  bias: bool | None = None
  parallel_residual: bool | None = None
  qkv_bias: bool | None = None
  o_bias: bool | None = None
  mlp_bias: bool | None = None
  norm_eps: float = 1e-5
  rotary_dim: int | None = None
  param: str = "mup"
  kernel_init: str = "normal"
  base: Mapping[str, int] | None = None
  rope_base: float = 10000.0
  rope_scaling: tuple | None = None
  sliding_window: int | None = None
  attention: str | None = None
  fuse_projections: bool = False
  scan: bool = True
  remat: bool = False
  unroll: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  residual_dtype: Any = None
  logits_dtype: Any = jnp.float32
  loss_chunks: int = 0

  def arch(self) -> dict:
    """Resolved architecture: style defaults, sizes and bases, validated (ValueError on bad sizes)."""
    if self.style not in STYLES:
      raise ValueError(f"unknown style {self.style!r}; expected one of {sorted(STYLES)}")
    a = {k: (getattr(self, k) if getattr(self, k) is not None else v) for k, v in STYLES[self.style].items()}
    for k in ("qkv_bias", "o_bias", "mlp_bias"):
      a[k] = a["bias"] if getattr(self, k) is None else getattr(self, k)
    for k, ok in (("norm", ("layernorm", "rmsnorm")), ("positions", ("learned", "rope")),
                  ("activation", (*ACTIVATIONS, "swiglu"))):
      if a[k] not in ok:
        raise ValueError(f"{k} must be one of {ok}, got {a[k]!r}")
    for k in ("vocab", "width", "depth", "heads"):
      if not isinstance(getattr(self, k), int) or getattr(self, k) <= 0:
        raise ValueError(f"{k} must be a positive int, got {getattr(self, k)!r}")
    if self.head_dim is None and self.width % self.heads:
      raise ValueError(f"width {self.width} is not divisible by heads {self.heads} (or give head_dim)")
    kv = self.heads if self.kv_heads is None else self.kv_heads
    if kv <= 0 or self.heads % kv:
      raise ValueError(f"heads {self.heads} must be a positive multiple of kv_heads {kv}")
    d = self.head_dim or self.width // self.heads
    if a["positions"] == "rope" and d % 2:
      raise ValueError(f"RoPE needs an even head_dim, got {d}")
    if self.sliding_window is not None and self.sliding_window < 1:
      raise ValueError(f"sliding_window must be at least 1, got {self.sliding_window}")
    if self.rope_scaling is not None:
      sc = dict(self.rope_scaling)
      if sc.get("rope_type") not in ROPE_SCALINGS or set(ROPE_SCALINGS[sc["rope_type"]]) - set(sc):
        raise ValueError(f"rope_scaling {self.rope_scaling}: expected rope_type in {sorted(ROPE_SCALINGS)} "
                         "with its keys " + str(ROPE_SCALINGS.get(sc.get("rope_type"), "")))
    if self.rotary_dim is not None and (self.rotary_dim % 2 or not 0 < self.rotary_dim <= d):
      raise ValueError(f"rotary_dim must be even and in (0, head_dim {d}], got {self.rotary_dim}")
    f = self.mlp or (-(-8 * self.width // 3 // 32) * 32 if a["activation"] == "swiglu" else 4 * self.width)
    sizes = {"embed": self.width, "heads": self.heads, "kv_heads": kv, "head_dim": d, "mlp": f}
    unknown = set(self.base or {}) - set(WIDTH_AXES)
    if unknown:
      raise ValueError(f"base names unknown axes {sorted(unknown)}; width axes are {WIDTH_AXES}")
    a["sizes"] = sizes
    a["bases"] = {**sizes, **dict(self.base or {})}
    return a

  @nn.compact
  def __call__(self, tokens_BxT: jax.Array, targets_BxT: jax.Array | None = None) -> jax.Array:
    a = self.arch()
    sizes, bases = a["sizes"], a["bases"]
    embed = lambda name, axes, shape: rc_param(
        self, name, shape, axes=axes, fan_in=(0,), base=tuple(bases.get(x) for x in axes),
        param=self.param, init=self.kernel_init, dtype=self.param_dtype)
    wte = embed("embed", ("vocab", "embed"), (self.vocab, sizes["embed"]))
    x_BxTxE = jnp.take(wte.value, tokens_BxT, axis=0) * pz.multiplier(wte)
    if a["positions"] == "learned":
      wpe = embed("positions", ("positions", "embed"), (self.max_len, sizes["embed"]))
      if tokens_BxT.shape[1] > wpe.shape[0]:
        raise ValueError(f"sequence length {tokens_BxT.shape[1]} exceeds max_len {wpe.shape[0]}")
      x_BxTxE = x_BxTxE + wpe.value[: tokens_BxT.shape[1]] * pz.multiplier(wpe)
    if self.residual_dtype is not None:
      x_BxTxE = x_BxTxE.astype(self.residual_dtype)
    kw = dict(sizes=tuple(sizes.items()), bases=tuple(bases.items()), param=self.param,
              kernel_init=self.kernel_init,
              norm=a["norm"], positions=a["positions"], activation=a["activation"], bias=a["bias"],
              qkv_bias=a["qkv_bias"], o_bias=a["o_bias"], mlp_bias=a["mlp_bias"],
              parallel_residual=a["parallel_residual"], norm_eps=self.norm_eps, rotary_dim=self.rotary_dim,
              rope_base=self.rope_base, rope_scaling=self.rope_scaling, sliding_window=self.sliding_window,
              attention=self.attention, fuse_projections=self.fuse_projections, dtype=self.dtype,
              param_dtype=self.param_dtype)
    block = nn.remat(Block, prevent_cse=not self.scan) if self.remat else Block
    if self.scan:
      stack = nn.scan(block, variable_axes={"params": 0, "intermediates": 0},  # intermediates: rcjax.nn.importance
                      split_rngs={"params": True}, length=self.depth,
                      unroll=min(max(self.unroll, 1), self.depth), metadata_params={nn.PARTITION_NAME: "layers"})
      x_BxTxE, _ = stack(**kw, name="blocks")(x_BxTxE, None)
    else:
      for i in range(self.depth):
        x_BxTxE, _ = block(**kw, name=f"block_{i}")(x_BxTxE, None)
    h = _FinalNorm(**kw, name="final")(x_BxTxE)
    if a["tied"]:  # the readout use of the tied table: fan-in embed (an output leaf)
      w, spec = wte.replace(fan_in=(1,)), "bte,ve->btv"
    else:
      w = rc_param(self, "readout", (sizes["embed"], self.vocab), axes=("embed", "vocab"), fan_in=(0,),
                   base=(bases["embed"], None), param=self.param, init=self.kernel_init, dtype=self.param_dtype)
      spec = "bte,ev->btv"
    if targets_BxT is None:
      return _mm(h, w, spec, self.dtype).astype(self.logits_dtype)
    if targets_BxT.shape != tokens_BxT.shape:
      raise ValueError(f"targets shape {targets_BxT.shape} differs from tokens shape {tokens_BxT.shape}")
    if self.loss_chunks:
      return linear_cross_entropy(h, w.value, targets_BxT, chunks=self.loss_chunks, spec=spec,
                                  multiplier=pz.multiplier(w), dtype=self.dtype)
    return cross_entropy(_mm(h, w, spec, self.dtype), targets_BxT)


class _FinalNorm(Block):
  """The final norm before the readout (a Block's norm alone)."""

  @nn.compact
  def __call__(self, x_BxTxE, _=None):
    return self.normalize(x_BxTxE, "norm")
