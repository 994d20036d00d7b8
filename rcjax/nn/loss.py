"""Next-token cross-entropy, plain (from logits) and fused with the readout matmul in sequence chunks.

The fused form never holds the (B, T, vocab) logits: it computes them a chunk of positions at a time and,
when differentiated, takes the gradient of each chunk right there (the loss is a sum over positions, so
its gradient needs nothing from the other chunks), keeping only dL/dh (B, T, E) and dL/dW. The matmul
FLOPs are those of the plain form (logits, dh, dW: 6 x N x E x V); what it saves is the memory of the
logits and of their gradient, 2 x B x T x V entries (12 GiB in bf16 for a GPT-2 vocabulary at B=64,
T=1024), so larger batches fit.

Shape legend: B batch, T sequence, C positions per chunk, E embed, V vocab.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


# readout spec -> the einsum specs of dL/dh and dL/dw from dL/dlogits
_GRAD_SPECS = {"bte,ev->btv": ("btv,ev->bte", "bte,btv->ev"), "bte,ve->btv": ("btv,ve->bte", "bte,btv->ve")}


def cross_entropy(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
  """Mean next-token cross-entropy, logsumexp(logits) - logits[target], accumulated in float32. The cast
  sits inside the reductions, so XLA fuses it and no float32 copy of the (B, T, V) logits is stored."""
  lse_BxT = jax.nn.logsumexp(logits_BxTxV.astype(jnp.float32), axis=-1)
  target_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  return jnp.mean(lse_BxT - target_BxT.astype(jnp.float32))


def linear_cross_entropy(h_BxTxE: jax.Array, w: jax.Array, targets_BxT: jax.Array, *, chunks: int,
                         spec: str = "bte,ev->btv", multiplier: float = 1.0, dtype=None) -> jax.Array:
  """`cross_entropy(einsum(spec, h, w) * multiplier, targets)` without the (B, T, V) logits.

  The logits of each of `chunks` slices of the sequence are computed in `dtype` (None: h's) exactly as
  the readout computes them (`rcjax.nn.gpt._mm`), then reduced in float32. Chunks run one after another
  (a `lax.scan` over positions, so a batch axis sharded over devices stays sharded); T need not be a
  multiple of `chunks` (the last positions are padded and masked). Under differentiation each chunk also
  takes its gradient at once (`jax.custom_vjp`); dL/dW is summed over chunks in float32.

  Args:
    h_BxTxE: the final hidden states (the readout's input).
    w: the readout matrix, (E, V) for spec 'bte,ev->btv' or (V, E) for a tied table, 'bte,ve->btv'.
    targets_BxT: int token ids.
    chunks: number of slices of the sequence (1: the whole sequence at once, still without storing the
      logits for the backward pass).
    multiplier: the readout's parametrization multiplier.
  """
  if spec not in _GRAD_SPECS:
    raise ValueError(f"spec must be 'bte,ev->btv' or 'bte,ve->btv', got {spec!r}")
  if chunks < 1:
    raise ValueError(f"chunks must be at least 1, got {chunks}")
  dtype = jnp.dtype(dtype or h_BxTxE.dtype)
  return _linear_ce(h_BxTxE, w, targets_BxT, int(chunks), spec, float(multiplier), dtype)


def _split(x, chunks, fill):
  """(B, T, ...) -> (chunks, B, C, ...), the T axis padded with `fill` to chunks * C."""
  b, t = x.shape[:2]
  c = -(-t // chunks)
  x = jnp.pad(x, [(0, 0), (0, chunks * c - t)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
  return jnp.moveaxis(x.reshape(b, chunks, c, *x.shape[2:]), 1, 0)


def _scan(h, w, targets, chunks, spec, mult, dtype, grad: bool):
  """The mean loss; with `grad`, also its gradients with respect to h and w (in their dtypes)."""
  b, t = targets.shape
  w_dt = w.astype(dtype)
  scale = 1.0 / (b * t)
  valid = _split(jnp.ones((b, t), jnp.float32), chunks, 0.0)

  def body(dw, xs):
    h_c, t_c, m_c = xs
    h_c = h_c.astype(dtype)
    logits = jnp.einsum(spec, h_c, w_dt, preferred_element_type=dtype)
    if mult != 1.0:
      logits = logits * jnp.asarray(mult, dtype)
    lf = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(lf, axis=-1)
    tgt = jnp.take_along_axis(logits, t_c[..., None], axis=-1)[..., 0].astype(jnp.float32)
    loss = jnp.sum((lse - tgt) * m_c)
    if not grad:
      return dw, (loss, None)
    p = jnp.exp(lf - lse[..., None])
    hit = jax.lax.broadcasted_iota(jnp.int32, p.shape, p.ndim - 1) == t_c[..., None]
    g = (jnp.where(hit, p - 1.0, p) * (m_c * scale)[..., None]).astype(dtype)  # dL/dlogits
    if mult != 1.0:
      g = g * jnp.asarray(mult, dtype)
    dh_spec, dw_spec = _GRAD_SPECS[spec]
    dh_c = jnp.einsum(dh_spec, g, w_dt, preferred_element_type=dtype)
    dw_c = jnp.einsum(dw_spec, h_c, g, preferred_element_type=jnp.float32)
    return dw + dw_c, (loss, dh_c)

  xs = (_split(h, chunks, 0), _split(targets, chunks, 0), valid)
  dw0 = jnp.zeros(w.shape, jnp.float32) if grad else None
  dw, (losses, dh) = jax.lax.scan(body, dw0, xs)
  if not grad:
    return jnp.sum(losses) * scale
  dh = jnp.moveaxis(dh, 0, 1).reshape(b, -1, h.shape[-1])[:, :t]
  return jnp.sum(losses) * scale, dh.astype(h.dtype), dw.astype(w.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _linear_ce(h, w, targets, chunks, spec, mult, dtype):
  return _scan(h, w, targets, chunks, spec, mult, dtype, grad=False)


def _fwd(h, w, targets, chunks, spec, mult, dtype):
  loss, dh, dw = _scan(h, w, targets, chunks, spec, mult, dtype, grad=True)
  return loss, (dh, dw)


def _bwd(chunks, spec, mult, dtype, res, g):
  del chunks, spec, mult, dtype
  dh, dw = res
  return dh * g.astype(dh.dtype), dw * g.astype(dw.dtype), None


_linear_ce.defvjp(_fwd, _bwd)
