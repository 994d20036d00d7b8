"""The RC leaf: an array that knows the logical name of each axis, its fan-in and its width axes.

A pytree of `RC` boxes is all rcjax needs: transfer, the parametrization and sharding all read the
structure from the boxes. `RC` is a Flax `AxisMetadata` box, so Flax boxes and unboxes it on its own and
`flax.linen.get_partition_spec` returns the logical axis names.
"""

from __future__ import annotations

import zlib
from typing import Any, Iterator

import jax
import numpy as np
from flax import struct
from flax.linen import meta

PARAMS = ("sp", "ntk", "mup", "mf")


_NORMALISED: dict = {}  # RC metadata as given -> normalised (see RC.__post_init__)


class RC(struct.PyTreeNode, meta.AxisMetadata):
  """A parameter (or optimizer-moment) array with row-column structure.

  Attributes:
    value: the array.
    axes: a logical name per dimension, e.g. `('embed', 'mlp')`.
    fan_in: the dimensions contracted in the forward pass, e.g. `(0,)`.
    base: per dimension, the base size of a width axis, or `None` for a fixed axis. A dimension is a
      width axis iff its base is not None.
    param: the parametrization, one of `'sp' | 'ntk' | 'mup' | 'mf'`.
    init: the init distribution spec (see `rcjax.parametrization.sample`) used for fresh neurons.
    blocks: `((axis, outer), ...)`: the dimension named `axis` is laid out in contiguous blocks, one per
      neuron of the axis named `outer` (grouped-query attention: query heads in blocks per kv head,
      `('heads', 'kv_heads')`), or in `outer` fixed blocks when `outer` is an int (the two halves of a
      RoPE head, `('head_dim', 2)`). Transfer keeps entries in their blocks (see `rcjax.index_maps`).

  >>> import jax.numpy as jnp
  >>> w = RC(jnp.zeros((3, 4)), axes=('input', 'hidden'), fan_in=(0,), base=(None, 4), param='mup')
  >>> w
  RC(float32[3, 4], axes=('input', 'hidden*'), fan_in=(0,), base=(None, 4), param='mup', init='normal')
  >>> w.width_dims
  (1,)
  """

  value: Any
  axes: tuple[str, ...] = struct.field(pytree_node=False)
  fan_in: tuple[int, ...] = struct.field(pytree_node=False, default=())
  base: tuple[int | None, ...] | None = struct.field(pytree_node=False, default=None)
  param: str = struct.field(pytree_node=False, default="sp")
  init: str = struct.field(pytree_node=False, default="normal")
  blocks: tuple[tuple[str, str | int], ...] = struct.field(pytree_node=False, default=())

  def __post_init__(self):
    # Normalise the metadata so two boxes describing the same leaf compare (and hash) equal. Every
    # unflatten (each jit output) builds boxes again from the same metadata: those are looked up.
    try:
      raw = (self.axes, self.fan_in, self.base, self.param, self.blocks)
      norm = _NORMALISED.get(raw)
    except TypeError:  # unhashable (lists): normalise, uncached
      raw, norm = None, None
    if norm is None:
      norm = self._normalised()
      if raw is not None:
        if len(_NORMALISED) >= 4096:
          _NORMALISED.clear()
        _NORMALISED[raw] = norm
    for name, value in zip(("axes", "fan_in", "base", "blocks"), norm):
      object.__setattr__(self, name, value)

  def _normalised(self) -> tuple:
    """(axes, fan_in, base, blocks) normalised and checked against each other and `param`."""
    if isinstance(self.axes, str) or not all(isinstance(a, str) for a in self.axes):
      raise TypeError(f"RC: axes must be a tuple of axis names, one per dimension, got {self.axes!r}")
    axes = tuple(self.axes)
    if isinstance(self.fan_in, (int, np.integer)) or (self.base is not None and isinstance(self.base, (int, str))):
      raise TypeError(f"RC: fan_in and base are tuples (fan_in=(0,), base=(None, 64)), got fan_in={self.fan_in!r}, "
                      f"base={self.base!r}")
    base = (None,) * len(axes) if self.base is None else tuple(
        None if b is None else int(b) for b in self.base)
    if any(b is not None and b <= 0 for b in base):
      raise ValueError(f"RC: base {base} for axes {axes}: a width axis's base is a positive size "
                       "(None for a fixed axis)")
    fan_in = tuple(sorted(int(d) + len(axes) * (int(d) < 0) for d in self.fan_in))
    if len(base) != len(axes):
      raise ValueError(f"RC: base {base} has {len(base)} entries for {len(axes)} axes {axes}")
    if self.param not in PARAMS:
      raise ValueError(f"RC: unknown parametrization {self.param!r}; expected one of {PARAMS}")
    if any(not 0 <= d < len(axes) for d in fan_in) or len(set(fan_in)) < len(fan_in):
      raise ValueError(f"RC: fan_in {fan_in} out of range or repeated for axes {axes}")
    blocks = tuple(sorted((str(a), o if isinstance(o, str) else int(o)) for a, o in dict(self.blocks).items()))
    for a, o in blocks:
      if a not in axes or (isinstance(o, int) and o <= 0) or o == a:
        raise ValueError(f"RC: bad blocks entry {(a, o)} for axes {axes}: need an axis of this leaf and "
                         "another axis name or a positive number of blocks")
    return axes, fan_in, base, blocks

  # --- flax AxisMetadata protocol -------------------------------------------------------------
  def unbox(self) -> Any:
    return self.value

  def replace_boxed(self, val: Any) -> "RC":
    return self.replace(value=val)

  def add_axis(self, index: int, params: dict[Any, Any]) -> "RC":
    name = params.get(meta.PARTITION_NAME, "layers")
    axes, base = list(self.axes), list(self.base)
    axes.insert(index, name)
    base.insert(index, None)
    fan_in = tuple(d + (d >= index) for d in self.fan_in)
    return self.replace(axes=tuple(axes), base=tuple(base), fan_in=fan_in)

  def remove_axis(self, index: int, params: dict[Any, Any]) -> "RC":
    axes, base = list(self.axes), list(self.base)
    axes.pop(index)
    base.pop(index)
    fan_in = tuple(d - (d > index) for d in self.fan_in if d != index)
    return self.replace(axes=tuple(axes), base=tuple(base), fan_in=fan_in)

  def get_partition_spec(self) -> jax.sharding.PartitionSpec:
    """The logical partition spec: one logical axis name per dimension."""
    return jax.sharding.PartitionSpec(*self.axes)

  # --- structure ------------------------------------------------------------------------------
  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(np.shape(self.value))

  @property
  def width_dims(self) -> tuple[int, ...]:
    """Dimensions that are width axes (their base is not None)."""
    return tuple(d for d, b in enumerate(self.base) if b is not None)

  def __repr__(self) -> str:
    dtype = getattr(self.value, "dtype", None)
    dtype = np.dtype(dtype).name if dtype is not None else type(self.value).__name__
    shape = ", ".join(str(s) for s in self.shape)
    axes = tuple(a + ("*" if b is not None else "") for a, b in zip(self.axes, self.base))
    blocks = f", blocks={self.blocks!r}" if self.blocks else ""
    return (f"RC({dtype}[{shape}], axes={axes!r}, fan_in={self.fan_in}, base={self.base}, "
            f"param={self.param!r}, init={self.init!r}{blocks})").replace("\"", "'")


def is_rc(x: Any) -> bool:
  """Whether `x` is an RC leaf (for `jax.tree.map(..., is_leaf=is_rc)`).

  >>> import jax.numpy as jnp
  >>> is_rc(RC(jnp.ones(3), axes=('hidden',), base=(3,))), is_rc(jnp.ones(3))
  (True, False)
  """
  return isinstance(x, RC)


def leaves_with_paths(tree: Any) -> list[tuple[str, RC]]:
  """`(path, box)` for every RC leaf, path as `jax.tree_util.keystr` (e.g. `['params']['Dense_0']['kernel']`)."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_rc)
  return [(jax.tree_util.keystr(p), x) for p, x in flat if is_rc(x)]


def path_hash(path: str) -> int:
  """A stable 31-bit hash of a leaf path or axis name (Python's `hash` is salted per process)."""
  return zlib.crc32(path.encode()) & 0x7FFFFFFF


def _iter_axes(tree: Any) -> Iterator[tuple[str, str, int, int | None]]:
  for path, box in leaves_with_paths(tree):
    shape = box.shape
    if len(shape) != len(box.axes):
      raise ValueError(f"{path}: a {len(shape)}-D value of shape {shape} but {len(box.axes)} axis names "
                       f"{box.axes} (one name per dimension)")
    for d, (name, b) in enumerate(zip(box.axes, box.base)):
      yield path, name, shape[d], b


# sizes() of pytrees by structure: (treedef, leaf shapes) -> (sizes, width axis names). The RC metadata
# (axes, base) is static pytree data, so it is part of the treedef: the key fixes the answer. Calls on
# the same structure (every grow/shrink of it, each validating its argument) skip the walk over leaves.
_SIZES_CACHE: dict = {}


def _axes_info(params: Any) -> tuple[dict[str, int], frozenset[str], frozenset[str]]:
  leaves, treedef = jax.tree_util.tree_flatten(params)
  key = (treedef, tuple(x.shape if hasattr(x, "shape") else np.shape(x) for x in leaves))
  try:
    hit = _SIZES_CACHE.get(key)
  except TypeError:  # a pytree node with unhashable static data: no caching
    key, hit = None, None
  if hit is not None:
    return hit
  seen: dict[str, tuple[int, int | None, str]] = {}
  varies: set[str] = set()  # fixed axes of different sizes in different leaves
  for path, name, size, base in _iter_axes(params):
    if name not in seen:
      seen[name] = (size, base, path)
      continue
    size0, base0, path0 = seen[name]
    if (base is None) != (base0 is None):
      kind = lambda b: "a width axis" if b is not None else "a fixed axis"
      raise ValueError(f"axis {name!r} is {kind(base0)} at {path0} but {kind(base)} at {path}")
    if base is None:
      if size != size0:
        varies.add(name)
      continue
    if size != size0:
      raise ValueError(f"axis {name!r} has size {size0} at {path0} but {size} at {path}")
    if base != base0:
      raise ValueError(f"width axis {name!r} has base {base0} at {path0} but {base} at {path} (one base per axis: "
                       "the parametrization's multipliers depend on it)")
  if not seen:
    raise ValueError("no RC leaves in this pytree: build params with rcjax.nn or wrap arrays in rcjax.RC")
  hit = ({name: s for name, (s, _, _) in seen.items() if name not in varies},
         frozenset(n for n, (_, b, _) in seen.items() if b is not None), frozenset(varies))
  if key is not None:
    if len(_SIZES_CACHE) >= 256:
      _SIZES_CACHE.clear()
    _SIZES_CACHE[key] = hit
  return hit


def sizes(params: Any) -> dict[str, int]:
  """The current size of every logical axis name in a pytree of RC leaves.

  Raises `ValueError` if the tree holds no RC leaves, if two leaves disagree on the size or base of a
  width axis, if an axis is a width axis in one leaf and fixed in another (naming both leaf paths), or
  if a leaf has not one axis name per dimension. A fixed axis may have different sizes in different
  leaves (the windows of a 5x5 and a 3x3 convolution, two scanned stacks of different depth): transfer
  never resizes it, and it is left out here.

  >>> import jax.numpy as jnp
  >>> p = {'w': RC(jnp.zeros((3, 4)), axes=('input', 'hidden'), fan_in=(0,), base=(None, 4)),
  ...      'b': RC(jnp.zeros((4,)), axes=('hidden',), base=(4,))}
  >>> sizes(p)
  {'hidden': 4, 'input': 3}
  """
  return dict(_axes_info(params)[0])


def width_axes(params: Any) -> dict[str, int]:
  """Like `sizes`, restricted to width axes (base not None).

  >>> import jax.numpy as jnp
  >>> p = {'w': RC(jnp.ones((2, 3)), axes=('input', 'hidden'), fan_in=(0,), base=(None, 3))}
  >>> width_axes(p)
  {'hidden': 3}
  """
  all_sizes, widths, _ = _axes_info(params)
  return {k: v for k, v in all_sizes.items() if k in widths}


def unbox(params: Any) -> Any:
  """Plain arrays: every RC box replaced by its value (other leaves unchanged).

  >>> import jax.numpy as jnp
  >>> unbox({'w': RC(jnp.zeros(2), axes=('hidden',), base=(2,)), 'step': 3})
  {'step': 3, 'w': Array([0., 0.], dtype=float32)}
  """
  return jax.tree.map(lambda x: x.value if is_rc(x) else x, params, is_leaf=is_rc)


def boxes(values: Any, template: Any) -> Any:
  """Box plain arrays like `template` (a pytree of RC leaves of the same structure), e.g. after a restore.

  Shapes may differ from the template's (a grown model restored from disk); the metadata is copied.

  >>> import jax.numpy as jnp
  >>> template = {'w': RC(jnp.zeros(2), axes=('hidden',), base=(2,))}
  >>> boxes({'w': jnp.ones(4)}, template)['w'].axes
  ('hidden',)
  """
  def box(t, v):
    if not is_rc(t):
      return v
    if np.ndim(v) != len(t.axes):
      raise ValueError(f"boxes: value of shape {np.shape(v)} does not fit {t!r}")
    return t.replace(value=v)

  return jax.tree.map(box, template, values, is_leaf=is_rc)
