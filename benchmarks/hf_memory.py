"""Peak memory of streaming RC diagnostics over a HuggingFace checkpoint (rcjax.hf + rcjax.analyze).

    python benchmarks/hf_memory.py                       # ~0.5 GB synthetic Llama-shaped bf16 checkpoint in /tmp
    python benchmarks/hf_memory.py --embed 1024 --mlp 4096 --blocks 2 8   # other shapes / block counts
    python benchmarks/hf_memory.py --smoke --json out.json                 # tiny shapes (the test suite's)

Writes a synthetic Llama-shaped checkpoint (bf16, sharded, random weights) per block count, then runs the
same analysis as `python -m rcjax.analyze` (without figures) in a fresh process and reports, next to the
sizes that matter (whole checkpoint, one block, the largest tensor):
  * rss_base: resident memory after importing rcjax (jax, flax, numpy, ...), before reading anything;
  * rss_peak: peak resident memory during the analysis (VmHWM, reset after the imports through
    /proc/self/clear_refs; Linux), which includes the file pages of the open shard mapped by safetensors;
  * numpy_peak: peak of Python/numpy allocations during the analysis (tracemalloc; second run).
If streaming works, rss_peak - rss_base tracks one block, not the checkpoint, and does not grow with the
number of blocks.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MEASURE = r"""
import json, sys, time, tracemalloc
from rcjax import analyze

def status(key):  # kB in /proc/self/status -> MiB
  return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key + ":")) / 1024

base = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
  f.write("5")  # reset the peak (VmHWM) to the current RSS: the import's own peak is not the analysis's
trace = sys.argv[2] == "trace"
if trace:
  tracemalloc.start()
t = time.time()
overall, per_block, _ = analyze.max_abs(analyze.Source(sys.argv[1]), progress=False, permutations=200)
out = {"seconds": time.time() - t, "rss_base_mb": base, "rss_peak_mb": status("VmHWM"),
       "max_abs_corr": overall["max_abs_corr"], "num_blocks": len(per_block)}
if trace:
  out["numpy_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
print(json.dumps(out))
"""


def measure(path: str, trace: bool) -> dict:
  p = subprocess.run([sys.executable, "-c", MEASURE, path, "trace" if trace else "plain"], cwd=ROOT,
                     capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  if p.returncode:
    raise SystemExit(p.stderr)
  return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[dict]:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--embed", type=int, default=2048)
  ap.add_argument("--heads", type=int, default=16)
  ap.add_argument("--kv-heads", type=int, default=4)
  ap.add_argument("--mlp", type=int, default=8192)
  ap.add_argument("--blocks", type=int, nargs="+", default=[2, 4])
  ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "rcjax_hf_memory"))
  ap.add_argument("--smoke", action="store_true", help="tiny shapes, one block count (checks the script runs)")
  ap.add_argument("--json", help="write the rows as JSON to this file")
  a = ap.parse_args(argv)
  if a.smoke:
    a.embed, a.heads, a.kv_heads, a.mlp, a.blocks = 64, 4, 2, 128, [2]
  sys.path.insert(0, ROOT)
  from rcjax.hf.synthetic import write_synthetic

  e, kvd, m = a.embed, a.kv_heads * (a.embed // a.heads), a.mlp
  block_bytes = 2 * (2 * e * e + 2 * e * kvd + 3 * e * m + 2 * e)
  print(f"Llama-shaped bf16: embed {e}, heads {a.heads}, kv heads {a.kv_heads}, mlp {m}; one block "
        f"{block_bytes / 2**20:.0f} MiB, largest tensor {2 * e * m / 2**20:.0f} MiB")
  rows = []
  for n in a.blocks:
    path = os.path.join(a.dir, f"llama_{e}_{m}_{n}")
    shutil.rmtree(path, ignore_errors=True)
    t = time.time()
    write_synthetic(path, "llama", num_blocks=n, embed=e, heads=a.heads, kv_heads=a.kv_heads, mlp=m,
                       vocab=256, dtype="bfloat16", shards=max(1, n // 2), keep=False)
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    plain, traced = measure(path, False), measure(path, True)
    print(f"blocks {n}: checkpoint {size / 2**20:.0f} MiB (written in {time.time() - t:.0f} s); "
          f"rss base {plain['rss_base_mb']:.0f} MiB, rss peak {plain['rss_peak_mb']:.0f} MiB "
          f"(+{plain['rss_peak_mb'] - plain['rss_base_mb']:.0f}), numpy peak {traced['numpy_peak_mb']:.0f} MiB; "
          f"{plain['seconds']:.1f} s = {size / 2**30 / plain['seconds']:.2f} GiB/s")
    rows.append({"blocks": n, "embed": e, "mlp": m, "checkpoint_mb": size / 2**20, "block_mb": block_bytes / 2**20,
                 **plain, "numpy_peak_mb": traced["numpy_peak_mb"]})
    shutil.rmtree(path, ignore_errors=True)
    if a.json:  # after every row: a run cut short keeps what it measured
      with open(a.json, "w") as f:
        json.dump(rows, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
