"""Transfer throughput against the device's copy bandwidth, measured side by side in one run.

    python benchmarks/transfer.py                      # full set on the default device
    python benchmarks/transfer.py --smoke              # tiny shapes, seconds (the test suite runs this)
    python benchmarks/transfer.py --json out.json      # also write the table as JSON

For each case (a pytree and a target size) it reports: rcjax time (the compiled transfer; the Python
validation and dispatch of a `grow` call come on top and are reported as call overhead), bytes read +
written (input + output,
the least any transfer must move), achieved GB/s, the copy bandwidth measured on an array of the output
size in the same run, their ratio, the same for a naive baseline (one `jnp.take` per mapped axis with
unsorted index maps) and for a numpy reference on the host, and the compiled peak memory of the transfer
relative to input + output. The "donate" cases grow one axis of a GPT (the MLP's) as `grow(...)` and as
`grow(..., donate=True)`, which returns the leaves the transfer does not touch instead of copying them:
both times, and the bytes each call newly allocates.

`--kernel tiled` is a probe, not the library: each integer growth (2x) done with the new neurons in tiled
order (`tile(arange(N), k)`: each leaf's input block written k times, rows kept whole) instead of rcjax's
sorted order (each entry k times in a row), with the same fan-in rescaling, in one jit; checked bit for
bit against `rcjax.apply_maps` with the tiled maps. Cases with other ratios are skipped for it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import rcjax
from rcjax import RC


# --- pytrees: built by the trainers' own model code -----------------------------------------------

def mlp_tree(width: int, dtype, depth: int = 3, d_in: int = 3072) -> dict:
  """The paper's MLP (input -> N -> N -> 10, with biases) as train.mlp builds it (mean-field)."""
  from train import mlp as train_mlp

  model = train_mlp.build_model(train_mlp.Config(width=width, depth=depth, param="mf", dataset="digits"))
  params = jax.jit(model.init)(jax.random.key(0), jnp.ones((1, d_in)))["params"]
  return jax.tree.map(lambda b: b.replace(value=b.value.astype(dtype)), params, is_leaf=rcjax.is_rc)


def gpt_tree(preset: str, dtype, **overrides) -> tuple[dict, object]:
  """A GPT as train.gpt builds it for `preset` (muP), params cast to `dtype`, and its config."""
  import dataclasses
  from train import gpt as train_gpt

  cfg = dataclasses.replace(train_gpt.Config(), **{**train_gpt.PRESETS[preset], **overrides})
  # The blocks' scan as a loop for init: the same params, without compiling 24 unrolled blocks (on an
  # H100 building gpt-medium's tree took most of a minute).
  model = train_gpt.build_model(dataclasses.replace(cfg, unroll=1))
  params = jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
  return jax.tree.map(lambda b: b.replace(value=b.value.astype(dtype)), params, is_leaf=rcjax.is_rc), cfg


def matrix_tree(n: int, dtype) -> dict:
  return {"w": RC(jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype), axes=("a", "b"),
                  fan_in=(0,), base=(n, n), param="mf")}


# --- measurement -------------------------------------------------------------------------------

def nbytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(rcjax.unbox(tree)))


def timeit(fn, *args, reps: int) -> float:
  jax.block_until_ready(fn(*args))  # warm-up (compile)
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def copy_seconds(out_tree, reps: int) -> tuple[float, float | None]:
  """Times of an elementwise copy of arrays of the output's sizes (read + write of the output): in their
  dtype, and (for 16-bit arrays with an even last axis; else None) as 32-bit words, which XLA's loops
  move faster on GPUs. The baseline is the faster of the two."""
  arrays = [x for x in jax.tree.leaves(rcjax.unbox(out_tree))]
  fn = jax.jit(lambda xs: [x + jnp.ones((), x.dtype) for x in xs])
  t = timeit(fn, arrays, reps=reps)
  if not any(x.dtype.itemsize == 2 for x in arrays):
    return t, None

  def words(x):  # adjacent pairs of the last axis as one uint32 word (bitcasts), plus one
    if x.dtype.itemsize != 2 or x.ndim == 0 or x.shape[-1] % 2:
      return x + jnp.ones((), x.dtype)
    w = jax.lax.bitcast_convert_type(x.reshape(x.shape[:-1] + (x.shape[-1] // 2, 2)), jnp.uint32)
    return jax.lax.bitcast_convert_type(w + jnp.ones((), jnp.uint32), x.dtype).reshape(x.shape)
  return t, timeit(jax.jit(lambda xs: [words(x) for x in xs]), arrays, reps=reps)


def naive_fn(sizes):
  """The baseline: one jnp.take per mapped axis, with unsorted (random) index maps."""
  def fn(tree, maps):
    def leaf(b):
      x = b.value
      for d in b.width_dims:
        if b.axes[d] in maps:
          x = jnp.take(x, maps[b.axes[d]], axis=d)
      return x
    return jax.tree.map(leaf, tree, is_leaf=rcjax.is_rc)
  return jax.jit(fn)


def numpy_seconds(tree, maps, reps: int) -> float:
  host = [(np.asarray(b.value), b) for b in jax.tree.leaves(tree, is_leaf=rcjax.is_rc)]
  np_maps = {k: np.asarray(v) for k, v in maps.items()}

  def run():
    for x, b in host:
      for d in b.width_dims:
        if b.axes[d] in np_maps:
          x = np.take(x, np_maps[b.axes[d]], axis=d)
  times = []
  for _ in range(max(1, reps // 2)):
    t = time.perf_counter()
    run()
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def peak_ratio(compiled, in_out_bytes: int) -> float | None:
  """Compiled peak memory (arguments + outputs + temporaries) over input + output bytes."""
  try:
    mem = compiled.memory_analysis()
    return (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes) / in_out_bytes
  except Exception:  # memory_analysis is not available on every backend
    return None


def bitwise_equal(a, b) -> bool:
  """Whether two pytrees (of arrays or RC leaves) hold the same bits, leaf by leaf (unsigned-int views)."""
  def bits(x):
    uint = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, uint)
  return all(bool(jnp.array_equal(bits(u), bits(v)))
             for u, v in zip(jax.tree.leaves(rcjax.unbox(a)), jax.tree.leaves(rcjax.unbox(b))))


def tiled_maps(tree, target: dict) -> dict | None:
  """`{axis: tile(arange(N), k)}` for the axes `target` grows by an integer k (None if one grows otherwise)."""
  old = rcjax.width_axes(tree)
  if any(n % old[a] for a, n in target.items()):
    return None
  return {a: jnp.tile(jnp.arange(old[a], dtype=jnp.int32), n // old[a]) for a, n in target.items() if n != old[a]}


def xla_tile(x, reps):
  """The copies in tiled order: along dim d, k whole copies of the input block one after another."""
  for d in sorted(reps):
    k, shape = reps[d], x.shape
    x = jnp.broadcast_to(jnp.expand_dims(x, d), shape[:d] + (k,) + shape[d:])
    x = x.reshape(shape[:d] + (k * shape[d],) + shape[d + 1:])
  return x


def tiled_fn(tree, target: dict):
  """The tiled-order probe (see the module docstring): per leaf, a broadcast of the whole input block k times
  along each grown dim, then the fan-in rescaling as `rcjax.transfer` computes it (a scalar for integer
  factors), in one jit. Same signature as the transfer it stands in for: `fn(tree, key)`."""
  old = rcjax.width_axes(tree)

  def leaf(b):
    reps = {d: target[a] // old[a] for d, a in enumerate(b.axes)
            if b.base[d] is not None and target.get(a, old.get(a)) != old.get(a)}
    if not reps:
      return b
    new_shape = tuple(n * reps.get(d, 1) for d, n in enumerate(b.shape))
    scale = rcjax.multiplier(b) / rcjax.multiplier(b, new_shape)
    for d in b.fan_in:
      if d in reps:
        scale *= b.shape[d] / new_shape[d]
    x = xla_tile(b.value, reps)
    return b.replace(value=x if scale == 1.0 else (x.astype(jnp.float32) * scale).astype(x.dtype))

  return jax.jit(lambda t, key: jax.tree.map(leaf, t, is_leaf=rcjax.is_rc))


def run_case(name: str, tree, target: dict, *, reps: int, with_numpy: bool, base: dict | None = None,
             fn=None):
  """One transfer measured next to copy and the naive baseline; returns (row, output). With `base` (the
  row of the same case without the Pallas kernel) its copy and naive times are reused, not re-measured.
  `fn(tree, key)`: what to time instead of `rcjax.grow`/`shrink` (the tiled probe)."""
  key = jax.random.key(0)
  old = rcjax.width_axes(tree)
  direction = "grow" if all(target[k] >= old[k] for k in target) else "shrink"
  fn = fn or ((lambda t, k: rcjax.grow(t, k, sizes=target)) if direction == "grow" else (
      lambda t, k: rcjax.shrink(t, k, sizes=target)))
  out = fn(tree, key)
  moved = nbytes(tree) + nbytes(out)
  t_call = timeit(fn, tree, key, reps=reps)  # as users call it: validation, then the cached jitted transfer
  compiled = jax.jit(fn).lower(tree, key).compile()
  t_rc = timeit(compiled, tree, key, reps=reps)  # the compiled transfer alone (device time)
  if base is None:
    t_copy, t_words = copy_seconds(out, reps=reps)
    rng = np.random.default_rng(1)
    unsorted = {k: jnp.asarray(rng.integers(0, old[k], size=n), jnp.int32) for k, n in target.items()}
    t_naive = timeit(naive_fn(target), tree, unsorted, reps=reps)
  else:
    t_copy, t_words, t_naive = base["copy_s"], base["copy_words_s"], base["naive_s"]
  copy_gbs = 2 * nbytes(out) / min(t_copy, t_words or t_copy) / 1e9
  row = {
      "case": name, "direction": direction, "params_M": sum(x.size for x in jax.tree.leaves(rcjax.unbox(tree))) / 1e6,
      "dtype": str(jax.tree.leaves(rcjax.unbox(tree))[0].dtype), "bytes_moved_GB": moved / 1e9,
      "rcjax_s": t_rc, "call_overhead_s": max(t_call - t_rc, 0.0), "rcjax_GBps": moved / t_rc / 1e9,
      "copy_GBps": copy_gbs, "copy_dtype_GBps": 2 * nbytes(out) / t_copy / 1e9,
      "copy_words_GBps": 2 * nbytes(out) / t_words / 1e9 if t_words else None,
      "copy_s": t_copy, "copy_words_s": t_words,
      "rcjax_vs_copy": moved / t_rc / 1e9 / copy_gbs,
      "naive_s": t_naive, "naive_vs_copy": moved / t_naive / 1e9 / copy_gbs,
      "rcjax_vs_naive": t_naive / t_rc,
      "peak_over_in_out": peak_ratio(compiled, moved),
  }
  if with_numpy:
    maps = rcjax.index_maps(key, old, target)
    t_np = numpy_seconds(tree, maps, reps)
    row.update(numpy_s=t_np, numpy_vs_copy=moved / t_np / 1e9 / copy_gbs, rcjax_vs_numpy=t_np / t_rc)
  return row, out


def run_donate_case(name: str, tree, target: dict, *, reps: int) -> dict:
  """`grow(tree)` next to `grow(copy, donate=True)` (each rep on a fresh copy, made outside the timing):
  times and the bytes of output arrays each call allocates (the donated call shares the untouched ones)."""
  key = jax.random.key(0)
  out = rcjax.grow(tree, key, sizes=target)
  t_plain = timeit(lambda t: rcjax.grow(t, key, sizes=target), tree, reps=reps)
  times, new_bytes = [], None
  for _ in range(reps + 1):  # the first is the warm-up (compile)
    given = jax.block_until_ready(jax.tree.map(jnp.copy, tree))
    t = time.perf_counter()
    got = jax.block_until_ready(rcjax.grow(given, key, sizes=target, donate=True))
    times.append(time.perf_counter() - t)
    ids = {id(x) for x in jax.tree.leaves(rcjax.unbox(given))}
    new_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(rcjax.unbox(got)) if id(x) not in ids)
    del given, got
  t_donate = float(np.median(times[1:]))
  return {"case": name, "direction": "grow", "dtype": str(jax.tree.leaves(rcjax.unbox(tree))[0].dtype),
          "params_M": sum(x.size for x in jax.tree.leaves(rcjax.unbox(tree))) / 1e6,
          "rcjax_s": t_plain, "donate_s": t_donate, "donate_speedup": t_plain / t_donate,
          "new_GB": nbytes(out) / 1e9, "new_GB_donate": new_bytes / 1e9}


def donate_cases(smoke: bool, big: bool):
  """A GPT with only its MLP width grown 2x: attention, norms and embeddings pass untouched."""
  preset, over = ("tiny-llama", {}) if smoke else (("gpt-medium", {}) if big else ("gpt-small", dict(depth=4)))
  g, cfg = gpt_tree(preset, jnp.bfloat16, **over)
  yield f"gpt {preset} L={cfg.depth} bfloat16 mlp 2x, donate", g, {"mlp": 2 * rcjax.sizes(g)["mlp"]}


def cases(smoke: bool, big: bool):
  from train import gpt as train_gpt

  f32, bf16 = jnp.float32, jnp.bfloat16
  if smoke:
    yield "mlp N=16 2x", mlp_tree(16, f32, d_in=64), {"hidden_0": 32, "hidden_1": 32}
    g, cfg = gpt_tree("tiny-llama", bf16)
    yield "gpt tiny-llama 2x bf16", g, train_gpt.scaled_sizes(cfg, 2 * cfg.width)
    yield "matrix 64 shrink", matrix_tree(64, f32), {"a": 32, "b": 32}
    return
  yield "mlp N=1000 2x", mlp_tree(1000, f32), {"hidden_0": 2000, "hidden_1": 2000}
  yield "mlp N=100->1000", mlp_tree(100, f32), {"hidden_0": 1000, "hidden_1": 1000}
  yield "mlp N=1000->100", mlp_tree(1000, f32), {"hidden_0": 100, "hidden_1": 100}
  preset, over = ("gpt-medium", {}) if big else ("gpt-small", dict(depth=4))
  for dt in (bf16, f32):
    g, cfg = gpt_tree(preset, dt, **over)
    name = f"gpt {preset} L={cfg.depth} {np.dtype(dt).name}"
    for label, width in (("2x", 2 * cfg.width), ("x1.5", 3 * cfg.width // 2), ("shrink 0.5", cfg.width // 2)):
      yield f"{name} {label}", g, train_gpt.scaled_sizes(cfg, width)
    del g
  n = 8192 if big else 2048
  for dt in (bf16, f32):
    yield f"matrix {n} 2x {np.dtype(dt).name}", matrix_tree(n, dt), {"a": 2 * n, "b": 2 * n}
    yield f"matrix {n} 100->257 {np.dtype(dt).name}", matrix_tree(n, dt), {"a": n * 257 // 100, "b": n * 257 // 100}


def main(argv=None) -> list[dict]:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--smoke", action="store_true", help="tiny shapes (for the test suite)")
  ap.add_argument("--big", action="store_true", help="the issue's sizes: 355M-param GPT (gpt-medium), 8192^2 matrix")
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--no-numpy", action="store_true", help="skip the host numpy reference")
  ap.add_argument("--only", help="run only the cases whose name contains this text, or one of these "
                  "comma-separated texts (e.g. 'gpt' or 'bfloat16 2x,float32 2x')")
  ap.add_argument("--kernel", default="auto",
                  help="rcjax.kernels.ENABLED modes to run each case with, side by side, comma-separated: auto "
                  "(the library's default: the Pallas kernel for 16-bit leaves on GPUs), off (XLA), on (the "
                  "kernel for every dtype, GPUs), words (auto, with rcjax.kernels.WORDS: doubled last dims of "
                  "16-bit leaves written as 32-bit words), interpret (the kernel in Pallas's interpreter, any "
                  "device), tiled (a probe: integer growths with the new neurons in tiled order, checked against "
                  "apply_maps with tiled maps); rows after the first are checked bit for bit against it")
  ap.add_argument("--pallas", action="store_true", help="short for --kernel off,on")
  ap.add_argument("--json", help="write the rows as JSON to this file")
  args = ap.parse_args(argv)
  names = {"auto": ("auto", False), "off": (False, False), "on": (True, False), "words": ("auto", True),
           "interpret": ("interpret", False), "tiled": ("auto", False)}
  modes = ["off", "on"] if args.pallas else [m.strip() for m in args.kernel.split(",")]
  if not modes or any(m not in names for m in modes):
    ap.error(f"--kernel takes some of {sorted(names)}, comma-separated; got {args.kernel!r}")
  dev = jax.devices()[0]
  print(f"device: {dev.device_kind} ({dev.platform}), jax {jax.__version__}")
  if args.reps < 1:
    ap.error("--reps must be at least 1")
  rows = []
  wanted = lambda name: not args.only or any(part in name for part in args.only.split(","))
  if args.json:  # a file even if no case runs
    with open(args.json, "w") as f:
      json.dump(rows, f)

  def record(row):  # after every case, so a run cut short keeps what it measured
    rows.append(row)
    if args.json:
      with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)

  for name, tree, target in cases(args.smoke, args.big):
    if not wanted(name):
      continue
    base = ref = None
    for i, mode in enumerate(modes):
      label = name + (f" kernel={mode}" if modes != ["auto"] else "")
      rcjax.kernels.ENABLED, rcjax.kernels.WORDS = names[mode]
      tiled = mode == "tiled" and tiled_maps(tree, target)
      if mode == "tiled" and not tiled:
        print(f"{label:34s} skipped: the tiled probe takes integer growths only", flush=True)
        continue
      try:
        row, out = run_case(label, tree, target, reps=2 if args.smoke else args.reps,
                            with_numpy=not args.no_numpy and i == 0, base=base,
                            fn=tiled_fn(tree, target) if tiled else None)
        if tiled:  # another order of the new neurons: against its own reference
          row["bitwise_equal_to_takes"] = bitwise_equal(out, rcjax.apply_maps(tree, tiled))
        elif i > 0 and ref is not None:  # bit for bit as the first mode's output
          row["bitwise_equal_to_first"] = bitwise_equal(out, ref)
        if i == 0:
          base, ref = row, out
      except Exception as e:  # noqa: BLE001 - e.g. the kernel does not compile here: report it, go on
        row = {"case": label, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        print(f"{label:34s} error: {row['error']}", flush=True)
      finally:
        rcjax.kernels.ENABLED, rcjax.kernels.WORDS = "auto", False
        out = None
      row.update(device=dev.device_kind, kernel=mode)
      record(row)
      if "error" in row:
        continue
      peak = row["peak_over_in_out"]
      print(f"{label:34s} {row['bytes_moved_GB']:7.3f} GB  rcjax {row['rcjax_GBps']:8.1f} GB/s "
            f"= {row['rcjax_vs_copy']:.2f} of copy ({row['copy_GBps']:.1f} GB/s"
            + (f"; dtype {row['copy_dtype_GBps']:.0f}, words {row['copy_words_GBps']:.0f}"
               if row["copy_words_GBps"] else "")
            + f")  naive {row['naive_vs_copy']:.2f}  rcjax/naive {row['rcjax_vs_naive']:.2f}x"
            + (f"  numpy {row['numpy_vs_copy']:.2f}" if "numpy_vs_copy" in row else "")
            + (f"  peak/(in+out) {peak:.2f}" if peak is not None else "")
            + f"  call overhead {1e3 * row['call_overhead_s']:.2f} ms"
            + (f"  bitwise={modes[0]} {row['bitwise_equal_to_first']}" if "bitwise_equal_to_first" in row else "")
            + (f"  bitwise=takes {row['bitwise_equal_to_takes']}" if "bitwise_equal_to_takes" in row else ""),
            flush=True)
  for name, tree, target in donate_cases(args.smoke, args.big):
    if not wanted(name):
      continue
    row = run_donate_case(name, tree, target, reps=2 if args.smoke else args.reps)
    row.update(device=dev.device_kind, kernel="auto")
    record(row)
    print(f"{name:34s} grow {1e3 * row['rcjax_s']:8.2f} ms, allocates {row['new_GB']:.3f} GB; "
          f"donate=True {1e3 * row['donate_s']:8.2f} ms ({row['donate_speedup']:.2f}x), allocates "
          f"{row['new_GB_donate']:.3f} GB", flush=True)
  if not rows:
    print(f"no case matches --only {args.only!r}", file=sys.stderr)
  return rows


if __name__ == "__main__":
  rows = main()
  sys.exit(1 if not rows or any("error" in row for row in rows) else 0)
