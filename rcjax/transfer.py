"""Transfer between widths: sample neurons from the trained network's empirical measure.

For every width axis an index map `pi: [N'] -> [N]` picks, for each target neuron, the source neuron it
copies; every leaf is gathered along every width axis with that axis's map (leaves sharing an axis name
share its map). What the function sees is the effective weight `multiplier(N) * W`, so entries along a
grown fan-in axis are rescaled: by `multiplier(N) / multiplier(N') * N / N'` (uniform), or per source
neuron by `multiplier(N) / multiplier(N') / count(i)` with `exact=True`, which preserves the function for
any ratio N'/N >= 1.

Optimizer states that mirror params transfer with the same maps. If the large network is the small one
with duplicated neurons, its gradients are `multiplier(N') / multiplier(N) / count(j)` times the small
gradients along each width fan-out axis; first moments (momentum, Adam `mu`) scale by that factor and
second moments (Adam `nu`) by its square. Then one training step commutes with growth whenever the
per-leaf learning rates satisfy, for every leaf class,
    SGD:  lr'/lr = (multiplier(N)/multiplier(N'))**2 * count_out / count_in
    Adam: lr'/lr = multiplier(N)/multiplier(N') / count_in        (eps = 0, no weight decay)
With integer factors k this holds for mean-field and muP, under SGD (with or without momentum) and
under Adam; it fails for SP and NTK, whose learning dynamics are not width-consistent (e.g. SP input
weights would need lr'/lr = k). tests/test_optimizer_transfer.py checks all eight pairs.

`split_rate` / `cancel_rate` break that symmetry and keep the function (`rcjax.symmetry`).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from rcjax import kernels
from rcjax import parametrization as pz
from rcjax.depth import DEPTH_AXIS, check_mode, depth_map, new_blocks
from rcjax.gather import _broadcast, _gather, _on_cpu
from rcjax.maps import (SCORE_SAMPLERS, _check_blocks, _check_key, _check_sampler, _check_size, _maps, _scalar,
                        check_scores, tree_blocks)
from rcjax.maps import index_maps as index_maps, inverse_maps as inverse_maps  # re-exported (rcjax.nn.gpt uses them)
from rcjax.sharding import constrain, fit_spec, gather_plan, leaf_shardings, spec_tuple
from rcjax.rc import RC, _axes_info, is_rc, leaves_with_paths, path_hash, sizes as tree_sizes, width_axes
from rcjax.symmetry import break_symmetry, split_factors

# Optimizer-state fields holding gradient statistics: power 1 (linear in the gradient) or 2 (squared):
# momentum, Adam/Lion/AdaBelief `mu`, `nu`, AMSGrad `nu_max`, Adagrad/RSS `sum_of_squares`, Adadelta `e_g`.
MOMENT_FIELDS = {"mu": 1, "trace": 1, "momentum": 1, "acc_grads": 1, "ema": 1, "grad_acc": 1, "nu": 2,
                 "nu_max": 2, "sum_of_squares": 2, "e_g": 2}
# Fields no power describes: refused rather than transferred as if they were params.
UNSUPPORTED_FIELDS = {
    "e_x": "Adadelta's squared updates, which no gradient power describes",
    "v_row": "Adafactor's factored second moments, which do not have the params' shapes",
    "v_col": "Adafactor's factored second moments, which do not have the params' shapes"}


# --- applying maps to a pytree ------------------------------------------------------------------

def _moment_power(path: tuple, default: int) -> int:
  power = default
  for k in path:
    name = getattr(k, "name", None)
    if name in MOMENT_FIELDS:
      power = MOMENT_FIELDS[name]
    elif name in UNSUPPORTED_FIELDS:
      raise ValueError(f"cannot transfer optimizer state {jax.tree_util.keystr(path)}: {name!r} holds "
                       f"{UNSUPPORTED_FIELDS[name]} (transfer the params alone and start this optimizer afresh)")
  return power


def _check_fields(tree) -> None:
  """Refuse optimizer states with `UNSUPPORTED_FIELDS` before anything else reads their shapes."""
  for path, _ in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_rc)[0]:
    _moment_power(path, 0)


def _map_leaf(box: RC, path: str, power: int, maps, counts, fresh, key, exact: bool, r2: float,
              repeats: dict[str, int], sharding: NamedSharding | None = None, pallas: tuple = (False, False),
              trusted: bool = True, zero_new: jax.Array | None = None, sym: tuple = (None, 0.0, None)):
  # width dims and the depth axis (fixed, but mapped by a depth transfer: gathered, never rescaled)
  mapped = [d for d, a in enumerate(box.axes) if a in maps and (box.base[d] is not None or a == DEPTH_AXIS)]
  if not mapped:
    return box
  x, old_shape = box.value, box.shape
  names = [box.axes[d] for d in mapped]
  spec0 = None if sharding is None else spec_tuple(sharding, len(old_shape))
  new_shape = tuple(maps[box.axes[d]].shape[0] if d in mapped else n for d, n in enumerate(old_shape))
  ndim = len(new_shape)

  # Rescaling: params (power 0) along fan-in; gradient statistics (power p) along width fan-out.
  if power == 0:
    scalar = pz.multiplier(box) / pz.multiplier(box, new_shape)
    side = [d for d in mapped if d in box.fan_in and box.base[d] is not None]
  else:
    scalar = pz.multiplier(box, new_shape) / pz.multiplier(box)
    side = [d for d in mapped if d not in box.fan_in and box.base[d] is not None]
  factor = None
  for d in side:
    if exact and box.axes[d] not in repeats:  # integer repeats have uniform counts
      name = box.axes[d]
      vec = _broadcast(1.0 / counts[name][maps[name]].astype(jnp.float32), d, ndim)
      factor = vec if factor is None else factor * vec
    else:
      scalar *= old_shape[d] / new_shape[d]
  scalar = scalar ** max(power, 1)
  if factor is not None:
    factor = (factor ** power if power > 1 else factor) * scalar
  elif scalar != 1.0:
    factor = float(scalar)
  if factor is not None and not jnp.issubdtype(x.dtype, jnp.inexact):
    raise ValueError(f"{path}: this transfer rescales the leaf along axis {box.axes[side[0]]!r} (its "
                     f"parametrization's fan-in correction), but it holds {x.dtype} values: only floating-point "
                     "leaves can be rescaled")

  if sharding is None or all(n in repeats for n in names):
    # Unsharded, or integer repeats: broadcast + reshape partitions locally (no collectives). A scalar
    # factor goes with the gather (into the Pallas kernel's pass, where it runs).
    scale, factor = (factor, None) if isinstance(factor, float) else (None, factor)
    x = _gather(x, mapped, names, maps, repeats, cpu=_on_cpu(),
                pallas=pallas if sharding is None else (False, False), scale=scale, trusted=trusted)
  else:
    # Sharded leaves: gather only along unsharded dims, in the order and layouts of
    # rcjax.sharding.gather_plan; pin every layout. Identity maps (a kept size) are no gathers.
    dims = tuple(d for d in mapped if repeats.get(box.axes[d]) != 1)
    for d, spec in gather_plan(spec0, old_shape, new_shape, dims, sharding.mesh):
      x = constrain(x, sharding.mesh, spec)
      x = jnp.take(x, maps[box.axes[d]], axis=d, unique_indices=False, indices_are_sorted=trusted,
                   mode=None if trusted else "clip")
      x = constrain(x, sharding.mesh, spec)  # the gather's output layout
  assert x.shape == new_shape, (x.shape, new_shape)
  if factor is not None:
    x = (x.astype(jnp.float32) * factor).astype(box.value.dtype)

  leaf_key = jax.random.fold_in(key, path_hash("leaf/" + path))
  rho, cancel, old_sizes = sym  # function-preserving symmetry breaking (rcjax.symmetry)
  if rho is not None or cancel > 0:
    x = break_symmetry(x, box, power, mapped, maps, old_sizes, rho, cancel, jax.random.fold_in(leaf_key, 2))
  if not jnp.issubdtype(x.dtype, jnp.inexact):  # masks, counters: gathered, never noised or drawn afresh
    r2, fresh = 0.0, None
  if r2 > 0 and power == 0:
    x32 = x.astype(jnp.float32)
    rms = jnp.sqrt(jnp.mean(jnp.square(x32)))
    noise = jax.random.normal(jax.random.fold_in(leaf_key, 1), new_shape, jnp.float32)
    x = (x32 + r2 * rms * noise).astype(x.dtype)
  mask = None
  for d in (d for d in mapped if fresh and box.axes[d] in fresh):  # (the depth axis has no fresh blocks)
    m = _broadcast(fresh[box.axes[d]], d, ndim)
    mask = m if mask is None else (mask | m)
  if mask is not None:
    if power == 0:
      new_box = box.replace(value=jax.ShapeDtypeStruct(new_shape, x.dtype))
      draw = pz.sample(box.init, jax.random.fold_in(leaf_key, 0), new_shape,
                       pz.init_scale(new_box), x.dtype)
    elif power == 1:
      draw = jnp.zeros((), x.dtype)
    else:  # no history for a fresh neuron: give it the leaf's typical second moment
      draw = jnp.mean(x.astype(jnp.float32)).astype(x.dtype)
    x = jnp.where(mask, draw, x)
  if zero_new is not None:  # exact depth growth: a residual writer of a new block starts at zero
    x = jnp.where(_broadcast(zero_new, box.axes.index(DEPTH_AXIS), ndim), jnp.zeros((), x.dtype), x)
  if sharding is not None:
    x = constrain(x, sharding.mesh, fit_spec(spec0, new_shape, sharding.mesh))
  return box.replace(value=x)


def _apply(tree, maps, fresh, key, exact: bool, r2: float, moment: int | None, repeats: tuple = (),
           shardings: tuple = (), pallas: tuple = (False, False), trusted: bool = True, unsorted: tuple = (),
           depth: tuple | None = None, split: float = 0.0, cancel: float = 0.0):
  """Every RC leaf of `tree` mapped (`_map_leaf`). `trusted`: the maps are sorted and in bounds, as
  `index_maps` draws them (the gathers are promised both); False where that is not known (`apply_maps`
  given traced or unsorted maps), and for leaves with an axis in `unsorted`. `depth`: `(new, writers)`
  of an exact depth growth: params and first moments of leaves whose path ends with one of `writers`
  are zero in the new blocks (bool mask `new`); second moments keep their copies. `split`, `cancel`:
  the split and cancel rates of `transfer` (width axes only)."""
  old = width_axes(tree)
  repeats, shardings = dict(repeats), dict(shardings)
  counts = ({name: jnp.bincount(m, length=old[name]) for name, m in maps.items()
             if name not in repeats and name in old} if exact else {})
  new, writers = (jnp.asarray(depth[0]), depth[1]) if depth else (None, ())
  width_maps = {name: m for name, m in maps.items() if name in old}
  sym = (split_factors(key, width_maps, old, split) if split > 0 else None, cancel, old)
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_rc)
  out = []
  for path, leaf in flat:
    if is_rc(leaf):
      power = moment if moment is not None else _moment_power(path, 0)
      path = jax.tree_util.keystr(path)
      zero = power < 2 and DEPTH_AXIS in leaf.axes and any(path.endswith(w) for w in writers)
      leaf = _map_leaf(leaf, path, power, maps, counts, fresh, key, exact, r2, repeats, shardings.get(path),
                       pallas, trusted and not set(leaf.axes) & set(unsorted), new if zero else None, sym)
    out.append(leaf)
  return jax.tree.unflatten(treedef, out)


def _apply_maps_impl(tree, maps, *, exact, moment, repeats, shardings, pallas=(False, False), trusted=False):
  return _apply(tree, maps, None, jax.random.key(0), exact, 0.0, moment, repeats, shardings, pallas, trusted)


_APPLY_STATIC = ("exact", "moment", "repeats", "shardings", "pallas", "trusted")
_apply_maps_jit = jax.jit(_apply_maps_impl, static_argnames=_APPLY_STATIC)
_apply_maps_jit_donated = jax.jit(_apply_maps_impl, static_argnames=_APPLY_STATIC, donate_argnums=0)


def _touched(leaf: Any, names) -> bool:
  """Whether a transfer over the axes `names` changes this leaf (an RC leaf with such a width axis)."""
  return is_rc(leaf) and any(a in names and (b is not None or a == DEPTH_AXIS)
                             for a, b in zip(leaf.axes, leaf.base))


def _donated(donating, plain, tree, names):
  """`donating(tree)`, a jitted transfer over the axes `names` that donates its argument, on the leaves
  it changes; the other leaves pass as they are (`plain`, the same transfer without donation, where one
  array sits in two places of the tree: it cannot be donated twice, nor donated and passed on).

  The untouched leaves are left out of the call (not copied; the tree keeps its paths, so every leaf's
  key and the outputs are bitwise those of the whole tree). XLA reuses a donated buffer only for an
  output of the same shape and dtype (a leaf remapped at its size); its warning about the others,
  which are most leaves of a grown tree, is silenced.
  """
  leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=is_rc)
  mask = [_touched(leaf, names) for leaf in leaves]
  if not any(mask):
    return tree
  part = jax.tree.unflatten(treedef, [leaf if m else None for leaf, m in zip(leaves, mask)])
  ids = [id(x) for x in jax.tree.leaves(tree) if isinstance(x, jax.Array)]
  fn = donating if len(ids) == len(set(ids)) else plain
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    out = iter(jax.tree.leaves(fn(part), is_leaf=is_rc))
  return jax.tree.unflatten(treedef, [next(out) if m else leaf for leaf, m in zip(leaves, mask)])


def _repeat_factor(m: np.ndarray, n_old: int) -> int | None:
  """k if the map is exactly repeat(arange(n_old), k), else None."""
  if len(m) % n_old:
    return None
  k = len(m) // n_old
  return k if np.array_equal(m, np.repeat(np.arange(n_old), k)) else None


def apply_maps(tree: Any, maps: Mapping[str, jax.Array], *, exact: bool = False,
               moment: int | None = None, donate: bool = False) -> Any:
  """Gather every RC leaf of `tree` along its mapped width axes and rescale it (deterministic).

  Args:
    tree: params, an optax state mirroring boxed params, or any pytree holding both.
    maps: `{axis: int32[new]}`, e.g. from `index_maps` (axes not in `maps` are left alone, and maps of
      axes the tree does not have are ignored, so one set of maps applies to any part of a model). Any map
      with entries in [0, N) works, sorted or not (a ValueError names one that is out of range; under
      `jax.jit`, where the maps are traced, out-of-range entries are clipped); concrete sorted maps take
      the fast paths.
    exact: count-corrected fan-in weights (function-preserving when every old neuron is mapped to; a
      concrete map that misses one is a ValueError).
    moment: what the RC leaves hold: 0 params, 1 gradient-like (momentum, Adam mu), 2 squared
      gradients (Adam nu). None reads it from optax state field names (`MOMENT_FIELDS`: `mu`, `trace`:
      1; `nu`, `nu_max`, `sum_of_squares`: 2; Adadelta's `e_x` is refused) and treats everything else
      as params.
    donate: `tree` may be consumed (see `transfer`).

  Returns:
    A pytree of the same structure with leaves at the new sizes.
  """
  _check_fields(tree)
  old = tree_sizes(tree)
  for name, m in maps.items():
    if name not in old:
      continue
    if not (isinstance(m, (jax.Array, np.ndarray)) and m.ndim == 1 and jnp.issubdtype(m.dtype, jnp.integer)):
      raise TypeError(f"apply_maps: map of axis {name!r} must be a 1-D integer array")
    if m.shape[0] == 0:
      raise ValueError(f"apply_maps: the map of axis {name!r} is empty (an axis keeps at least one neuron)")
  widths = width_axes(tree)
  if DEPTH_AXIS in old and DEPTH_AXIS not in widths and DEPTH_AXIS in maps:  # a depth map: plain copies
    if exact:
      raise ValueError("apply_maps: exact=True with a map of the depth axis 'layers': a function-preserving "
                       "depth growth zeroes the new blocks' residual writers, which rcjax.transfer(..., "
                       "{'layers': L2}, exact=True, residual_writers=...) does (rcjax.nn.gpt.transfer for GPTs)")
    widths = {**widths, DEPTH_AXIS: old[DEPTH_AXIS]}
  maps = {k: jnp.asarray(v) for k, v in maps.items() if k in widths}
  if moment not in (None, 0, 1, 2):
    raise ValueError(f"moment must be None, 0, 1 or 2, got {moment!r}")
  trusted, repeats = True, []  # trusted: every map concrete, in bounds and sorted (the gathers' promises)
  for name, m in maps.items():
    if isinstance(m, jax.core.Tracer):
      trusted = False
      continue
    v = np.asarray(m)
    if v.min() < 0 or v.max() >= widths[name]:
      bad = v[(v < 0) | (v >= widths[name])][0]
      raise ValueError(f"apply_maps: the map of axis {name!r} holds {bad}, outside [0, {widths[name]}) "
                       f"(the axis has {widths[name]} neurons)")
    trusted = trusted and bool(np.all(v[1:] >= v[:-1]))
    if exact and len(np.unique(v)) < widths[name]:
      raise ValueError(f"apply_maps: exact=True needs every old neuron mapped to, but the map of axis {name!r} "
                       f"misses {widths[name] - len(np.unique(v))} of its {widths[name]} neurons (pruning or "
                       "iid maps: use exact=False)")
    if f := _repeat_factor(v, widths[name]):
      repeats.append((name, f))
  repeats = tuple(sorted(repeats))
  _warn_plain_leaves(tree, {k: widths[k] for k, m in maps.items() if m.shape[0] != widths[k] and k != DEPTH_AXIS})
  kw = dict(exact=exact, moment=moment, repeats=repeats, pallas=kernels.settings(), trusted=trusted)
  if donate:
    call = lambda jitted: lambda t: jitted(t, maps, shardings=leaf_shardings(t), **kw)
    return _donated(call(_apply_maps_jit_donated), call(_apply_maps_jit), tree, set(maps))
  return _apply_maps_jit(tree, maps, shardings=leaf_shardings(tree), **kw)


# --- grow / shrink / transfer -------------------------------------------------------------------

def _fixed_axis_path(tree, name: str) -> str:
  for path, box in leaves_with_paths(tree):
    if name in box.axes:
      return path
  return "?"


def _check_finite(tree) -> None:
  for path, box in leaves_with_paths(tree):
    v = box.value
    if isinstance(v, jax.core.Tracer):
      raise TypeError("check_finite=True needs concrete arrays: call grow/transfer outside jax.jit")
    if jnp.issubdtype(v.dtype, jnp.inexact) and not bool(jnp.all(jnp.isfinite(v))):
      raise ValueError(f"non-finite values (NaN or inf) in leaf {path}")


def _caller_level() -> int:
  """`warnings.warn`'s stacklevel of the first frame outside rcjax (the user's call), seen from its caller."""
  import os
  import sys
  here, level, frame = os.path.dirname(os.path.dirname(__file__)), 1, sys._getframe(2)
  while frame is not None and frame.f_code.co_filename.startswith(here + os.sep + "rcjax"):
    frame, level = frame.f_back, level + 1
  return level + 1


def _warn_plain_leaves(tree, changing: dict[str, int]) -> None:
  """Warn about plain (non-RC) float arrays with a dimension the size of an axis that changes: transfer
  returns them unchanged, so if that dimension is the width axis, the model no longer fits them."""
  if not changing:
    return
  for path, x in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_rc)[0]:
    if is_rc(x) or not hasattr(x, "dtype") or not jnp.issubdtype(x.dtype, jnp.floating):
      continue
    hit = [(a, n) for a, n in changing.items() if n in np.shape(x)]
    if hit:
      warnings.warn(f"{jax.tree_util.keystr(path)}: a plain (non-RC) array of shape {np.shape(x)} is returned "
                    f"unchanged, but axis {hit[0][0]!r} of size {hit[0][1]} changes; if a dimension of it is "
                    "that axis, box it with rcjax.RC (rcjax.nn.rc_param, or an RC value in self.variable for "
                    "batch statistics)", stacklevel=_caller_level())


def _target_sizes(params, factor, sizes, direction: str) -> dict[str, int]:
  _check_fields(params)
  widths = width_axes(params)
  all_sizes = tree_sizes(params)
  if factor is not None:
    factor = _scalar(factor)
    if isinstance(factor, bool) or not isinstance(factor, (int, float, np.number)) or not math.isfinite(factor):
      raise TypeError(f"factor must be a finite number, got {factor!r}")
    if factor <= 0:
      raise ValueError(f"factor must be positive, got {factor}")
  target, varies = {}, _axes_info(params)[2]
  if factor is not None or sizes is None:
    if not widths:
      raise ValueError(f"{direction}: this pytree has no width axis (every leaf's base is None), so there is "
                       "nothing to resize: give the width dimensions a base, e.g. rcjax.nn.Dense(features, "
                       "base=(None, features)) or RC(..., base=(None, 64))")
    factor = {"grow": 2, "shrink": 0.5, "transfer": 1}[direction] if factor is None else factor
    target = {k: max(1, int(round(n * factor))) for k, n in widths.items()}
  if sizes is not None:
    if not isinstance(sizes, Mapping):
      raise TypeError(f"sizes must be a dict {{axis: size}}, got {type(sizes).__name__}")
    for name, n in sizes.items():
      if name in varies:
        raise ValueError(f"axis {name!r} is a fixed (non-width) axis, of different sizes in different leaves, "
                         "and cannot change size")
      if name not in all_sizes and name != DEPTH_AXIS:
        raise ValueError(f"unknown axis {name!r}; this pytree has axes {sorted(all_sizes)} "
                         f"(width axes: {sorted(widths)})")
      _check_size(name, n)
      n = int(_scalar(n))
      if name == DEPTH_AXIS and name not in widths:  # a depth transfer (checked by _depth_plan)
        target[name] = n
        continue
      if name not in widths:
        if n != all_sizes[name]:
          raise ValueError(f"axis {name!r} is a fixed (non-width) axis at {_fixed_axis_path(params, name)} "
                           f"and cannot change size from {all_sizes[name]} to {n} (a width axis has a base: "
                           "RC(..., base=(..., N, ...)), rcjax.nn layers' base=...)")
        continue
      target[name] = int(n)
  for name, n in target.items():
    now = widths.get(name, all_sizes.get(name, n))
    if direction == "grow" and n < now:
      raise ValueError(f"grow asked to shrink axis {name!r} from {now} to {n} "
                       "(use rcjax.shrink or rcjax.transfer)")
    if direction == "shrink" and n > now:
      raise ValueError(f"shrink asked to grow axis {name!r} from {now} to {n} "
                       "(use rcjax.grow or rcjax.transfer)")
  return target


def _transfer_impl(tree, key, *, old, new, sampler, r1, r2, exact, moment, blocks, shardings,
                   pallas=(False, False), depth=None, scores=None, split=0.0, cancel=0.0):
  maps = _maps(key, old, new, sampler, blocks, scores)
  # Maps of axes in blocks per a mapped axis repeat whole blocks in the outer map's order: not sorted
  # ([0, 1, 0, 1, 2, 3, 2, 3] for query heads when kv heads double), so their gathers are promised nothing.
  unsorted = tuple(sorted(k for k, o in blocks if isinstance(o, str) and o in maps))
  if _on_cpu():
    # An identity on (sorted) maps that XLA:CPU does not fuse: without it the maps' computation (cumsum,
    # take) is fused into every leaf's gather and recomputed per output element (3.4x slower, measured).
    # The unsorted maps get a barrier instead (sorting would pair a kv head's copies with other heads).
    maps = {name: jax.lax.optimization_barrier(m) if name in unsorted else jax.lax.sort(m)
            for name, m in maps.items()}
  fresh = None
  if r1 > 0:
    fresh = {}
    for name, n in new:
      outer = dict(blocks).get(name)
      fresh_key = jax.random.fold_in(key, path_hash("fresh/" + name))
      if isinstance(outer, int):  # fixed blocks (RoPE halves): one draw per entry of a block
        fresh[name] = jnp.tile(jax.random.bernoulli(fresh_key, r1, (n // outer,)), outer)
      else:
        fresh[name] = jax.random.bernoulli(fresh_key, r1, (n,))
  # Integer factors of 'stratified'/'stride' give maps repeat(arange(N), k) (also with fixed blocks, whose
  # maps are blocks of such repeats); blocks per another axis move whole blocks, so they take the gather.
  old_sizes, outer_of = dict(old), dict(blocks)
  repeats = tuple((name, n // old_sizes[name]) for name, n in new
                  if sampler in ("stratified", "stride") and n % old_sizes[name] == 0
                  and not isinstance(outer_of.get(name), str))
  zero = None
  if depth is not None:  # (old depth, map, new blocks, residual writers): see _depth_plan
    n_old, m = depth[0], np.asarray(depth[1], np.int32)
    maps[DEPTH_AXIS] = jnp.asarray(m)
    if np.any(m[1:] < m[:-1]):
      unsorted = tuple(sorted(unsorted + (DEPTH_AXIS,)))
    if k := _repeat_factor(m, n_old):  # interleave at an integer ratio: a broadcast
      repeats += ((DEPTH_AXIS, k),)
    zero = (depth[2], depth[3]) if depth[3] else None
  return _apply(tree, maps, fresh, key, exact, r2, moment, repeats, shardings, pallas, unsorted=unsorted,
                depth=zero, split=split, cancel=cancel)


_TRANSFER_STATIC = ("old", "new", "sampler", "r1", "r2", "exact", "moment", "blocks", "shardings", "pallas",
                    "depth", "split", "cancel")
_transfer_jit = jax.jit(_transfer_impl, static_argnames=_TRANSFER_STATIC)
_transfer_jit_donated = jax.jit(_transfer_impl, static_argnames=_TRANSFER_STATIC, donate_argnums=0)


def _depth_plan(params, target: dict, mode, exact: bool, writers, direction: str) -> tuple | None:
  """Pops the depth axis from `target`; returns `(old depth, map, new blocks, writers)` (static tuples for
  `_transfer_impl`), or None when the depth stays. ValueError for a depth transfer that cannot be."""
  check_mode(mode)
  if isinstance(writers, str):
    raise TypeError(f"residual_writers must be a sequence of leaf path suffixes, got the string {writers!r}")
  writers = tuple(writers or ())
  if DEPTH_AXIS not in target:
    if mode is not None:
      raise ValueError(f"depth_mode {mode!r} given, but sizes has no {DEPTH_AXIS!r} entry (the new depth)")
    return None
  n_new, all_sizes = target.pop(DEPTH_AXIS), tree_sizes(params)
  if DEPTH_AXIS not in all_sizes:
    raise ValueError(f"sizes asks for depth {n_new}, but no leaf has a {DEPTH_AXIS!r} axis: depth transfer "
                     "needs scanned blocks (rcjax.nn.GPT(scan=True), or nn.scan with metadata_params="
                     "{nn.PARTITION_NAME: 'layers'}); a non-scanned model's blocks are separate leaves")
  n_old = all_sizes[DEPTH_AXIS]
  m = depth_map(n_old, n_new, mode)
  if n_new == n_old:
    return None
  if exact and n_new < n_old:
    raise ValueError(f"exact=True needs the depth to grow, but it shrinks from {n_old} to {n_new} (dropping "
                     "blocks changes the function)")
  if exact and not writers:
    raise ValueError("exact=True depth growth needs residual_writers (the leaves that write into the residual "
                     "stream, zero in new blocks), which come from the model layer: use rcjax.nn.gpt.transfer "
                     "for GPT params")
  paths = [p for p, b in leaves_with_paths(params) if DEPTH_AXIS in b.axes]
  for w in writers if exact else ():
    if not any(p.endswith(w) for p in paths):
      raise ValueError(f"residual_writers: no leaf with a {DEPTH_AXIS!r} axis has a path ending with {w!r}")
  return n_old, tuple(m.tolist()), tuple(new_blocks(m).tolist()), writers if exact else ()


def transfer(params: Any, key: jax.Array, sizes: Mapping[str, int], *, sampler: str = "stratified",
             random_rate: float = 0.0, norm_rate: float = 0.0, exact: bool = False,
             check_finite: bool = False, moment: int | None = None, donate: bool = False,
             depth_mode: str | None = None, residual_writers: tuple[str, ...] = (),
             scores: Mapping[str, Any] | None = None, split_rate: float = 0.0, cancel_rate: float = 0.0,
             _direction: str = "transfer") -> Any:
  """Transfer a pytree of RC leaves to new sizes of its width axes (grow or shrink, per axis), and of
  the depth of its scanned stacks (`sizes['layers']`, see `rcjax.depth`).

  Args:
    params: params, an optax state mirroring boxed params, or a tuple of both.
    key: a `jax.random` key; the same key gives bitwise the same result (and the same maps and fresh
      neurons for params and for the optimizer state transferred with it).
    sizes: `{axis: new size}` for width axes; axes not named keep their size and are not resampled.
    sampler: 'stratified' | 'iid' | 'stride' (see `index_maps`), or for shrinking 'importance' (keep the
      highest `scores`) | 'importance-sample' (a sample without replacement proportional to them).
    random_rate: r1 in [0, 1]: each target neuron is, with probability r1, a fresh neuron drawn from
      the init distribution at the target width (r1 = 1 is training from scratch). Optimizer moments of
      fresh neurons start at 0 (first moments) or at the leaf mean (second moments).
    norm_rate: r2 >= 0: Gaussian noise of std r2 * RMS(leaf) on transferred parameter entries.
    exact: count-corrected fan-in weights, function-preserving for any ratio N'/N >= 1.
    check_finite: raise if a leaf holds NaN or inf (needs concrete arrays).
    moment: see `apply_maps`.
    depth_mode: with `sizes['layers']`, how blocks are copied or kept: 'stack' (default for growth),
      'interleave', 'middle'; 'stride' (default for shrinking), 'first', 'last' (`rcjax.depth.depth_map`).
      One map for every leaf with a `layers` axis (params and optimizer moments alike); nothing is
      rescaled along it (a block is not a mean-field neuron: no multiplier depends on the depth).
    residual_writers: with `exact=True` and a deeper stack, suffixes of the leaf paths (`keystr`, e.g.
      "['blocks']['o']") of the leaves that write into the residual stream; in the new blocks they
      (and their first moments) are zero, so each new block is the identity (LLaMA Pro). Model layers
      know them: `rcjax.nn.gpt.transfer` passes the GPT's.
    split_rate: s >= 0: unequal fan-out split of neurons with >= 2 copies (LEMON / Net2Net): the
      fan-in entries of copy j times `rho_j = 1 + s * (z_j - mean over the copies)`, z ~ N(0, 1) per axis;
      first moments along the copies' fan-out dims scale by rho_j, second moments by rho_j**2. Keeps the
      function (see `rcjax.symmetry`, docs/symmetry.md).
    cancel_rate: r >= 0: noise of std r * RMS(leaf) on those fan-in entries, centred over the copies of
      each source neuron so it cancels (HyperCloning); params only. Keeps the function.
    donate: the caller gives `params` up (e.g. `params = rcjax.grow(params, key, donate=True)`): leaves
      that no transferred axis touches (and non-RC leaves, such as an optimizer's step count) are
      returned as they are instead of copied, and the arrays of the others are donated to the jitted
      transfer, which reuses them for outputs of the same shape and dtype (axes remapped at their size).
      Do not use `params` afterwards: the output shares arrays with it, and donated ones are deleted.
      The result is bitwise the same either way. Without it, every output leaf is a new array.
    scores: `{axis: float[N]}` for the score samplers (`rcjax.importance`): one score >= 0 per neuron of
      every axis that shrinks (for an axis in blocks, e.g. query heads per kv head, the scores summed
      over blocks pick the same entries in every block).

  Returns:
    The transferred pytree.
  """
  _check_key(key)
  if sampler not in SCORE_SAMPLERS:
    _check_sampler(sampler)
    if scores is not None:
      raise ValueError(f"scores= is for sampler 'importance' or 'importance-sample', not {sampler!r}")
  if not isinstance(sizes, Mapping):
    raise TypeError(f"transfer: sizes must be a dict {{axis: new size}}, got {type(sizes).__name__} (for a "
                    "factor on every width axis: rcjax.grow/shrink(params, key, factor=...))")
  # grow/shrink computed (and checked) their targets with _target_sizes already
  target = _target_sizes(params, None, sizes, _direction) if _direction == "transfer" else dict(sizes)
  depth = _depth_plan(params, target, depth_mode, exact, residual_writers, _direction)
  old = width_axes(params)
  all_sizes, blocks = tree_sizes(params), tree_blocks(params)
  for name, outer in blocks.items():
    if isinstance(outer, str) and outer not in all_sizes:
      raise ValueError(f"axis {name!r} is in blocks per axis {outer!r}, which no leaf of this pytree has")
    if name in old and isinstance(outer, str) and target.get(outer, all_sizes[outer]) != all_sizes[outer]:
      target.setdefault(name, old[name])  # its blocks change: remap it at the same size
  growing = _direction == "transfer" and all(n >= all_sizes[k] for k, n in target.items())
  _check_blocks(blocks, all_sizes, target,
                "exact=True" if exact else "transfer (no axis shrinks)" if growing else _direction)
  for name, value, lo, hi in (("random_rate", random_rate, 0.0, 1.0), ("norm_rate", norm_rate, 0.0, math.inf),
                              ("split_rate", split_rate, 0.0, math.inf), ("cancel_rate", cancel_rate, 0.0, math.inf)):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
      raise TypeError(f"{name} must be a number, got {value!r}")
    if not (lo <= value <= hi) or math.isnan(value) or (hi == math.inf and math.isinf(value)):
      raise ValueError(f"{name} must be in [{lo}, {hi}{']' if hi < math.inf else ')'}, got {value}")
  if exact:
    if sampler == "iid":
      raise ValueError("exact=True needs sampler 'stratified' or 'stride' (iid maps can miss neurons)")
    shrunk = [k for k, n in target.items() if n < old[k]]
    if shrunk:
      raise ValueError(f"exact=True needs new sizes >= old sizes, but axis {shrunk[0]!r} shrinks "
                       f"from {old[shrunk[0]]} to {target[shrunk[0]]}")
  if sampler in SCORE_SAMPLERS:
    scores = check_scores(scores, all_sizes, target, blocks, sampler)
  if check_finite:
    _check_finite(params)
  _warn_plain_leaves(params, {k: old[k] for k, n in target.items() if n != old[k]})
  new = tuple(sorted(target.items()))
  blocks = {k: v for k, v in blocks.items() if k in target}
  need = set(target) | {v for v in blocks.values() if isinstance(v, str)}
  kw = dict(old=tuple(sorted((k, all_sizes[k]) for k in need)), new=new, sampler=sampler,
            r1=float(random_rate), r2=float(norm_rate), exact=bool(exact), moment=moment,
            blocks=tuple(sorted(blocks.items())), pallas=kernels.settings(), depth=depth,
            split=float(split_rate), cancel=float(cancel_rate))
  if sampler in SCORE_SAMPLERS:
    kw["scores"] = scores
  if donate:
    call = lambda jitted: lambda t: jitted(t, key, shardings=leaf_shardings(t), **kw)
    return _donated(call(_transfer_jit_donated), call(_transfer_jit), params,
                    set(target) | ({DEPTH_AXIS} if depth else set()))
  return _transfer_jit(params, key, shardings=leaf_shardings(params), **kw)


def grow(params: Any, key: jax.Array, *, factor: float | None = None, sizes: Mapping[str, int] | None = None,
         sampler: str = "stratified", random_rate: float = 0.0, norm_rate: float = 0.0,
         exact: bool = False, check_finite: bool = False, moment: int | None = None,
         donate: bool = False, depth_mode: str | None = None, residual_writers: tuple[str, ...] = (),
         split_rate: float = 0.0, cancel_rate: float = 0.0) -> Any:
  """Grow every width axis by `factor` (default 2), or the axes named in `sizes`.

  Pure and jit-compiled (sizes static). With the default sampler and an integer factor the grown model
  computes the same function under every parametrization; `exact=True` makes any ratio exact.
  `sizes['layers']` grows the depth of scanned stacks (`depth_mode`, `residual_writers`: see `transfer`).
  `split_rate`, `cancel_rate` break the symmetry of the copies and keep the function (see `transfer`).

  >>> import jax.numpy as jnp
  >>> from rcjax import RC
  >>> p = {'w': RC(jnp.ones((2, 3)), axes=('input', 'hidden'), fan_in=(0,), base=(None, 3), param='mf')}
  >>> grow(p, jax.random.key(0), factor=2)['w'].shape
  (2, 6)
  """
  target = _target_sizes(params, factor, sizes, "grow")
  return transfer(params, key, target, sampler=sampler, random_rate=random_rate, norm_rate=norm_rate,
                  exact=exact, check_finite=check_finite, moment=moment, donate=donate, depth_mode=depth_mode,
                  residual_writers=residual_writers, split_rate=split_rate, cancel_rate=cancel_rate,
                  _direction="grow")


def shrink(params: Any, key: jax.Array, *, factor: float | None = None, sizes: Mapping[str, int] | None = None,
           sampler: str = "stratified", random_rate: float = 0.0, norm_rate: float = 0.0,
           check_finite: bool = False, moment: int | None = None, donate: bool = False,
           depth_mode: str | None = None, scores: Mapping[str, Any] | None = None) -> Any:
  """Shrink (prune) every width axis by `factor` (default 0.5), or the axes named in `sizes`.

  Neurons are kept as a uniform subset ('stratified'), evenly spaced ('stride'), drawn with
  replacement ('iid'), or by importance `scores` (`{axis: float[N]}`, e.g. from `rcjax.importance`):
  the highest ('importance'; neurons with equal scores, such as the copies of a grown neuron, are kept one
  copy per score first) or a sample without replacement proportional to them ('importance-sample'). Fan-in
  entries are rescaled by N/N' as the parametrization requires; the maps stay sorted.
  `sizes['layers']` keeps a subset of the blocks of scanned stacks (`depth_mode`: see `transfer`).

  >>> import jax.numpy as jnp
  >>> from rcjax import RC
  >>> p = {'w': RC(jnp.ones((2, 4)), axes=('input', 'hidden'), fan_in=(0,), base=(None, 4), param='mf')}
  >>> s = {'hidden': jnp.array([0.1, 3.0, 0.2, 2.0])}
  >>> shrink(p, jax.random.key(0), sizes={'hidden': 2}, sampler='importance', scores=s)['w'].shape
  (2, 2)
  """
  target = _target_sizes(params, factor, sizes, "shrink")
  return transfer(params, key, target, sampler=sampler, random_rate=random_rate, norm_rate=norm_rate,
                  check_finite=check_finite, moment=moment, donate=donate, depth_mode=depth_mode,
                  scores=scores, _direction="shrink")
