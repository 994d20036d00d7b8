"""Where train.gpt's step spends its device time: a profiler trace of a few steps, summarised.

    python benchmarks/profile_step.py --gpt gpt-medium:32 --out /tmp/prof     # on a GPU
    python benchmarks/profile_step.py --smoke                                  # tiny, CPU (the tests run it)

Traces `--steps` steps of the same jitted, sharded step `train_step.py` times (after a warm-up), with
`jax.profiler.trace`, then reads the trace's `*.trace.json.gz` (written by JAX itself; no TensorBoard
needed) and prints, per step: the wall time, the device's busy time (kernels on its streams), and the
kernels grouped into classes (matmul, attention, fusions, copies, ...) and one by one, with their share.
The raw trace stays in `--out` for https://ui.perfetto.dev or TensorBoard. `--json FILE` writes the summary.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

import jax

# Kernel classes, matched in order against the kernel's name (cuBLAS / cuDNN / XLA fusion names).
CLASSES = (
    ("attention", r"cudnn|fmha|flash|sdpa|attn|softmax_.*_bwd"),
    ("matmul", r"gemm|cutlass|xmma|nvjet|cublas|wgmma|sm\d+_.*(tn|nt|nn|tt)|triton_.*dot|__dot|dot"),
    ("reduction fusion", r"reduce|reduction"),
    ("copy / memset", r"memcpy|memset|copy|transpose|dynamic.update.slice|dynamic.slice"),
    ("elementwise fusion", r"fusion|loop_|convert|add|multiply"),
)


def classify(name: str) -> str:
  low = name.lower()
  return next((c for c, pat in CLASSES if re.search(pat, low)), "other")


def device_events(trace: dict) -> list[dict]:
  """Complete events ('X') on the accelerator's streams (its 'Stream #..' threads: the kernels and copies;
  not the 'XLA Ops' / 'XLA Modules' lines, which overlap them); on a host-only trace (CPU) those of the
  XLA executor threads, so the summary still means something there."""
  ev = trace.get("traceEvents", [])
  procs = {e["pid"]: e.get("args", {}).get("name", "") for e in ev
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  threads = {(e["pid"], e["tid"]): e.get("args", {}).get("name", "") for e in ev
             if e.get("ph") == "M" and e.get("name") == "thread_name"}
  dev = {p for p, n in procs.items() if "/device:" in n and "CPU" not in n}
  if dev:
    streams = {k for k, n in threads.items() if k[0] in dev and "stream" in n.lower()}
    keep = (lambda e: (e.get("pid"), e.get("tid")) in streams) if streams else (lambda e: e.get("pid") in dev)
    return [e for e in ev if e.get("ph") == "X" and keep(e)]
  return [e for e in ev if e.get("ph") == "X" and "XLA" in threads.get((e.get("pid"), e.get("tid")), "")]


def busy_us(events: list[dict]) -> float:
  """Union length of the events' intervals (kernels on several streams may overlap)."""
  spans = sorted((float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))) for e in events)
  total, end = 0.0, -1.0
  for a, b in spans:
    if b <= end:
      continue
    total += b - max(a, end)
    end = b
  return total


def summarise(trace: dict, steps: int, top: int = 25) -> dict:
  events = device_events(trace)
  by_name: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
  for e in events:
    name = e.get("args", {}).get("hlo_op") or e["name"]
    kernel = e["name"]
    row = by_name[(kernel if kernel == name else f"{kernel} [{name}]")[:160]]
    row[0] += float(e.get("dur", 0))
    row[1] += 1
  total = sum(v[0] for v in by_name.values()) or 1.0
  classes: dict[str, float] = collections.defaultdict(float)
  for name, (dur, _) in by_name.items():
    classes[classify(name)] += dur
  kernels = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]
  return {
      "steps": steps, "kernel_ms_per_step": total / steps / 1e3, "busy_ms_per_step": busy_us(events) / steps / 1e3,
      "classes": {c: {"ms_per_step": d / steps / 1e3, "share": d / total}
                  for c, d in sorted(classes.items(), key=lambda kv: -kv[1])},
      "kernels": [{"name": n, "ms_per_step": d / steps / 1e3, "calls_per_step": c / steps, "share": d / total}
                  for n, (d, c) in kernels],
  }


def read_trace(log_dir: str) -> dict:
  """The newest trace under `log_dir` as Chrome trace JSON: the `*.trace.json.gz` JAX writes, else the
  same events rebuilt from its `*.xplane.pb` with `jax.profiler.ProfileData`."""
  def newest(pattern):
    paths = sorted(glob.glob(os.path.join(log_dir, "plugins", "profile", "*", pattern)), key=os.path.getmtime)
    return paths[-1] if paths else None
  if (path := newest("*.trace.json.gz")):
    with gzip.open(path) as f:
      return json.load(f)
  if not (path := newest("*.xplane.pb")):
    raise FileNotFoundError(f"no trace under {log_dir}/plugins/profile (did the trace run?)")
  events = []
  for pid, plane in enumerate(jax.profiler.ProfileData.from_file(path).planes):
    events.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": plane.name}})
    for tid, line in enumerate(plane.lines):
      events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": line.name}})
      for e in line.events:
        stats = {k: v for k, v in getattr(e, "stats", ()) if isinstance(v, (str, int, float))}
        events.append({"ph": "X", "pid": pid, "tid": tid, "name": e.name, "ts": e.start_ns / 1e3,
                       "dur": e.duration_ns / 1e3, "args": stats})
  return {"traceEvents": events}


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--gpt", default="gpt-medium:32", help="train.gpt preset, optionally with :BATCH")
  ap.add_argument("--variant", default="default", help="model variant (see train_step.VARIANTS), e.g. scan")
  ap.add_argument("--steps", type=int, default=3, help="steps traced (after two untraced warm-up steps)")
  ap.add_argument("--top", type=int, default=25, help="kernels listed")
  ap.add_argument("--out", help="trace directory (default: a temporary one)")
  ap.add_argument("--json", help="write the summary as JSON to this file")
  ap.add_argument("--smoke", action="store_true", help="tiny model (for the test suite)")
  args = ap.parse_args(argv)
  from benchmarks.train_step import gpt_step, parse_spec

  if args.steps < 1 or args.top < 1:
    ap.error("--steps and --top must be at least 1")
  preset, over = parse_spec(ap, "tiny:8" if args.smoke else args.gpt)
  step, _, cfg, attention = gpt_step(preset, args.variant, **over)
  step()
  t = time.perf_counter()
  step()
  untraced = time.perf_counter() - t
  out = args.out or tempfile.mkdtemp(prefix="rcjax-prof-")
  walls = []
  with jax.profiler.trace(out):
    for _ in range(args.steps):
      t = time.perf_counter()
      step()
      walls.append(time.perf_counter() - t)
  s = summarise(read_trace(out), args.steps, args.top)
  dev = jax.devices()[0]
  s.update(case=f"gpt {preset} B={cfg.batch_size} T={cfg.seq_len} {cfg.dtype} {args.variant}",
           device=dev.device_kind, attention=attention, untraced_step_ms=untraced * 1e3,
           traced_step_ms=sorted(walls)[len(walls) // 2] * 1e3, trace_dir=out)
  print(f"{s['case']} on {s['device']} (attention {attention}): step {s['untraced_step_ms']:.1f} ms untraced, "
        f"{s['traced_step_ms']:.1f} ms traced; device busy {s['busy_ms_per_step']:.1f} ms, "
        f"kernels {s['kernel_ms_per_step']:.1f} ms per step")
  for c, v in s["classes"].items():
    print(f"  {c:20s} {v['ms_per_step']:9.2f} ms  {100 * v['share']:5.1f}%")
  print("  top kernels (ms per step, calls per step, share):")
  for k in s["kernels"]:
    print(f"  {k['ms_per_step']:9.3f} ms {k['calls_per_step']:6.0f}x {100 * k['share']:5.1f}%  {k['name']}")
  print(f"trace: {out}", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(s, f, indent=1)
  return s


if __name__ == "__main__":
  main()
