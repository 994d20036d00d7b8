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

import functools
import itertools
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from rcjax.rc import is_rc, leaves_with_paths

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


# --- gathers that keep every device at one shard (used by rcjax.transfer) ------------------------
# XLA partitions a gather along a sharded dimension by materialising that dimension whole on every
# device (for a matrix sharded only there: the whole leaf). Instead, every gather runs along an
# unsharded dimension: before it, the leaf's mesh axes are placed on its other dimensions (an all-to-all:
# per-device memory stays one shard), the gather runs locally, and at the end the leaf gets its input
# spec back at the new shape, minus mesh axes that no longer divide a dimension. Once sizes stop dividing,
# the axes may have to be split over several dimensions (`up` [layers 2, embed 20, mlp 64] on fsdp=4,
# tensor=2 with both on mlp: no dim takes all 8 devices, but layers takes tensor and embed fsdp) and the
# order of the gathers matters ([embed 32, mlp 64] to [20, 40]: after embed, [20, 64] leaves mlp's 8
# devices nowhere to go; after mlp, [32, 40] has room for them on mlp), so `gather_plan` searches both.
# Only where no placement holds every axis (e.g. a leaf with a single dimension) is the leaf gathered
# over the axes left out (O(N) values for a vector).

def leaf_shardings(tree: Any) -> tuple:
  """Static `((path, NamedSharding), ...)` of the RC leaves sharded over a multi-device Auto mesh."""
  out = []
  for path, box in leaves_with_paths(tree):
    if isinstance(box.value, jax.core.Tracer) or not isinstance(box.value, jax.Array):
      continue
    sh = box.value.sharding
    if (isinstance(sh, NamedSharding) and sh.mesh.size > 1
        and all(t == AxisType.Auto for t in getattr(sh.mesh, "axis_types", ()))):
      out.append((path, sh))
  return tuple(out)


def spec_tuple(sh: NamedSharding, ndim: int) -> tuple[tuple[str, ...], ...]:
  """A sharding's spec as one tuple of mesh axis names per dimension."""
  spec = tuple(sh.spec) + (None,) * (ndim - len(sh.spec))
  return tuple(() if s is None else (s,) if isinstance(s, str) else tuple(s) for s in spec)


def _size(mesh: Mesh, axes: Sequence[str]) -> int:
  return math.prod(mesh.shape[a] for a in axes)


def fit_spec(spec: tuple, shape: Sequence[int], mesh: Mesh) -> tuple:
  """`spec` without the mesh axes of dimensions they do not divide."""
  return tuple(s if shape[d] % _size(mesh, s) == 0 else () for d, s in enumerate(spec))


def gather_plan(spec: tuple, shape: Sequence[int], new_shape: Sequence[int], dims: Sequence[int],
                mesh: Mesh | Mapping[str, int]) -> tuple[tuple[int, tuple], ...]:
  """How to gather a leaf of `shape` and spec `spec` (`spec_tuple`) along `dims` to `new_shape` without
  gathering along a sharded dimension: `((d, spec_d), ...)` in the order to gather, where `spec_d` is the
  layout to gather `d` in: `spec_d[d]` is empty and the leaf's mesh axes sit on the other dimensions of
  the shape at that step (with every earlier dim of the plan at its new size), each dividing its dim.

  Chosen over every order of `dims` and every placement of the axes: at each step, as few elements per
  device as the shape allows (axes that fit nowhere are replicated over); the order with the fewest at
  the worst step, then in all steps together; then the fewest axes moved between dims (each move is an
  all-to-all), counting the moves into `fit_spec(spec, new_shape)` at the end.

  `mesh`: a `Mesh` or its shape.

  >>> mesh = {'fsdp': 4, 'tensor': 2}
  >>> gather_plan((('fsdp',), ('tensor',)), (32, 64), (20, 40), (0, 1), mesh)  # mlp first, see above
  ((1, (('fsdp', 'tensor'), ())), (0, ((), ('fsdp', 'tensor'))))
  >>> gather_plan(((), ('fsdp',), ('tensor',)), (2, 32, 64), (2, 20, 40), (1, 2), mesh)
  ((1, (('tensor',), (), ('fsdp',))), (2, (('tensor',), ('fsdp',), ())))
  """
  mesh_shape = mesh.shape if isinstance(mesh, Mesh) else mesh
  return _plan(tuple(tuple(s) for s in spec), tuple(shape), tuple(new_shape), tuple(dims),
               tuple(sorted(mesh_shape.items())))


@functools.lru_cache(maxsize=None)
def _plan(spec, shape, new_shape, dims, mesh_shape):
  if not dims:
    return ()
  sizes = dict(mesh_shape)
  axes = [a for s in spec for a in s]

  def moves(a, b):  # axes sharded in layout a that b moves to another dim or replicates over
    dim_b = {x: e for e, s in enumerate(b) for x in s}
    return sum(1 for e, s in enumerate(a) for x in s if dim_b.get(x) != e)

  final = tuple(s if new_shape[e] % math.prod(sizes[a] for a in s) == 0 else () for e, s in enumerate(spec))
  best = None
  for order in itertools.permutations(dims):
    shp, steps = list(shape), []
    for d in order:  # the placements of each step: (elements per device, placement as axis -> dim)
      opts = []
      for choice in itertools.product([e for e in range(len(shp)) if e != d] + [None], repeat=len(axes)):
        per = [1] * len(shp)
        for a, e in zip(axes, choice):
          if e is not None:
            per[e] *= sizes[a]
        if all(n % k == 0 for n, k in zip(shp, per)):
          big = max(math.prod(shp), math.prod(shp[:d] + [new_shape[d]] + shp[d + 1:]))
          opts.append((big // math.prod(per), dict(zip(axes, choice))))
      steps.append(opts)
      shp[d] = new_shape[d]
    # Each step as few elements per device as it can have (no axis replicated over where it fits),
    # then fewest moves (dynamic programming over the steps).
    least = [min(c for c, _ in opts) for opts in steps]
    layouts = {spec: (0, ())}
    for d, opts, low in zip(order, steps, least):
      nxt = {}
      for prev, (cost, path) in layouts.items():
        for c, place in opts:
          if c > low:
            continue
          sp = tuple(tuple([a for a in prev[e] if place[a] == e] + [a for a in axes if place[a] == e
                                                                     and a not in prev[e]])
                     for e in range(len(shape)))
          cand = (cost + moves(prev, sp), path + ((d, sp),))
          if sp not in nxt or cand[0] < nxt[sp][0]:
            nxt[sp] = cand
      layouts = nxt
    cost, path = min(((cost + moves(sp, final), path) for sp, (cost, path) in layouts.items()),
                     key=lambda t: t[0])
    if best is None or (max(least), sum(least), cost) < best[0]:
      best = ((max(least), sum(least), cost), path)
  return best[1]


def constrain(x: jax.Array, mesh: Mesh, spec: tuple) -> jax.Array:
  """`with_sharding_constraint` to a spec given as tuples of mesh axes per dimension."""
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(*[s or None for s in spec])))


__all__ = ["MESH_AXES", "RULES", "abstract", "batch_sharding", "check_same_on_every_process", "constrain",
           "fit_spec", "gather_plan", "init", "init_distributed", "leaf_shardings", "logical_spec", "make_mesh",
           "parse_mesh", "shard", "shardings", "spec_tuple"]


def sync(name: str) -> None:
  """A barrier across processes (nothing for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def init_distributed(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> None:
  """`jax.distributed.initialize`: explicit flags, or auto-detected on multi-host TPU and SLURM job steps
  (nothing for one process; `num_processes=1` means one process whatever the environment says)."""
  import os

  if coordinator or (num_processes or 1) > 1:
    if not (coordinator and num_processes and process_id is not None):
      raise ValueError("multi-process runs need --coordinator, --num-processes and --process-id together")
    jax.distributed.initialize(coordinator, num_processes, process_id)
  elif num_processes == 1:
    return
  elif ((int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in os.environ)  # under srun
        or "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")):
    jax.distributed.initialize()


def check_same_on_every_process(values: Mapping[str, Any], what: str = "flags") -> None:
  """Raise ValueError on every process, naming the entries of `values` (JSON-able) that differ between
  processes: processes started with other flags would otherwise mix two runs, or wait on each other in
  collectives that never match. Nothing to do for one process."""
  if jax.process_count() == 1:
    return
  import hashlib
  import json

  from jax.experimental import multihost_utils

  keys = sorted(values)
  digest = lambda v: int.from_bytes(hashlib.sha256(json.dumps(v, sort_keys=True, default=str).encode())
                                    .digest()[:4], "little") & 0x7FFFFFFF
  mine = np.array([digest(k) for k in keys] + [digest(values[k]) for k in keys], np.int32)
  n = multihost_utils.process_allgather(np.array([len(keys)], np.int32))
  if len(set(np.asarray(n).ravel().tolist())) > 1:
    raise ValueError(f"the processes disagree on {what}: they have {np.asarray(n).ravel().tolist()} entries")
  every = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, len(mine))
  differ = [k for i, k in enumerate(keys) if len(set(every[:, i])) > 1 or len(set(every[:, len(keys) + i])) > 1]
  if differ:
    mine_ = ", ".join(f"{k}={values[k]!r}" for k in differ[:4])
    raise ValueError(f"the processes disagree on {what} {differ} (process {jax.process_index()} has {mine_}); "
                     "start every process with the same flags")
