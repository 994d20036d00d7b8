"""A slow numpy reference for applying index maps, written from DESIGN.md section 1, not from rcjax's code."""

import numpy as np

import rcjax


def apply_maps_np(params, maps, *, exact=False):
  """Gather each RC leaf along its mapped width axes with np.take, then rescale fan-in entries so that
  multiplier(N') * W' sums to multiplier(N) * W over copies (per copy 1/count, or N/N' uniformly)."""
  out = {}
  for path, box in rcjax.rc.leaves_with_paths(params):
    w = np.asarray(box.value, np.float64)
    old_shape = w.shape
    for d, name in enumerate(box.axes):
      if box.base[d] is not None and name in maps:
        w = np.take(w, np.asarray(maps[name]), axis=d)
    new_shape = w.shape
    scale = rcjax.multiplier(box) / rcjax.multiplier(box, new_shape)
    w = w * scale
    for d in box.fan_in:
      name = box.axes[d]
      if box.base[d] is None or name not in maps:
        continue
      m = np.asarray(maps[name])
      if exact:
        counts = np.bincount(m, minlength=old_shape[d])
        per = 1.0 / counts[m]
      else:
        per = np.full(len(m), old_shape[d] / new_shape[d])
      shape = [1] * w.ndim
      shape[d] = -1
      w = w * per.reshape(shape)
    out[path] = w
  return out
