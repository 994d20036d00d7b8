"""python -m benchmarks.growth: does growing a model mid-training save compute? One command, one answer.

    python -m benchmarks.growth                       # the CPU study (real text, 32 -> 64, 3 seeds)
    python -m benchmarks.growth --smoke               # seconds: the harness end to end (a test runs it)
    python -m benchmarks.growth --preset gpu          # one H100: gpt-medium (1024 x 24) from width 512
    python -m benchmarks.growth --variants "at=0.25;at=0.5,warmup=100" --seeds 0   # screen recipes

For one architecture and token budget it trains, with the same seeds, data order and eval batches:
(a) the large model from scratch, (b) the small model alone, (c) small-then-grown variants (train.gpt's
--grow-at/--grow-to, exact growth). The scratch and the small model each get their own best peak lr from
a sweep on the first seed (the grown runs use the small model's: muP keeps it right across the growth).
Writes results.json, growth.png (eval loss against cumulative training FLOPs, the small phase included)
and each run's metrics.jsonl. Headline: the FLOPs a grown run needs to first reach the scratch run's final
eval loss, as a fraction of the scratch run's FLOPs (per seed, mean and spread; "never" where it does not).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

# width/depth/budget of each study; `small` grows to `large` (train.gpt Config fields otherwise)
PRESETS = {
    "cpu": dict(small=32, large=64, cfg=dict(depth=2, heads=2, seq_len=64, batch_size=16, steps=1500,
                                              warmup=100, dtype="float32", eval_batches=8),
                evals=20, lrs=(3e-3, 1e-2, 3e-2), seeds=(0, 1, 2)),
    "smoke": dict(small=16, large=32, cfg=dict(depth=1, heads=2, seq_len=16, batch_size=8, steps=12, warmup=2,
                                               dtype="float32", eval_batches=1),
                  evals=4, lrs=(3e-2,), seeds=(0, 1)),
    "gpu": dict(small=512, large=1024, cfg=dict(preset="gpt-medium", heads=8, vocab=256, steps=2000, eval_batches=8),
                evals=30, lrs=(3e-4, 1e-3, 3e-3), seeds=(0, 1, 2)),
}
# The recipe (the default of train.gpt --grow-at/--grow-to unless the value is a flag here): see docs/growth.md
DEFAULT_VARIANTS = "at=0.25,cancel=2.0;at=0.4,cancel=2.0"
KNOBS = {"at": float, "len": float, "r1": float, "r2": float, "warmup": int, "opt": str, "base": int, "to": int,
         "split": float, "cancel": float, "from": int}
FIELDS = {"r1": "random_rate", "r2": "norm_rate", "warmup": "grow_warmup", "opt": "grow_opt", "base": "base_width",
          "split": "split_rate", "cancel": "cancel_rate"}


def parse_variant(spec: str) -> dict:
  """'at=0.5,warmup=100' -> {'at': 0.5, 'warmup': 100}; `at` (fraction of the budget) is required."""
  out = {}
  for item in filter(None, spec.split(",")):
    k, eq, v = item.partition("=")
    if not eq or k not in KNOBS:
      raise ValueError(f"variant {spec!r}: expected KNOB=VALUE with KNOB one of {sorted(KNOBS)}, got {item!r}")
    try:
      out[k] = KNOBS[k](v)
    except ValueError:
      raise ValueError(f"variant {spec!r}: {k} must be a {KNOBS[k].__name__}, got {v!r}") from None
  if not 0 < out.get("len", 1.0) <= 1:
    raise ValueError(f"variant {spec!r}: len (the fraction of the budget the grown run trains) must be in (0, 1]")
  if not 0 < out.get("at", -1) < 1:
    raise ValueError(f"variant {spec!r}: needs at=F, the fraction of the budget trained small, in (0, 1)")
  return out


def variant_config(base, variant: dict, large: int):
  """The train.gpt Config of a grown run: `base` (the small model's) growing at `at` of its steps."""
  from train import gpt

  fields = {f.name for f in dataclasses.fields(gpt.Config)}
  steps = max(2, round(variant.get("len", 1.0) * base.steps))  # len: its own (shorter) schedule
  kw = dict(steps=steps, grow_at=max(1, round(variant["at"] * steps)), grow_to=variant.get("to", large))
  if "from" in variant:  # another small width (e.g. 4x growth): heads scale with it, muP base = it
    w = variant["from"]
    if base.heads * w % base.width or base.kv_heads * w % base.width:
      raise ValueError(f"variant knob from={w}: heads {base.heads} at width {base.width} do not scale to it")
    kw.update(width=w, heads=base.heads * w // base.width, kv_heads=base.kv_heads * w // base.width,
              base_width=w, mlp=base.mlp * w // base.width if base.mlp else 0)
  for k, v in variant.items():
    if k in FIELDS:
      if FIELDS[k] not in fields:
        raise ValueError(f"variant knob {k} needs train.gpt --{FIELDS[k].replace('_', '-')}, which this "
                         "train.gpt lacks")
      kw[FIELDS[k]] = v
  return dataclasses.replace(base, **kw)


def curve(run_dir: str) -> dict:
  """A run's eval curve: steps, cumulative training FLOPs and eval losses; and its growth record."""
  recs = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl")) if l.strip()]
  flops = {r["step"]: r["flops"] for r in recs if "flops" in r and "event" not in r}
  ev = [r for r in recs if "eval_loss" in r]
  grow = next((r for r in recs if r.get("event") == "grow"), None)
  return dict(step=[r["step"] for r in ev], flops=[flops[r["step"]] for r in ev],
              eval_loss=[r["eval_loss"] for r in ev], grow=grow)


def first_reach(c: dict, target: float) -> float | None:
  """The FLOPs at the first eval whose loss is <= target (None: never)."""
  return next((f for f, l in zip(c["flops"], c["eval_loss"]) if l <= target), None)


def train(cfg, name: str, out: str, log=print) -> dict:
  """Run train.gpt in-process into a scratch directory; keep its metrics.jsonl as out/runs/NAME.jsonl."""
  from train import gpt

  t0 = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    gpt.run(dataclasses.replace(cfg, out=os.path.join(tmp, "run"), progress=False, plot=False))
    c = curve(os.path.join(tmp, "run"))
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    shutil.copy(os.path.join(tmp, "run", "metrics.jsonl"), os.path.join(out, "runs", name + ".jsonl"))
  c.update(name=name, lr=cfg.lr, seed=cfg.seed, wall_s=time.perf_counter() - t0)
  log(f"growth: {name}: final eval loss {c['eval_loss'][-1]:.4f}, {c['flops'][-1]:.3g} FLOPs, "
      f"{c['wall_s']:.0f} s" + (f" (grow: loss {c['grow']['loss_before']:.5f} -> {c['grow']['loss_after']:.5f})"
                               if c["grow"] else ""))
  return c


def _train_all(jobs: list, out: str, log, workers: int) -> list[dict]:
  """`train(cfg, name, out)` for each (cfg, name); in `workers` processes if > 1 (each run is deterministic,
  so the results do not depend on it)."""
  if workers <= 1:
    return [train(cfg, name, out, log) for cfg, name in jobs]
  import concurrent.futures
  import multiprocessing

  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
    return list(ex.map(train, *zip(*[(cfg, name, out) for cfg, name in jobs])))


def summarize(runs: dict, seeds, variants: list[str]) -> dict:
  """Per variant: each seed's FLOPs fraction to reach that seed's scratch final eval loss; mean and spread."""
  table = {}
  for name in ["scratch", "small"] + variants:
    fr, finals, total = [], [], []
    for s in seeds:
      c, ref = runs[name][s], runs["scratch"][s]
      f = first_reach(c, ref["eval_loss"][-1])
      fr.append(None if f is None else f / ref["flops"][-1])
      finals.append(c["eval_loss"][-1])
      total.append(c["flops"][-1] / ref["flops"][-1])
    reached = [x for x in fr if x is not None]
    table[name] = dict(fraction=fr, fraction_mean=float(np.mean(reached)) if len(reached) == len(fr) else None,
                       fraction_std=float(np.std(reached)) if len(reached) == len(fr) else None,
                       reached=f"{len(reached)}/{len(fr)}", final_eval_loss=finals,
                       final_mean=float(np.mean(finals)), final_std=float(np.std(finals)),
                       total_flops_fraction=float(np.mean(total)))
  return table


def format_table(table: dict) -> str:
  lines = ["| run | final eval loss (mean ± std) | FLOPs to reach scratch's final loss / scratch's FLOPs | "
           "total FLOPs / scratch's |", "|---|---|---|---|"]
  for name, t in table.items():
    frac = (f"{t['fraction_mean']:.3f} ± {t['fraction_std']:.3f}" if t["fraction_mean"] is not None
            else f"never in {len(t['fraction']) - int(t['reached'].split('/')[0])} of {len(t['fraction'])} seeds")
    per = ", ".join("never" if x is None else f"{x:.3f}" for x in t["fraction"])
    lines.append(f"| {name} | {t['final_mean']:.4f} ± {t['final_std']:.4f} | {frac} ({per}) | "
                 f"{t['total_flops_fraction']:.3f} |")
  return "\n".join(lines)


def plot(runs: dict, path: str, title: str, ylabel: str = "eval loss (nats/byte, held-out plays)") -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for i, (name, by_seed) in enumerate(runs.items()):
    for j, c in enumerate(by_seed.values()):
      ax.plot(c["flops"], c["eval_loss"], color=f"C{i}", alpha=1.0 if j == 0 else 0.35, lw=1.2,
              label=name if j == 0 else None)
  ax.set_xscale("log")
  ax.set_xlabel("cumulative training FLOPs (small phase included)")
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  lo = min(min(c["eval_loss"]) for r in runs.values() for c in r.values())
  ax.set_ylim(lo - 0.05, lo + 1.0)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def configs(preset: str, steps: int = 0, dataset: str = ""):
  """(small Config, large Config, eval_every) of a preset; both with the small width as the muP base."""
  from train import gpt

  p = PRESETS[preset]
  fields = {**gpt.PRESETS[p["cfg"].get("preset", "tiny")], **p["cfg"]}
  if steps:
    fields["steps"] = steps
  every = max(1, fields["steps"] // p["evals"])
  small = gpt.Config(**{**fields, "width": p["small"], "base_width": p["small"], "eval_every": every,
                        "log_every": every, "dataset": dataset or gpt.Config.dataset})
  large = dataclasses.replace(small, width=p["large"], heads=small.heads * p["large"] // p["small"],
                              kv_heads=small.kv_heads * p["large"] // p["small"])
  gpt.validate(large)
  return small, large, every


def study(preset: str = "cpu", seeds=None, lrs=None, variants: str = DEFAULT_VARIANTS, out: str = "growth_study",
          steps: int = 0, dataset: str = "", log=print, workers: int = 1) -> dict:
  """Run the study; writes out/results.json, out/growth.png, out/runs/*.jsonl; returns the results."""
  import jax
  from train import gpt

  p, t0 = PRESETS[preset], time.perf_counter()
  seeds, lrs = list(seeds or p["seeds"]), list(lrs or p["lrs"])
  specs = [v.strip() for v in variants.split(";") if v.strip()]
  parsed = {("grown_" + s.replace("=", "").replace(",", "_")): parse_variant(s) for s in specs}
  small, large, every = configs(preset, steps, dataset)
  for v in parsed.values():
    gpt.validate(variant_config(small, v, large.width))  # every bad flag fails before the first run
  os.makedirs(out, exist_ok=True)
  runs: dict = {"scratch": {}, "small": {}, **{k: {} for k in parsed}}
  models = (("scratch", large), ("small", small))
  # 1. the lr sweeps, on the first seed: the scratch and the small model each get their best lr
  jobs = [(dataclasses.replace(cfg, seed=seeds[0], lr=x), f"{name}_lr{x:g}_s{seeds[0]}") for name, cfg in models
          for x in lrs]
  done = dict(zip([j[1] for j in jobs], _train_all(jobs, out, log, workers)))
  lr, sweeps = {}, {}
  for name, _ in models:
    sweeps[name] = {f"{x:g}": done[f"{name}_lr{x:g}_s{seeds[0]}"]["eval_loss"][-1] for x in lrs}
    lr[name] = min(lrs, key=lambda x: sweeps[name][f"{x:g}"])
    runs[name][seeds[0]] = done[f"{name}_lr{lr[name]:g}_s{seeds[0]}"]
    log(f"growth: {name}: lr sweep {sweeps[name]} -> lr {lr[name]:g}")
  # 2. the other seeds at those lrs, and every grown variant (the small model's lr) on every seed
  jobs = [(dataclasses.replace(cfg, seed=s, lr=lr[name]), (name, s)) for s in seeds[1:] for name, cfg in models]
  jobs += [(variant_config(dataclasses.replace(small, seed=s, lr=lr["small"]), v, large.width), (name, s))
           for s in seeds for name, v in parsed.items()]
  for (_, (name, s)), c in zip(jobs, _train_all([(cfg, f"{n}_s{s}") for cfg, (n, s) in jobs], out, log, workers)):
    runs[name][s] = c
  table = summarize(runs, seeds, list(parsed))
  result = dict(preset=preset, dataset=small.dataset, steps=small.steps, eval_every=every, seeds=seeds, lrs=lrs,
                lr=lr, sweeps=sweeps, variants=dict(zip(parsed, specs)), small=dataclasses.asdict(small),
                large=dataclasses.asdict(large), table=table, device=jax.devices()[0].device_kind,
                wall_s=time.perf_counter() - t0, curves={k: {str(s): c for s, c in r.items()} for k, r in runs.items()})
  title = (f"{preset}: {small.style} depth {small.depth}, width {small.width} -> {large.width}, {small.steps} steps "
           f"x {small.batch_size * small.seq_len} tokens, {small.dataset}; seeds {seeds}")
  return write_study(out, result, runs, title, log)


def write_study(out: str, result: dict, runs: dict, title: str, log, ylabel: str | None = None) -> dict:
  """A finished study's results.json, growth.png and table (logged); returns `result`."""
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(result, f, indent=1)
  plot(runs, os.path.join(out, "growth.png"), title, **({} if ylabel is None else {"ylabel": ylabel}))
  log(format_table(result["table"]))
  return result


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m benchmarks.growth", description=__doc__.split("\n")[0])
  ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
  ap.add_argument("--smoke", action="store_true", help="the smoke preset: a few seconds (tests)")
  ap.add_argument("--seeds", default="", help="comma-separated seeds (default: the preset's, 3)")
  ap.add_argument("--lrs", default="", help="comma-separated peak lrs of the sweeps (default: the preset's)")
  ap.add_argument("--variants", default=DEFAULT_VARIANTS,
                  help=f"grown variants separated by ';', each KNOB=VALUE,... with KNOB in {sorted(KNOBS)} "
                       "(at: fraction of its steps trained small; len: its steps as a fraction of the budget "
                       "(its lr schedule ends there); r1/r2: random/norm rate; warmup: "
                       "--grow-warmup steps; opt: --grow-opt; base: muP base width; to: grown width; from: small width "
                       "(muP base = it unless base is given); "
                       f"split/cancel: symmetry breaking). Default {DEFAULT_VARIANTS!r}")
  ap.add_argument("--steps", type=int, default=0, help="training steps of every run (default: the preset's)")
  ap.add_argument("--dataset", default="", help="train.gpt dataset (default: train.gpt's)")
  ap.add_argument("--out", default="growth_study", help="output directory (default growth_study)")
  ap.add_argument("--workers", type=int, default=1, help="runs at once, each in its own process (default 1)")
  a = ap.parse_args(argv)
  try:
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    lrs = [float(s) for s in a.lrs.split(",") if s.strip()]
  except ValueError as e:
    print(f"{ap.prog}: error: --seeds and --lrs take comma-separated numbers ({e})", file=sys.stderr)
    return 2
  try:
    import jax
    if a.smoke:  # tiny programs: XLA's optimizations cost more than they save
      jax.config.update("jax_disable_most_optimizations", True)
    elif not jax.config.values.get("jax_compilation_cache_dir"):  # seeds repeat each run's programs
      cache = os.path.join(tempfile.gettempdir(), "rcjax_growth_jax_cache")
      os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", cache)  # --workers' processes read these
      os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
      jax.config.update("jax_compilation_cache_dir", cache)
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    study("smoke" if a.smoke else a.preset, seeds, lrs, a.variants, a.out, a.steps, a.dataset, workers=a.workers)
  except (ValueError, RuntimeError) as e:
    print(f"{ap.prog}: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
