"""A post-LayerNorm bidirectional encoder whose params are RC leaves: BERT (`BertModel`, `BertForMaskedLM`).

It shares the decoder's code (`rcjax.nn.gpt`): the same leaf names, axes and blocks as `rcjax.nn.GPT`'s
blocks (q/k/v/o with heads, kv_heads and head_dim; up/down with mlp; `attn_norm_*`, `mlp_norm_*`), the
same matmuls with their parametrization multipliers and the same attention-logit scale, so `rcjax.grow`
and the depth and sharding rules treat both alike. What differs: the norm comes after each residual sum
(post-LN: x = LN(x + attn(x)), then x = LN(x + mlp(x))), attention is bidirectional with a padding mask,
the input is word + position + token-type embeddings followed by a LayerNorm, and the outputs are the
last hidden state, an optional pooler (tanh(dense(h[:, 0]))) and an optional masked-LM head
(dense -> activation -> LayerNorm -> the word embeddings tied as the decoder, plus a vocab bias).

Logical axes: `vocab`, `positions`, `token_types` (fixed), `embed`, `heads`, `kv_heads`, `head_dim`,
`mlp` (width axes), `layers` (fixed, the leading axis of the scanned blocks). The pooler and the MLM
transform are (embed, embed) leaves: both axes take the embed map.

Exactness of a transfer (SP, as HF models are; `rcjax.transfer_model`): duplicating neurons keeps every
hidden state up to that duplication when every copy count is equal, i.e. embed grows by an integer
factor (each LayerNorm then sees the same mean and variance); heads and mlp at any ratio with
`exact=True`. A tied MLM decoder sums over the grown embed axis, so `rcjax.transfer_model` divides the
MLM transform's LayerNorm scale and bias by the copy counts (as it does for a tied GPT's final norm). A
non-integer embed ratio cannot be exact: copies with unequal counts shift a LayerNorm's mean and
variance, and no per-neuron amplitude keeps both (the GPT's RMSNorm correction keeps the second moment
only).

Shape legend: B batch, T sequence, E embed, H query heads, K kv heads, D head_dim, F mlp, V vocab.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from rcjax import parametrization as pz
from rcjax.nn.gpt import ACTIVATIONS, WIDTH_AXES, Block, _mm, _plus, logit_scale
from rcjax.nn.layers import rc_param


class EncoderBlock(Block):
  """One post-LN block: x = LN(x + attn(x, mask)), then x = LN(x + mlp(x)). Sizes are read from the params."""

  @nn.compact
  def __call__(self, x_BxTxE, mask_Bx1x1xT):
    dt = self.dtype
    qb = (("heads", "kv_heads"),)
    wq = self.rc("q", ("embed", "heads", "head_dim"), (0,), self.kernel_init, qb)
    wk = self.rc("k", ("embed", "kv_heads", "head_dim"), (0,), self.kernel_init)
    wv = self.rc("v", ("embed", "kv_heads", "head_dim"), (0,), self.kernel_init)
    q = self.add_bias(_mm(x_BxTxE, wq, "bte,ehd->bthd", dt), "q_bias", ("heads", "head_dim"), qb)
    k = self.add_bias(_mm(x_BxTxE, wk, "bte,ekd->btkd", dt), "k_bias", ("kv_heads", "head_dim"))
    v = self.add_bias(_mm(x_BxTxE, wv, "bte,ekd->btkd", dt), "v_bias", ("kv_heads", "head_dim"))
    scale = logit_scale(self.param, q.shape[-1], wq.base[2])
    o_BxTxHxD = jax.nn.dot_product_attention(q, k, v, scale=scale, mask=mask_Bx1x1xT,
                                             implementation=self.attention)
    wo = self.rc("o", ("heads", "head_dim", "embed"), (0, 1), self.kernel_init, qb)
    attn = self.add_bias(_mm(o_BxTxHxD, wo, "bthd,hde->bte", dt), "o_bias", ("embed",))
    x_BxTxE = self.normalize(x_BxTxE + attn.astype(x_BxTxE.dtype), "attn_norm")

    w_up = self.rc("up", ("embed", "mlp"), (0,), self.kernel_init)
    a_BxTxF = ACTIVATIONS[self.activation](self.add_bias(_mm(x_BxTxE, w_up, "bte,ef->btf", dt), "up_bias", ("mlp",)))
    down = self.rc("down", ("mlp", "embed"), (0,), self.kernel_init)
    y = self.add_bias(_mm(a_BxTxF, down, "btf,fe->bte", dt), "down_bias", ("embed",))
    return self.normalize(x_BxTxE + y.astype(x_BxTxE.dtype), "mlp_norm"), None


class _Norm(Block):
  """A LayerNorm alone (the embeddings')."""

  @nn.compact
  def __call__(self, x_BxTxE):
    return self.normalize(x_BxTxE, "norm")


class _Dense(Block):
  """act(x @ W + b) with W an (embed, embed) leaf (the pooler, the MLM transform), then an optional LayerNorm."""
  act: str = "tanh"
  norm_after: bool = False

  @nn.compact
  def __call__(self, x_BxE):
    w = self.rc("dense", ("embed", "embed"), (0,), self.kernel_init)
    y = self.add_bias(_mm(x_BxE, w, "...e,ef->...f", self.dtype), "dense_bias", ("embed",))
    y = jnp.tanh(y) if self.act == "tanh" else ACTIVATIONS[self.act](y)
    return self.normalize(y, "norm") if self.norm_after else y


class Bert(nn.Module):
  """Post-LN bidirectional encoder: tokens `int32[B, T]` -> `{'last_hidden_state': [B, T, E],
  'pooler_output': [B, E] (with `pooler`), 'logits': [B, T, vocab] (with `mlm`)}`.

  Attributes:
    vocab / max_len / type_vocab: sizes of the word, position and token-type tables (fixed axes).
    width, depth, heads, head_dim (None: width // heads), mlp (None: 4 * width): sizes; blocks scanned.
    kv_heads: key/value heads (None: heads; BERT checkpoints have kv_heads == heads).
    activation: 'gelu_exact' (BERT's 'gelu', erf), 'gelu' (tanh) or 'relu', in the MLP and the MLM transform.
    norm_eps: epsilon of every LayerNorm (BERT's 1e-12).
    pooler: the pooler (dense + tanh on the first token). mlm: the masked-LM head, decoder tied to the
      word embeddings.
    param, kernel_init, base, attention, scan, dtype, param_dtype: as in `rcjax.nn.GPT`.

  >>> import jax, jax.numpy as jnp, rcjax
  >>> model = Bert(vocab=16, width=32, depth=2, heads=4, max_len=8, mlm=True, param='sp')
  >>> p = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 8), jnp.int32))['params'], jax.random.key(0))
  >>> p['blocks']['q'].axes, p['pooler']['dense'].axes
  (('layers', 'embed', 'heads', 'head_dim'), ('embed', 'embed'))
  """
  vocab: int = 30522
  width: int = 128
  depth: int = 2
  heads: int = 4
  kv_heads: int | None = None
  head_dim: int | None = None
  mlp: int | None = None
  max_len: int = 512
  type_vocab: int = 2
  activation: str = "gelu_exact"
  norm_eps: float = 1e-12
  pooler: bool = True
  mlm: bool = False
  param: str = "mup"
  kernel_init: str = "normal"
  base: Mapping[str, int] | None = None
  attention: str | None = None
  scan: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  rotary_dim = None  # no rotary embedding (read by code shared with rcjax.nn.GPT)

  def arch(self) -> dict:
    """Resolved architecture (sizes, bases and the keys of `rcjax.nn.GPT.arch` that apply); ValueError on bad sizes."""
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {self.activation!r}")
    for k in ("vocab", "width", "depth", "heads", "max_len", "type_vocab"):
      if not isinstance(getattr(self, k), int) or getattr(self, k) <= 0:
        raise ValueError(f"{k} must be a positive int, got {getattr(self, k)!r}")
    if self.head_dim is None and self.width % self.heads:
      raise ValueError(f"width {self.width} is not divisible by heads {self.heads} (or give head_dim)")
    kv = self.heads if self.kv_heads is None else self.kv_heads
    if kv <= 0 or self.heads % kv:
      raise ValueError(f"heads {self.heads} must be a positive multiple of kv_heads {kv}")
    sizes = {"embed": self.width, "heads": self.heads, "kv_heads": kv,
             "head_dim": self.head_dim or self.width // self.heads, "mlp": self.mlp or 4 * self.width}
    if unknown := set(self.base or {}) - set(WIDTH_AXES):
      raise ValueError(f"base names unknown axes {sorted(unknown)}; width axes are {WIDTH_AXES}")
    return dict(norm="layernorm", positions="learned", activation=self.activation, tied=self.mlm, bias=True,
                qkv_bias=True, o_bias=True, mlp_bias=True, parallel_residual=False, sizes=sizes,
                bases={**sizes, **dict(self.base or {})})

  @nn.compact
  def __call__(self, tokens_BxT: jax.Array, attention_mask_BxT: jax.Array | None = None,
               token_types_BxT: jax.Array | None = None) -> dict:
    a = self.arch()
    sizes, bases = a["sizes"], a["bases"]
    embed = lambda name, axes, n: rc_param(
        self, name, (n, sizes["embed"]), axes=axes, fan_in=(0,), base=(None, bases["embed"]), param=self.param,
        init=self.kernel_init, dtype=self.param_dtype)
    wte = embed("embed", ("vocab", "embed"), self.vocab)
    wpe = embed("positions", ("positions", "embed"), self.max_len)
    wtt = embed("token_types", ("token_types", "embed"), self.type_vocab)
    t = tokens_BxT.shape[1]
    if t > wpe.shape[0]:
      raise ValueError(f"sequence length {t} exceeds max_len {wpe.shape[0]}")
    types = jnp.zeros_like(tokens_BxT) if token_types_BxT is None else token_types_BxT
    x_BxTxE = (jnp.take(wte.value, tokens_BxT, axis=0) * pz.multiplier(wte)
               + jnp.take(wtt.value, types, axis=0) * pz.multiplier(wtt) + wpe.value[:t] * pz.multiplier(wpe))
    kw = dict(sizes=tuple(sizes.items()), bases=tuple(bases.items()), param=self.param, kernel_init=self.kernel_init,
              norm="layernorm", activation=self.activation, norm_eps=self.norm_eps, attention=self.attention,
              dtype=self.dtype, param_dtype=self.param_dtype)
    x_BxTxE = _Norm(**kw, name="embed_norm")(x_BxTxE)
    mask = None if attention_mask_BxT is None else attention_mask_BxT.astype(bool)[:, None, None, :]
    if self.scan:
      stack = nn.scan(EncoderBlock, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=nn.broadcast,
                      length=self.depth, metadata_params={nn.PARTITION_NAME: "layers"})
      x_BxTxE, _ = stack(**kw, name="blocks")(x_BxTxE, mask)
    else:
      for i in range(self.depth):
        x_BxTxE, _ = EncoderBlock(**kw, name=f"block_{i}")(x_BxTxE, mask)
    out = {"last_hidden_state": x_BxTxE}
    if self.pooler:
      out["pooler_output"] = _Dense(**kw, name="pooler")(x_BxTxE[:, 0])
    if self.mlm:
      h = _Dense(**kw, act=self.activation, norm_after=True, name="mlm")(x_BxTxE)
      bias = rc_param(self, "mlm_bias", (self.vocab,), axes=("vocab",), fan_in=(), base=(None,), param=self.param,
                      init="zeros", dtype=self.param_dtype)
      out["logits"] = _plus(_mm(h, wte.replace(fan_in=(1,)), "bte,ve->btv", self.dtype), bias.value).astype(jnp.float32)
    return out

  def comparable(self, tokens_BxT: jax.Array) -> jax.Array:
    """What a function-preserving transfer keeps, in any width: the MLM logits (with `mlm`), else the
    Gram matrix of the last hidden states over the batch's tokens divided by the width, `[B*T, B*T]`
    (duplicated neurons with equal counts keep it; so are the cosine similarities of mean-pooled
    sentence embeddings). For `model.apply(variables, tokens, method='comparable')`."""
    out = self(tokens_BxT)
    if self.mlm:
      return out["logits"]
    h = out["last_hidden_state"].astype(jnp.float32).reshape(-1, out["last_hidden_state"].shape[-1])
    return h @ h.T / h.shape[-1]


def mean_pool(hidden_BxTxE: jax.Array, mask_BxT: jax.Array | None = None, normalize: bool = True) -> jax.Array:
  """The sentence embedding of sentence-transformers' mean pooling: the mean of the hidden states over the
  unmasked tokens, then (`normalize`) L2-normalised, `[B, E]`.

  >>> float(mean_pool(jnp.ones((1, 3, 4)), jnp.array([[1, 1, 0]]))[0, 0])
  0.5
  """
  m = jnp.ones(hidden_BxTxE.shape[:2]) if mask_BxT is None else mask_BxT.astype(jnp.float32)
  e = (hidden_BxTxE.astype(jnp.float32) * m[..., None]).sum(1) / jnp.maximum(m.sum(1, keepdims=True), 1e-9)
  return e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12) if normalize else e
