"""Activation importance scores of rcjax.nn models on calibration data (`rcjax.importance.activations`).

Minitron-style (Muralidharan et al. 2024, "Compact Language Models via Pruning and Knowledge
Distillation"): a neuron's score is the magnitude of its activation, aggregated over the calibration
tokens by a mean of |a| ('mean') or a root mean square ('l2'), and averaged over the layers (and norms)
that have the axis (one index map serves every layer of a shared axis name):

- `embed`: the outputs of every norm (both of each block, and the final one), per channel;
- `mlp`: the MLP activations (the input of the down projection), per neuron;
- `heads`: the L2 norm over head_dim of each query head's attention output (the input of `o`);
- `kv_heads`: the sum of the scores of each kv head's query heads (a GQA group as a whole);
- `head_dim`: |attention output| per head_dim entry, over heads;
- `rcjax.nn.Dense` inputs (e.g. `rcjax.nn.MLP`'s `hidden_l`): |input| per input neuron.

The model's methods are intercepted (`flax.linen.intercept_methods`): each block reduces its activations
to per-neuron sums inside the (scanned) forward pass, so memory is that of the forward pass alone, one
block at a time.
"""

from __future__ import annotations

from typing import Any, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rcjax.nn.gpt import Block, GPT
from rcjax.nn.layers import Dense
from rcjax.rc import sizes

AGGREGATIONS = ("mean", "l2")


def _stats(a: jax.Array, keep: int = 1) -> jax.Array:
  """float32[3, ...]: sum |a|, sum a^2 and the count over all but the last `keep` dims."""
  a = a.astype(jnp.float32)
  dims = tuple(range(a.ndim - keep))
  count = jnp.full(a.shape[a.ndim - keep:], float(np.prod([a.shape[d] for d in dims])), jnp.float32)
  return jnp.stack([jnp.abs(a).sum(dims), jnp.square(a).sum(dims), count])


def _sow(module: nn.Module, name: str, value: jax.Array) -> None:
  module.sow("intermediates", name, value, reduce_fn=lambda a, b: a + b, init_fn=lambda: 0.0)


def _interceptor(next_fun, args, kwargs, context):
  out = next_fun(*args, **kwargs)
  mod, method = context.module, context.method_name
  if isinstance(mod, Block) and method == "normalize":
    _sow(mod, "score:embed", _stats(out))
  elif isinstance(mod, Block) and method == "tap" and args[0] == "mlp":
    _sow(mod, "score:mlp", _stats(args[1]))
  elif isinstance(mod, Block) and method == "tap" and args[0] == "heads":
    o = args[1].astype(jnp.float32)  # B, T, H, D
    _sow(mod, "score:heads", _stats(jnp.sqrt(jnp.sum(jnp.square(o), -1))))
    _sow(mod, "score:head_dim", _stats(o))
  elif isinstance(mod, Dense) and method == "__call__" and mod.base[0] is not None:
    _sow(mod, f"score:{mod.axes[0]}", _stats(args[0]))
  return out


def _batch_stats(model: nn.Module, params: Any, x: jax.Array) -> dict[str, jax.Array]:
  """`{axis: float32[3, N]}` summed over every layer that sowed it."""
  with nn.intercept_methods(_interceptor):
    _, state = model.apply({"params": params}, x, mutable=["intermediates"])
  out: dict[str, jax.Array] = {}
  for path, v in jax.tree_util.tree_flatten_with_path(state.get("intermediates", {}))[0]:
    name = next(k.key for k in path if isinstance(getattr(k, "key", None), str) and k.key.startswith("score:"))
    axis = name[len("score:"):]
    v = v.reshape((-1,) + v.shape[-2:]).sum(0)  # scanned blocks: a leading layers axis
    out[axis] = out[axis] + v if axis in out else v
  return out


_batch_stats_jit = jax.jit(_batch_stats, static_argnums=0)


def activations(model: nn.Module, params: Any, batches: Iterable[Any], *, aggregation: str = "mean",
                progress: bool = False) -> dict[str, np.ndarray]:
  """Activation scores `{axis: float64[N]}` of `model` (an `rcjax.nn.GPT`, or any model of
  `rcjax.nn.Dense` layers such as `rcjax.nn.MLP`) on calibration `batches` (model inputs: token ids
  int32[B, T] for the GPT), for `rcjax.shrink(..., sampler='importance', scores=...)`.

  Args:
    model: the Flax module (its params' widths are read from `params`).
    params: its params (RC leaves; sharded ones stay sharded: only per-neuron sums leave the devices).
    batches: an iterable of inputs; all batches count per token.
    aggregation: 'mean' (mean |activation|) or 'l2' (root mean square) over the calibration tokens.
    progress: a tqdm bar over the batches.

  Returns:
    float64 numpy arrays per axis, averaged over layers; `kv_heads` sums the scores of its query heads.

  Raises:
    ValueError: for no batches, an unknown aggregation, or a model that exposes no activations.

  >>> import jax, jax.numpy as jnp, rcjax
  >>> m = rcjax.nn.MLP(features=(8,), out_features=2)
  >>> x = jnp.ones((4, 3))
  >>> s = activations(m, m.init(jax.random.key(0), x)['params'], [x])
  >>> s['hidden_0'].shape
  (8,)
  """
  if aggregation not in AGGREGATIONS:
    raise ValueError(f"unknown aggregation {aggregation!r}; expected one of {AGGREGATIONS}")
  if progress:
    from tqdm import tqdm

    batches = tqdm(batches, desc="calibration", unit="batch", leave=False)
  total: dict[str, np.ndarray] = {}
  n_batches = 0
  for x in batches:
    n_batches += 1
    for axis, v in _batch_stats_jit(model, params, x).items():
      v = np.asarray(v, np.float64)
      total[axis] = total[axis] + v if axis in total else v
  if not n_batches:
    raise ValueError("activations: no calibration batches given")
  if not total:
    raise ValueError(f"activations: {type(model).__name__} exposes no activations to score (an rcjax.nn.GPT or "
                     "a model of rcjax.nn.Dense layers with width axes)")
  out = {axis: a / n if aggregation == "mean" else np.sqrt(sq / n) for axis, (a, sq, n) in total.items()}
  if isinstance(model, GPT) and "heads" in out:
    out["kv_heads"] = out["heads"].reshape(sizes(params)["kv_heads"], -1).sum(1)
  return out
