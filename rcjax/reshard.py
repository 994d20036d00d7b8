"""The reshard planner of transfer: gathers of a sharded leaf that keep every device at one shard
(`gather_plan`, `leaf_shardings`, `constrain`, ...), used by `rcjax.leafmap` and re-exported by
`rcjax.sharding`.

>>> gather_plan((('fsdp',),), (8,), (8,), (), {'fsdp': 2})  # nothing to gather: an empty plan
()
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, Mapping, Sequence

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from rcjax.rc import leaves_with_paths

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
