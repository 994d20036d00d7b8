"""Logical-axis sharding rules, device meshes and sharded init for pytrees of RC leaves.

Params name their axes logically (`embed`, `mlp`, ...); one small constant maps logical names to mesh axes
(`data`, `fsdp`, `tensor`). A dimension is sharded over its rule's mesh axes only if they divide it and no
earlier dimension of the same leaf uses them, otherwise it is replicated, so any width fits any mesh.

Meshes are `jax.sharding.Mesh` with Auto axis types (not `jax.make_mesh`, whose Explicit axes make a
gather along a sharded axis fail).

>>> import jax, rcjax
>>> mesh = make_mesh('data=-1')
>>> mesh.shape['data'] == jax.device_count()
True
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rcjax.multihost import check_same_on_every_process, init_distributed, sync  # noqa: F401 (re-exported)
from rcjax.rc import is_rc
# the reshard planner (rcjax.reshard), importable from here as before #21
from rcjax.reshard import _plan, _size, constrain, fit_spec, gather_plan, leaf_shardings, spec_tuple  # noqa: F401

MESH_AXES = ("data", "fsdp", "tensor")
# Logical axis -> mesh axes. Batch over data and fsdp; weights fully sharded over fsdp (embed) and
# tensor-parallel over tensor (mlp, heads, vocab); layers, head_dim and positions replicated.
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", ("fsdp",)),
    ("mlp", ("tensor",)),
    ("heads", ("tensor",)),
    ("kv_heads", ("tensor",)),
    ("vocab", ("tensor",)),
)


def parse_mesh(spec: str | Mapping[str, int], n_devices: int | None = None) -> dict[str, int]:
  """`'data=2,fsdp=2,tensor=2'` (or a dict) -> `{'data': 2, 'fsdp': 2, 'tensor': 2}`.

  One size may be -1 ("the rest"); names missing are 1. Raises ValueError unless the sizes multiply to
  `n_devices` (default: all devices).

  >>> parse_mesh('fsdp=-1,tensor=2', 8)
  {'data': 1, 'fsdp': 4, 'tensor': 2}
  """
  n = jax.device_count() if n_devices is None else n_devices
  if isinstance(spec, str):
    shape = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
      name, eq, size = part.partition("=")
      name = name.strip()
      try:
        if not eq:
          raise ValueError
        shape[name] = int(size)
      except ValueError:
        raise ValueError(f"bad mesh {spec!r}: expected e.g. 'data=2,fsdp=2,tensor=2'") from None
  else:
    shape = dict(spec)
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"bad mesh {spec!r}: unknown axes {sorted(unknown)}; mesh axes are {MESH_AXES}")
  if list(shape.values()).count(-1) > 1 or any(v == 0 or v < -1 for v in shape.values()):
    raise ValueError(f"bad mesh {spec!r}: sizes must be positive, and at most one may be -1")
  shape = {a: shape.get(a, 1) for a in MESH_AXES}
  known = math.prod(v for v in shape.values() if v != -1)
  if -1 in shape.values():
    if n % known:
      raise ValueError(f"mesh {spec!r}: {n} devices are not divisible by {known}")
    shape = {a: (n // known if v == -1 else v) for a, v in shape.items()}
  if math.prod(shape.values()) != n:
    raise ValueError(f"mesh {spec!r} has {math.prod(shape.values())} devices but there are {n} "
                     f"(use -1 for 'the rest', e.g. 'data=-1')")
  return shape


def make_mesh(spec: str | Mapping[str, int] = "data=-1", devices: Sequence[jax.Device] | None = None) -> Mesh:
  """An Auto-axis `Mesh` with axes ('data', 'fsdp', 'tensor') over `devices` (default: all devices)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = parse_mesh(spec, len(devices))
  dims = tuple(shape[a] for a in MESH_AXES)
  try:  # topology-aware on TPU/GPU; plain order elsewhere (and as a fallback)
    from jax.experimental import mesh_utils
    if devices[0].platform == "cpu":
      raise ValueError
    grid = mesh_utils.create_device_mesh(dims, devices, allow_split_physical_axes=True)
  except Exception:  # noqa: BLE001
    grid = np.array(devices).reshape(dims)
  return Mesh(grid, MESH_AXES)


def logical_spec(axes: Sequence[str], shape: Sequence[int], mesh: Mesh,
                 rules: Sequence[tuple[str, Sequence[str]]] = RULES) -> P:
  """The `PartitionSpec` of an array with logical `axes` and `shape` on `mesh` under `rules`.

  >>> import numpy as np
  >>> mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), MESH_AXES)
  >>> logical_spec(('embed', 'mlp'), (8, 32), mesh) == P('fsdp', 'tensor')
  True
  """
  table, used, spec = dict(rules), set(), []
  for name, size in zip(axes, shape):
    mesh_axes = tuple(a for a in table.get(name, ()) if a in mesh.shape and a not in used)
    if mesh_axes and size % math.prod(mesh.shape[a] for a in mesh_axes) == 0:
      used.update(mesh_axes)
      spec.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    else:
      spec.append(None)
  return P(*spec)


def shardings(tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Sequence[str]]] = RULES) -> Any:
  """A `NamedSharding` per leaf: RC leaves by their logical axes (the result keeps the RC boxes, holding
  shardings, so it matches boxed params for `jax.jit(in_shardings=...)`); other leaves replicated."""
  def one(x):
    if is_rc(x):
      return x.replace(value=NamedSharding(mesh, logical_spec(x.axes, x.shape, mesh, rules)))
    return NamedSharding(mesh, P())
  return jax.tree.map(one, tree, is_leaf=is_rc)


def abstract(tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Sequence[str]]] = RULES) -> Any:
  """`jax.ShapeDtypeStruct`s carrying shardings (e.g. checkpoint restore targets on another mesh)."""
  def one(x, sh):
    v = x.value if is_rc(x) else x
    s = sh.value if is_rc(sh) else sh
    out = jax.ShapeDtypeStruct(np.shape(v), v.dtype, sharding=s)
    return x.replace(value=out) if is_rc(x) else out
  return jax.tree.map(one, tree, shardings(tree, mesh, rules), is_leaf=is_rc)


def init(fn: Callable[..., Any], *args: Any, mesh: Mesh,
         rules: Sequence[tuple[str, Sequence[str]]] = RULES) -> Any:
  """Run `fn(*args)` (e.g. `lambda k: model.init(k, x)['params']`) with outputs born sharded:
  `jax.eval_shape` -> shardings from the logical axes -> `jax.jit(fn, out_shardings=...)`. No full copy of
  the model exists on any one device."""
  sh = shardings(jax.eval_shape(fn, *args), mesh, rules)
  return jax.jit(fn, out_shardings=sh)(*args)


def shard(tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Sequence[str]]] = RULES) -> Any:
  """`jax.device_put` every leaf to its sharding (for trees that already exist, e.g. small tests)."""
  sh = shardings(tree, mesh, rules)
  return jax.tree.map(lambda x, s: x.replace(value=jax.device_put(x.value, s.value)) if is_rc(x)
                      else jax.device_put(x, s), tree, sh, is_leaf=is_rc)


def batch_sharding(mesh: Mesh, ndim: int = 2,
                   rules: Sequence[tuple[str, Sequence[str]]] = RULES) -> NamedSharding:
  """Sharding of a batch `[B, ...]`: B over the mesh axes of the 'batch' rule."""
  axes = tuple(a for a in dict(rules).get("batch", ()) if a in mesh.shape)
  return NamedSharding(mesh, P(axes if axes else None, *([None] * (ndim - 1))))


__all__ = ["MESH_AXES", "RULES", "abstract", "batch_sharding", "check_same_on_every_process", "constrain",
           "fit_spec", "gather_plan", "init", "init_distributed", "leaf_shardings", "logical_spec", "make_mesh",
           "parse_mesh", "shard", "shardings", "spec_tuple"]
