"""Reading checkpoints for the RC diagnostics and the statistics of one checkpoint.

`Source` reads an rcjax run directory (`config.json` + `checkpoints/`, through `rcjax.checkpoint`) or a
HuggingFace safetensors checkpoint (`rcjax.hf`, one block at a time); `analyze` writes the statistics and
figures of one checkpoint, `max_abs` its largest |corr| against a permutation null. The command line is
`rcjax.analyze` (`python -m rcjax.analyze`); the paper's figures are drawn by `rcjax.figures`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import time
import warnings
from typing import Any, Iterator, Sequence

import numpy as np

from rcjax import diagnostics as diag
from rcjax import hf
from rcjax.rc import RC, path_hash


class UnverifiedRun(ValueError):
  """An rcjax run whose checkpoint has no digest, refused without --unverified."""


class Source:
  """A checkpoint to analyse: `family`, `kind` ('rcjax' | 'hf'), `step`, `num_blocks`, `blocks()`.
  An rcjax checkpoint must verify against its digest (`rcjax.checkpoint`); one without a digest is
  refused unless `Source.allow_unverified` is True (the CLI's `--unverified`)."""

  allow_unverified = False

  def __init__(self, path: str, step: int | None = None):
    self.path = os.path.abspath(path)
    if not os.path.isdir(self.path):
      raise FileNotFoundError(f"{path}: no such directory")
    if os.path.isdir(os.path.join(self.path, "checkpoints")):
      self.kind, self.step, self.params, self.skipped = "rcjax", None, None, []
      self._restore(step)
      axes = {a for b in diag.flat_leaves(self.params).values() for a in b.axes}
      self.family = "rcjax-gpt" if "embed" in axes else "rcjax-mlp"
      self._blocks = diag.blocks(self.params)
      self.num_blocks = len(self._blocks)
    elif hf.is_hf_checkpoint(self.path):
      if step is not None:
        raise ValueError("--step applies to rcjax run directories, not to a HuggingFace checkpoint")
      self.kind, self.step = "hf", None
      self.ckpt = hf.Checkpoint(self.path)
      self.family, self.num_blocks, self.skipped = self.ckpt.model_type, self.ckpt.num_blocks, self.ckpt.skipped
    else:
      raise ValueError(f"{path} is neither an rcjax run directory (config.json + checkpoints/) nor a "
                       f"HuggingFace checkpoint (config.json + *.safetensors)")

  def _restore(self, step: int | None) -> None:
    from rcjax.checkpoint import Checkpointer, CorruptCheckpoint, UnverifiedCheckpointWarning

    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # orbax warns that a read-only manager does not save
    try:
      ck = Checkpointer(os.path.join(self.path, "checkpoints"), read_only=True)
      self.steps = ck.all_steps()
      step = ck.latest_step() if step is None else step
      if step in self.steps and not ck.verify(step) and not self.allow_unverified:
        raise UnverifiedRun(f"{self.path}/checkpoints step {step} has no digest (saved before rcjax "
                            "recorded digests): it cannot be verified; pass --unverified to analyse it anyway")
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnverifiedCheckpointWarning)
        r = ck.restore(step)
    except (FileNotFoundError, CorruptCheckpoint, UnverifiedRun):
      raise
    except Exception as e:  # noqa: BLE001 - orbax reports damaged checkpoints in many ways
      raise ValueError(f"cannot restore {self.path}/checkpoints (step {step}): {type(e).__name__}: {e}") from None
    finally:
      absl.setLevel(level)
    self.step = r["step"]
    self.params = {p: b.replace(value=np.asarray(b.value)) for p, b in diag.flat_leaves(r["params"]).items()}

  def blocks(self) -> Iterator[tuple[int, Iterator[tuple[str, RC]]]]:
    """`(i, iterator of (inner path, RC leaf))` per block; HF leaves are read lazily."""
    if self.kind == "rcjax":
      for i, leaves in self._blocks:
        yield i, iter(leaves.items())
    else:
      for i in range(self.num_blocks):
        yield i, self.ckpt.block_leaves(i)


def _stats(leaves: Iterator[tuple[str, RC]], kinds: Sequence[str],
           left_out: list | None = None) -> dict[str, dict[str, np.ndarray]]:
  """Per-axis statistics of one block, computed leaf by leaf (so HF tensors are dropped as we go);
  attention leaves without a q/k/v/o role are appended to `left_out`."""
  return diag.block_stats(leaves, kinds=kinds, left_out=[] if left_out is None else left_out)


def _only(stats: dict, kinds: Sequence[str]) -> dict:
  keep = lambda n: ("vector" in kinds and diag.leaf_of(n) == n) or (
      "mean" in kinds and n.endswith((".R", ".C"))) or ("rms" in kinds and n.endswith("_rms"))
  return {a: {n: v for n, v in s.items() if keep(n)} for a, s in stats.items()}


def _describe(kinds: Sequence[str]) -> str:
  """Figure titles: ('mean', 'vector') -> 'row/column means (.R/.C), biases and scales'."""
  words = {"mean": "row/column means (.R/.C)", "rms": "row/column RMS (.R_rms/.C_rms)", "vector": "biases and scales"}
  parts = [words[k] for k in diag.KINDS if k in kinds]
  return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else "".join(parts)


def _jsonable(x: Any) -> Any:
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  if isinstance(x, (float, np.floating)):
    return None if math.isnan(x) else round(float(x), 6)
  if isinstance(x, np.integer):
    return int(x)
  return x


def _write_json(path: str, obj: Any) -> None:
  with open(path, "w") as f:
    json.dump(_jsonable(obj), f, indent=1)


def _write_all(out: str, figures: dict, jsons: dict) -> None:
  """Create `out` and write the (already drawn) figures as PNGs and the JSON files: called once the
  analysis succeeded, so that an error leaves nothing behind."""
  from rcjax import plots

  os.makedirs(out, exist_ok=True)
  for name, fig in figures.items():
    plots.save(fig, os.path.join(out, name), pdf=True)
  for name, obj in jsons.items():
    _write_json(os.path.join(out, name), obj)


def _block_entry(s: dict) -> dict:
  axes = {a: {"n": r["n"], "num_stats": len(r["names"]), "max_abs_corr": r["max_abs_corr"], "pair": r["pair"],
              "max_abs_corr_null": diag._nanquantile(r["null_max"], 0.99)} for a, r in s["axes"].items()}
  return {"block": s["block"], "max_abs_corr": s["max_abs_corr"], "max_abs_corr_null": s["max_abs_corr_null_q99"],
          "max_abs_corr_null_q95": s["max_abs_corr_null_q95"], "pair": s["pair"], "axis": s["axis"], "axes": axes}


def _progress(it, total: int, desc: str, show: bool):
  if not show:
    return it
  from rcjax._progress import bar

  return bar(it, total=total, desc=desc, unit="block")


def max_abs(src: Source, *, seed: int = 0, permutations: int = 200, kinds: Sequence[str] = ("mean",),
            figure_blocks: Sequence[int] = (), figure_kinds: Sequence[str] = ("mean", "vector"),
            progress: bool = True) -> tuple[dict, list[dict], dict]:
  """Stream the blocks of `src`: overall result (with `left_out`: attention leaves of block 0 without a
  q/k/v/o role, not analysed), per-block entries, and figure data for `figure_blocks`."""
  sums, figs, left_out = [], {}, []
  for i, leaves in _progress(src.blocks(), src.num_blocks, f"{os.path.basename(src.path)}", progress):
    try:
      stats = _stats(leaves, tuple(set(kinds) | (set(figure_kinds) if i in figure_blocks else set())),
                     left_out if i == 0 else None)
    except ValueError as e:  # e.g. a leaf with NaN weights: say which block
      raise ValueError(f"block {i}, {e}") from None
    s = diag.summarize_block(_only(stats, kinds), key=seed, block=i, permutations=permutations)
    sums.append(s)
    if i in figure_blocks:
      shown = _only(stats, figure_kinds)  # the matrices and histograms show the same statistics
      figs[i] = {a: {**diag.correlate(st, seed=[seed, i, path_hash(a)], permutations=permutations), "stats": st}
                 for a, st in shown.items()}
  if not sums:
    raise ValueError(f"{src.path}: no blocks to analyse")
  return {**diag.combine_blocks(sums), "left_out": left_out}, [_block_entry(s) for s in sums], figs


def analyze(path: str, out: str, *, step: int | None = None, seed: int = 0, permutations: int = 200,
            kinds: Sequence[str] = ("mean",), blocks: Sequence[int] | None = None, progress: bool = True) -> dict:
  """Analyse one checkpoint; write `out/summary.json`, `out/correlations.json` and PNGs; return the summary."""
  from rcjax import plots

  t0 = time.time()
  src = Source(path, step)
  n = src.num_blocks
  for b in blocks or ():
    if not -n <= b < n:
      raise ValueError(f"--blocks {b}: {path} has {n} blocks (0..{n - 1}, or -1 for the last)")
  fig_blocks = sorted({b % n for b in blocks}) if blocks is not None else sorted({0, n // 2, n - 1})
  fig_kinds = tuple(kinds) + (() if "vector" in kinds else ("vector",))  # figures: biases and scales too
  overall, per_block, figs = max_abs(src, seed=seed, permutations=permutations, kinds=kinds,
                                     figure_blocks=fig_blocks, figure_kinds=fig_kinds, progress=progress)
  summary = {"model_family": src.family, "source": src.kind, "path": src.path, "step": src.step,
             "num_blocks": n, "max_abs_corr": overall["max_abs_corr"],
             "max_abs_corr_null": overall["max_abs_corr_null"],
             "max_abs_corr_null_q95": overall["max_abs_corr_null_q95"], "block": overall["block"],
             "pair": overall["pair"], "kinds": list(kinds), "permutations": permutations, "seed": seed,
             "null": "quantiles of the max |corr| over blocks when every statistic's neurons are permuted "
                     "independently",
             "skipped_tensors": src.skipped, "attention_left_out": overall["left_out"], "per_block": per_block}
  what = f"{os.path.basename(src.path)} ({src.family}{'' if src.step is None else f', step {src.step}'})"
  if n > 1:
    bars, xlabel = per_block, "block"
  else:  # one block (an MLP): one bar per neuron axis
    bars = [{"block": a, **r} for a, r in per_block[0]["axes"].items()]
    for b in bars:
      b["max_abs_corr_null_q95"] = None
    xlabel = "neuron axis"
  figures = {}  # drawn first, written once everything succeeded
  try:
    figures["max_abs_corr_per_block.png"] = plots.max_abs_bars(
        [e["block"] for e in bars], [e["max_abs_corr"] for e in bars], [e["max_abs_corr_null"] for e in bars],
        null95=[e["max_abs_corr_null_q95"] for e in bars] if n > 1 else None, xlabel=xlabel,
        title=f"{what}: max |corr| between {_describe(kinds)} of different leaves")
    corr_json = {}
    for i, per_axis in figs.items():
      panels = [{"title": f"axis {a} (N={r['n']})", "names": r["names"], "corr": r["corr"], "null": r["null_q99"]}
                for a, r in per_axis.items() if r["names"]]
      label = f"block {i}" if src.num_blocks > 1 else "all layers"
      figures[f"corr_block{i}.png"] = plots.correlation_matrices(panels, title=f"{what}, {label}")
      hist = [{"title": f"axis {a}", "series": r["stats"]} for a, r in per_axis.items() if r["names"]]
      figures[f"means_block{i}.png"] = plots.stat_histograms(
          hist, title=f"{what}, {label}: {_describe(fig_kinds)}")
      keys = ("names", "n", "corr", "null_q95", "null_q99")
      corr_json[str(i)] = {a: {k: r[k] for k in keys} for a, r in per_axis.items()}
    summary["figures"] = list(figures)
    _write_all(out, figures, {"correlations.json": corr_json})
  finally:
    for fig in figures.values():
      plots._plt().close(fig)
  summary["seconds"] = time.time() - t0
  summary["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  _write_json(os.path.join(out, "summary.json"), summary)
  return _jsonable(summary)
