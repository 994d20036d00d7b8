"""What checkpoint digests cost: save and restore time of `rcjax.checkpoint.Checkpointer` with
verification (digests written after orbax finished, checked before reading) and without (`verify=False`:
orbax alone), measured side by side in one run, alternating, at a few sizes.

    python benchmarks/checkpoint_verify.py                    # 4, 64 and 256 MiB of float32 params
    python benchmarks/checkpoint_verify.py --sizes-mib 16 --repeats 5
    python benchmarks/checkpoint_verify.py --smoke            # tiny, seconds (the test suite runs this)

Save time is `save` + `wait` (the digest is part of the wait); restore time is `restore()` of the params
onto the host, in a new `Checkpointer` each time (so no verification is cached). Both read and write the
files through the page cache of the machine (a real disk adds its own time to both columns equally).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import jax
import numpy as np

from rcjax.checkpoint import Checkpointer


def params_of(mib: float, leaves: int = 8) -> dict:
  """`leaves` float32 arrays of `mib` MiB in all (random values: nothing compresses away)."""
  n = max(1, int(mib * 2**20 / 4 / leaves))
  rng = np.random.default_rng(0)
  return {f"w{i}": jax.numpy.asarray(rng.standard_normal(n, dtype=np.float32)) for i in range(leaves)}


def _save(directory: str, params: dict, verify: bool, step: int) -> float:
  ck = Checkpointer(directory, verify=verify)
  t0 = time.perf_counter()
  ck.save(step, params=params, config={"size": step})
  ck.wait()
  dt = time.perf_counter() - t0
  ck.close()
  return dt


def _restore(directory: str, verify: bool, step: int) -> float:
  ck = Checkpointer(directory, read_only=True, verify=verify)
  t0 = time.perf_counter()
  r = ck.restore(step)
  jax.block_until_ready(jax.tree.leaves(r["params"]))
  dt = time.perf_counter() - t0
  ck.close()
  return dt


def measure(mib: float, repeats: int, root: str) -> dict:
  """Median save and restore seconds with and without verification (alternating, after one warm-up)."""
  params = params_of(mib)
  times: dict[str, list[float]] = {k: [] for k in ("save_plain", "save_verified", "restore_plain",
                                                   "restore_verified")}
  for r in range(repeats + 1):
    for verify in (False, True):
      d = os.path.join(root, f"{mib}-{verify}-{r}")
      s, t = _save(d, params, verify, 1), _restore(d, verify, 1)
      if r:  # the first round warms up orbax and the page cache
        times["save_verified" if verify else "save_plain"].append(s)
        times["restore_verified" if verify else "restore_plain"].append(t)
      shutil.rmtree(d)
  med = {k: float(np.median(v)) for k, v in times.items()}
  return {"MiB": mib, "repeats": repeats, **{f"{k}_s": round(v, 4) for k, v in med.items()},
          "save_overhead": round(med["save_verified"] / med["save_plain"] - 1, 3),
          "restore_overhead": round(med["restore_verified"] / med["restore_plain"] - 1, 3)}


def main(argv=None) -> list[dict]:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--sizes-mib", type=float, nargs="+", default=[4, 64, 256])
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
  ap.add_argument("--smoke", action="store_true", help="0.25 MiB, one repeat")
  ap.add_argument("--json", default=None)
  a = ap.parse_args(argv)
  sizes, repeats = ([0.25], 1) if a.smoke else (a.sizes_mib, a.repeats)
  root = tempfile.mkdtemp(prefix="rcjax-ckpt-bench-", dir=a.dir)
  rows = []
  try:
    for mib in sizes:
      rows.append(measure(mib, repeats, root))
      r = rows[-1]
      print(f"{mib:>7.2f} MiB  save {r['save_plain_s']:.3f}s -> {r['save_verified_s']:.3f}s verified "
            f"({100 * r['save_overhead']:+.0f}%)  restore {r['restore_plain_s']:.3f}s -> "
            f"{r['restore_verified_s']:.3f}s verified ({100 * r['restore_overhead']:+.0f}%)", flush=True)
      if a.json:
        with open(a.json, "w") as f:
          json.dump(rows, f, indent=1)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  return rows


if __name__ == "__main__":
  main()
  sys.exit(0)
