"""Reproduce the paper's MLP figures (4.1 and 4.3) with train.mlp: run the grid, then draw from metrics files.

    python -m train.mlp_sweep fig41  --dataset digits --out runs/digits      # Figure 4.1, N=300
    python -m train.mlp_sweep fig43a --dataset digits --out runs/digits      # 4.3 (a)/(d): init distributions
    python -m train.mlp_sweep fig43b --dataset digits --out runs/digits      # 4.3 (b)/(e): N=100 -> 1000
    python -m train.mlp_sweep fig43c --dataset digits --out runs/digits      # 4.3 (c)/(f): N=1000 -> 100
    python -m train.mlp_sweep fig43b --out runs/cifar                        # the same on CIFAR-10
    python -m train.mlp_sweep fig43b --out runs/digits --plot-only           # redraw, no training

Every run is a train.mlp run directory under --out (e.g. `n100`, `n1000`, `n100_to_n1000_r1=0.1_r2=0.01`);
runs already complete are not retrained (train.mlp resumes them), so a figure is redrawn in seconds, and
figures sharing a run (n100, n1000) share its directory. Each command writes its PNG into --out and
prints (and saves as JSON) the numbers the figure shows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from train import mlp

# Default SGD learning rate when --lr is not given. CIFAR-10: the paper's eta = 0.1 for every
# parametrization. Digits has 22 SGD steps per epoch (CIFAR-10: 781): at 0.1 mean-field training sits on
# its initial plateau for ~15 digits epochs (N=100: test accuracy 0.33 after 20 epochs), so mf uses 1.0 on
# digits (0.95 after 20 epochs); sp/muP stay at 0.1 (0.96 after 20 epochs; at 1.0 muP/SP with Gaussian init
# diverge to NaN in epoch 1 at N=300).
DEFAULT_LR = {("cifar10", p): 0.1 for p in mlp.PARAMS} | {("digits", p): 0.1 for p in mlp.PARAMS} | {
    ("digits", "mf"): 1.0}
FIG41_INIT = {"sp": "uniform", "mf": "uniform", "mup": "gaussian"}  # as in the paper's Figure 4.1


def _name(width: int) -> str:
  return f"n{width}"


def _xs(args) -> tuple[str, ...]:
  """The x axes drawn: epochs and FLOPs by default (growth multiplies the FLOPs per epoch), else --x."""
  return ("epoch", "flops") if args.x == "epoch" else (args.x,)


def _run(args, name: str, **kw) -> list[dict]:
  out = Path(args.out) / name
  if args.plot_only:
    lines = mlp.read_metrics(out / "metrics.jsonl")
    if not lines:
      raise FileNotFoundError(f"--plot-only: no metrics in {out}; run without --plot-only first")
    return lines
  config = dataclasses.replace(args.base_config, out=str(out), **kw)
  config = dataclasses.replace(config, lr=args.lr or DEFAULT_LR[config.dataset, config.param])
  print(f"== {name}", file=sys.stderr)
  return mlp.run(config)


def _transfer_summary(lines: list[dict], scratch: list[dict]) -> dict:
  """Numbers read off a transferred run's metrics and its from-scratch baseline at the target width."""
  i = next(k for k, m in enumerate(lines) if m.get("event") == "transfer")
  before, after, last, ref = lines[i - 1], lines[i], lines[-1], scratch[-1]
  reach = next((m for m in lines[i:] if m["train_loss"] <= ref["train_loss"]), None)
  scratch_reach = next((m for m in scratch if m["train_loss"] <= last["train_loss"]), None)
  return {
      "train_loss_before": before["train_loss"], "train_loss_after": after["train_loss"],
      "test_loss_before": before["test_loss"], "test_loss_after": after["test_loss"],
      "final_test_acc": last["test_acc"], "scratch_final_test_acc": ref["test_acc"],
      "final_train_loss": last["train_loss"], "scratch_final_train_loss": ref["train_loss"],
      "flops_vs_scratch": last["flops"] / ref["flops"],
      "epoch_reaching_scratch_loss": None if reach is None else reach["epoch"],
      "flops_to_scratch_loss_vs_scratch": None if reach is None else reach["flops"] / ref["flops"],
      # FLOPs of the transferred run / FLOPs scratch spent to first reach the transferred run's final loss
      "flops_vs_scratch_at_equal_loss": None if scratch_reach is None or not scratch_reach["flops"]
                                        else last["flops"] / scratch_reach["flops"],
  }


def _save_summary(args, name: str, summary: dict) -> None:
  path = Path(args.out) / f"{name}.json"
  path.write_text(json.dumps(summary, indent=2) + "\n")
  for run, numbers in summary.items():
    print(run, " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in numbers.items()))
  print(f"wrote {path}")


def fig43_transfer(args, source_width: int, target_width: int, tag: str) -> None:
  """Figure 4.3 (b)/(e) (grow) or (c)/(f) (shrink): transfer at --transfer-epoch over the r1 x r2 grid."""
  from rcjax import plots_column

  source = _run(args, _name(source_width), width=source_width)
  scratch = _run(args, _name(target_width), width=target_width)
  runs = {f"N={source_width} (source)": source, f"N={target_width} from scratch": scratch}
  # The source drawn last, on top: an r1 = r2 = 0 growth continues it exactly (transfer commutes with training).
  styles = {f"N={source_width} (source)": {"color": "0.4", "linestyle": "--", "zorder": 5},
            f"N={target_width} from scratch": {"color": "k", "linewidth": 2}}
  summary = {}
  for r1 in args.r1:
    for r2 in args.r2:
      name = f"{_name(source_width)}_to_{_name(target_width)}_r1={r1:g}_r2={r2:g}"
      lines = _run(args, name, width=target_width, transfer_from=str(Path(args.out) / _name(source_width)),
                   transfer_epoch=args.transfer_epoch, random_rate=r1, norm_rate=r2)
      runs[f"r1={r1:g}, r2={r2:g}"] = lines
      summary[name] = _transfer_summary(lines, scratch)
  title = (f"{args.base_config.dataset}: transfer N={source_width} -> N={target_width}\nat epoch "
           f"{args.transfer_epoch} ({args.base_config.param}, lr {args.base_config.lr:g})")
  for x in _xs(args):
    fig = plots_column.curves(runs, x=x, title=title, styles=styles)
    print("wrote", plots_column.save(fig, Path(args.out) / f"fig4_3_{tag}{'' if x == 'epoch' else '_' + x}.png"))
  _save_summary(args, f"fig4_3_{tag}", summary)
  return runs, summary, styles


def fig43a(args) -> None:
  """Figure 4.3 (a)/(d): training loss and test accuracy for different init distributions."""
  from rcjax import plots_column

  default = mlp.Config().init  # that run is fig43b/c's n{large}: share it
  runs = {init: _run(args, _name(args.large) if init == default else f"{_name(args.large)}_init={init}",
                     width=args.large, init=init) for init in args.inits}
  title = f"{args.base_config.dataset}: N={args.large}, init distributions ({args.base_config.param})"
  for x in _xs(args):
    print("wrote", plots_column.save(plots_column.curves(runs, x=x, title=title),
                                     Path(args.out) / f"fig4_3_ad{'' if x == 'epoch' else '_' + x}.png"))
  summary = {k: {"final_train_loss": v[-1]["train_loss"], "final_test_acc": v[-1]["test_acc"]} for k, v in runs.items()}
  _save_summary(args, "fig4_3_ad", summary)
  return runs, summary, {}


def ordered_normalised(w: np.ndarray) -> np.ndarray:
  """`(W - mean) / std`, rows sorted by row mean and columns by column mean (neuron statistics), so an
  RC structure (entries depending on their row and column neuron) shows as smooth gradients."""
  w = (w - w.mean()) / (w.std() + 1e-12)
  return w[np.argsort(w.mean(axis=1))][:, np.argsort(w.mean(axis=0))]


def fig41(args) -> None:
  """Figure 4.1: the middle-layer weight matrix (Dense_1, N x N) of sp, mf and mup at N=--width, at init
  and after --epochs epochs, normalised and ordered."""
  from rcjax import plots_column
  from rcjax.checkpoint import Checkpointer

  grid, numbers = [[], []], {}
  # muP at its base width is SP exactly: its run gets base --base, or --small (100), not N.
  if (args.base or args.small) == args.width:
    raise ValueError(f"fig41: muP with base {args.width} = N would be SP; give --base another width")
  for param in ("sp", "mf", "mup"):
    base = (args.base or args.small) if param == "mup" else 0
    name = f"fig41_{param}_{_name(args.width)}" + (f"_base{base}" if base else "")
    _run(args, name, width=args.width, param=param, init=FIG41_INIT[param], base=base)
    ckpt = Checkpointer(Path(args.out) / name / "checkpoints", read_only=True)
    last = ckpt.latest_step()
    w0, w1 = (np.asarray(ckpt.restore(step)["params"]["Dense_1"]["kernel"].value) for step in (0, last))
    live, numbers[param] = unchanged_columns(w0, w1)
    lr = args.lr or DEFAULT_LR[args.base_config.dataset, param]
    what = f"{param}" + (f" (base {base})" if base else "") + f"\n{FIG41_INIT[param]}, lr {lr:g}"
    grid[0].append((f"{what}\ninit", ordered_normalised(w0)))
    grid[1].append((f"epoch {last}\n{live.sum()} of {live.size} live", ordered_normalised(w1[:, live])))
  title = (f"{args.base_config.dataset}: middle layer, N={args.width}, (W - mean) / std,\nrows and columns sorted "
           "by mean; trained: never-changed\ncolumns (hidden_1 neurons) excluded")
  print("wrote", plots_column.save(plots_column.heatmaps(grid, title=title), Path(args.out) / "fig4_1.png"))
  _save_summary(args, "fig4_1", numbers)
  return numbers


def unchanged_columns(w0: np.ndarray, w1: np.ndarray, tol: float = 1e-6) -> tuple[np.ndarray, dict]:
  """The columns of a kernel (its fan-out neurons) that changed in training (a boolean mask: False =
  no entry moved by more than `tol`, e.g. a ReLU dead on every example) and the numbers Figure 4.1 shows."""
  moved = np.abs(w1 - w0).max(axis=0)
  live = moved > tol
  return live, {"neurons": int(live.size), "unchanged_neurons": int((~live).sum()),
                "frac_columns_moved_below_0.1": float((moved < 0.1).mean()),
                "std_init": float(w0.std()), "std_trained_live": float(w1[:, live].std()) if live.any() else None}


def _figure43(args):
  if args.figure == "fig43a":
    return "fig4_3_ad", *fig43a(args)
  if args.figure == "fig43b":
    return "fig4_3_be", *fig43_transfer(args, args.small, args.large, "be")
  return "fig4_3_cf", *fig43_transfer(args, args.large, args.small, "cf")


def per_seed(args, one) -> list:
  """`one(args)` once per seed of --seeds, each with its own --out/seed{S} and config seed; the results."""
  out, results = Path(args.out), []
  for seed in args.seeds:
    args.out, args.seed = str(out / f"seed{seed}"), seed
    if getattr(args, "base_config", None) is not None:
      args.base_config = dataclasses.replace(args.base_config, seed=seed)
    results.append(one(args))
  args.out = str(out)
  return results


def over_seeds(args) -> None:
  """A figure once per seed of --seeds (each in --out/seed{S}), then mean and spread of its numbers
  (`rcjax.figures.seed_summary`) in {name}_seeds.json; Figure 4.3 also draws mean and min..max bands."""
  from rcjax import plots_column
  from rcjax.figures import seed_summary

  out = Path(args.out)
  if args.figure == "fig41":
    results = [("fig4_1", None, numbers, {}) for numbers in per_seed(args, fig41)]
  else:
    results = per_seed(args, _figure43)
  name, styles = results[0][0], results[0][3]
  summary = seed_summary([s[2] for s in results])
  (out / f"{name}_seeds.json").write_text(json.dumps({"seeds": args.seeds, "runs": summary}, indent=1) + "\n")
  for run, numbers in summary.items():
    print(run, " ".join(f"{k}={v['mean']:.4g}+-{v['std']:.2g}" for k, v in numbers.items() if v["n"]))
  if args.figure == "fig41":
    return
  title = f"{args.base_config.dataset}: {name}\nmean and min..max over seeds {args.seeds}"
  for x in _xs(args):
    fig = plots_column.curves([s[1] for s in results], x=x, title=title, styles=styles, bands=True)
    print("wrote", plots_column.save(fig, out / f"{name}_seeds{'' if x == 'epoch' else '_' + x}.png"))


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m train.mlp_sweep", description=__doc__.split("\n")[0],
                              formatter_class=mlp.HelpFormatter)
  p.add_argument("figure", choices=("fig41", "fig43a", "fig43b", "fig43c"))
  p.add_argument("--out", required=True, help="folder of the sweep's run directories and PNGs")
  p.add_argument("--dataset", default="cifar10", choices=("cifar10", "digits"))
  p.add_argument("--data-dir", default=None, help="TFDS data directory")
  p.add_argument("--param", default="mf", choices=mlp.PARAMS, help="parametrization (fig43*)")
  p.add_argument("--lr", type=float, default=None, help="SGD lr (default: 0.1, the paper's; on digits 1.0 "
                 "for mf, see DEFAULT_LR)")
  p.add_argument("--epochs", type=int, default=10)
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--seeds", type=int, nargs="+", default=None, help="run the figure once per seed "
                 "(in --out/seed{S}/): mean and spread of its numbers in _seeds.json (fig43*: and min..max bands)")
  p.add_argument("--base", type=int, default=0, help="muP base width of every run (0: --small, so all widths "
                 "share one base; muP at its base width is SP)")
  p.add_argument("--width", type=int, default=300, help="fig41: hidden width")
  p.add_argument("--small", type=int, default=100, help="fig43b/c: the small width")
  p.add_argument("--large", type=int, default=1000, help="fig43a/b/c: the large width")
  p.add_argument("--transfer-epoch", type=int, default=4)
  p.add_argument("--r1", type=float, nargs="+", default=[0.0, 0.1, 0.5], help="random rates")
  p.add_argument("--r2", type=float, nargs="+", default=[0.0, 0.01, 0.1], help="norm rates")
  p.add_argument("--inits", nargs="+", default=["uniform", "gaussian", "normal:1,3"], help="fig43a inits")
  p.add_argument("--x", default="epoch", choices=("epoch", "step", "flops"), help="x axis of the curves (epoch: "
                 "draws both epoch and flops figures)")
  p.add_argument("--plot-only", action="store_true", help="draw from existing metrics files, train nothing")
  p.add_argument("--no-progress", dest="progress", action="store_false")
  return p


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  mlp.quiet_logs()
  base = (args.base or args.small) if args.param == "mup" else args.base  # one base for every width
  args.base_config = mlp.Config(dataset=args.dataset, data_dir=args.data_dir, param=args.param,
                                lr=args.lr or DEFAULT_LR[args.dataset, args.param], epochs=args.epochs,
                                batch_size=args.batch_size, seed=args.seed, base=base,
                                progress=args.progress)
  try:
    if args.figure in ("fig43b", "fig43c"):  # before any run trains: the transfers' flags and folders
      source, target = (args.small, args.large) if args.figure == "fig43b" else (args.large, args.small)
      for r1 in args.r1:
        for r2 in args.r2:
          config = dataclasses.replace(args.base_config, transfer_from=str(Path(args.out) / _name(source)),
                                       random_rate=r1, norm_rate=r2, transfer_epoch=args.transfer_epoch,
                                       width=target)
          config = dataclasses.replace(config, lr=args.lr or DEFAULT_LR[config.dataset, config.param])
          mlp.validate(config)
          for seed in args.seeds or [None]:
            root = Path(args.out) if seed is None else Path(args.out) / f"seed{seed}"
            out = root / f"{_name(source)}_to_{_name(target)}_r1={r1:g}_r2={r2:g}"
            c = config if seed is None else dataclasses.replace(config, seed=seed, transfer_from=str(root / _name(source)))
            if not args.plot_only:
              mlp.check_out_dir(out, dataclasses.replace(c, out=str(out)))
    if args.seeds:
      over_seeds(args)
    elif args.figure == "fig41":
      fig41(args)
    else:
      _figure43(args)
  except (ValueError, FileNotFoundError, mlp.data_lib.DataUnavailable, mlp.TrainingDiverged) as e:
    print(f"train.mlp_sweep: error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
