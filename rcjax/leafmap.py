"""One RC leaf through the maps of a transfer (`_map_leaf`), and a pytree leaf by leaf (`_apply`), for
`rcjax.transfer` (whose module docstring has the math). By concern: which gathers (`_gather_leaf`: local
broadcasts and repeats, the Pallas kernel, or the sharded gather planner's order), which rescaling
(`_rescaling`: the parametrization's fan-in correction for params, fan-out for optimizer moments, per
copy count with exact=True), which draws (`_perturb`: symmetry breaking, noise, fresh neurons; every key
folded in from the leaf's path, so leaves and moments draw independently of order).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from rcjax import parametrization as pz
from rcjax.depth import DEPTH_AXIS
from rcjax.gather import _broadcast, _gather, _on_cpu
from rcjax.rc import RC, is_rc, path_hash, width_axes
from rcjax.reshard import constrain, fit_spec, gather_plan, spec_tuple
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
  """One RC leaf mapped: gathered along its mapped dims (`_gather_leaf`), rescaled as its parametrization
  and moment power require (`_rescaling`), then perturbed (`_perturb`: symmetry breaking, noise, fresh
  neurons) and, in an exact depth growth, zeroed in the new blocks (`zero_new`)."""
  # width dims and the depth axis (fixed, but mapped by a depth transfer: gathered, never rescaled)
  mapped = [d for d, a in enumerate(box.axes) if a in maps and (box.base[d] is not None or a == DEPTH_AXIS)]
  if not mapped:
    return box
  new_shape = tuple(maps[box.axes[d]].shape[0] if d in mapped else n for d, n in enumerate(box.shape))
  spec0 = None if sharding is None else spec_tuple(sharding, len(box.shape))
  factor = _rescaling(box, path, power, mapped, maps, counts, exact, repeats, new_shape)
  x, factor = _gather_leaf(box, mapped, maps, repeats, sharding, spec0, new_shape, pallas, trusted, factor)
  if factor is not None:
    x = (x.astype(jnp.float32) * factor).astype(box.value.dtype)
  x = _perturb(x, box, path, power, mapped, maps, fresh, key, r2, sym)
  if zero_new is not None:  # exact depth growth: a residual writer of a new block starts at zero
    x = jnp.where(_broadcast(zero_new, box.axes.index(DEPTH_AXIS), len(new_shape)), jnp.zeros((), x.dtype), x)
  if sharding is not None:
    x = constrain(x, sharding.mesh, fit_spec(spec0, new_shape, sharding.mesh))
  return box.replace(value=x)


def _rescaling(box: RC, path: str, power: int, mapped: list, maps, counts, exact: bool, repeats: dict,
               new_shape: tuple):
  """The factor a mapped leaf is multiplied by: None (none), a float, or an array broadcast over the leaf
  (`exact`: per-entry 1/copy counts). Params (power 0) are rescaled along fan-in; gradient statistics
  (power p) along width fan-out, to the power p."""
  old_shape, ndim = box.shape, len(new_shape)
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
  if factor is not None and not jnp.issubdtype(box.value.dtype, jnp.inexact):
    raise ValueError(f"{path}: this transfer rescales the leaf along axis {box.axes[side[0]]!r} (its "
                     f"parametrization's fan-in correction), but it holds {box.value.dtype} values: only "
                     "floating-point leaves can be rescaled")
  return factor


def _gather_leaf(box: RC, mapped: list, maps, repeats: dict, sharding, spec0, new_shape: tuple, pallas: tuple,
                 trusted: bool, factor):
  """The leaf's values gathered by the maps along `mapped`, and what is left of `factor` to apply (a
  float factor of an unsharded gather goes into the gather's pass, into the Pallas kernel where it runs)."""
  x, old_shape = box.value, box.shape
  names = [box.axes[d] for d in mapped]
  if sharding is None or all(n in repeats for n in names):
    # Unsharded, or integer repeats: broadcast + reshape partitions locally (no collectives).
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
  return x, factor


def _perturb(x: jax.Array, box: RC, path: str, power: int, mapped: list, maps, fresh, key, r2: float,
             sym: tuple) -> jax.Array:
  """The gathered leaf `x` after the draws, each from its own key folded from the leaf's path: symmetry
  breaking of the copies (`sym`, rcjax.symmetry), noise of std r2 * RMS on params, and fresh neurons where
  `fresh` masks them (params drawn from the init at the new width; first moments 0; second moments the
  leaf's mean). Integer leaves (masks, counters) are neither noised nor drawn afresh."""
  leaf_key = jax.random.fold_in(key, path_hash("leaf/" + path))
  rho, cancel, old_sizes = sym
  if rho is not None or cancel > 0:
    x = break_symmetry(x, box, power, mapped, maps, old_sizes, rho, cancel, jax.random.fold_in(leaf_key, 2))
  if not jnp.issubdtype(x.dtype, jnp.inexact):
    r2, fresh = 0.0, None
  if r2 > 0 and power == 0:
    x32 = x.astype(jnp.float32)
    rms = jnp.sqrt(jnp.mean(jnp.square(x32)))
    noise = jax.random.normal(jax.random.fold_in(leaf_key, 1), x.shape, jnp.float32)
    x = (x32 + r2 * rms * noise).astype(x.dtype)
  mask = None
  for d in (d for d in mapped if fresh and box.axes[d] in fresh):  # (the depth axis has no fresh blocks)
    m = _broadcast(fresh[box.axes[d]], d, x.ndim)
    mask = m if mask is None else (mask | m)
  if mask is None:
    return x
  if power == 0:
    new_box = box.replace(value=jax.ShapeDtypeStruct(x.shape, x.dtype))
    draw = pz.sample(box.init, jax.random.fold_in(leaf_key, 0), x.shape, pz.init_scale(new_box), x.dtype)
  elif power == 1:
    draw = jnp.zeros((), x.dtype)
  else:  # no history for a fresh neuron: give it the leaf's typical second moment
    draw = jnp.mean(x.astype(jnp.float32)).astype(x.dtype)
  return jnp.where(mask, draw, x)


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
