"""Index maps: for every width axis, which old neuron each new neuron copies (`rcjax.index_maps`).

Maps are drawn per axis from the axis's own key (folded in from its name), so a map does not depend on
which other axes are mapped; they are sorted, so gathers stream (except the map of an axis in blocks per
another mapped axis, whose whole blocks follow that axis's map: `[0, 1, 0, 1, 2, 3, 2, 3]`).
`rcjax.transfer` draws them inside its jitted function; `index_maps` gives them to the caller, with
`apply_maps` the other half of a transfer.
"""

from __future__ import annotations

import functools

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rcjax.rc import leaves_with_paths, path_hash

SAMPLERS = ("stratified", "iid", "stride")
# Samplers that keep the neurons with the highest scores (`rcjax.shrink(..., scores=...)`; see `_score_picker`).
SCORE_SAMPLERS = ("importance", "importance-sample")

def _check_key(key: Any) -> None:
  ok = isinstance(key, jax.Array) and (
      jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
      or (key.dtype == jnp.uint32 and key.shape == (2,)))
  if not ok:
    raise TypeError(f"key must be a jax.random key (jax.random.key(0)), got {type(key).__name__}")


def _check_sampler(sampler: str) -> None:
  if sampler not in SAMPLERS:
    raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")


def _subset(key: jax.Array, n: int, k: int) -> jax.Array:
  """bool[n], true at the k entries with the smallest of n iid uint32 draws (ties at the k-th value go to
  the lower index): a uniform k-subset unless the k-th and (k+1)-th smallest draws are equal, which has
  probability about n / 2**32 (one round of a sort-based shuffle needs all n keys distinct: about
  n**2 / 2**33). It sorts the draws alone, which XLA:CPU does with a built-in comparison; the key-value
  sort of `jax.random.permutation` calls a compiled comparator per comparison (6-7x slower at n >= 3000)."""
  return _smallest(jax.random.bits(key, (n,), jnp.uint32), k)


def _smallest(bits: jax.Array, k: int) -> jax.Array:
  """bool mask of the k smallest entries of a 1-D array, ties at the k-th value to the lower index."""
  if k == 0:
    return jnp.zeros(bits.shape, bool)
  kth = jnp.sort(bits)[k - 1]
  below, at = bits < kth, bits == kth
  return below | (at & (jnp.cumsum(at, dtype=jnp.int32) <= k - jnp.sum(below, dtype=jnp.int32)))


def _one_map(key: jax.Array, n_old: int, n_new: int, sampler: str) -> jax.Array:
  if sampler == "stride":  # in 64 bits at trace time: n_new * n_old passes 2**31 at widths of ~46341
    return jnp.asarray((np.arange(n_new, dtype=np.int64) * n_old // n_new).astype(np.int32))
  if sampler == "iid":
    return jnp.sort(jax.random.randint(key, (n_new,), 0, n_old, dtype=jnp.int32))
  if n_new < n_old:  # stratified pruning: a uniform subset without replacement, in order
    return jnp.nonzero(_subset(key, n_old, n_new), size=n_new)[0].astype(jnp.int32)
  q, r = divmod(n_new, n_old)  # every neuron q times, r more drawn without replacement
  extra = _subset(key, n_old, r).astype(jnp.int32)
  return jnp.repeat(jnp.arange(n_old, dtype=jnp.int32), q + extra, total_repeat_length=n_new)


def _axis_key(key, name: str):
  return jax.random.fold_in(key, path_hash("axis/" + name))


def _maps(key, old: tuple, new: tuple, sampler: str, blocks: tuple = (), scores=None) -> dict[str, jax.Array]:
  """Maps for the axes in `new`; a blocked axis (see `RC.blocks`) maps whole blocks with its outer axis's
  map (identity for fixed blocks or an outer axis not in `new`) and entries within blocks with one map."""
  old, new, blocks = dict(old), dict(new), dict(blocks)
  if sampler in SCORE_SAMPLERS:
    pick = _score_picker(key, sampler, scores)
  else:
    pick = lambda name, n_old, n_new, n_blocks: _one_map(_axis_key(key, name), n_old, n_new, sampler)
  maps = {name: pick(name, old[name], n, None) for name, n in new.items() if name not in blocks}
  for name, outer in blocks.items():
    if name not in new:
      continue
    o_old, o_new = (outer, outer) if isinstance(outer, int) else (old[outer], new.get(outer, old[outer]))
    i_old, i_new = old[name] // o_old, new[name] // o_new
    outer_map = maps.get(outer) if isinstance(outer, str) else None
    outer_map = jnp.arange(o_old, dtype=jnp.int32) if outer_map is None else outer_map
    inner_map = pick(name, i_old, i_new, o_old)
    maps[name] = (outer_map[:, None] * i_old + inner_map[None, :]).reshape(-1)
  return maps


def index_maps(key: jax.Array, old_sizes: Mapping[str, int], new_sizes: Mapping[str, int],
               sampler: str = "stratified", blocks: Mapping[str, str | int] | None = None
               ) -> dict[str, jax.Array]:
  """Sorted index maps `{axis: int32[new]}` sampling new neurons from old ones (see `blocks` below).

  Samplers: 'stratified' (default; growth: every neuron floor(N'/N) times plus a uniform sample without
  replacement for the remainder; pruning: a uniform subset), 'iid' (N' draws with replacement) and
  'stride' (deterministic, evenly spaced: `i * N // N'`). Each axis's key is folded in from its name, so
  a map does not depend on which other axes are mapped.

  `blocks` (`{axis: outer}`, as in `RC.blocks`) keeps entries in their blocks: with `{'heads':
  'kv_heads'}` new query head `b' * G' + g'` copies old head `pi_kv(b') * G + pi_g(g')` (G = heads per
  kv head), so every query head stays with a copy of its own kv head; with `{'head_dim': 2}` both halves
  of a RoPE head share one map of their pairs. (`grow`/`transfer` read blocks from the RC leaves.)

  >>> m = index_maps(jax.random.key(0), {'hidden': 3}, {'hidden': 6})
  >>> m['hidden'].tolist()
  [0, 0, 1, 1, 2, 2]
  >>> index_maps(jax.random.key(0), {'d': 4}, {'d': 8}, blocks={'d': 2})['d'].tolist()
  [0, 0, 1, 1, 2, 2, 3, 3]
  """
  _check_key(key)
  _check_sampler(sampler)
  blocks = dict(blocks or {})
  for name, n in new_sizes.items():
    if name not in old_sizes:
      raise ValueError(f"index_maps: axis {name!r} missing from old_sizes {dict(old_sizes)}")
    _check_size(name, n)
    _check_size(name, old_sizes[name])
  new = dict((k, int(v)) for k, v in new_sizes.items())
  old = {k: int(old_sizes[k]) for k in new}
  for name, outer in blocks.items():
    if isinstance(outer, str):
      if outer not in old_sizes:
        raise ValueError(f"index_maps: blocks of axis {name!r} refer to axis {outer!r}, "
                         "missing from old_sizes")
      old[outer] = int(old_sizes[outer])
  _check_blocks(blocks, old, new)
  return _maps_jit(key, tuple(sorted(old.items())), tuple(sorted(new.items())), sampler,
                   tuple(sorted((k, v) for k, v in blocks.items() if k in new)))


_maps_jit = jax.jit(_maps, static_argnums=(1, 2, 3, 4))


def _check_blocks(blocks: Mapping[str, str | int], old: Mapping[str, int], new: Mapping[str, int],
                  direction: str = "transfer") -> None:
  """Block sizes must divide the axis at the old and the new size (and not shrink in a growth, where
  entries of a block would be dropped while every axis grows or stays)."""
  for name, outer in blocks.items():
    if name not in new:
      continue
    o_old, o_new = (outer, outer) if isinstance(outer, int) else (old[outer], new.get(outer, old[outer]))
    what = f"{outer} blocks" if isinstance(outer, int) else f"axis {outer!r}"
    for size, o, when in ((old[name], o_old, "old"), (new[name], o_new, "new")):
      if size % o:
        raise ValueError(f"axis {name!r} is laid out in blocks per {what}: its {when} size {size} must be "
                         f"a multiple of {o}")
    i_old, i_new = old[name] // o_old, new[name] // o_new
    if direction in ("grow", "exact=True", "transfer (no axis shrinks)") and i_new < i_old:
      raise ValueError(f"{direction} would shrink the blocks of axis {name!r} per {what} from {i_old} to "
                       f"{i_new} entries; grow {name!r} to {i_old * o_new} too")


def tree_blocks(tree: Any) -> dict[str, str | int]:
  """`{axis: outer}` from the `blocks` of every RC leaf; raises ValueError if two leaves disagree."""
  out: dict[str, tuple[str | int, str]] = {}
  for path, box in leaves_with_paths(tree):
    for name, outer in box.blocks:
      if name in out and out[name][0] != outer:
        raise ValueError(f"axis {name!r} is in blocks per {out[name][0]!r} at {out[name][1]} but per "
                         f"{outer!r} at {path}")
      out[name] = (outer, path)
  return {k: v for k, (v, _) in out.items()}


def inverse_maps(maps: Mapping[str, jax.Array], old_sizes: Mapping[str, int]) -> dict[str, jax.Array]:
  """For growth maps that hit every old neuron, maps back: `inv[i]` is the first new neuron copying `i`.

  `apply_maps(apply_maps(p, maps), inverse_maps(maps, sizes(p))) == p` (up to float rounding of the
  fan-in rescaling, exact for power-of-two ratios), for growth with `exact=False` (uniform rescaling,
  which the way back undoes); an `exact=True` growth at a non-integer ratio rescales each copy by its
  own count, which no map undoes. Raises ValueError if a map misses an old neuron.

  >>> inverse_maps({'hidden': jnp.array([0, 0, 1, 1, 2, 2])}, {'hidden': 3})['hidden'].tolist()
  [0, 2, 4]
  """
  out = {}
  for name, m in maps.items():
    m = np.asarray(m)
    n_old = int(old_sizes[name])
    inv = np.searchsorted(m, np.arange(n_old), side="left")
    if np.any(inv >= len(m)) or np.any(m[np.minimum(inv, len(m) - 1)] != np.arange(n_old)):
      raise ValueError(f"inverse_maps: the map of axis {name!r} is not sorted or misses some of its "
                       f"{n_old} old neurons (pruning or iid maps have no inverse)")
    out[name] = jnp.asarray(inv, jnp.int32)
  return out


def _scalar(x: Any) -> Any:
  """A concrete 0-d numpy/JAX number as a Python number (else `x` as it is)."""
  if isinstance(x, (np.ndarray, jax.Array)) and x.ndim == 0 and not isinstance(x, jax.core.Tracer):
    return x.item()
  return x


def _check_size(name: str, n: Any) -> None:
  n = _scalar(n)
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
    raise TypeError(f"size of axis {name!r} must be an int, got {n!r}")
  if n <= 0:
    raise ValueError(f"size of axis {name!r} must be positive, got {n}")


# --- shrinking by importance scores -------------------------------------------------------------

def _copy_rank(score: jax.Array) -> jax.Array:
  """int32[n]: how many lower-indexed neurons have exactly the same score (0 for the first copy)."""
  n = score.shape[0]
  order = jnp.argsort(-score, stable=True)  # equal scores adjacent, in index order
  s = score[order]
  pos = jnp.arange(n, dtype=jnp.int32)
  start = jax.lax.cummax(jnp.where(jnp.concatenate([jnp.ones(1, bool), s[1:] != s[:-1]]), pos, 0))
  return jnp.zeros(n, jnp.int32).at[order].set(pos - start)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _top(key: jax.Array, score: jax.Array, k: int, stochastic: bool) -> jax.Array:
  """Sorted int32[k]: the k neurons ranked first by (copy rank, -score or a race time, index).

  Neurons with equal scores (the copies of a duplicated neuron) are ranked one copy per score first, so
  a k that the distinct scores cover keeps k distinct neurons. `stochastic`: without replacement,
  proportionally to score (Efraimidis-Spirakis: the k smallest Exp(1) / score; score 0 comes last)."""
  n = score.shape[0]
  if stochastic:
    e = jax.random.exponential(key, (n,), jnp.float32)
    primary = jnp.where(score > 0, e / jnp.where(score > 0, score, 1.0), jnp.inf)
  else:
    primary = -score
  order = jnp.lexsort((jnp.arange(n), primary, _copy_rank(score)))
  return jnp.sort(order[:k]).astype(jnp.int32)


def _score_picker(key, sampler: str, scores):
  """`pick(name, n_old, n_new, n_blocks)` for `_maps` under the SCORE_SAMPLERS: the top-k (or a proportional
  sample) of an axis by its score; within blocks (`n_blocks` of them) the same entries in every block, by
  the scores summed over blocks. Axes at their old size map to the identity."""
  scores, stochastic = dict(scores or {}), sampler == "importance-sample"

  def pick(name, n_old, n_new, n_blocks):
    if n_new == n_old:
      return jnp.arange(n_old, dtype=jnp.int32)
    score = jnp.asarray(scores.get(name), jnp.float32)
    if n_blocks is not None:
      score = score.reshape(n_blocks, n_old).sum(0)
    return _top(_axis_key(key, name), score, n_new, stochastic)

  return pick


def check_scores(scores: Any, old: Mapping[str, int], new: Mapping[str, int], blocks: Mapping[str, str | int],
                 sampler: str) -> dict[str, jax.Array]:
  """Validate `scores` (`{axis: float[N]}`) for a SCORE_SAMPLERS shrink from `old` to `new` sizes and
  return those the maps need, as float32 arrays. ValueError names the axis: an axis that grows, an axis
  that shrinks without scores, a score of the wrong length, NaN, inf or negative scores, an unknown axis."""
  for name, n in new.items():
    if n > old[name]:
      raise ValueError(f"sampler={sampler!r} only shrinks, but axis {name!r} grows from {old[name]} to {n} "
                       "(grow with 'stratified', 'iid' or 'stride')")
  if not isinstance(scores, Mapping):
    raise TypeError(f"sampler={sampler!r} needs scores={{axis: float[N]}} (rcjax.importance.weights(params) "
                    f"or rcjax.importance.activations(...)), got {type(scores).__name__}")
  for name in scores:
    if name not in old:
      raise ValueError(f"scores name axis {name!r}, which this pytree does not have (axes: {sorted(old)})")
  out = {}
  for name, n in new.items():
    outer = blocks.get(name)
    o_old = 1 if outer is None else outer if isinstance(outer, int) else old[outer]
    o_new = 1 if outer is None else outer if isinstance(outer, int) else new.get(outer, old[outer])
    if n // o_new > old[name] // o_old:
      raise ValueError(f"sampler={sampler!r} only shrinks, but the blocks of axis {name!r} per {outer!r} grow "
                       f"from {old[name] // o_old} to {n // o_new} entries; shrink {name!r} with {outer!r}")
    if n // o_new == old[name] // o_old:
      continue  # kept whole (or moved in whole blocks): no scores needed
    if name not in scores:
      raise ValueError(f"sampler={sampler!r}: axis {name!r} shrinks from {old[name]} to {n} but scores has no "
                       f"entry for it (scores has {sorted(scores)})")
    s = scores[name]
    if np.shape(s) != (old[name],):
      raise ValueError(f"scores[{name!r}] has shape {np.shape(s)}, expected ({old[name]},): one score per "
                       f"neuron of axis {name!r}")
    if not isinstance(s, jax.core.Tracer):
      v = np.asarray(s, np.float64)
      if not np.all(np.isfinite(v)):
        raise ValueError(f"scores[{name!r}] holds {int(np.sum(~np.isfinite(v)))} NaN or infinite value(s)")
      if np.any(v < 0):
        raise ValueError(f"scores[{name!r}] holds negative values (min {v.min():g}); scores are magnitudes >= 0")
    out[name] = jnp.asarray(s, jnp.float32)
  return out
