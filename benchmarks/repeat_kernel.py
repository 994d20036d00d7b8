"""The Pallas repeat kernel (rcjax.kernels) on single leaves, side by side with XLA and a copy.

For leaves shaped as in a GPT grown 2x, times `rcjax.kernels.repeat` at several block sizes and warp
counts, the XLA form `rcjax.transfer` uses (broadcast + reshape per dim), and an elementwise copy of an
array of the output's size in its dtype and as 32-bit words (the faster is the baseline, as in
transfer.py). Each kernel's output is checked bit for bit against XLA's. GPUs only, except `--smoke`
(tiny shapes, the kernel interpreted on any backend; for the test suite).

Also the same copies in another order of the new neurons, "tiled" (`xla tiled order`): along each repeated
dim the whole input block is written k times (`tile(arange(n), k)` as the index map) instead of each entry
k times in a row (`repeat(arange(n), k)`, the sorted maps rcjax draws). Neurons are exchangeable, so either
order gives the same network; tiled keeps the last dim's rows intact (plain contiguous copies, no
interleaving of 16-bit entries), which may be what XLA moves at copy speed. Checked bit for bit against one
`jnp.take` per dim with the tiled maps. (rcjax does not draw tiled maps: this measures whether it should.)

  python benchmarks/repeat_kernel.py [--json FILE]
  python benchmarks/repeat_kernel.py --dtypes bfloat16 --configs 8192:4,8192:4:words,16384:8:words

A config is BLOCK:WARPS, with ':words' for the kernel's 32-bit word form of a doubled last dim (16-bit
leaves; `kernels.repeat(words=True)`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks.transfer import bitwise_equal, copy_seconds, timeit, xla_tile  # noqa: E402
from rcjax import kernels  # noqa: E402
from rcjax.gather import _repeat  # noqa: E402

# (name, input shape, repeats per dim): gpt-medium's leaves (stacked over 24 layers) grown 2x.
CASES = [("mlp (L,E,M) 2x2", (24, 1024, 4096), {1: 2, 2: 2}),
         ("q (L,E,H,D) 2x2.", (24, 1024, 16, 64), {1: 2, 2: 2}),
         ("o (L,H,D,E) 2x.2", (24, 16, 64, 1024), {1: 2, 3: 2}),
         ("embedding (V,E) .2", (50304, 1024), {1: 2}),
         ("norm (L,E) .2", (24, 1024), {1: 2})]
SMOKE = [("smoke (L,E,M)", (2, 24, 64), {1: 2, 2: 2}), ("smoke (L,E,H,D)", (2, 8, 4, 16), {1: 2, 2: 2}),
         ("smoke (V,E)", (50, 16), {1: 2})]
CONFIGS = [(4096, 4, False), (8192, 4, False), (8192, 8, False), (16384, 8, False), (32768, 8, False),
           (8192, 4, True), (16384, 8, True)]


def parse_configs(text: str) -> list[tuple[int, int, bool]]:
  """'8192:4,16384:8:words' -> [(8192, 4, False), (16384, 8, True)]."""
  out = []
  for part in filter(None, text.split(",")):
    f = part.split(":")
    if len(f) not in (2, 3) or not (f[0].isdigit() and f[1].isdigit()) or f[2:] not in ([], ["words"]):
      raise ValueError(f"a config is BLOCK:WARPS or BLOCK:WARPS:words, got {part!r}")
    out.append((int(f[0]), int(f[1]), f[2:] == ["words"]))
  return out


def xla_repeat(x, reps):
  for d in sorted(reps):
    x = _repeat(x, d, reps[d])
  return x


def takes_tiled(x, reps):
  """The reference of `xla_tile`: one `jnp.take` per dim with the map `tile(arange(n), k)`."""
  for d in sorted(reps):
    x = jnp.take(x, jnp.tile(jnp.arange(x.shape[d]), reps[d]), axis=d)
  return x


def main(argv=None) -> list[dict]:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--smoke", action="store_true", help="tiny shapes, kernel interpreted (for the test suite)")
  ap.add_argument("--reps", type=int, default=20)
  ap.add_argument("--configs", help="comma-separated BLOCK:WARPS[:words] (default: a sweep of seven)")
  ap.add_argument("--dtypes", default="bfloat16,float32", help="comma-separated dtypes")
  ap.add_argument("--json", help="write the rows as JSON to this file")
  args = ap.parse_args(argv)
  configs = parse_configs(args.configs) if args.configs else CONFIGS
  dev = jax.devices()[0]
  print(f"device: {dev.device_kind} ({dev.platform}), jax {jax.__version__}", flush=True)
  if not args.smoke and dev.platform != "gpu":
    print("the kernel runs on GPUs only (use --smoke to interpret it here)")
    return []
  cases, configs, reps = (SMOKE, configs[:2] + [configs[-1]], 2) if args.smoke else (CASES, configs, args.reps)
  rows = []
  for dtype in (jnp.bfloat16,) if args.smoke else [jnp.dtype(d) for d in args.dtypes.split(",")]:
    for name, shape, rep in cases:
      x = jax.random.normal(jax.random.key(0), shape, dtype)
      out_shape = tuple(n * rep.get(d, 1) for d, n in enumerate(shape))
      out_bytes = math.prod(out_shape) * x.dtype.itemsize
      moved = x.size * x.dtype.itemsize + out_bytes  # read + written
      t_copy, t_words = copy_seconds([jnp.zeros(out_shape, dtype)], reps)  # in the dtype / as 32-bit words
      copy_gbs = 2 * out_bytes / min(t_copy, t_words or t_copy) / 1e9
      xla = jax.jit(lambda x, rep=rep: xla_repeat(x, rep))
      want = xla(x)
      variants = [("xla", xla)] + [(f"pallas {'words ' if p else ''}block={b} warps={w}", jax.jit(
          lambda x, rep=rep, b=b, w=w, p=p: kernels.repeat(x, rep, block=b, num_warps=w, words=p,
                                                           interpret=args.smoke)))
          for b, w, p in configs if not p or kernels.packs(shape, rep, dtype)]
      variants.append(("xla tiled order", jax.jit(lambda x, rep=rep: xla_tile(x, rep))))
      for label, fn in variants:
        row = {"case": f"{name} {jnp.dtype(dtype).name}", "impl": label, "device": dev.device_kind,
               "copy_GBps": copy_gbs, "library_config": label == "pallas block={} warps={}".format(
                   *kernels.config(shape, rep, dtype))}  # the one rcjax.transfer uses
        tiled = label == "xla tiled order"  # checked against its own reference: another order
        check = "bitwise_equal_to_takes" if tiled else "bitwise_equal_to_xla"
        try:
          row[check] = bitwise_equal(fn(x), takes_tiled(x, rep) if tiled else want)
          t = timeit(fn, x, reps=reps)
          row.update(seconds=t, GBps=moved / t / 1e9, vs_copy=moved / t / 1e9 / copy_gbs)
          print(f"{row['case']:28s} {label:34s} {row['GBps']:8.1f} GB/s = {row['vs_copy']:.2f} of copy "
                f"({copy_gbs:.0f} GB/s)  bitwise={'takes' if tiled else 'xla'} {row[check]}"
                + ("  (library's)" if row["library_config"] else ""), flush=True)
        except Exception as e:  # noqa: BLE001 - a config Triton refuses: report it, go on
          row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
          print(f"{row['case']:28s} {label:34s} error: {row['error']}", flush=True)
        rows.append(row)
        if args.json:
          with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
