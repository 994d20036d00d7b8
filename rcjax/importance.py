"""Importance scores per width axis, for `rcjax.shrink(..., sampler='importance', scores=...)`.

    scores = rcjax.importance.weights(params)                          # no data: weight norms
    scores = rcjax.importance.activations(model, params, batches)      # calibration data (Minitron)
    small = rcjax.shrink(params, key, factor=0.5, sampler='importance', scores=scores)

Both return `{axis: float[N]}`, one score >= 0 per neuron of every width axis they can score (for the GPT:
`embed`, `mlp`, `heads`, `kv_heads`, `head_dim`). The transfer core (`rcjax.transfer`) only accepts scores;
`activations` (`rcjax.nn.importance`) runs the model.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rcjax.maps import tree_blocks
from rcjax.nn.importance import AGGREGATIONS, activations
from rcjax.rc import leaves_with_paths, width_axes


def _slice_rms(x: jax.Array, dim: int) -> jax.Array:
  """RMS of each slice of `x` along `dim`, relative to the RMS of `x` (float32[x.shape[dim]])."""
  x = x.astype(jnp.float32)
  others = tuple(d for d in range(x.ndim) if d != dim)
  per = jnp.sqrt(jnp.mean(jnp.square(x), others))
  return per / jnp.maximum(jnp.sqrt(jnp.mean(jnp.square(x))), jnp.finfo(jnp.float32).tiny)


_slice_rms_jit = jax.jit(_slice_rms, static_argnums=1)


def weights(params: Any) -> dict[str, np.ndarray]:
  """Weight scores `{axis: float64[N]}` of every width axis of an RC pytree, without data.

  A neuron's score is the geometric mean, over the weight matrices holding its axis (leaves with a
  fan-in: norm scales and biases are left out), of the RMS of its slice (its incoming row or outgoing
  column) relative to the RMS of the whole leaf, so every matrix counts alike whatever its
  parametrization's scale; a neuron with a zero slice anywhere scores 0. A kv head also counts the mean
  score of its query heads (axes in blocks per another axis pass their scores to it). Copies of a
  duplicated neuron score the same. Sharded leaves are reduced where they lie.

  >>> import jax, jax.numpy as jnp, rcjax
  >>> m = rcjax.nn.MLP(features=(8,), out_features=2)
  >>> s = weights(m.init(jax.random.key(0), jnp.ones((1, 3)))['params'])
  >>> sorted(s), s['hidden_0'].shape
  (['hidden_0'], (8,))
  """
  widths = width_axes(params)
  logs: dict[str, list] = {a: [] for a in widths}
  for _, box in leaves_with_paths(params):
    if not box.fan_in:
      continue
    for d in box.width_dims:
      with np.errstate(divide="ignore"):
        logs[box.axes[d]].append(np.log(np.asarray(_slice_rms_jit(box.value, d), np.float64)))
  blocks = tree_blocks(params)
  out = {a: np.exp(np.mean(v, 0)) for a, v in logs.items() if v}
  for name, outer in blocks.items():
    if isinstance(outer, str) and name in out and outer in logs and logs[outer]:
      group = np.log(out[name].reshape(widths[outer], -1).mean(1))
      out[outer] = np.exp(np.mean(logs[outer] + [group], 0))
  return out


__all__ = ["AGGREGATIONS", "activations", "weights"]
