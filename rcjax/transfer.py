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

import inspect
import warnings
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rcjax import kernels
from rcjax.depth import DEPTH_AXIS
from rcjax.gather import _on_cpu
from rcjax.maps import (SCORE_SAMPLERS, _check_blocks, _check_key, _check_sampler, _maps, check_scores, tree_blocks)
from rcjax.maps import index_maps as index_maps, inverse_maps as inverse_maps  # re-exported (the namespace's)
from rcjax.reshard import leaf_shardings
# the per-leaf mapping (rcjax.leafmap) and the checks (rcjax.transfer_checks), importable from here as before #21
from rcjax.leafmap import MOMENT_FIELDS, UNSUPPORTED_FIELDS, _apply, _check_fields, _map_leaf, _moment_power  # noqa: F401
from rcjax.transfer_checks import (_caller_level, _check_exact, _check_finite, _check_rates, _depth_plan,  # noqa: F401
                                   _fixed_axis_path, _target_sizes, _warn_plain_leaves)
from rcjax.rc import is_rc, path_hash, sizes as tree_sizes, width_axes


# --- applying maps to a pytree ------------------------------------------------------------------

def _apply_maps_impl(tree, maps, *, exact, moment, repeats, shardings, pallas=(False, False), trusted=False):
  return _apply(tree, maps, None, jax.random.key(0), exact, 0.0, moment, repeats, shardings, pallas, trusted)


_APPLY_STATIC = ("exact", "moment", "repeats", "shardings", "pallas", "trusted")
_apply_maps_jit = jax.jit(_apply_maps_impl, static_argnames=_APPLY_STATIC)
_apply_maps_jit_donated = jax.jit(_apply_maps_impl, static_argnames=_APPLY_STATIC, donate_argnums=0)


def _touched(leaf: Any, names) -> bool:
  """Whether a transfer over the axes `names` changes this leaf (an RC leaf with such a width axis)."""
  return is_rc(leaf) and any(a in names and (b is not None or a == DEPTH_AXIS)
                             for a, b in zip(leaf.axes, leaf.base))


def _donated(donating, plain, tree, names, with_maps: bool = False):
  """`donating(tree)`, a jitted transfer over the axes `names` that donates its argument, on the leaves
  it changes; the other leaves pass as they are (`plain`, the same transfer without donation, where one
  array sits in two places of the tree: it cannot be donated twice, nor donated and passed on). With
  `with_maps` the jitted function returns `(tree, maps)`, and so does this (`{}` when no leaf changes).

  The untouched leaves are left out of the call (not copied; the tree keeps its paths, so every leaf's
  key and the outputs are bitwise those of the whole tree). XLA reuses a donated buffer only for an
  output of the same shape and dtype (a leaf remapped at its size); its warning about the others,
  which are most leaves of a grown tree, is silenced.
  """
  leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=is_rc)
  mask = [_touched(leaf, names) for leaf in leaves]
  if not any(mask):
    return (tree, {}) if with_maps else tree
  part = jax.tree.unflatten(treedef, [leaf if m else None for leaf, m in zip(leaves, mask)])
  ids = [id(x) for x in jax.tree.leaves(tree) if isinstance(x, jax.Array)]
  fn = donating if len(ids) == len(set(ids)) else plain
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    got, maps = fn(part) if with_maps else (fn(part), None)
  out = iter(jax.tree.leaves(got, is_leaf=is_rc))
  tree = jax.tree.unflatten(treedef, [next(out) if m else leaf for leaf, m in zip(leaves, mask)])
  return (tree, maps) if with_maps else tree


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

  >>> import jax.numpy as jnp
  >>> from rcjax import RC
  >>> p = {'w': RC(jnp.array([[1., 2.]]), axes=('input', 'hidden'), fan_in=(0,), base=(None, 2), param='mf')}
  >>> apply_maps(p, {'hidden': jnp.array([0, 0, 1])})['w'].value.tolist()  # neuron 0 twice, neuron 1 once
  [[1.0, 1.0, 2.0]]
  """
  _check_fields(tree)
  old = tree_sizes(tree)
  _check_map_arrays(maps, old)
  widths = width_axes(tree)
  if DEPTH_AXIS in old and DEPTH_AXIS not in widths and DEPTH_AXIS in maps:  # a depth map: plain copies
    if exact:
      raise ValueError("apply_maps: exact=True with a map of the depth axis 'layers': a function-preserving "
                       "depth growth zeroes the new blocks' residual writers, which rcjax.transfer(..., "
                       "{'layers': L2}, exact=True, residual_writers=...) does (rcjax.transfer_model for GPTs)")
    widths = {**widths, DEPTH_AXIS: old[DEPTH_AXIS]}
  maps = {k: jnp.asarray(v) for k, v in maps.items() if k in widths}
  if moment not in (None, 0, 1, 2):
    raise ValueError(f"moment must be None, 0, 1 or 2, got {moment!r}")
  trusted, repeats = _inspect_maps(maps, widths, exact)
  _warn_plain_leaves(tree, {k: widths[k] for k, m in maps.items() if m.shape[0] != widths[k] and k != DEPTH_AXIS})
  kw = dict(exact=exact, moment=moment, repeats=repeats, pallas=kernels.settings(), trusted=trusted)
  if donate:
    call = lambda jitted: lambda t: jitted(t, maps, shardings=leaf_shardings(t), **kw)
    return _donated(call(_apply_maps_jit_donated), call(_apply_maps_jit), tree, set(maps))
  return _apply_maps_jit(tree, maps, shardings=leaf_shardings(tree), **kw)


def _check_map_arrays(maps, old: dict) -> None:
  for name, m in maps.items():
    if name not in old:
      continue
    if not (isinstance(m, (jax.Array, np.ndarray)) and m.ndim == 1 and jnp.issubdtype(m.dtype, jnp.integer)):
      raise TypeError(f"apply_maps: map of axis {name!r} must be a 1-D integer array")
    if m.shape[0] == 0:
      raise ValueError(f"apply_maps: the map of axis {name!r} is empty (an axis keeps at least one neuron)")


def _inspect_maps(maps: dict, widths: dict, exact: bool) -> tuple[bool, tuple]:
  """`(trusted, repeats)` of concrete maps (ValueError for entries out of range, or with `exact` a missed
  neuron): trusted if every map is concrete and sorted; repeats `((axis, k), ...)` for integer repeats."""
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
  return trusted, tuple(sorted(repeats))


# --- grow / shrink / transfer -------------------------------------------------------------------

def _transfer_impl(tree, key, *, old, new, sampler, r1, r2, exact, moment, blocks, shardings,
                   pallas=(False, False), depth=None, scores=None, split=0.0, cancel=0.0, with_maps=False):
  """The jitted transfer: the maps drawn, the fresh neurons, and `_apply`; with `with_maps`, `(out, maps)`
  (the maps as applied, the depth map under 'layers')."""
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
  out = _apply(tree, maps, fresh, key, exact, r2, moment, repeats, shardings, pallas, unsorted=unsorted,
               depth=zero, split=split, cancel=cancel)
  return (out, maps) if with_maps else out


_TRANSFER_STATIC = ("old", "new", "sampler", "r1", "r2", "exact", "moment", "blocks", "shardings", "pallas",
                    "depth", "split", "cancel", "with_maps")
_transfer_jit = jax.jit(_transfer_impl, static_argnames=_TRANSFER_STATIC)
_transfer_jit_donated = jax.jit(_transfer_impl, static_argnames=_TRANSFER_STATIC, donate_argnums=0)


def transfer(params: Any, key: jax.Array, sizes: Mapping[str, int], *, sampler: str = "stratified",
             random_rate: float = 0.0, norm_rate: float = 0.0, exact: bool = False,
             check_finite: bool = False, moment: int | None = None, donate: bool = False,
             depth_mode: str | None = None, residual_writers: tuple[str, ...] = (),
             scores: Mapping[str, Any] | None = None, split_rate: float = 0.0, cancel_rate: float = 0.0) -> Any:
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
      know them: `rcjax.transfer_model` passes the GPT's.
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

  >>> import jax.numpy as jnp
  >>> from rcjax import RC
  >>> p = {'w': RC(jnp.ones((2, 4)), axes=('input', 'hidden'), fan_in=(0,), base=(None, 4), param='mf')}
  >>> transfer(p, jax.random.key(0), {'hidden': 6}, exact=True)['w'].shape  # 4 -> 6, function-preserving
  (2, 6)
  """
  return _transfer(params, key, sizes, "transfer", False, sampler=sampler, random_rate=random_rate,
                   norm_rate=norm_rate, exact=exact, check_finite=check_finite, moment=moment, donate=donate,
                   depth_mode=depth_mode, residual_writers=residual_writers, scores=scores,
                   split_rate=split_rate, cancel_rate=cancel_rate)


def transfer_with_maps(params: Any, key: jax.Array, sizes: Mapping[str, int], **kwargs) -> tuple[Any, dict]:
  """`transfer`, and the index maps it drew and applied: for a model-level rule that needs them (the copy
  counts of a tied readout's correction, `rcjax.transfer_model`), or to transfer another pytree with the
  same maps (`apply_maps`). One jitted call, as `transfer`; the result is bitwise the same as its.

  Args:
    params, key, sizes: as in `transfer`.
    **kwargs: the keyword arguments of `transfer`.

  Returns:
    `(out, maps)`: `out` as `transfer` returns it; `maps` `{axis: int32[N']}` for every axis remapped
    (those resized, and those remapped at their size because their blocks move), the arrays the leaves
    were gathered with, and under 'layers' the depth map (`rcjax.depth.depth_map`) when the depth
    changes. Under `jax.jit` the maps are traced, as the output is.

  >>> import jax.numpy as jnp
  >>> from rcjax import RC
  >>> p = {'w': RC(jnp.ones((2, 4)), axes=('input', 'hidden'), fan_in=(0,), base=(None, 4), param='mf')}
  >>> out, maps = transfer_with_maps(p, jax.random.key(0), {'hidden': 8})
  >>> maps['hidden'].tolist()  # every neuron twice
  [0, 0, 1, 1, 2, 2, 3, 3]
  """
  return _transfer(params, key, sizes, "transfer", True, **_options(kwargs))


def _options(kwargs: dict) -> dict:
  """`transfer`'s keyword arguments: `kwargs` with `transfer`'s defaults for those not given (a TypeError
  for an unknown name, as `transfer` gives)."""
  bound = inspect.signature(transfer).bind(None, None, None, **kwargs)
  bound.apply_defaults()
  return {k: v for k, v in bound.arguments.items() if k not in ("params", "key", "sizes")}


def _transfer(params, key, sizes, direction: str, with_maps: bool, *, sampler, random_rate, norm_rate, exact,
              check_finite, moment, donate, depth_mode, residual_writers, scores, split_rate, cancel_rate):
  """`transfer` (`with_maps`: `transfer_with_maps`) as asked by `direction`: 'transfer', or 'grow' /
  'shrink', which computed (and checked) their target sizes already and name themselves in errors."""
  _check_call(key, sizes, sampler, scores)
  target = _target_sizes(params, None, sizes, direction) if direction == "transfer" else dict(sizes)
  depth = _depth_plan(params, target, depth_mode, exact, residual_writers, direction)
  rates = dict(random_rate=random_rate, norm_rate=norm_rate, split_rate=split_rate, cancel_rate=cancel_rate)
  kw = _plan(params, target, direction, sampler=sampler, exact=exact, scores=scores, rates=rates,
             check_finite=check_finite)
  kw.update(r1=float(random_rate), r2=float(norm_rate), exact=bool(exact), moment=moment,
            pallas=kernels.settings(), depth=depth, split=float(split_rate), cancel=float(cancel_rate),
            with_maps=with_maps)
  if donate:
    call = lambda jitted: lambda t: jitted(t, key, shardings=leaf_shardings(t), **kw)
    names = {name for name, _ in kw["new"]} | ({DEPTH_AXIS} if depth else set())
    return _donated(call(_transfer_jit_donated), call(_transfer_jit), params, names, with_maps)
  return _transfer_jit(params, key, shardings=leaf_shardings(params), **kw)


def _check_call(key, sizes, sampler: str, scores) -> None:
  """The arguments of a transfer that do not depend on the pytree: the key, the sampler, `sizes` a dict."""
  _check_key(key)
  if sampler not in SCORE_SAMPLERS:
    _check_sampler(sampler)
    if scores is not None:
      raise ValueError(f"scores= is for sampler 'importance' or 'importance-sample', not {sampler!r}")
  if not isinstance(sizes, Mapping):
    raise TypeError(f"transfer: sizes must be a dict {{axis: new size}}, got {type(sizes).__name__} (for a "
                    "factor on every width axis: rcjax.grow/shrink(params, key, factor=...))")


def _plan(params, target: dict, direction: str, *, sampler: str, exact: bool, scores, rates: dict,
          check_finite: bool) -> dict:
  """The static arguments of the jitted transfer that the pytree and the width targets give (`old`, `new`,
  `sampler`, `blocks`, and the checked `scores` for a score sampler), after the checks of the sizes
  against the blocks, of the `rates`, `exact` and (`check_finite`) the values, in that order. `target` (the
  width axes' new sizes) gains the axes remapped at their size because their blocks move."""
  old = width_axes(params)
  all_sizes, blocks = tree_sizes(params), tree_blocks(params)
  for name, outer in blocks.items():
    if isinstance(outer, str) and outer not in all_sizes:
      raise ValueError(f"axis {name!r} is in blocks per axis {outer!r}, which no leaf of this pytree has")
    if name in old and isinstance(outer, str) and target.get(outer, all_sizes[outer]) != all_sizes[outer]:
      target.setdefault(name, old[name])  # its blocks change: remap it at the same size
  growing = direction == "transfer" and all(n >= all_sizes[k] for k, n in target.items())
  _check_blocks(blocks, all_sizes, target,
                "exact=True" if exact else "transfer (no axis shrinks)" if growing else direction)
  _check_rates(**rates)
  kw = {}
  if exact:
    _check_exact(sampler, old, target)
  if sampler in SCORE_SAMPLERS:
    kw["scores"] = check_scores(scores, all_sizes, target, blocks, sampler)
  if check_finite:
    _check_finite(params)
  _warn_plain_leaves(params, {k: old[k] for k, n in target.items() if n != old[k]})
  blocks = {k: v for k, v in blocks.items() if k in target}
  need = set(target) | {v for v in blocks.values() if isinstance(v, str)}
  return dict(kw, old=tuple(sorted((k, all_sizes[k]) for k in need)), new=tuple(sorted(target.items())),
              sampler=sampler, blocks=tuple(sorted(blocks.items())))


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
  return _transfer(params, key, target, "grow", False, **_options(dict(
      sampler=sampler, random_rate=random_rate, norm_rate=norm_rate, exact=exact, check_finite=check_finite,
      moment=moment, donate=donate, depth_mode=depth_mode, residual_writers=residual_writers,
      split_rate=split_rate, cancel_rate=cancel_rate)))


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
  return _transfer(params, key, target, "shrink", False, **_options(dict(
      sampler=sampler, random_rate=random_rate, norm_rate=norm_rate, check_finite=check_finite, moment=moment,
      donate=donate, depth_mode=depth_mode, scores=scores)))
