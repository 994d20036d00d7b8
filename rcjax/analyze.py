"""RC diagnostics of a checkpoint, and the paper's figures, from the command line.

    python -m rcjax.analyze PATH --out DIR                  # one rcjax run directory or HF checkpoint
    python -m rcjax.analyze corr RUN... --out DIR           # Figure 4.2: correlation matrices side by side
    python -m rcjax.analyze bars PATH... --out DIR          # Figure 4.4: max |corr| per model
    python -m rcjax.analyze compare RUN_A RUN_B --out DIR   # Figure 4.5: row-mean distributions over steps

The figures (corr, bars, compare) are drawn by `rcjax.figures` at one paper column; `rcjax.analysis`
reads checkpoints (`Source`) and computes the statistics of one checkpoint (`analyze`); this module is the
command line.

PATH is an rcjax run directory (`config.json` + `checkpoints/`, read with `rcjax.checkpoint.Checkpointer`)
or a HuggingFace safetensors checkpoint directory (`rcjax.hf`, streamed one block at a time). Bad input
prints one line `rcjax.analyze: error: ...` and exits with status 2, before anything is written; a corrupt
rcjax checkpoint (one that fails its digest) exits 1. A run whose checkpoint has no digest (saved before
rcjax wrote digests) is refused unless `--unverified` is given.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from rcjax import _cli, figures
from rcjax import diagnostics as diag
from rcjax.analysis import Source, UnverifiedRun, analyze, max_abs  # noqa: F401  (the library's names, as before)


def _parser(cmd: str) -> argparse.ArgumentParser:
  what = {"analyze": __doc__, "corr": figures.figure_corr.__doc__, "bars": figures.figure_bars.__doc__,
          "compare": figures.figure_compare.__doc__}[cmd]
  p = argparse.ArgumentParser(prog=f"python -m rcjax.analyze{'' if cmd == 'analyze' else ' ' + cmd}",
                              description=what, formatter_class=argparse.RawDescriptionHelpFormatter)
  if cmd == "analyze":
    p.add_argument("path", help="rcjax run directory or HuggingFace checkpoint directory")
    p.add_argument("--blocks", type=int, nargs="*", help="blocks to draw (default: first, middle, last)")
  elif cmd in ("corr", "bars"):
    p.add_argument("paths", nargs="+", help="run directories or HF checkpoints")
    p.add_argument("--labels", nargs="*")
  if cmd == "corr":
    p.add_argument("--block", type=int, default=0, help="which block (an MLP is one block)")
  if cmd == "compare":
    p.add_argument("runs", nargs="+", metavar="RUN_A RUN_B", help="two runs, or pairs of runs (e.g. one pair per "
                   "seed: mean and spread of the distances in compare_seeds.json; the figure shows the first pair)")
    p.add_argument("--steps", type=int, nargs="*", help="steps (default: up to 4 common steps)")
    p.add_argument("--leaf", help="glob over leaf paths within a block, e.g. 'mlp/up*' (default: the MLP weight)")
    p.add_argument("--stat", default="R", choices=("R", "C"), help="R: row means (per fan-in neuron), C: column means")
    p.add_argument("--columns", type=int, default=4, help="at most this many weights (blocks) drawn")
    p.add_argument("--labels", nargs=2)
  else:
    p.add_argument("--step", type=int, help="checkpoint step of rcjax runs (default: latest)")
    p.add_argument("--kinds", default="mean,vector" if cmd == "corr" else "mean",
                   help="statistics: mean (.R/.C), vector (biases, scales), rms")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--seed", type=int, default=0, help="key of the permutation nulls")
  p.add_argument("--permutations", type=int, default=200)
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.add_argument("--unverified", action="store_true",
                 help="analyse rcjax checkpoints that have no digest (saved before rcjax recorded digests)")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  """The command line (rcjax._cli's convention): one line `rcjax.analyze: error: ...`, exit 2 for bad
  input, 1 for a corrupt checkpoint or a disk error (a traceback with --debug or RCJAX_DEBUG=1)."""
  return _cli.run("rcjax.analyze", _main, argv)


def _main(argv: list[str]) -> int:
  cmd = argv.pop(0) if argv and argv[0] in ("corr", "bars", "compare") else "analyze"
  a = _parser(cmd).parse_args(argv)
  common = {"seed": a.seed, "permutations": a.permutations}
  old, Source.allow_unverified = Source.allow_unverified, a.unverified
  try:
    if a.permutations < 1:
      raise ValueError(f"--permutations must be at least 1, got {a.permutations}")
    kinds = tuple(k.strip() for k in getattr(a, "kinds", "mean").split(",") if k.strip())
    if bad := set(kinds) - set(diag.KINDS):
      raise ValueError(f"unknown --kinds {sorted(bad)}; choose from {', '.join(diag.KINDS)}")
    if cmd == "analyze":
      s = analyze(a.path, a.out, step=a.step, kinds=kinds, blocks=a.blocks, progress=not a.quiet, **common)
      if s["attention_left_out"]:
        print(f"note: attention leaves without a q/k/v/o role left out of the q·k / v·o statistics: "
              f"{', '.join(s['attention_left_out'])}", file=sys.stderr)
      print(f"{s['model_family']}: {s['num_blocks']} blocks, max |corr| {s['max_abs_corr']} "
            f"(null 99%: {s['max_abs_corr_null']}) -> {a.out}/summary.json")
    elif cmd == "corr":
      result = figures.figure_corr(a.paths, a.out, labels=a.labels, step=a.step, block=a.block, kinds=kinds, **common)
      for label, r in result.items():
        print(f"{label}: max |corr| {r['max_abs_corr']}, fraction of pairs above the 99% null "
              f"{r['frac_above_null_q99']}")
      print(f"-> {a.out}/corr.png, corr.pdf, corr.json")
    elif cmd == "bars":
      rows = figures.figure_bars(a.paths, a.out, labels=a.labels, step=a.step, kinds=kinds, progress=not a.quiet, **common)
      for r in rows:
        print(f"{r['label']}: max |corr| {r['max_abs_corr']} (null 99%: {r['max_abs_corr_null']})")
      print(f"-> {a.out}/max_abs_corr.png, max_abs_corr.pdf, bars.json")
    else:
      if len(a.runs) % 2:
        raise ValueError(f"compare takes pairs of runs (RUN_A RUN_B ...), got {len(a.runs)} paths")
      pairs = list(zip(a.runs[::2], a.runs[1::2]))
      result = figures.figure_compare(*pairs[0], a.out, steps=a.steps, leaf=a.leaf, stat=a.stat, more=pairs[1:],
                                      columns=a.columns, labels=a.labels, **common)
      for r in result["rows"]:
        print(f"step {r['step']} {r['unit']}: W1 {r['w1']} (null 95%: {r['w1_null_q95']}, reference {r['reference']})")
      for r in result.get("seeds", {}).get("rows", []):
        print(f"over {len(pairs)} pairs: step {r['step']} {r['unit']}: W1 {r['w1']['mean']:.4g} +- {r['w1']['std']:.2g} "
              f"(null 95% {r['w1_null_q95']['mean']:.4g}; above it in {r['pairs_above_null']} of {len(pairs)})")
      print(f"-> {a.out}/compare.png, compare.pdf, compare.json" + (", compare_seeds.json" if len(pairs) > 1 else ""))
  except IndexError as e:
    raise _cli.UsageError(str(e)) from e
  except OSError as e:
    if e.errno in _cli.DISK_ERRNOS:
      raise
    raise _cli.UsageError(_cli.describe(e)) from e  # e.g. a file where a directory was expected
  finally:
    Source.allow_unverified = old
  return 0


if __name__ == "__main__":
  sys.exit(main())
