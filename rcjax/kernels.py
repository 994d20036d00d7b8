"""A Pallas kernel for transfer's integer repeats, used on GPUs for 16-bit leaves (`rcjax.kernels.ENABLED`).

XLA moves the 16-bit 3-D/4-D leaves of a GPT grown 2x at 0.54-0.70 of copy bandwidth (H100 and H200;
benchmarks/README.md). This kernel copies blocks instead: a leaf's dims are first merged (`merged`) so
every repeated dim carries the unrepeated dims before it, leaving 1 to 3 repeated dims and at most one
unrepeated trailing dim. The output, viewed with a `(n, k)` pair per repeated dim, is then written block
by block: each program reads one input block once, applies the leaf's fan-in rescaling (`scale`), and
writes it broadcast over the k copies of each dim repeated by a small power of two (always the last:
rows stay contiguous), and to one of the k slabs of any other repeated dim (the grid runs over those).
Blocks tile the dims exactly (`_plan`). Bitwise equal to `jnp.repeat` per dim (tests/test_transfer_fast.py,
in interpret mode on the CPU; on an H100, benchmarks/repeat_kernel.py and transfer.py --kernel check
every leaf and pytree they time). `available` checks once per process that it runs before a transfer
on a GPU uses it.

Measured on an H100 (2026-11-27, benchmarks/results/2026-11-27-h100-c): gpt-medium's pytree grown 2x in
bf16 at 0.79 and 0.74 of copy in two runs, against 0.69 and 0.67 for XLA (bitwise equal); in float32 at
0.85 against XLA's 0.88. Hence the default, 'auto': the kernel for 16-bit leaves on GPUs, XLA otherwise.
It uses Pallas's Triton backend, which JAX 0.11 marks deprecated (its default, Mosaic GPU, refuses these
blocks); the lasting form is a Mosaic GPU kernel.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp

# Which integer repeats of unsharded leaves `rcjax.transfer` / `grow` / `shrink` / `apply_maps` run by
# `repeat` instead of XLA's broadcast, read at each call: 'auto' (on GPUs, leaves of at most 16 bits per
# entry), True (on GPUs, every dtype), False (never), 'interpret' (every leaf, in Pallas's interpreter on
# any backend: tests).
ENABLED: bool | str = "auto"
MODES = ("auto", True, False, "interpret")
# 'auto' leaves smaller than this (output bytes) to XLA: a norm scale or a bias is a launch of its own in
# the kernel, while XLA fuses such small loops across leaves into one (horizontal fusion). Not measured
# separately yet (transfer.py --kernel off,auto,on: 'on' sends every leaf to the kernel).
AUTO_MIN_BYTES = 1 << 20
# Whether 16-bit leaves with a doubled last dim are written as 32-bit words (`repeat(words=True)`): off
# until measured on a GPU (benchmarks/repeat_kernel.py, transfer.py --kernel off,auto,words).
WORDS: bool = False


def settings() -> tuple[bool | str, bool]:
  """(`mode()`, `WORDS`): what `rcjax.transfer` passes down (a static argument of its jit)."""
  return mode(), bool(WORDS)


def mode() -> bool | str:
  """`ENABLED`, checked; False where it would compile the kernel for a GPU on which it does not run
  (`available`), so that transfer takes XLA's path there instead of failing."""
  if ENABLED not in MODES:
    raise ValueError(f"rcjax.kernels.ENABLED must be one of {MODES}, got {ENABLED!r}")
  if ENABLED in ("auto", True) and jax.default_backend() == "gpu" and not available():
    return False
  return ENABLED


@functools.cache
def available(interpret: bool = False) -> bool:
  """Whether the kernel compiles and runs on this process's default device: checked once, on a small
  leaf against `jnp.repeat`, bit for bit. Pallas's Triton backend, which it needs on GPUs, is deprecated
  in JAX 0.11 and absent from some GPU builds; where it fails this warns once and returns False."""
  try:
    with jax.ensure_compile_time_eval():  # also when first asked while a caller's jit is tracing
      x = jnp.arange(32 * 64, dtype=jnp.float32).reshape(32, 64).astype(jnp.bfloat16)
      got = jax.jit(lambda x: repeat(x, {0: 2, 1: 2}, interpret=interpret))(x)
      ok = bool(jnp.array_equal(got.view(jnp.uint16), jnp.repeat(jnp.repeat(x, 2, 0), 2, 1).view(jnp.uint16)))
    problem = None if ok else "its output differs from jnp.repeat"
  except Exception as e:  # noqa: BLE001 - any failure to lower, compile or run: fall back to XLA
    problem = f"{type(e).__name__}: {str(e)[:300]}"
  if problem:
    warnings.warn(f"rcjax.kernels: the Pallas repeat kernel does not run here ({problem}); transfers use "
                  "XLA's path", RuntimeWarning, stacklevel=2)
  return problem is None


def chosen(mode, dtype, platform: str, nbytes: int | None = None) -> str | None:
  """How `mode` (an `ENABLED` value) runs a leaf of `dtype` on `platform` whose output has `nbytes` bytes
  (None: unknown, taken as large): 'gpu' (compiled), 'interpret', or None (XLA's path)."""
  if mode not in MODES:
    raise ValueError(f"rcjax.kernels.ENABLED must be one of {MODES}, got {mode!r}")
  if mode == "interpret":
    return "interpret"
  if platform != "gpu" or mode is False:
    return None
  if mode == "auto" and (jnp.dtype(dtype).itemsize > 2 or (nbytes is not None and nbytes < AUTO_MIN_BYTES)):
    return None
  return "gpu"


def config(shape: tuple, reps: dict[int, int], dtype) -> tuple[int, int]:
  """(block, num_warps) for a leaf: 8192 input entries and 4 warps, the best or near it for most of
  gpt-medium's leaves in two sweeps on H100s (benchmarks/repeat_kernel.py); 16384 and 8 warps for a 16-bit
  leaf whose rows are short (an unrepeated last dim of at most 64 entries after merging, e.g. q's head_dim),
  which moved q at 0.83 and 0.82 of copy there against 0.66 and 0.77 with the default."""
  mshape, mreps = merged(tuple(shape), reps)
  last = len(mshape) - 1
  if jnp.dtype(dtype).itemsize <= 2 and last not in mreps and mshape[last] <= 64:
    return 1 << 14, 8
  return 1 << 13, 4


def merged(shape: tuple, reps: dict[int, int]) -> tuple[tuple, dict[int, int]]:
  """`shape` with each repeated dim merged with the unrepeated dims before it, and the trailing unrepeated
  dims merged into one; `reps` renumbered. Repeating a merged dim k times is the same as repeating its
  last part (row-major, prefix p, entry j of a dim of size n: (p * n * k + j') // k = p * n + j' // k)."""
  out, new_reps, run = [], {}, 1
  for d, n in enumerate(shape):
    run *= n
    if reps.get(d, 1) != 1:
      new_reps[len(out)] = reps[d]
      out.append(run)
      run = 1
  if run > 1 or not out:
    out.append(run)
  return tuple(out), new_reps


def _pow2_divisor(n: int, cap: int) -> int:
  """The largest power of two dividing n, at most cap."""
  return min(cap, n & -n)


def _plan(shape: tuple, reps: dict[int, int], block: int):
  """(dims repeated inside a block -> k, block shape) for a merged `shape`, or None if the kernel does
  not take it. Blocks tile the dims exactly: on a GPU, a block partly out of bounds was written wrongly
  (measured on an H100, 2026-11-27), so each block dim is the largest power of two dividing its dim."""
  last = len(shape) - 1
  # A repeat by a small power of two is broadcast inside the block (the input block is read once);
  # other repeats run over the grid (one slab per program). The last dim's must be in the block.
  in_block = {d: k for d, k in reps.items() if k & (k - 1) == 0 and (k <= 8 or d == last)}
  if last in reps and last not in in_block:
    return None
  # About `block` input entries per block, the contiguous last dim widest: at most 1024 entries (512 when
  # repeated in the block), or block/2 for a leaf merged into one dim.
  blocks = [1] * len(shape)
  blocks[last] = _pow2_divisor(shape[last], block // 2 if last == 0 else 512 if last in in_block else 1024)
  if blocks[last] < min(32, shape[last]):
    return None  # rows too narrow for coalesced copies (e.g. a last dim of 1000 = 8 * 125): XLA does better
  budget = max(1, block // blocks[last])
  for d in range(last - 1, -1, -1):
    blocks[d] = _pow2_divisor(shape[d], budget)
    budget = max(1, budget // blocks[d])
  return in_block, blocks


def packs(shape: tuple, reps: dict[int, int], dtype) -> bool:
  """Whether `repeat(..., words=True)` writes this leaf as 32-bit words: 16-bit entries and a last merged
  dim repeated exactly twice."""
  mshape, mreps = merged(tuple(shape), reps)
  return jnp.dtype(dtype).itemsize == 2 and mreps.get(len(mshape) - 1) == 2


def supports(shape: tuple, reps: dict[int, int], block: int = 1 << 13) -> bool:  # `config`'s smallest block
  """Whether `repeat` takes this leaf: 1 to 3 repeated dims after merging, a repeated last dim (one with
  no unrepeated dims after it) repeated by a power of two (Triton's block dims are powers of two), a last
  dim with a power-of-two factor of at least 32 (blocks tile the dims exactly), and an output of fewer
  than 2**31 entries (offsets in int32)."""
  mshape, mreps = merged(shape, reps)
  size = 1
  for d, n in enumerate(mshape):
    size *= n * mreps.get(d, 1)
  if not 1 <= len(mreps) <= 3 or size >= 2**31:
    return False
  return _plan(mshape, mreps, block) is not None


def repeat(x: jax.Array, reps: dict[int, int], *, scale: float | None = None, interpret: bool = False,
           block: int | None = None, num_warps: int | None = None, words: bool = False) -> jax.Array:
  """`x` repeated `reps[d]` times along each dim d (as `jnp.repeat`), by one Pallas kernel whose programs
  each read about `block` input entries (None: `config`'s; benchmarks/repeat_kernel.py tunes `block` and
  `num_warps`).
  With `scale`: `(x.astype(float32) * scale).astype(x.dtype)` repeated, in the same pass (a fan-in
  leaf's rescaling, which XLA would otherwise do in a second pass over the output).
  With `words`, a 16-bit leaf whose last merged dim is doubled writes each pair of copies as one 32-bit
  word (`v | v << 16`), so the block is broadcast along its outer dims only and the kernel stores half
  as many elements (XLA's word form of the same was faster for 2-D leaves; not measured in the kernel
  yet, so off by default)."""
  from jax.experimental import pallas as pl
  default_block, default_warps = config(x.shape, reps, x.dtype)
  block, num_warps = block or default_block, num_warps or default_warps
  if not supports(x.shape, reps, block):
    raise ValueError(f"rcjax.kernels.repeat does not take shape {x.shape} with repeats {reps}")
  out_shape = tuple(n * reps.get(d, 1) for d, n in enumerate(x.shape))
  dtype = x.dtype
  pack = words and packs(x.shape, reps, dtype)  # pairs of copies as 32-bit words
  shape, mreps = merged(x.shape, reps)
  x = x.reshape(shape)
  in_block, blocks = _plan(shape, mreps, block)
  last = len(shape) - 1
  bcast = sorted(d for d in in_block if not (pack and d == last))  # dims broadcast inside the block
  grid, in_map, view, out_block, out_map = _layout(shape, mreps, in_block, blocks, pack)
  out = pl.pallas_call(_kernel(scale, dtype, pack, bcast),
                       out_shape=jax.ShapeDtypeStruct(tuple(view), jnp.uint32 if pack else dtype),
                       grid=tuple(grid), in_specs=[pl.BlockSpec(tuple(blocks), in_map)],
                       out_specs=pl.BlockSpec(tuple(out_block), out_map), interpret=interpret,
                       compiler_params=_compiler_params(num_warps), name="rcjax_repeat")(x)
  if pack:
    out = jax.lax.bitcast_convert_type(out, dtype)  # (..., n, 2)
  return out.reshape(out_shape)


def _compiler_params(num_warps: int):
  """Triton's compiler parameters (not JAX's default on GPUs, Mosaic GPU: its copies take at most 256
  entries per dim), or None in a JAX without Pallas's Triton backend."""
  try:
    from jax.experimental.pallas import triton as pltriton
    return pltriton.CompilerParams(num_warps=num_warps)
  except (ImportError, AttributeError):  # noqa: PERF203 - a JAX without Pallas's Triton backend
    return None


def _layout(shape: tuple, mreps: dict[int, int], in_block: dict[int, int], blocks: list, pack: bool):
  """`(grid, in_map, view, out_block, out_map)` of `repeat`'s pallas_call for a merged `shape`: the grid
  runs, per dim, over its blocks and, after each repeated dim not broadcast in the block, over its k slabs;
  the output is viewed with a `(n, k)` pair per repeated dim (a packed last dim keeps its n: its pairs
  are words)."""
  from jax.experimental import pallas as pl
  last = len(shape) - 1
  grid, in_pos, out_pos = [], [], []
  for d, n in enumerate(shape):
    in_pos.append(len(grid))
    grid.append(pl.cdiv(n, blocks[d]))
    slab = d in mreps and d not in in_block
    out_pos.append((len(grid) - 1, len(grid) if slab else None))
    if slab:
      grid.append(mreps[d])
  view, out_block = [], []
  for d, n in enumerate(shape):
    view.append(n)
    out_block.append(blocks[d])
    if d in mreps and not (pack and d == last):
      view.append(mreps[d])
      out_block.append(in_block.get(d))  # None: a squeezed slab dim

  def in_map(*g):
    return tuple(g[p] for p in in_pos)

  def out_map(*g):
    idx = []
    for d, (b, a) in enumerate(out_pos):
      idx.append(g[b])
      if d in mreps and not (pack and d == last):
        idx.append(0 if a is None else g[a])
    return tuple(idx)

  return grid, in_map, view, out_block, out_map


def _kernel(scale: float | None, dtype, pack: bool, bcast: list):
  """The kernel body: one input block read, rescaled (`scale`), packed into words (`pack`) and written
  broadcast over the dims repeated inside the block (`bcast`)."""

  def kernel(x_ref, o_ref):
    v = x_ref[...]
    if scale is not None:
      v = (v.astype(jnp.float32) * jnp.float32(scale)).astype(dtype)
    if pack:  # little-endian: the word's two halves are the entry's two copies
      u = jax.lax.bitcast_convert_type(v, jnp.uint16).astype(jnp.uint32)
      v = u | (u << 16)
    for i, d in enumerate(bcast):  # a new axis after each dim repeated in the block
      v = jnp.expand_dims(v, d + 1 + i)
    o_ref[...] = jnp.broadcast_to(v, o_ref.shape) if bcast else v

  return kernel
