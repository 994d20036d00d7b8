"""Model-level transfer rules: `rcjax.transfer` plus what a whole model needs beyond the leaf-wise rules.

The core (`rcjax.transfer`) maps every RC leaf on its own. A model can know more: a tied embedding is
both an input table and the readout, an RMSNorm sees the whole residual stream, the blocks that write
into the residual stream are the ones a function-preserving depth growth zeroes. `transfer_model` runs
the core's transfer (`rcjax.transfer.transfer_with_maps`, one jitted call) and corrects its output with
the copy counts of the maps it returns: the maps the leaves were gathered with, not a second draw.

GPT (`rcjax.nn.GPT`):
- Tied embeddings. A tied table is the input embedding (fan-in vocab: its entries are not rescaled, so
  the input use is preserved) and the readout (fan-in embed), whose sum over a grown embed axis counts
  each source neuron c times. Under muP the readout multiplier 1/m_in undoes that; in SP (HuggingFace
  models) nothing would. So the final norm's scale and bias, which feed only the readout, absorb
  `mult_old / (mult_new * c_j)` per entry (c_j the copy count with `exact=True`, else N'/N).
- RMSNorm at a non-integer embed ratio (`exact=True`). Copies of residual neuron j carry
  `a_j = sqrt(N' / (N c_j))` times its value: every writer into the residual stream (the embedding, the
  attention output, the MLP down projection and their biases) is scaled by a_j along embed and every
  RMSNorm scale divided by a_j. Then sum_j' x'_j'^2 / N' = sum_j x_j^2 / N, so each norm sees the same
  RMS and outputs exact copies, which the count-corrected readers sum back (a tied readout, whose rows
  now carry a_j, gets another 1/a_j in the final norm). (LayerNorm's mean cannot be kept this way: a
  non-integer embed ratio stays inexact there.)
- Symmetry breaking (`split_rate`, `cancel_rate`, see `rcjax.symmetry`) is exact wherever the growth
  is: every leaf it touches reads copies with identical activations (q, k, v, up, gate and an untied
  readout read the normed residual stream along embed, o reads the attention output along heads and
  head_dim, down the MLP activations). A tied table's leaf has fan-in vocab, so it is not split (the
  readout use reads the final norm's copies with equal rows); the embed axis still splits through its
  readers. The corrections above scale writers and norm scales, which no split touches.
- Depth (`sizes['layers']`, scanned models only; `depth_mode=` as in `rcjax.transfer`): blocks are
  copied along the `layers` axis; with `exact=True` the new blocks' `RESIDUAL_WRITERS` start at zero,
  so the deeper model computes the same function in every style and parametrization. Apply the result
  with `model.clone(depth=sizes['layers'])`.

Bert (`rcjax.nn.Bert`): with `mlm`, the tied MLM decoder (the word embeddings, fan-in embed in that
use) gets the tied readout's correction in the MLM transform's LayerNorm scale and bias, which feed
only the decoder.

The copy counts c_j are those of the embed map the core's transfer applied (`transfer_with_maps`).

Layers: this module sits above the core and above the models (`rcjax.nn`), which import nothing of the
transfer; `rcjax.cli.hf`, `rcjax.hf.stream` and train.gpt call it.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from rcjax import parametrization as pz
from rcjax.nn.bert import Bert
from rcjax.nn.gpt import GPT, RESIDUAL_WRITERS
from rcjax.transfer import transfer_with_maps


def transfer_model(model: GPT | Bert, params: Any, key: jax.Array, sizes: Mapping[str, int], *,
                   opt_state: Any = None, **kwargs) -> Any:
  """`rcjax.transfer` of a GPT's or a Bert's params, function-preserving in more cases than the leaf-wise
  rules give.

  The rules (module docstring): a tied readout's copy counts, RMSNorm amplitudes at a non-integer embed
  ratio (`exact=True`), residual writers zeroed in new blocks, BERT's tied MLM decoder; symmetry
  breaking (`split_rate`, `cancel_rate`) stays exact.

  Args:
    model: the `rcjax.nn.GPT` or `rcjax.nn.Bert` whose params these are.
    params: its params (boxed RC leaves).
    key, sizes: as in `rcjax.transfer`.
    opt_state: an optax state of these params, transferred with the same maps (as
      `rcjax.transfer((params, opt_state), ...)` does); the corrections above go to the params only
      (rescaling an entry's Adam moments with it, m by 1/s and v by 1/s^2, would leave Adam's step
      m / sqrt(v) as it is, up to eps).
    **kwargs: those of `rcjax.transfer` (sampler, random_rate, norm_rate, exact, donate, depth_mode,
      split_rate, cancel_rate, scores, ...).

  Returns:
    The transferred params, or `(params, opt_state)` with `opt_state`.

  >>> import jax, jax.numpy as jnp, rcjax
  >>> model = rcjax.nn.GPT(style='gpt2', param='sp', vocab=16, width=8, depth=1, heads=2, max_len=8)
  >>> tokens = jnp.arange(4)[None]
  >>> params = model.init(jax.random.key(0), tokens)['params']
  >>> big = transfer_model(model, params, jax.random.key(1), {'embed': 16})  # tied SP readout, 2x
  >>> bool(jnp.allclose(model.apply({'params': params}, tokens), model.apply({'params': big}, tokens), atol=1e-5))
  True
  """
  if isinstance(model, GPT):
    correct = _gpt_corrected
    if "layers" in sizes:
      kwargs.setdefault("residual_writers", _residual_writers(model, params))
  elif isinstance(model, Bert):
    correct = _bert_corrected
  else:
    raise TypeError(f"transfer_model: model must be an rcjax.nn.GPT or rcjax.nn.Bert, got {type(model).__name__} "
                    "(for other models: rcjax.transfer, the leaf-wise rules)")
  tree = params if opt_state is None else (params, opt_state)
  out, maps = transfer_with_maps(tree, key, sizes, **kwargs)
  if opt_state is None:
    return correct(model, params, out, maps, bool(kwargs.get("exact")))
  return correct(model, params, out[0], maps, bool(kwargs.get("exact"))), out[1]


def _residual_writers(model: GPT, params: Any) -> tuple[str, ...]:
  """The leaf-path suffixes of a scanned GPT's residual writers (ValueError for a GPT without scan)."""
  if not model.scan or "blocks" not in params:
    raise ValueError("a depth transfer (sizes['layers']) needs a scanned GPT (scan=True, params['blocks'] "
                     "with a leading layers axis); this one has its blocks as separate leaves")
  return tuple(f"['blocks']['{n}']" for n in RESIDUAL_WRITERS if n in params["blocks"])


def _scale_embed(box, s):
  """`box` times s, a scalar or an (E',) vector along embed (the last axis of the leaf), in its dtype."""
  return box.replace(value=(box.value.astype(jnp.float32) * s).astype(box.value.dtype))


def _tied_readout_factor(old_embed, new_embed, embed_map: jax.Array | None, exact: bool) -> tuple:
  """`(exact, counts, s)` for a tied (vocab, embed) table transferred from `old_embed` to `new_embed` with
  `embed_map` (the embed axis's map, `int32[E']`): the readout use sums over the new embed axis, counting
  source neuron j c_j times, so the norm that feeds the readout absorbs s = mult_old / (mult_new * c_j) per
  entry (c_j the copy count with `exact=True`, else the scalar N / N'). exact: whether the copy counts
  are used (`exact` and the embed axis grows); counts: the (E',) copy counts (None unless exact)."""
  e_old, e_new = old_embed.shape[1], new_embed.shape[1]
  exact = exact and e_new > e_old
  counts = None
  if exact:
    counts = jnp.bincount(embed_map, length=e_old)[embed_map].astype(jnp.float32)
  ratio = pz.multiplier(old_embed.replace(fan_in=(1,))) / pz.multiplier(new_embed.replace(fan_in=(1,)))
  return exact, counts, (ratio / counts if exact else ratio * e_old / e_new)


def _gpt_corrected(model: GPT, params: Any, out: Any, maps: dict, exact: bool) -> Any:
  """The GPT's corrections of `out`, the leaf-wise transfer of `params` with `maps`."""
  e_old, e_new = params["embed"].shape[1], out["embed"].shape[1]
  if e_old == e_new:
    return out
  a = model.arch()
  exact, counts, s = _tied_readout_factor(params["embed"], out["embed"], maps.get("embed"), exact)
  final = dict(out["final"])
  if a["tied"]:
    final = {k: _scale_embed(v, s) for k, v in final.items()}
  if exact and a["norm"] == "rmsnorm" and e_new % e_old:
    amp = jnp.sqrt(e_new / (e_old * counts))
    out = dict(out, embed=_scale_embed(out["embed"], amp))
    blocks = dict(out["blocks"])
    for name in ("o", "down", "o_bias", "down_bias"):
      if name in blocks:
        blocks[name] = _scale_embed(blocks[name], amp)
    for name in ("attn_norm_scale", "mlp_norm_scale"):
      blocks[name] = _scale_embed(blocks[name], 1.0 / amp)
    out["blocks"] = blocks
    # the final norm's output copies; tied, the readout rows carry a_j too (the embedding was scaled)
    final["norm_scale"] = _scale_embed(final["norm_scale"], 1.0 / amp ** 2 if a["tied"] else 1.0 / amp)
  return {**out, "final": final}


def _bert_corrected(model: Bert, params: Any, out: Any, maps: dict, exact: bool) -> Any:
  """The Bert's correction of `out`: the tied MLM decoder's, in the MLM transform's LayerNorm."""
  if not model.mlm or params["embed"].shape[1] == out["embed"].shape[1]:
    return out
  _, _, s = _tied_readout_factor(params["embed"], out["embed"], maps.get("embed"), exact)
  mlm = {k: _scale_embed(v, s) if k in ("norm_scale", "norm_bias") else v for k, v in out["mlm"].items()}
  return {**out, "mlm": mlm}
