"""The paper's statistical evidence for the RC ansatz, as pure reductions over RC leaves (numpy).

The per-neuron statistics (`.R`/`.C` of a weight, the attention neuron sets `QK` and `VO`, a model's blocks)
are defined in `rcjax.rc_stats` and re-exported here (`rcjax.diagnostics.neuron_stats`, ...); this module
correlates them against permutation nulls and compares their distributions across widths.

Null baselines. The correlation of two length-N statistics is compared with its distribution when the
neurons of each statistic are permuted independently (which destroys any shared-index structure and keeps
each marginal): quantiles of |corr| over `permutations` draws from a fixed key, per entry and for the
maximum over entries (the right null for a maximum). Stats are read from the raw stored values: a
correlation is invariant to the parametrization's multiplier.

>>> import jax, jax.numpy as jnp, rcjax
>>> p = rcjax.nn.MLP((16, 16), 3).init(jax.random.key(0), jnp.ones((1, 4)))['params']
>>> sorted(neuron_stats(p, 'hidden_0'))
['Dense_0/bias', 'Dense_0/kernel.C', 'Dense_0/kernel.C_rms', 'Dense_1/kernel.R', 'Dense_1/kernel.R_rms']
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import jax
import numpy as np

from rcjax.rc import path_hash
from rcjax.rc_stats import (  # noqa: F401 - re-exported: rcjax.diagnostics.neuron_stats, ...
    ATTENTION,
    KINDS,
    QK,
    ROLES,
    SUFFIXES,
    VO,
    attention_role,
    axis_label,
    block_stats,
    blocks,
    flat_leaves,
    leaf_of,
    leaf_stats,
    neuron_axes,
    neuron_stats,
)

QUANTILES = (0.95, 0.99)


# --- correlations with permutation nulls ----------------------------------------------------------

def _seed(key: Any) -> list[int]:
  """Entropy for numpy from an int (negative ones too) or a JAX PRNG key (typed or raw uint32)."""
  if isinstance(key, (int, np.integer)):
    return [int(key) % 2**64]
  data = jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  return [int(v) for v in np.asarray(data).ravel()]


def _zscore(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  c = s - s.mean(axis=1, keepdims=True)
  sd = np.sqrt((c * c).mean(axis=1))
  valid = sd > 1e-12 * (1.0 + np.abs(s).max(axis=1))
  return c / np.where(valid, sd, 1.0)[:, None], valid


def _grid(stats: dict[str, np.ndarray]) -> tuple[np.ndarray, list[tuple | None]]:
  """Stack statistics on one neuron grid: `(matrix (K, N), per row None or (index of each neuron's source
  value, one neuron per source value))`.

  1-D vectors are used as they are. 2-D attention statistics (rows = heads) are put on the query-head grid:
  one with fewer rows (kv heads) is repeated for the query heads of its group, `row h <- kv head h // g`,
  and its source index lets the null permute the kv values rather than their copies."""
  arrays = {k: np.asarray(v, np.float64) for k, v in stats.items()}
  if all(a.ndim == 1 for a in arrays.values()):
    return np.stack(list(arrays.values())), [None] * len(arrays)
  heads = max(a.shape[0] for a in arrays.values())
  rows, src = [], []
  for name, a in arrays.items():
    if a.ndim != 2 or heads % a.shape[0]:
      raise ValueError(f"{name}: attention statistics need (heads, head_dim) arrays whose kv heads divide the "
                       f"{heads} query heads, got shape {a.shape}")
    if a.shape[0] == heads:
      rows.append(a.ravel())
      src.append(None)
    else:
      idx = ((np.arange(heads) // (heads // a.shape[0]))[:, None] * a.shape[1] + np.arange(a.shape[1])).ravel()
      rows.append(a.ravel()[idx])
      src.append((idx, np.unique(idx, return_index=True)[1]))
  return np.stack(rows), src


def _permuted(rng: np.random.Generator, z: np.ndarray, src: list[tuple | None]) -> np.ndarray:
  """Each row's neurons permuted independently (a broadcast row: its source values, then broadcast)."""
  if all(i is None for i in src):
    return rng.permuted(z, axis=1)
  out = np.empty_like(z)
  plain = [r for r, i in enumerate(src) if i is None]
  if plain:
    out[plain] = rng.permuted(z[plain], axis=1)
  for r, it in enumerate(src):
    if it is not None:
      out[r] = rng.permutation(z[r, it[1]])[it[0]]
  return out


def _cross(names: Sequence[str], valid: np.ndarray) -> np.ndarray:
  """Pairs (upper triangle) of valid statistics from different leaves."""
  leaf = [leaf_of(n) for n in names]
  k = len(names)
  m = np.array([[i < j and leaf[i] != leaf[j] for j in range(k)] for i in range(k)], dtype=bool).reshape(k, k)
  return m & valid[:, None] & valid[None, :]


def correlate(stats: dict[str, np.ndarray], *, seed: Sequence[int], permutations: int = 200,
              quantiles: Sequence[float] = QUANTILES) -> dict[str, Any]:
  """Correlation matrix of a dict of equal-length statistics, with its permutation null.

  Attention statistics (`QK`/`VO`, arrays (heads, head_dim)) are compared on the query-head grid, k and v
  broadcast from their kv heads (see `_grid`); `n` counts the grid's neurons.

  Returns `{'names', 'n', 'corr' (NaN for constant statistics), 'null_q95', 'null_q99' (per-entry
  quantiles of |corr| under independent permutations), 'max_abs_corr', 'pair' (over pairs of different
  leaves), 'null_max' (the maximum of each permuted draw, one per permutation)}`.
  """
  _check_permutations(permutations)
  names = list(stats)
  if not names:
    return {"names": [], "n": 0, "corr": np.zeros((0, 0)), "max_abs_corr": float("nan"), "pair": None,
            "null_max": np.full(permutations, np.nan), **{_qkey(q): np.zeros((0, 0)) for q in quantiles}}
  s, src = _grid(stats)
  z, valid = _zscore(s)
  n = s.shape[1]
  corr = np.clip(z @ z.T / n, -1.0, 1.0)
  corr[~valid, :] = np.nan
  corr[:, ~valid] = np.nan
  cross = _cross(names, valid)
  rng = np.random.default_rng([int(k) % 2**64 for k in seed])  # numpy wants non-negative entropy
  null = np.empty((permutations,) + corr.shape)
  for p in range(permutations):
    zp = _permuted(rng, z, src)
    null[p] = np.abs(zp @ zp.T) / n
  null_max = null[:, cross].max(axis=1) if cross.any() else np.full(permutations, np.nan)
  out = {"names": names, "n": n, "corr": corr}
  for q in quantiles:
    out[_qkey(q)] = np.where(np.isnan(corr), np.nan, np.quantile(null, q, axis=0))
  if cross.any():
    a = np.where(cross, np.abs(np.nan_to_num(corr)), -1.0)
    i, j = np.unravel_index(np.argmax(a), a.shape)
    out.update(max_abs_corr=float(a[i, j]), pair=(names[i], names[j]))
  else:
    out.update(max_abs_corr=float("nan"), pair=None)
  out["null_max"] = null_max
  return out


def _check_permutations(permutations: int) -> None:
  if not isinstance(permutations, (int, np.integer)) or permutations < 1:
    raise ValueError(f"permutations must be a positive integer (the null's sample size), got {permutations!r}")


def _qkey(q: float) -> str:
  return f"null_q{round(q * 100):d}" if abs(q * 100 - round(q * 100)) < 1e-9 else f"null_q{q}"


def rc_correlation(params: Any, axis: str | Sequence[str], *, key: Any = 0, permutations: int = 200,
                   quantiles: Sequence[float] = QUANTILES, kinds: Iterable[str] = KINDS) -> dict[str, Any]:
  """The correlation matrix of the statistics sharing a neuron index (the paper's Figure 4.2), with nulls.

  Args:
    params: a pytree of RC leaves.
    axis: the neuron axis (a name or a compound tuple).
    key: int or JAX key for the permutation null (deterministic; mixed with the axis name).
    permutations: number of permutation draws.
    quantiles: quantiles of |corr| under the null to report per entry.
    kinds: statistics to include (see `neuron_stats`).

  Returns:
    A flat dict: `names`, `n` (neurons), `corr` (K x K), `null_q95`/`null_q99` (K x K), `max_abs_corr`
    and `pair` over pairs of different leaves, `max_abs_corr_null` (99% quantile of that maximum).

  >>> import jax, jax.numpy as jnp, rcjax
  >>> p = rcjax.nn.MLP((64, 64), 3, bias_init='normal').init(jax.random.key(0), jnp.ones((1, 4)))['params']
  >>> r = rc_correlation(p, 'hidden_0', kinds=('mean', 'vector'))
  >>> r['names'], bool(r['max_abs_corr'] < r['max_abs_corr_null'])  # a fresh init: within the null
  (['Dense_0/bias', 'Dense_0/kernel.C', 'Dense_1/kernel.R'], True)
  """
  label = axis_label(axis)
  r = correlate(neuron_stats(params, axis, kinds=kinds), seed=_seed(key) + [path_hash(label)],
                permutations=permutations, quantiles=quantiles)
  r["axis"] = label
  r["max_abs_corr_null"] = _nanquantile(r["null_max"], max(quantiles))
  return r


def _nanquantile(x: np.ndarray, q: float) -> float:
  x = np.asarray(x, float)
  return float(np.quantile(x, q)) if x.size and not np.isnan(x).all() else float("nan")


def summarize_block(stats: dict[str, dict[str, np.ndarray]], *, key: Any = 0, block: int = 0,
                    permutations: int = 200, quantiles: Sequence[float] = QUANTILES) -> dict[str, Any]:
  """Per-axis correlations of one block and the block's max-abs correlation with its null.

  Args:
    stats: `{axis_label: {stat name: vector}}` (see `block_stats`).
    key, block: the permutation key, mixed with the block index and the axis name.

  Returns:
    `{'block', 'max_abs_corr', 'pair', 'axis', 'null_max' (per permutation), 'max_abs_corr_null_q95'...,
    'axes': {axis_label: correlate(...) result}}`.
  """
  per = {a: correlate(s, seed=_seed(key) + [block, path_hash(a)], permutations=permutations,
                      quantiles=quantiles) for a, s in stats.items()}
  best = max((a for a in per if not math.isnan(per[a]["max_abs_corr"])), key=lambda a: per[a]["max_abs_corr"],
             default=None)
  nulls = [r["null_max"] for r in per.values() if not np.isnan(r["null_max"]).all()]
  null_max = np.max(nulls, axis=0) if nulls else np.full(permutations, np.nan)
  out = {"block": block, "axes": per, "null_max": null_max, "axis": best,
         "max_abs_corr": per[best]["max_abs_corr"] if best else float("nan"),
         "pair": per[best]["pair"] if best else None}
  for q in quantiles:
    out["max_abs_corr_" + _qkey(q)] = _nanquantile(null_max, q)
  return out


def combine_blocks(summaries: Sequence[dict], quantiles: Sequence[float] = QUANTILES) -> dict[str, Any]:
  """Overall max-abs correlation over blocks and its null (the max over blocks of each permuted draw)."""
  vals = [s["max_abs_corr"] for s in summaries]
  ok = [i for i, v in enumerate(vals) if not math.isnan(v)]
  best = max(ok, key=lambda i: vals[i]) if ok else None
  nulls = [s["null_max"] for s in summaries if not np.isnan(s["null_max"]).all()]
  null_max = np.max(nulls, axis=0) if nulls else np.array([np.nan])
  out = {"num_blocks": len(summaries), "max_abs_corr": vals[best] if ok else float("nan"),
         "block": summaries[best]["block"] if ok else None, "pair": summaries[best]["pair"] if ok else None}
  for q in quantiles:
    out["max_abs_corr_" + _qkey(q)] = _nanquantile(null_max, q)
  out["max_abs_corr_null"] = out["max_abs_corr_" + _qkey(max(quantiles))]
  return out


def max_abs_correlation(params: Any, *, key: Any = 0, permutations: int = 200, axes: Sequence | None = None,
                        kinds: Iterable[str] = ("mean",), quantiles: Sequence[float] = QUANTILES) -> dict[str, Any]:
  """Per block, the maximum |corr| between statistics of different leaves sharing a neuron index (the
  paper's Figure 4.4, with `.R`/`.C` as in its caption), and the maximum over blocks, with nulls.

  Args:
    params: a pytree of RC leaves; blocks as in `blocks`.
    key: int or JAX key for the permutation nulls.
    axes: neuron axes to use (default: `neuron_axes` of each block).
    kinds: statistics compared (default `.R`/`.C` means only, as in the paper).

  Returns:
    A flat dict: `max_abs_corr`, `max_abs_corr_null` (99% quantile of the null of the maximum over all
    blocks), `max_abs_corr_null_q95`, `num_blocks`, `block`/`pair` (where the maximum is) and, per block
    i, `block/i/max_abs_corr`, `block/i/max_abs_corr_null`, `block/i/pair`.
  """
  sums = [summarize_block(block_stats(leaves, axes, kinds), key=key, block=i, permutations=permutations,
                          quantiles=quantiles) for i, leaves in blocks(params)]
  out = combine_blocks(sums, quantiles)
  top = _qkey(max(quantiles))
  for s in sums:
    out[f"block/{s['block']}/max_abs_corr"] = s["max_abs_corr"]
    out[f"block/{s['block']}/max_abs_corr_null"] = s["max_abs_corr_" + top]
    out[f"block/{s['block']}/pair"] = s["pair"]
  return out


# --- distributions across widths ------------------------------------------------------------------

def wasserstein1(a: Any, b: Any) -> float:
  """1-D Wasserstein-1 distance between the empirical distributions of samples `a` and `b` (any sizes)."""
  a, b = np.sort(np.ravel(np.asarray(a, np.float64))), np.sort(np.ravel(np.asarray(b, np.float64)))
  if not a.size or not b.size:
    raise ValueError(f"wasserstein1 needs two non-empty samples, got sizes {a.size} and {b.size}")
  grid = np.sort(np.concatenate([a, b]))
  fa = np.searchsorted(a, grid[:-1], side="right") / a.size
  fb = np.searchsorted(b, grid[:-1], side="right") / b.size
  return float(np.sum(np.abs(fa - fb) * np.diff(grid)))


def distribution_distance(a: Any, b: Any, *, reference: tuple[Any, Any] | None = None, key: Any = 0,
                          permutations: int = 200) -> dict[str, float]:
  """How far apart the distributions of two per-neuron statistics are (the paper's Figure 4.5 claim).

  Args:
    a, b: samples (e.g. row means of the MLP weight of a width-256 and a width-1024 model).
    reference: an optional pair to read the distance against (e.g. the same model at init and trained).
    key, permutations: for the null: W1 between random splits of the pooled sample into sizes |a|, |b|
      (what sampling alone gives when both come from one distribution).

  Returns:
    `{'w1', 'w1_null_q95', 'reference' (W1 of the reference pair, or NaN), 'relative' (w1 / reference)}`.

  >>> import numpy as np
  >>> r = distribution_distance(np.arange(4.0), np.arange(4.0) + 1, reference=(np.zeros(3), np.full(3, 4.0)))
  >>> r['w1'], r['reference'], r['relative']
  (1.0, 4.0, 0.25)
  """
  _check_permutations(permutations)
  a, b = np.ravel(np.asarray(a, np.float64)), np.ravel(np.asarray(b, np.float64))
  w1 = wasserstein1(a, b)
  pool = np.concatenate([a, b])
  rng = np.random.default_rng(_seed(key) + [path_hash("distribution_distance")])
  null = [wasserstein1(*np.split(rng.permutation(pool), [a.size])) for _ in range(permutations)]
  ref = wasserstein1(*reference) if reference is not None else float("nan")
  return {"w1": w1, "w1_null_q95": _nanquantile(np.array(null), 0.95), "reference": ref,
          "relative": w1 / ref if ref > 0 else float("nan")}
