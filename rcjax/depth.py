"""Depth maps: which old block each new block of a scanned stack copies (the `layers` axis).

In the RC picture a block is a neuron of the depth axis, so depth transfer is one more index map, applied
by `rcjax.transfer` with the width maps in the same jitted gather (`sizes={'layers': L2}`, `depth_mode=`).
Unlike a width map it is deterministic (no key) and it rescales nothing: blocks are not averaged over
(the residual stream sums them, with no 1/L in front), so no mean-field multiplier depends on L.

Growth modes (L -> L2 > L) and their maps for L = 4 (`depth_map`):

    stack       L2 = 8: 0 1 2 3 0 1 2 3    G_stack: the whole stack repeated, in order
    interleave  L2 = 8: 0 0 1 1 2 2 3 3    each block repeated in place
    middle      L2 = 6: 0 1 2 1 2 3        MIDAS-like: the middle L2 - L blocks (1 2) repeated

Shrink modes (L2 < L), for L = 8, L2 = 3: `stride` 0 2 5 (evenly spaced), `first` 0 1 2, `last` 5 6 7.

A new block is a repeat of a block that appears earlier in the map (`new_blocks`); with `exact=True`
`rcjax.transfer` zeroes the leaves that write into the residual stream (given by the model layer,
`residual_writers`) in new blocks, so each new block starts as the identity (LLaMA Pro).
"""

from __future__ import annotations

import numpy as np

DEPTH_AXIS = "layers"
GROW_MODES = ("stack", "interleave", "middle")
SHRINK_MODES = ("stride", "first", "last")
DEPTH_MODES = GROW_MODES + SHRINK_MODES


def _spread(n: int, k: int) -> np.ndarray:
  """k of range(n), evenly spaced, in order (`i * n // k`)."""
  return np.arange(k, dtype=np.int64) * n // k


def check_mode(mode: str | None) -> None:
  if mode is not None and mode not in DEPTH_MODES:
    raise ValueError(f"unknown depth_mode {mode!r}; expected one of {DEPTH_MODES} (growth: {GROW_MODES}, "
                     f"shrinking: {SHRINK_MODES})")


def depth_map(n_old: int, n_new: int, mode: str | None = None) -> np.ndarray:
  """int32[n_new]: the old block each new block copies.

  Args:
    n_old, n_new: depths (positive ints).
    mode: growth 'stack' (default) | 'interleave' | 'middle', shrinking 'stride' (default) | 'first' |
      'last'. At a non-integer ratio, 'stack' repeats the whole stack floor(n_new / n_old) times and then
      an evenly spaced subset of the blocks, in order; 'interleave' repeats block `i * n_old // n_new`;
      'middle' repeats the n_new - n_old blocks in the middle once (n_new <= 2 n_old).

  >>> depth_map(3, 6).tolist(), depth_map(3, 6, 'interleave').tolist(), depth_map(4, 6, 'middle').tolist()
  ([0, 1, 2, 0, 1, 2], [0, 0, 1, 1, 2, 2], [0, 1, 2, 1, 2, 3])
  >>> depth_map(4, 6).tolist(), depth_map(6, 3).tolist(), depth_map(6, 2, 'last').tolist()
  ([0, 1, 2, 3, 0, 2], [0, 2, 4], [4, 5])
  """
  for what, n in (("old depth", n_old), ("new depth", n_new)):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
      raise TypeError(f"{what} must be an int, got {n!r}")
    if n <= 0:
      raise ValueError(f"{what} must be positive, got {n} (a stack keeps at least one block)")
  check_mode(mode)
  if n_new == n_old:
    return np.arange(n_old, dtype=np.int32)
  grow = n_new > n_old
  mode = mode or ("stack" if grow else "stride")
  if grow != (mode in GROW_MODES):
    raise ValueError(f"depth_mode {mode!r} is for {'growth' if mode in GROW_MODES else 'shrinking'}, but the "
                     f"depth goes from {n_old} to {n_new}; use one of {GROW_MODES if grow else SHRINK_MODES}")
  if mode == "stack":
    q, r = divmod(n_new, n_old)
    m = np.concatenate([np.tile(np.arange(n_old), q), _spread(n_old, r)])
  elif mode in ("interleave", "stride"):  # block i * n_old // n_new: repeats in place, or evenly spaced
    m = _spread(n_old, n_new)
  elif mode == "middle":
    extra = n_new - n_old
    if extra > n_old:
      raise ValueError(f"depth_mode 'middle' repeats a middle range once: at most 2 x {n_old} = {2 * n_old} "
                       f"blocks, got {n_new} (use 'stack' or 'interleave')")
    s = (n_old - extra) // 2
    m = np.concatenate([np.arange(s + extra), np.arange(s, n_old)])
  elif mode == "first":
    m = np.arange(n_new)
  else:  # last
    m = np.arange(n_old - n_new, n_old)
  return m.astype(np.int32)


def new_blocks(m: np.ndarray) -> np.ndarray:
  """bool[len(m)]: True where a block repeats one that appears earlier in the map (a copy, not the
  original). The originals of a growth map (`depth_map`) are the old blocks in their order, so with the
  copies as identities the stack computes what the old one did.

  >>> new_blocks(np.array([0, 1, 0, 1])).tolist()
  [False, False, True, True]
  """
  m = np.asarray(m)
  seen, out = set(), np.zeros(len(m), bool)
  for i, j in enumerate(m.tolist()):
    out[i] = j in seen
    seen.add(j)
  return out
