"""python -m benchmarks.growth_mlp: the MLP twin of benchmarks.growth: does growing a train.mlp run save compute?

    python -m benchmarks.growth_mlp --workers 2        # the CPU study: teacher-student, width 32 -> 64, 3 seeds
    python -m benchmarks.growth_mlp --smoke            # seconds: the harness end to end (a test runs it)
    python -m benchmarks.growth_mlp --large 128 --variants "at=0.25,cancel=2.0"   # 4x growth, 32 -> 128
    python -m benchmarks.growth_mlp --variants "at=0.25;at=0.25,cancel=1.0" --seeds 0 --lrs 0.1   # screen

For one width pair and epoch budget it trains, with the same seeds, data order and test set: (a) the large
MLP from scratch, (b) the small MLP alone, (c) grown variants: the large width transferred from the small
run's checkpoint at a fraction `at` of the epochs (`train.mlp --transfer-from --transfer-epoch`, an exact
2x growth with the stratified sampler) and trained on to the same epoch budget. The scratch and the small
model each get their own best lr from a sweep on the first seed (final test loss); the grown runs use the
small model's lr untuned (muP with base = the small width for every run keeps it right across growth).
Headline (as in benchmarks.growth): the training FLOPs a grown run needs to first reach the scratch run's
final test loss (evaluated every epoch), as a fraction of the scratch run's FLOPs, per seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time

from benchmarks.growth import summarize, write_study

# `small` grows to `large`; `cfg`: train.mlp Config fields of every run
PRESETS = {
    "cpu": dict(small=32, large=64, cfg=dict(param="mup", dataset="teacher", epochs=12, batch_size=128),
                lrs=(0.03, 0.1, 0.3), seeds=(0, 1, 2)),
    "smoke": dict(small=8, large=16, cfg=dict(param="mup", dataset="digits", epochs=4, batch_size=256),
                  lrs=(0.3,), seeds=(0, 1)),
}
DEFAULT_VARIANTS = "at=0.25;at=0.25,cancel=2.0"
KNOBS = {"at": float, "r1": float, "r2": float, "split": float, "cancel": float}
FIELDS = {"r1": "random_rate", "r2": "norm_rate", "split": "split_rate", "cancel": "cancel_rate"}


def parse_variant(spec: str) -> dict:
  """'at=0.25,cancel=2.0' -> {'at': 0.25, 'cancel': 2.0}; `at` (fraction of the epochs trained small) needed."""
  out = {}
  for item in filter(None, spec.split(",")):
    k, eq, v = item.partition("=")
    if not eq or k not in KNOBS:
      raise ValueError(f"variant {spec!r}: expected KNOB=VALUE with KNOB one of {sorted(KNOBS)}, got {item!r}")
    try:
      out[k] = KNOBS[k](v)
    except ValueError:
      raise ValueError(f"variant {spec!r}: {k} must be a {KNOBS[k].__name__}, got {v!r}") from None
  if not 0 < out.get("at", -1) < 1:
    raise ValueError(f"variant {spec!r}: needs at=F, the fraction of the epochs trained small, in (0, 1)")
  return out


def variant_config(small, variant: dict, large: int, source: str):
  """The train.mlp Config of a grown run: `large` wide, transferred from the small run in `source`."""
  epoch = max(1, round(variant["at"] * small.epochs))
  if epoch >= small.epochs:
    raise ValueError(f"variant at={variant['at']}: growth at epoch {epoch} leaves no epoch of {small.epochs}")
  return dataclasses.replace(small, width=large, transfer_from=source, transfer_epoch=epoch,
                             **{FIELDS[k]: v for k, v in variant.items() if k in FIELDS})


def curve(lines: list[dict]) -> dict:
  """A run's test curve (every epoch, the transfer line included) and its growth record: the test loss of
  the small model at the growth epoch and of the grown model right after it (equal: an exact growth)."""
  i = next((i for i, m in enumerate(lines) if m.get("event") == "transfer"), None)
  grow = None if i is None else dict(epoch=lines[i]["epoch"], loss_before=lines[i - 1]["test_loss"],
                                     loss_after=lines[i]["test_loss"])
  return dict(epoch=[m["epoch"] for m in lines], flops=[m["flops"] for m in lines],
              eval_loss=[m["test_loss"] for m in lines], test_acc=[m["test_acc"] for m in lines], grow=grow)


def train(cfg, name: str, out: str, log=print) -> dict:
  """Run train.mlp in-process into cfg.out (kept: grown runs transfer from it); copy its metrics.jsonl to
  out/runs/NAME.jsonl."""
  import warnings

  from train import mlp

  t0 = time.perf_counter()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
      lines = mlp.run(dataclasses.replace(cfg, progress=False, plot=False))
    except mlp.TrainingDiverged as e:  # an lr of the sweep too large: it loses the sweep
      log(f"growth_mlp: {name}: diverged ({e})")
      return dict(epoch=[0], flops=[0], eval_loss=[float("inf")], test_acc=[0.0], grow=None, name=name,
                  lr=cfg.lr, seed=cfg.seed, wall_s=time.perf_counter() - t0)
  os.makedirs(os.path.join(out, "runs"), exist_ok=True)
  shutil.copy(os.path.join(cfg.out, "metrics.jsonl"), os.path.join(out, "runs", name + ".jsonl"))
  c = curve(lines)
  c.update(name=name, lr=cfg.lr, seed=cfg.seed, wall_s=time.perf_counter() - t0)
  log(f"growth_mlp: {name}: final test loss {c['eval_loss'][-1]:.4f} (acc {c['test_acc'][-1]:.4f}), "
      f"{c['flops'][-1]:.3g} FLOPs, {c['wall_s']:.0f} s" + (
          f" (grow: test loss {c['grow']['loss_before']:.6f} -> {c['grow']['loss_after']:.6f})" if c["grow"] else ""))
  return c


def _train_all(jobs: list, out: str, log, workers: int) -> list[dict]:
  """`train(cfg, name, out)` for each (cfg, name), in `workers` processes if > 1 (runs are deterministic)."""
  if workers <= 1:
    return [train(cfg, name, out, log) for cfg, name in jobs]
  import concurrent.futures
  import multiprocessing

  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
    return list(ex.map(train, *zip(*[(cfg, name, out) for cfg, name in jobs])))


def configs(preset: str, small_width: int = 0, large_width: int = 0, epochs: int = 0):
  """(small Config, large Config) of a preset; muP with the small width as the base of both."""
  from train import mlp

  p = PRESETS[preset]
  small_w, large_w = small_width or p["small"], large_width or p["large"]
  if not 0 < small_w < large_w:
    raise ValueError(f"--small {small_w} must be positive and below --large {large_w}")
  cfg = dict(p["cfg"], **({"epochs": epochs} if epochs else {}))
  small = mlp.Config(**cfg, width=small_w, base=small_w)
  large = dataclasses.replace(small, width=large_w)
  mlp.validate(large)
  return small, large


def study(preset: str = "cpu", seeds=None, lrs=None, variants: str = DEFAULT_VARIANTS, out: str = "growth_mlp",
          small_width: int = 0, large_width: int = 0, epochs: int = 0, log=print, workers: int = 1) -> dict:
  """Run the study; writes out/results.json, out/growth.png, out/runs/*.jsonl; returns the results."""
  p, t0 = PRESETS[preset], time.perf_counter()
  seeds, lrs = list(seeds or p["seeds"]), list(lrs or p["lrs"])
  specs = [v.strip() for v in variants.split(";") if v.strip()]
  parsed = {("grown_" + s.replace("=", "").replace(",", "_")): parse_variant(s) for s in specs}
  small, large = configs(preset, small_width, large_width, epochs)
  for v in parsed.values():
    variant_config(small, v, large.width, "")  # a bad variant fails before the first run
  os.makedirs(out, exist_ok=True)
  runs: dict = {"scratch": {}, "small": {}, **{k: {} for k in parsed}}
  models = (("scratch", large), ("small", small))
  with tempfile.TemporaryDirectory() as tmp:
    at = lambda name: os.path.join(tmp, name)
    # 1. the lr sweeps, on the first seed: the scratch and the small model each get their best lr
    jobs = [(dataclasses.replace(cfg, seed=seeds[0], lr=x, out=at(f"{name}_lr{x:g}_s{seeds[0]}")),
             f"{name}_lr{x:g}_s{seeds[0]}") for name, cfg in models for x in lrs]
    done = dict(zip([j[1] for j in jobs], _train_all(jobs, out, log, workers)))
    lr, sweeps, src = {}, {}, {}
    for name, _ in models:
      sweeps[name] = {f"{x:g}": done[f"{name}_lr{x:g}_s{seeds[0]}"]["eval_loss"][-1] for x in lrs}
      lr[name] = min(lrs, key=lambda x: sweeps[name][f"{x:g}"])
      runs[name][seeds[0]] = done[f"{name}_lr{lr[name]:g}_s{seeds[0]}"]
      log(f"growth_mlp: {name}: lr sweep {sweeps[name]} -> lr {lr[name]:g}")
    src[seeds[0]] = at(f"small_lr{lr['small']:g}_s{seeds[0]}")
    # 2. the other seeds at those lrs; then every grown variant from its seed's small run
    jobs = [(dataclasses.replace(cfg, seed=s, lr=lr[name], out=at(f"{name}_s{s}")), (name, s))
            for s in seeds[1:] for name, cfg in models]
    src.update({s: at(f"small_s{s}") for s in seeds[1:]})
    for (_, (name, s)), c in zip(jobs, _train_all([(cfg, f"{n}_s{s}") for cfg, (n, s) in jobs], out, log, workers)):
      runs[name][s] = c
    jobs = [(dataclasses.replace(variant_config(small, v, large.width, src[s]), seed=s, lr=lr["small"],
                                 out=at(f"{name}_s{s}")), (name, s)) for s in seeds for name, v in parsed.items()]
    for (_, (name, s)), c in zip(jobs, _train_all([(cfg, f"{n}_s{s}") for cfg, (n, s) in jobs], out, log, workers)):
      runs[name][s] = c
  table = summarize(runs, seeds, list(parsed))
  result = dict(preset=preset, dataset=small.dataset, epochs=small.epochs, seeds=seeds, lrs=lrs, lr=lr,
                sweeps=sweeps, variants=dict(zip(parsed, specs)), small=dataclasses.asdict(small),
                large=dataclasses.asdict(large), table=table, wall_s=time.perf_counter() - t0,
                curves={k: {str(s): c for s, c in r.items()} for k, r in runs.items()})
  title = (f"train.mlp {preset}: depth {small.depth}, width {small.width} -> {large.width}, {small.param}, "
           f"{small.epochs} epochs, {small.dataset}; seeds {seeds}")
  return write_study(out, result, runs, title, log, ylabel=f"test loss ({small.dataset})")


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m benchmarks.growth_mlp", description=__doc__.split("\n")[0])
  ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
  ap.add_argument("--smoke", action="store_true", help="the smoke preset: seconds (tests)")
  ap.add_argument("--seeds", default="", help="comma-separated seeds (default: the preset's, 3)")
  ap.add_argument("--lrs", default="", help="comma-separated SGD lrs of the sweeps (default: the preset's)")
  ap.add_argument("--variants", default=DEFAULT_VARIANTS,
                  help=f"grown variants separated by ';', each KNOB=VALUE,... with KNOB in {sorted(KNOBS)} "
                       "(at: fraction of the epochs trained small; r1/r2: random/norm rate; split/cancel: "
                       f"symmetry breaking, docs/symmetry.md). Default {DEFAULT_VARIANTS!r}")
  ap.add_argument("--small", type=int, default=0, help="small width (default: the preset's)")
  ap.add_argument("--large", type=int, default=0, help="large width (default: the preset's)")
  ap.add_argument("--epochs", type=int, default=0, help="epochs of every run (default: the preset's)")
  ap.add_argument("--out", default="growth_mlp", help="output directory (default growth_mlp)")
  ap.add_argument("--workers", type=int, default=1, help="runs at once, each in its own process (default 1)")
  a = ap.parse_args(argv)
  try:
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    lrs = [float(s) for s in a.lrs.split(",") if s.strip()]
  except ValueError as e:
    print(f"{ap.prog}: error: --seeds and --lrs take comma-separated numbers ({e})", file=sys.stderr)
    return 2
  try:
    study("smoke" if a.smoke else a.preset, seeds, lrs, a.variants, a.out, a.small, a.large, a.epochs,
          workers=a.workers)
  except ValueError as e:  # bad input
    print(f"{ap.prog}: error: {e}", file=sys.stderr)
    return 2
  except (RuntimeError, OSError) as e:  # a diverged run, data that cannot be loaded, a full disk
    print(f"{ap.prog}: error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
