"""Wall time, phases, bytes and peak memory of `python -m rcjax.grow/shrink` next to its baselines.

    python benchmarks/hf_grow.py --out benchmarks/results/2026-12-07-cpu-hfgrow     # all shapes, 3 rounds
    python benchmarks/hf_grow.py --shapes 125m --rounds 5                             # one shape
    python benchmarks/hf_grow.py --smoke                                              # tiny (the test suite's)

Writes synthetic Llama checkpoints (bf16, random weights; `rcjax.hf.synthetic`) and measures, each as a
fresh subprocess (peak RSS from `os.wait4`, the child's own maximum resident set):
  * `rcjax --no-check`: `python -m rcjax.grow SRC DST --factor 2 --no-check` (shrink: --factor 0.5);
  * `rcjax check`: the same with the default logit check;
  * `torch naive`: a plain PyTorch/transformers script (`NAIVE` below: `from_pretrained`, every matrix
    repeated along its grown axes with the fan-in divided (shrink: the first neurons kept), the config
    updated, `save_pretrained`), the way HyperCloning-style tools do it;
  * `cp`: a plain copy of the output's safetensors bytes (`shutil.copyfile`, in the parent: no import).
Each round runs every command once, in order, so slow phases of the shared machine hit all of them;
the report gives medians over the rounds and ratios of medians. rcjax's phases come from its own
output (the streaming path's compile/read/compute/write seconds overlap).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHAPES = {  # name: write_synthetic kwargs
    "125m": dict(num_blocks=12, embed=768, heads=12, kv_heads=4, mlp=2048, vocab=32000),   # issue 28's
    "1b-4l": dict(num_blocks=4, embed=2048, heads=32, kv_heads=8, mlp=5632, vocab=32000),  # TinyLlama-1.1B widths
    "mha-8l": dict(num_blocks=8, embed=1024, heads=16, kv_heads=16, mlp=2816, vocab=32000),
    "smoke": dict(num_blocks=2, embed=32, heads=4, kv_heads=2, mlp=64, vocab=128),
}

NAIVE = r"""
import sys, time
t0 = time.perf_counter()
import torch
from transformers import AutoModelForCausalLM
src, dst, f = sys.argv[1], sys.argv[2], float(sys.argv[3])
t1 = time.perf_counter()
m = AutoModelForCausalLM.from_pretrained(src, torch_dtype="auto")
c = m.config
E, H, K, F = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size
D = getattr(c, "head_dim", None) or E // H

def resize(w, dim, n, unit, fan_in):  # along dim: n units of `unit` entries (a head: head_dim rows)
  shape = w.shape
  w = w.reshape(shape[:dim] + (shape[dim] // unit, unit) + shape[dim + 1:])
  k = n / w.shape[dim]
  w = w.repeat_interleave(int(k), dim=dim) / (k if fan_in else 1) if k >= 1 else w.narrow(dim, 0, n)
  return w.reshape(shape[:dim] + (n * unit,) + shape[dim + 1:])

g = lambda x: int(round(x * f))
axes = {"embed_tokens": [(1, E, 1, False)], "lm_head": [(1, E, 1, True)], "q_proj": [(0, H, D, False), (1, E, 1, True)],
        "k_proj": [(0, K, D, False), (1, E, 1, True)], "v_proj": [(0, K, D, False), (1, E, 1, True)],
        "o_proj": [(0, E, 1, False), (1, H, D, True)], "gate_proj": [(0, F, 1, False), (1, E, 1, True)],
        "up_proj": [(0, F, 1, False), (1, E, 1, True)], "down_proj": [(0, E, 1, False), (1, F, 1, True)],
        "norm": [(0, E, 1, False)], "layernorm": [(0, E, 1, False)]}
with torch.no_grad():
  for name, p in m.named_parameters():
    kind = next(k for k in axes if k in name.split(".")[-2])
    w = p.data
    for dim, n, unit, fan_in in axes[kind]:
      w = resize(w, dim, g(n // unit) if unit > 1 else g(n), unit, fan_in)
    p.data = w.contiguous()
c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size = g(E), g(H), g(K), g(F)
c.head_dim = D
t2 = time.perf_counter()
m.save_pretrained(dst)
t3 = time.perf_counter()
print(f"PHASES import {t1 - t0:.2f} load+resize {t2 - t1:.2f} save {t3 - t2:.2f}")
"""


class _Popen(subprocess.Popen):
  """Popen that reaps its child with wait4, keeping the child's own peak RSS (ru_maxrss, KiB on Linux)."""

  def _try_wait(self, wait_flags):
    pid, status, usage = os.wait4(self.pid, wait_flags)
    if pid:
      self._rcjax_rss = usage.ru_maxrss / 1024
    return pid, status


def run(cmd: list[str], env: dict | None = None) -> dict:
  """Run `cmd`; wall seconds, the child's peak RSS (MiB, from wait4) and its stdout."""
  t = time.perf_counter()
  p = _Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, **(env or {})))
  out, err = p.communicate()
  wall = time.perf_counter() - t
  if p.returncode:
    raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{err[-3000:]}")
  return {"wall_s": wall, "stdout": out, "rss_mb": _rss(p)}


def _rss(p) -> float:
  return getattr(p, "_rcjax_rss", float("nan"))


def rcjax_phases(stdout: str) -> dict:
  """Seconds from rcjax.grow's own timestamps: until reading starts, the stream, the check."""
  stamps = {m.group(2): float(m.group(1)) for m in re.finditer(r"\[\s*([\d.]+)s\] (\w+)", stdout)}
  out = {}
  if "wrote" in stamps:
    start = stamps.get("growing", stamps.get("shrinking", stamps.get("loading", 0.0)))
    out["setup_s"] = start
    out["transfer_write_s"] = stamps["wrote"] - start
    if "check" in stamps:
      out["check_s"] = stamps["check"] - stamps["wrote"]
  m = re.search(r"compile ([\d.]+)s, read ([\d.]+)s, compute ([\d.]+)s, write ([\d.]+)s; read ([\d.]+) MiB", stdout)
  if m:
    out.update(compile_s=float(m.group(1)), read_s=float(m.group(2)), compute_s=float(m.group(3)),
               write_s=float(m.group(4)), read_mib=float(m.group(5)))
  return out


def dir_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path) if n.endswith(".safetensors"))


def bench(shape: str, direction: str, rounds: int, work: str, torch: bool) -> dict:
  from rcjax.hf.synthetic import write_synthetic

  src = os.path.join(work, f"{shape}-src")
  if not os.path.isfile(os.path.join(src, "config.json")):  # written last: a complete checkpoint
    write_synthetic(src, "llama", dtype="bfloat16", keep=False, **SHAPES[shape])
  factor = "2" if direction == "grow" else "0.5"
  dst = os.path.join(work, "dst")
  cmds = {"rcjax --no-check": [sys.executable, "-m", f"rcjax.{direction}", src, dst, "--factor", factor,
                               "--no-check", "--overwrite"],
          "rcjax check": [sys.executable, "-m", f"rcjax.{direction}", src, dst, "--factor", factor, "--overwrite"]}
  if torch:
    cmds["torch naive"] = [sys.executable, "-c", NAIVE, src, dst, factor]
  res: dict[str, list] = {k: [] for k in list(cmds) + ["cp"]}
  for _ in range(rounds):
    for name, cmd in cmds.items():
      shutil.rmtree(dst, ignore_errors=True)
      r = run(cmd)
      r["phases"] = rcjax_phases(r["stdout"]) if name.startswith("rcjax") else {}
      if name == "torch naive":
        r["phases"] = {k: float(v) for k, v in re.findall(r"(\S+) ([\d.]+)", r["stdout"].split("PHASES")[-1])}
      r["bytes_written"] = dir_bytes(dst)
      del r["stdout"]
      res[name].append(r)
    weights = [os.path.join(dst, n) for n in os.listdir(dst) if n.endswith(".safetensors")]
    t = time.perf_counter()
    for w in weights:
      shutil.copyfile(w, w + ".copy")
    res["cp"].append({"wall_s": time.perf_counter() - t, "rss_mb": float("nan"), "bytes_written": dir_bytes(dst)})
    for w in weights:
      os.remove(w + ".copy")
  shutil.rmtree(dst, ignore_errors=True)
  med = lambda k, f: statistics.median(r[f] for r in res[k])
  row = {"shape": shape, "direction": direction, "rounds": rounds, "bytes_read": dir_bytes(src), "runs": res}
  for k in res:
    row[k] = {"wall_s": med(k, "wall_s"), "rss_mb": med(k, "rss_mb"), "bytes_written": res[k][0]["bytes_written"]}
    phases = {p for r in res[k] for p in r.get("phases", {})}
    row[k]["phases"] = {p: statistics.median(r["phases"][p] for r in res[k] if p in r["phases"])
                        for p in sorted(phases)}
  base = row.get("torch naive")
  for k in ("rcjax --no-check", "rcjax check"):
    row[k]["x_cp"] = row[k]["wall_s"] / row["cp"]["wall_s"]
    if base:
      row[k]["x_torch_wall"] = row[k]["wall_s"] / base["wall_s"]
      row[k]["x_torch_rss"] = row[k]["rss_mb"] / base["rss_mb"]
  row["check_overhead"] = row["rcjax check"]["wall_s"] / row["rcjax --no-check"]["wall_s"] - 1
  return row


def table(rows: list[dict]) -> str:
  lines = ["| shape | dir | command | wall s | peak RSS MiB | x cp | x torch wall | x torch RSS | phases (s) |",
           "|---|---|---|---:|---:|---:|---:|---:|---|"]
  for row in rows:
    for k in ("rcjax --no-check", "rcjax check", "torch naive", "cp"):
      if k not in row:
        continue
      r = row[k]
      ph = ", ".join(f"{p.removesuffix('_s')} {v:.2f}" for p, v in r["phases"].items() if p != "read_mib")
      f = lambda key: f"{r[key]:.2f}" if key in r else ""
      lines.append(f"| {row['shape']} | {row['direction']} | {k} | {r['wall_s']:.2f} | {r['rss_mb']:.0f} | "
                   f"{f('x_cp')} | {f('x_torch_wall')} | {f('x_torch_rss')} | {ph} |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--shapes", nargs="+", default=["125m", "1b-4l", "mha-8l"], choices=sorted(SHAPES))
  ap.add_argument("--directions", nargs="+", default=["grow", "shrink"], choices=("grow", "shrink"))
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--smoke", action="store_true", help="one tiny shape, grow only, one round, no torch")
  ap.add_argument("--no-torch", action="store_true")
  ap.add_argument("--dir", help="work directory (default: a temporary one)")
  ap.add_argument("--out", help="directory for results.json and table.md")
  args = ap.parse_args(argv)
  if args.smoke:
    args.shapes, args.directions, args.rounds, args.no_torch = ["smoke"], ["grow"], 1, True
  work = args.dir or tempfile.mkdtemp(prefix="hf_grow_bench_")
  os.makedirs(work, exist_ok=True)
  rows = []
  for d in args.directions:
    for shape in args.shapes:
      rows.append(bench(shape, d, args.rounds, work, not args.no_torch))
      print(table(rows[-1:]), flush=True)
      if args.out:  # after every row: a long run stopped early keeps what it measured
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
          json.dump({"argv": sys.argv[1:], "cpus": os.cpu_count(), "load_avg": os.getloadavg(), "rows": rows},
                    f, indent=1)
        with open(os.path.join(args.out, "table.md"), "w") as f:
          f.write(table(rows) + "\n")
  print(table(rows))
  if not args.dir:
    shutil.rmtree(work, ignore_errors=True)
  return rows


if __name__ == "__main__":
  main()
