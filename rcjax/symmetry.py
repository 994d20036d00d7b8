"""Function-preserving symmetry breaking of grown networks, and a diagnostic of whether copies separate.

A growth duplicates neurons: new neuron j copies old neuron pi(j). Exact copies get identical gradients
(growth commutes with a training step), so they stay copies and the grown network computes the small
one at a higher cost. Two knobs of `rcjax.grow`/`rcjax.transfer` break the symmetry without changing the
function, both acting only on neurons with c >= 2 copies, on the entries of the leaves where the grown
axis is a fan-in axis (the copies' outgoing weights, the next layer's input rows):

- `split_rate` s (LEMON / Net2Net: unequal fan-out splits): row j is multiplied by
  `rho_j = 1 + s * (z_j - mean of z over the copies of pi(j))`, `z ~ N(0, 1)`, so the rho of one source's
  copies average to 1: sum_j rho_j w / c = w, the function is that of the equal split, and copy j's
  incoming gradients are rho_j times those of the equal split (they differ from step one).
  rho is drawn per axis (one per new neuron, the same for every leaf reading that axis, and for params
  and optimizer state transferred with the same key). Large s can make some rho_j negative; the function
  is still preserved.
- `cancel_rate` r (HyperCloning: cancelling noise): each such entry gets `eps = n - mean of n over the
  copies of its source` (over the product of copy groups when several fan-in axes grow), `n ~ N(0,
  (r * RMS(leaf))**2)`, drawn per leaf: the copies carry identical activations, so the eps cancel in the
  sum. Unlike the split it differs per output entry, so the copies' gradients are not proportional.

Both keep exactly the function that the equal-split transfer computes wherever the copies of one source
neuron carry identical activations into the leaf, which holds for any per-neuron computation (biases,
activations, gates, norms over the axis: a norm's statistics treat all copies of one neuron alike).
They cannot know of a leaf used twice with other fan-in axes (a tied matrix that is one layer's input
rows and another layer's output columns): the entries split for one use would break the other.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rcjax.rc import leaves_with_paths, path_hash, sizes as tree_sizes


def _group_mean(x: jax.Array, d: int, m: jax.Array, n_old: int) -> jax.Array:
  """`x`'s entries along dim `d` replaced by the mean over their copy group (entries with one map value)."""
  xd = jnp.moveaxis(x, d, 0)
  count = jnp.maximum(jnp.bincount(m, length=n_old), 1).astype(x.dtype)
  mean = jax.ops.segment_sum(xd, m, num_segments=n_old) / count.reshape((-1,) + (1,) * (x.ndim - 1))
  return jnp.moveaxis(mean[m], 0, d)


def split_factors(key: jax.Array, maps: Mapping[str, jax.Array], old_sizes: Mapping[str, int],
                  split_rate: float) -> dict[str, jax.Array]:
  """`{axis: float32[new]}`: each new neuron's rho (mean 1 over the copies of its source neuron, and
  exactly 1 for a neuron with one copy), drawn from the axis's own key (folded in from its name)."""
  out = {}
  for name, m in maps.items():
    z = jax.random.normal(jax.random.fold_in(key, path_hash("split/" + name)), m.shape, jnp.float32)
    out[name] = 1.0 + split_rate * (z - _group_mean(z, 0, m, old_sizes[name]))
  return out


def cancelling_noise(key: jax.Array, shape: tuple, std: jax.Array, dims: list[int], maps: list[jax.Array],
                     old: list[int]) -> jax.Array:
  """float32 noise of `shape` with zero sum over each product of copy groups along `dims` (whose maps
  and old sizes are `maps`, `old`): zero where the group has one entry."""
  n = jax.random.normal(key, shape, jnp.float32) * std
  mean = n
  for d, m, n_old in zip(dims, maps, old):  # the product group's mean: the per-dim means compose
    mean = _group_mean(mean, d, m, n_old)
  return n - mean


def _broadcast(v: jax.Array, d: int, ndim: int) -> jax.Array:
  return v.reshape((1,) * d + (-1,) + (1,) * (ndim - d - 1))


def break_symmetry(x: jax.Array, box: Any, power: int, mapped: list[int], maps: Mapping[str, jax.Array],
                   old_sizes: Mapping[str, int], rho: Mapping[str, jax.Array] | None, cancel_rate: float,
                   key: jax.Array) -> jax.Array:
  """One transferred leaf value `x` (at the new shape) with the split and the cancelling noise applied.

  Params (`power` 0): fan-in dims times rho, plus the cancelling noise. Gradient statistics (`power` p):
  the gradients of a split network are rho_j times the equal split's along the axis's fan-out dims
  (the copy's incoming weights), so those dims take rho**p; the noise has no counterpart (see
  docs/symmetry.md).
  """
  if not jnp.issubdtype(x.dtype, jnp.inexact):
    return x
  dims = [d for d in mapped if box.axes[d] in old_sizes and (d in box.fan_in) == (power == 0)]  # width axes
  out = x.astype(jnp.float32)
  if rho is not None:
    for d in dims:
      out = out * _broadcast(rho[box.axes[d]] ** max(power, 1), d, x.ndim)
  if cancel_rate > 0 and power == 0 and dims:
    rms = jnp.sqrt(jnp.mean(jnp.square(out)))
    names = [box.axes[d] for d in dims]
    out = out + cancelling_noise(key, x.shape, cancel_rate * rms, dims, [maps[n] for n in names],
                                 [old_sizes[n] for n in names])
  return out.astype(x.dtype)


# --- the diagnostic -----------------------------------------------------------------------------

def _incoming(tree, name: str, n: int) -> list[jax.Array]:
  """float32[n, F] blocks: every leaf's entries along axis `name` where it is not a fan-in dim (a neuron's
  incoming weights, bias, norm scale), each divided by its RMS so no leaf dominates by its scale."""
  out = []
  for _, box in leaves_with_paths(tree):
    x = box.value
    if not jnp.issubdtype(x.dtype, jnp.inexact):
      continue
    for d, a in enumerate(box.axes):
      if a == name and d not in box.fan_in and x.shape[d] == n:
        v = jnp.moveaxis(x.astype(jnp.float32), d, 0).reshape(n, -1)
        out.append(v / jnp.maximum(jnp.sqrt(jnp.mean(jnp.square(v))), 1e-30))
        break
  return out


def _spread(x: jax.Array, m: jax.Array) -> jax.Array:
  n = x.shape[0]
  count = jnp.bincount(m, length=n)[m].astype(jnp.float32)  # copies of each new neuron's source
  within = jnp.sum(jnp.square(x - _group_mean(x, 0, m, n)), axis=1)  # segments by source (< n of them)
  multi = count >= 2
  # unbiased variances: sum over a group / (c - 1), across neurons / (n - 1)
  groups = jnp.maximum(jnp.sum(multi / jnp.maximum(count, 1.0)), 1.0)
  w = jnp.sum(jnp.where(multi, within / jnp.maximum(count - 1.0, 1.0), 0.0)) / groups
  across = jnp.sum(jnp.square(x - jnp.mean(x, axis=0))) / max(n - 1, 1)
  return w / jnp.maximum(across, 1e-30)


@jax.jit
def _spreads(tree, maps: dict[str, jax.Array]) -> dict[str, jax.Array]:
  out = {}
  for name, m in maps.items():
    blocks = _incoming(tree, name, m.shape[0])
    if blocks:
      out[name] = _spread(jnp.concatenate(blocks, axis=1), m)
  return out


def copy_spread(tree: Any, maps: Mapping[str, jax.Array]) -> dict[str, float]:
  """`{axis: spread}`: how far the copies of one source neuron have moved apart, per grown axis.

  For each axis in `maps` (the growth's index maps, e.g. `rcjax.index_maps(key, old, new, blocks=...)`,
  the maps `grow` draws from that key) on which some source neuron has >= 2 copies: the mean, over
  such source neurons, of the (unbiased) variance of their copies' incoming weight vectors, divided by
  the variance of the incoming vectors across all neurons. The incoming vector of a neuron is every
  leaf's entries along the axis where it is not fan-in (incoming weights, biases, norm scales), each
  leaf divided by its RMS. 0: copies identical (an exact growth, still the small network); ~1: copies
  as different as unrelated neurons.

  Args:
    tree: params (RC leaves) at the grown sizes.
    maps: `{axis: int[new]}`; axes absent from `tree`, or with no neuron copied twice, are left out.

  Returns:
    A dict of Python floats.

  >>> import jax, jax.numpy as jnp, rcjax
  >>> p = {'w': rcjax.RC(jnp.arange(6.0).reshape(2, 3), axes=('in', 'hidden'), fan_in=(0,),
  ...                    base=(None, 3), param='mf')}
  >>> maps = rcjax.index_maps(jax.random.key(0), {'hidden': 3}, {'hidden': 6})
  >>> rcjax.copy_spread(rcjax.grow(p, jax.random.key(0)), maps)
  {'hidden': 0.0}
  """
  have = tree_sizes(tree)
  use = {}
  for name, m in maps.items():
    if name not in have:
      continue
    m = np.asarray(m)
    if m.ndim != 1 or m.shape[0] != have[name]:
      raise ValueError(f"copy_spread: the map of axis {name!r} has {m.shape[0] if m.ndim == 1 else m.shape} "
                       f"entries, the tree's axis {have[name]} (give the maps of the growth that made it)")
    if m.min() < 0 or m.max() >= m.shape[0]:
      bad = int(m.min() if m.min() < 0 else m.max())
      raise ValueError(f"copy_spread: the map of axis {name!r} holds {bad}, outside [0, {m.shape[0]})")
    if np.bincount(m).max(initial=0) >= 2:
      use[name] = jnp.asarray(m, jnp.int32)
  return {k: float(v) for k, v in _spreads(tree, use).items()}
