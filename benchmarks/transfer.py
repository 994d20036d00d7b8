"""Transfer throughput against the device's copy bandwidth, measured side by side in one run.

    python benchmarks/transfer.py                      # full set on the default device
    python benchmarks/transfer.py --smoke              # tiny shapes, seconds (the test suite runs this)
    python benchmarks/transfer.py --json out.json      # also write the table as JSON

For each case (a pytree and a target size) it reports: rcjax time, bytes read + written (input + output,
the least any transfer must move), achieved GB/s, the copy bandwidth measured on an array of the output
size in the same run, their ratio, the same for a naive baseline (one `jnp.take` per mapped axis with
unsorted index maps) and for a numpy reference on the host, and the compiled peak memory of the transfer
relative to input + output.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

import rcjax
from rcjax import RC


# --- pytrees -----------------------------------------------------------------------------------

def mlp_tree(width: int, dtype, depth: int = 3, d_in: int = 3072, classes: int = 10) -> dict:
  """The paper's MLP (input -> N -> N -> 10, with biases), mean-field."""
  rng = np.random.default_rng(0)
  dims = [d_in] + [width] * (depth - 1) + [classes]
  names = ["input"] + [f"hidden_{i}" for i in range(depth - 1)] + ["classes"]
  tree = {}
  for l in range(depth):
    base = lambda i: None if i in (0, depth) else width
    tree[f"Dense_{l}"] = {
        "kernel": RC(jnp.asarray(rng.standard_normal((dims[l], dims[l + 1])), dtype),
                     axes=(names[l], names[l + 1]), fan_in=(0,), base=(base(l), base(l + 1)), param="mf"),
        "bias": RC(jnp.asarray(rng.standard_normal(dims[l + 1]), dtype), axes=(names[l + 1],),
                   base=(base(l + 1),), param="mf"),
    }
  return tree


def gpt_tree(embed: int, layers: int, dtype, vocab: int = 50304, head_dim: int = 64) -> dict:
  """A GPT-shaped pytree (scanned blocks, MLP 4x), muP: ~350M params at embed=1024, layers=24."""
  key = jax.random.key(0)
  heads = embed // head_dim

  def leaf(name, shape, axes, fan_in, base):
    k = jax.random.fold_in(key, rcjax.rc.path_hash(name))
    return RC(jax.random.normal(k, shape, jnp.float32).astype(dtype), axes=axes, fan_in=fan_in, base=base,
              param="mup")

  L, E, H, D, M = layers, embed, heads, head_dim, 4 * embed
  return {
      "embed": leaf("embed", (vocab, E), ("vocab", "embed"), (0,), (None, E)),
      "blocks": {
          "ln1": leaf("ln1", (L, E), ("layers", "embed"), (), (None, E)),
          "qkv": leaf("qkv", (L, E, 3, H, D), ("layers", "embed", "qkv", "heads", "head_dim"), (1,),
                      (None, E, None, H, None)),
          "out": leaf("out", (L, H, D, E), ("layers", "heads", "head_dim", "embed"), (1, 2), (None, H, None, E)),
          "ln2": leaf("ln2", (L, E), ("layers", "embed"), (), (None, E)),
          "up": leaf("up", (L, E, M), ("layers", "embed", "mlp"), (1,), (None, E, M)),
          "down": leaf("down", (L, M, E), ("layers", "mlp", "embed"), (1,), (None, M, E)),
      },
      "ln_f": leaf("ln_f", (E,), ("embed",), (), (E,)),
      "head": leaf("head", (E, vocab), ("embed", "vocab"), (0,), (E, None)),
  }


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


def copy_seconds(out_tree, reps: int) -> float:
  """Time of an elementwise copy of arrays of the output's sizes (read + write of the output)."""
  arrays = [x for x in jax.tree.leaves(rcjax.unbox(out_tree))]
  fn = jax.jit(lambda xs: [x + jnp.ones((), x.dtype) for x in xs])
  return timeit(fn, arrays, reps=reps)


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


def peak_ratio(fn, *args, in_out_bytes: int) -> float | None:
  try:
    mem = jax.jit(fn).lower(*args).compile().memory_analysis()
    peak = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
    return peak / in_out_bytes
  except Exception:  # memory_analysis is not available on every backend
    return None


def run_case(name: str, tree, target: dict, *, reps: int, with_numpy: bool) -> dict:
  key = jax.random.key(0)
  old = rcjax.width_axes(tree)
  direction = "grow" if all(target[k] >= old[k] for k in target) else "shrink"
  fn = (lambda t, k: rcjax.grow(t, k, sizes=target)) if direction == "grow" else (
      lambda t, k: rcjax.shrink(t, k, sizes=target))
  out = fn(tree, key)
  moved = nbytes(tree) + nbytes(out)
  t_rc = timeit(fn, tree, key, reps=reps)
  t_copy = copy_seconds(out, reps=reps)
  copy_gbs = 2 * nbytes(out) / t_copy / 1e9
  rng = np.random.default_rng(1)
  unsorted = {k: jnp.asarray(rng.integers(0, old[k], size=n), jnp.int32) for k, n in target.items()}
  naive = naive_fn(target)
  t_naive = timeit(naive, tree, unsorted, reps=reps)
  row = {
      "case": name, "direction": direction, "params_M": sum(x.size for x in jax.tree.leaves(rcjax.unbox(tree))) / 1e6,
      "dtype": str(jax.tree.leaves(rcjax.unbox(tree))[0].dtype), "bytes_moved_GB": moved / 1e9,
      "rcjax_s": t_rc, "rcjax_GBps": moved / t_rc / 1e9, "copy_GBps": copy_gbs,
      "rcjax_vs_copy": moved / t_rc / 1e9 / copy_gbs,
      "naive_s": t_naive, "naive_vs_copy": moved / t_naive / 1e9 / copy_gbs,
      "rcjax_vs_naive": t_naive / t_rc,
      "peak_over_in_out": peak_ratio(fn, tree, key, in_out_bytes=moved),
  }
  if with_numpy:
    maps = rcjax.index_maps(key, old, target)
    t_np = numpy_seconds(tree, maps, reps)
    row.update(numpy_s=t_np, numpy_vs_copy=moved / t_np / 1e9 / copy_gbs, rcjax_vs_numpy=t_np / t_rc)
  return row


def cases(smoke: bool, big: bool):
  f32, bf16 = jnp.float32, jnp.bfloat16
  if smoke:
    yield "mlp N=16 2x", mlp_tree(16, f32, d_in=64), {"hidden_0": 32, "hidden_1": 32}
    yield "gpt tiny 2x bf16", gpt_tree(64, 2, bf16, vocab=256), {"embed": 128, "heads": 2, "mlp": 512}
    yield "matrix 64 shrink", matrix_tree(64, f32), {"a": 32, "b": 32}
    return
  yield "mlp N=1000 2x", mlp_tree(1000, f32), {"hidden_0": 2000, "hidden_1": 2000}
  yield "mlp N=100->1000", mlp_tree(100, f32), {"hidden_0": 1000, "hidden_1": 1000}
  yield "mlp N=1000->100", mlp_tree(1000, f32), {"hidden_0": 100, "hidden_1": 100}
  e, l = (1024, 24) if big else (256, 4)
  for dt in (bf16, f32):
    g = gpt_tree(e, l, dt)
    yield f"gpt E={e} L={l} 2x {np.dtype(dt).name}", g, {"embed": 2 * e, "heads": 2 * e // 64, "mlp": 8 * e}
    yield f"gpt E={e} L={l} x1.5 {np.dtype(dt).name}", g, {"embed": 3 * e // 2, "heads": 3 * e // 128,
                                                          "mlp": 6 * e}
    yield f"gpt E={e} L={l} shrink {np.dtype(dt).name}", g, {"embed": e // 2, "heads": e // 128, "mlp": 2 * e}
    del g
  n = 8192 if big else 2048
  for dt in (bf16, f32):
    yield f"matrix {n} 2x {np.dtype(dt).name}", matrix_tree(n, dt), {"a": 2 * n, "b": 2 * n}
    yield f"matrix {n} 100->257 {np.dtype(dt).name}", matrix_tree(n, dt), {"a": n * 257 // 100, "b": n * 257 // 100}


def main(argv=None) -> list[dict]:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--smoke", action="store_true", help="tiny shapes (for the test suite)")
  ap.add_argument("--big", action="store_true", help="the issue's sizes: 350M-param GPT, 8192^2 matrix (GPU)")
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--no-numpy", action="store_true", help="skip the host numpy reference")
  ap.add_argument("--json", help="write the rows as JSON to this file")
  args = ap.parse_args(argv)
  dev = jax.devices()[0]
  print(f"device: {dev.device_kind} ({dev.platform}), jax {jax.__version__}")
  rows = []
  for name, tree, target in cases(args.smoke, args.big):
    row = run_case(name, tree, target, reps=2 if args.smoke else args.reps, with_numpy=not args.no_numpy)
    row["device"] = dev.device_kind
    rows.append(row)
    peak = row["peak_over_in_out"]
    print(f"{name:34s} {row['bytes_moved_GB']:7.3f} GB  rcjax {row['rcjax_GBps']:8.1f} GB/s "
          f"= {row['rcjax_vs_copy']:.2f} of copy ({row['copy_GBps']:.1f} GB/s)  naive {row['naive_vs_copy']:.2f}"
          f"  rcjax/naive {row['rcjax_vs_naive']:.2f}x"
          + (f"  numpy {row['numpy_vs_copy']:.2f}" if "numpy_vs_copy" in row else "")
          + (f"  peak/(in+out) {peak:.2f}" if peak is not None else ""), flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
