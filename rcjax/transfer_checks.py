"""The checks and target sizes of `rcjax.transfer` / `grow` / `shrink` (before anything is traced): the
sizes asked for (`_target_sizes`), the depth plan (`_depth_plan`), the rates, exactness, finite values,
and the warning for plain arrays that a transfer leaves alone.
"""

from __future__ import annotations

import math
import warnings
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rcjax.depth import DEPTH_AXIS, check_mode, depth_map, new_blocks
from rcjax.leafmap import _check_fields
from rcjax.maps import _check_size, _scalar
from rcjax.rc import _axes_info, is_rc, leaves_with_paths, sizes as tree_sizes, width_axes

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
                     "stream, zero in new blocks), which come from the model layer: use rcjax.transfer_model "
                     "for GPT params")
  paths = [p for p, b in leaves_with_paths(params) if DEPTH_AXIS in b.axes]
  for w in writers if exact else ():
    if not any(p.endswith(w) for p in paths):
      raise ValueError(f"residual_writers: no leaf with a {DEPTH_AXIS!r} axis has a path ending with {w!r}")
  return n_old, tuple(m.tolist()), tuple(new_blocks(m).tolist()), writers if exact else ()


def _check_rates(**rates) -> None:
  """random_rate in [0, 1]; the other rates in [0, inf)."""
  for name, value in rates.items():
    lo, hi = 0.0, 1.0 if name == "random_rate" else math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
      raise TypeError(f"{name} must be a number, got {value!r}")
    if not (lo <= value <= hi) or math.isnan(value) or (hi == math.inf and math.isinf(value)):
      raise ValueError(f"{name} must be in [{lo}, {hi}{']' if hi < math.inf else ')'}, got {value}")


def _check_exact(sampler: str, old: dict, target: dict) -> None:
  if sampler == "iid":
    raise ValueError("exact=True needs sampler 'stratified' or 'stride' (iid maps can miss neurons)")
  shrunk = [k for k, n in target.items() if n < old[k]]
  if shrunk:
    raise ValueError(f"exact=True needs new sizes >= old sizes, but axis {shrunk[0]!r} shrinks "
                     f"from {old[shrunk[0]]} to {target[shrunk[0]]}")
