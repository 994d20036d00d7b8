"""The paper's MLP figures 4.2 and 4.5 from train.mlp runs, offline on digits: train, then draw with rcjax.analyze.

    python -m train.mlp_figures fig42 --out runs/figs            # Figure 4.2: 7-layer MFNN, N=1000, 3 bias settings
    python -m train.mlp_figures fig45 --out runs/figs            # Figure 4.5 (MLP): row means, N=256 vs 1024, N(1,3)
    python -m train.mlp_figures fig42 --out /tmp/smoke --smoke   # tiny widths, 1 epoch: checks the pipeline
    python -m train.mlp_figures fig42 --out runs/seeds --seeds 0 1 2   # mean and spread over 3 seeds

Each writes its figure as PNG and PDF, a JSON with the numbers it shows (`fig42/corr.json` and
`fig42/training.json`; `fig45/compare.json` and `fig45/training.json`) and prints the key numbers. Runs
already complete are not retrained (train.mlp resumes them).

Figure 4.2 differs from the paper's setting: the hidden kernels start from `--hidden-init lowrank:16`
(train/mlp_deep.py) and lr is 0.05, because with the paper's i.i.d. init the 7-layer mean-field MLP
stays at chance at every lr tried (docs/train-mlp.md); and the data is digits, not CIFAR-10. Figure 4.5
in the paper is on GPT MLP weights (N x 4N) over 32k steps; here it is the hidden kernels of the 3-layer
mean-field MLP (N x N) over epochs, with the paper's N(1, 3) init.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rcjax import _cli
from train import mlp

FIG42 = dict(depth=7, hidden_init="lowrank:16", lr=0.05)  # the 7-layer MFNN that learns (docs/train-mlp.md)
FIG42_BIASES = {"trainable": "(a) non-constant trainable bias", "constant": "(b) constant trainable bias",
                "none": "(c) no bias"}


def _train(args, name: str, **kw) -> list[dict]:
  config = mlp.Config(dataset=args.dataset, epochs=args.epochs, seed=args.seed, progress=False,
                      out=str(Path(args.out) / name), **kw)
  print(f"== {name}", file=sys.stderr)
  return mlp.run(config)


def _final(lines: list[dict]) -> dict:
  m = lines[-1]
  return {k: m[k] for k in ("epoch", "train_loss", "test_loss", "test_acc", "flops")}


def fig42(args) -> dict:
  """Train the three 7-layer MFNNs and draw their correlation matrices (rcjax.analyze corr); with --seeds,
  once per seed (--out/seed{S}/) and the mean and spread of the numbers in --out/fig42_seeds.json."""
  from rcjax import figures
  from train.mlp_sweep import per_seed

  if args.seeds:
    summary = figures.seed_summary(per_seed(args, lambda a: fig42(argparse.Namespace(**{**vars(a), "seeds": None}))))
    _write_seeds(args, "fig42", summary)
    return {run: {f"{k}_mean": v["mean"] for k, v in n.items() if v["n"]} for run, n in summary.items()}

  names = {b: f"fig42_{b}_n{args.width}" for b in FIG42_BIASES}
  training = {b: _final(_train(args, names[b], width=args.width, bias=b, **FIG42)) for b in FIG42_BIASES}
  out = Path(args.out) / "fig42"
  corr = figures.figure_corr([str(Path(args.out) / names[b]) for b in FIG42_BIASES], str(out),
                             labels=list(FIG42_BIASES.values()), permutations=args.permutations)
  summary = {FIG42_BIASES[b]: {**training[b], "max_abs_corr": corr[FIG42_BIASES[b]]["max_abs_corr"],
                               "frac_above_null_q99": corr[FIG42_BIASES[b]]["frac_above_null_q99"]}
             for b in FIG42_BIASES}
  (out / "training.json").write_text(json.dumps({"config": {**FIG42, "width": args.width, "epochs": args.epochs,
                                                            "dataset": args.dataset}, "runs": summary}, indent=1))
  return summary


def _write_seeds(args, name: str, summary: dict) -> None:
  path = Path(args.out) / f"{name}_seeds.json"
  path.write_text(json.dumps({"seeds": args.seeds, "runs": summary}, indent=1) + "\n")
  print(f"wrote {path}", file=sys.stderr)


def fig45(args) -> dict:
  """Train mean-field MLPs at two widths with N(1, 3) init; draw their row-mean distributions over epochs
  (rcjax.analyze compare); with --seeds, the runs of each seed in --out/seed{S}/, the distances over the
  seeds in fig45/compare_seeds.json and the training numbers in --out/fig45_seeds.json."""
  from rcjax import figures
  from train.mlp_sweep import per_seed

  kw = dict(init="normal:1,3", lr=mlp.DIGITS_MF_LR if args.dataset == "digits" else 0.1)
  names = {w: f"fig45_n{w}_normal13" for w in (args.small, args.large)}
  train = lambda a: {f"N={w}": _final(_train(a, names[w], width=w, **kw)) for w in names}
  roots = [Path(args.out) / f"seed{s}" for s in args.seeds] if args.seeds else [Path(args.out)]
  training = figures.seed_summary(per_seed(args, train)) if args.seeds else train(args)
  out = Path(args.out) / "fig45"
  pairs = [(str(r / names[args.small]), str(r / names[args.large])) for r in roots]
  result = figures.figure_compare(*pairs[0], str(out), labels=[f"N={args.small}", f"N={args.large}"],
                                  permutations=args.permutations, more=pairs[1:])
  (out / "training.json").write_text(json.dumps({"config": {**kw, "epochs": args.epochs, "dataset": args.dataset},
                                                 "seeds": args.seeds, "runs": training}, indent=1))
  if args.seeds:
    return {f"epoch {r['step']} {r['unit']}": {f"{k}_mean": r[k]["mean"] for k in ("w1", "w1_null_q95", "reference")}
            | {"seeds_above_null": r["pairs_above_null"]} for r in result["seeds"]["rows"]}
  return {f"epoch {r['step']} {r['unit']}": {k: r[k] for k in ("w1", "w1_null_q95", "reference")}
          for r in result["rows"]}


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m train.mlp_figures", description=__doc__.split("\n")[0],
                              formatter_class=mlp.HelpFormatter)
  p.add_argument("figure", choices=("fig42", "fig45"))
  p.add_argument("--out", required=True, help="folder of the run directories and of fig42/ or fig45/")
  p.add_argument("--dataset", default="digits", choices=("digits", "cifar10"))
  p.add_argument("--width", type=int, default=1000, help="fig42: hidden width")
  p.add_argument("--small", type=int, default=256, help="fig45: the small width")
  p.add_argument("--large", type=int, default=1024, help="fig45: the large width")
  p.add_argument("--epochs", type=int, default=10)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--seeds", type=int, nargs="+", default=None, help="run the figure once per seed (--out/seed{S}/): "
                 "the figure of the first seed, mean and spread of the numbers over all (*_seeds.json)")
  p.add_argument("--permutations", type=int, default=200, help="permutations of the nulls")
  p.add_argument("--smoke", action="store_true", help="tiny: widths 16/32, 1 epoch, 20 permutations")
  return p


def _main(argv) -> int:
  args = parser().parse_args(argv)
  if args.smoke:
    args.width, args.small, args.large, args.epochs, args.permutations = 16, 16, 32, 1, 20
  mlp.quiet_logs()
  t0 = time.time()
  summary = {"fig42": fig42, "fig45": fig45}[args.figure](args)
  for name, numbers in summary.items():
    print(name, " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in numbers.items()))
  where = Path(args.out) / (f"seed{args.seeds[0]}/fig42" if args.seeds and args.figure == "fig42" else args.figure)
  print(f"wrote {where}/ ({time.time() - t0:.0f} s)")
  return 0


def main(argv=None) -> int:
  """The command line: bad input exits 2, runtime failures 1, with one line `train.mlp_figures: error: ...`."""
  return _cli.run("train.mlp_figures", _main, argv)


if __name__ == "__main__":
  sys.exit(main())
