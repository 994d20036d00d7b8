"""The gathers of a transfer: one leaf along its mapped dims, by the fastest path that gives the same bits.

Integer repeats (maps `repeat(arange(N), k)`) are broadcasts (or the Pallas kernel on GPUs, see
`rcjax.kernels`), other maps one fused gather per leaf; on the host CPU a row gather of its own
(`_gather_rows`). Every path is bitwise the same as `jnp.take` along each dim in turn (tests).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rcjax import kernels


def _broadcast(vec: jax.Array, d: int, ndim: int) -> jax.Array:
  return vec.reshape((-1,) + (1,) * (ndim - d - 1))


def _repeat(x: jax.Array, d: int, k: int) -> jax.Array:
  """`jnp.repeat(x, k, axis=d)` as a broadcast of a new axis after d merged into d.

  Doubling the last axis of a 16-bit matrix is done on 32-bit words (each word holds an entry twice),
  after its other repeats. Measured side by side on an H200 (benchmarks/README.md): 0.92 vs 0.63 of copy
  bandwidth for an 8192^2 bf16 matrix grown 2x, but worse for leaves of 3+ dims in every form tried (this
  order, words first, all dims as words, dims merged first), so only 2-D leaves take it.
  """
  shape = x.shape
  if k == 2 and x.ndim == 2 and d == 1 and x.dtype.itemsize == 2:
    u = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    return jax.lax.bitcast_convert_type(u | (u << 16), x.dtype).reshape(shape[:-1] + (2 * shape[-1],))
  x = jnp.broadcast_to(jnp.expand_dims(x, d + 1), shape[:d + 1] + (k,) + shape[d + 1:])
  return x.reshape(shape[:d] + (shape[d] * k,) + shape[d + 1:])


def _on_cpu() -> bool:
  """Whether traced transfers compile for the host CPU (decided at trace time; GPU keeps its own path)."""
  return jax.default_backend() == "cpu"


def _gather_rows(x: jax.Array, dims: list[int], names: list[str], maps, trusted: bool = True) -> jax.Array:
  """The CPU's general gather: `x` as rows (its dims up to the last mapped one) of contiguous trailing
  entries, gathered with one flat row index per output row (the maps and `arange` for the unmapped dims
  in front, weighted by their strides, summed: a broadcast XLA fuses into the gather).

  With unmapped dims in front as gather slices, XLA:CPU writes the gather in a transposed layout and copies
  it back (measured on the GPT pytree grown x1.5: 3x slower); an index of stacked per-dim tuples is
  materialised when leaves of one shape share it (hundreds of MB for embedding-sized leaves).
  `trusted`: the maps are sorted and in bounds (as `index_maps` draws them), which the gather is promised;
  else it is promised nothing (and clips)."""
  hi = dims[-1]
  lead, trail = x.shape[:hi + 1], x.shape[hi + 1:]
  flat, stride, out_lead = None, 1, []
  for d in range(hi, -1, -1):
    m = maps[names[dims.index(d)]] if d in dims else jnp.arange(lead[d], dtype=jnp.int32)
    out_lead.insert(0, m.shape[0])
    term = _broadcast(m * stride if stride > 1 else m, d, hi + 1)
    flat = term if flat is None else flat + term
    stride *= lead[d]
  rows = x.reshape((stride, math.prod(trail)))
  dnums = jax.lax.GatherDimensionNumbers(offset_dims=(hi + 1,), collapsed_slice_dims=(0,), start_index_map=(0,))
  # Row indices of sorted maps in lexicographic order: sorted, all in bounds.
  mode = jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS if trusted else jax.lax.GatherScatterMode.CLIP
  out = jax.lax.gather(rows, jnp.broadcast_to(flat, tuple(out_lead))[..., None], dnums, (1, rows.shape[1]),
                       indices_are_sorted=trusted, mode=mode)
  return out.reshape(tuple(out_lead) + trail)


def _gather(x: jax.Array, dims: list[int], names: list[str], maps, repeats: dict[str, int],
            cpu: bool | None = None, pallas: tuple = (False, False), scale: float | None = None,
            trusted: bool = True) -> jax.Array:
  """`x` gathered along `dims` with the maps of `names`, in one pass over the output.

  Identity maps (`repeats` of 1: a kept size, e.g. `head_dim`) are dropped. Integer-factor maps of
  'stratified'/'stride' are `repeat(arange(N), k)`: a broadcast + reshape, which XLA fuses into a
  streaming copy. Otherwise one gather whose indices are the broadcast outer product of
  the maps over the span of dims from the first mapped to the last (unmapped dims inside the span take
  `arange`), instead of one full pass per axis.

  On the CPU (`cpu`; default: whether the default backend is the CPU) the general gather is
  `_gather_rows`. `pallas` (`kernels.settings()`: an `ENABLED` mode, see `kernels.chosen`, and `WORDS`):
  integer repeats by `rcjax.kernels.repeat` where it takes the leaf. `scale`: the
  output is `(out.astype(float32) * scale).astype(x.dtype)` (inside the kernel's one pass when it runs;
  XLA fuses it otherwise). `trusted`: the maps are sorted and in bounds (see `_gather_rows`).
  """
  cpu = _on_cpu() if cpu is None else cpu
  keep = [i for i, n in enumerate(names) if repeats.get(n) != 1]
  dims, names = [dims[i] for i in keep], [names[i] for i in keep]
  if dims and all(n in repeats for n in names):
    reps = {d: repeats[n] for d, n in zip(dims, names)}
    # Not for a 16-bit matrix with its last dim doubled: XLA's word form (`_repeat`) is faster there.
    xla_words = x.ndim == 2 and x.dtype.itemsize == 2 and reps.get(1) == 2
    mode, words = pallas
    nbytes = x.size * math.prod(reps.values()) * x.dtype.itemsize  # the output's
    how = kernels.chosen(mode, x.dtype, "cpu" if cpu else jax.default_backend(), nbytes)
    if how and not xla_words and kernels.supports(x.shape, reps):
      return kernels.repeat(x, reps, scale=scale, interpret=how == "interpret", words=words)
  x = _gather_unscaled(x, dims, names, maps, repeats, cpu, trusted)
  return x if scale is None else (x.astype(jnp.float32) * scale).astype(x.dtype)


def _gather_unscaled(x, dims, names, maps, repeats, cpu, trusted=True):
  """`_gather` by XLA, without the rescaling (`dims` without identity maps)."""
  if not dims:
    return x
  if all(n in repeats for n in names):
    for d, n in zip(dims, names):  # in order: a doubled last axis of a 16-bit matrix comes last
      x = _repeat(x, d, repeats[n])
    return x
  if cpu and math.prod(x.shape[:dims[-1] + 1]) < 2**31:  # row indices fit int32
    return _gather_rows(x, dims, names, maps, trusted)
  lo, hi = dims[0], dims[-1]
  span = hi - lo + 1
  index = []
  for i, d in enumerate(range(lo, hi + 1)):
    m = maps[names[dims.index(d)]] if d in dims else jnp.arange(x.shape[d], dtype=jnp.int32)
    index.append(m.reshape((1,) * i + (-1,) + (1,) * (span - i - 1)))
  # Outer products of sorted maps are lexicographically sorted index tuples, all in bounds.
  return x.at[(slice(None),) * lo + tuple(index)].get(indices_are_sorted=trusted,
                                                      mode="promise_in_bounds" if trusted else "clip")
