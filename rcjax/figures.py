"""The paper's Figures 4.2, 4.4 and 4.5 from checkpoints (`python -m rcjax.analyze corr|bars|compare`), drawn
at one paper column (`rcjax.plots_column`), and `seed_stats`, the mean and spread over seeds every figure
command quotes. Checkpoints are read through `rcjax.analysis.Source` (rcjax run directories, HF checkpoints)."""

from __future__ import annotations

import fnmatch
import os
import re
import textwrap
from typing import Sequence

import numpy as np

from rcjax import diagnostics as diag
from rcjax.analysis import Source, _describe, _jsonable, _stats, _write_json, max_abs
from rcjax.rc import RC, path_hash


def seed_stats(values: Sequence) -> dict:
  """Mean, sample std, min and max of one number over seeds (None entries left out).

  >>> seed_stats([1.0, 2.0, 3.0, None])
  {'n': 3, 'mean': 2.0, 'std': 1.0, 'min': 1.0, 'max': 3.0}
  """
  v = np.array([x for x in values if x is not None], float)
  if not v.size:
    return {"n": 0}
  return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
          "min": float(v.min()), "max": float(v.max())}


def seed_summary(per_seed: Sequence[dict]) -> dict:
  """`{run: {number: seed_stats}}` from one `{run: {number: value}}` per seed (the numbers of the first seed
  that are numbers or None).

  >>> seed_summary([{"a": {"acc": 0.5, "name": "x"}}, {"a": {"acc": 0.7, "name": "x"}}])["a"]["acc"]["mean"]
  0.6
  """
  return {run: {k: seed_stats([s[run][k] for s in per_seed]) for k, v in numbers.items()
                if v is None or isinstance(v, (int, float)) and not isinstance(v, bool)}
          for run, numbers in per_seed[0].items()}


def _write(out: str, figures: dict, jsons: dict) -> None:
  """Create `out`, write the drawn figures (PNG at 300 dpi and PDF) and the JSON files; close the figures."""
  from rcjax import plots, plots_column

  try:
    os.makedirs(out, exist_ok=True)
    for name, fig in figures.items():
      plots_column.save(fig, os.path.join(out, name))
    for name, obj in jsons.items():
      _write_json(os.path.join(out, name), obj)
  finally:
    for fig in figures.values():
      plots._plt().close(fig)


def _sources(paths, labels, step):
  srcs = [Source(p, step) for p in paths]
  labels = list(labels or [os.path.basename(os.path.normpath(p)) for p in paths])
  if len(labels) != len(srcs):
    raise ValueError(f"{len(labels)} labels for {len(srcs)} paths")
  return srcs, labels


def _role(name: str) -> str:
  """A statistic's role within its neuron axis, the layer index dropped: 'Dense_3/kernel.C' -> 'kernel.C'."""
  return re.sub(r"_?\d+", "", name.split("/", 1)[-1] if "/" in name else name)


def _pairs(result: dict) -> dict:
  """The defined pairs of a block-diagonal correlation matrix as rows (role pairs) x columns (neuron axes)."""
  rows, cells = [], {}
  for (start, axis), stop in zip(result["groups"], [g[0] for g in result["groups"][1:]] + [len(result["names"])]):
    for i in range(start, stop):
      for j in range(i + 1, stop):
        key = f"{_role(result['names'][i])} · {_role(result['names'][j])}"
        rows += [key] if key not in rows else []
        cells[key, axis] = (result["corr"][i, j], bool(abs(result["corr"][i, j]) > result["null_q99"][i, j]))
  cols = [g[1] for g in result["groups"]]
  corr = [[cells.get((r, a), (np.nan, False))[0] for a in cols] for r in rows]
  above = [[cells.get((r, a), (np.nan, False))[1] for a in cols] for r in rows]
  return {"rows": rows, "cols": cols, "corr": corr, "above": above}


def figure_corr(paths: Sequence[str], out: str, *, labels: Sequence[str] | None = None, step: int | None = None,
                block: int = 0, seed: int = 0, permutations: int = 200,
                kinds: Sequence[str] = ("mean", "vector")) -> dict:
  """The paper's Figure 4.2: per model, the correlations between the statistics sharing a neuron index (one
  block-diagonal matrix over its neuron axes in corr.json; drawn as the defined pairs x neuron axes)."""
  from rcjax import plots_column

  srcs, labels = _sources(paths, labels, step)
  result = {}
  for src, label in zip(srcs, labels):
    if not -src.num_blocks <= block < src.num_blocks:
      raise ValueError(f"--block {block}: {src.path} has {src.num_blocks} blocks (0..{src.num_blocks - 1}, or -1 "
                       "for the last)")
    b = block % src.num_blocks  # --block -1: the last block, seeded as such
    leaves = dict(next(lv for i, lv in src.blocks() if i == b))
    names, groups, parts = [], [], []
    for a, st in _stats(iter(leaves.items()), kinds).items():
      r = diag.correlate(st, seed=[seed, b, path_hash(a)], permutations=permutations)
      groups.append((len(names), a))
      names += r["names"]
      parts.append(r)
    k = len(names)
    corr, null = np.full((k, k), np.nan), np.full((k, k), np.nan)
    for (start, _), r in zip(groups, parts):
      m = len(r["names"])
      corr[start:start + m, start:start + m], null[start:start + m, start:start + m] = r["corr"], r["null_q99"]
    c, off = np.abs(corr), ~np.eye(k, dtype=bool) & np.isfinite(corr) & np.isfinite(null)
    result[label] = {"path": src.path, "step": src.step, "block": b, "axes": [g[1] for g in groups], "names": names,
                     "groups": groups, "corr": corr, "null_q99": null,
                     "max_abs_corr": float(c[off].max()) if off.any() else None,
                     "frac_above_null_q99": float((c[off] > null[off]).mean()) if off.any() else None}
  panels = [{"title": f"{label}" + (f" (block {r['block']})" if len(srcs) and r["block"] else ""), **_pairs(r)}
            for label, r in result.items()]
  fig = plots_column.pair_grid(panels, title="correlation of per-neuron statistics sharing a neuron index\n"
                                             "bold: |corr| above its 99% permutation null; grey: within it")
  for r, p in zip(result.values(), panels):
    r["pairs"] = p
  _write(out, {"corr.png": fig}, {"corr.json": result})
  return _jsonable(result)


def figure_bars(paths: Sequence[str], out: str, *, labels: Sequence[str] | None = None, step: int | None = None,
                seed: int = 0, permutations: int = 200, kinds: Sequence[str] = ("mean",),
                progress: bool = True) -> list[dict]:
  """The paper's Figure 4.4: max |corr| over blocks of each checkpoint, with its permutation null. Paths
  given the same label are seeds of one model: its bar is their mean with a min..max error bar, and
  `bars_by_label.json` holds mean, std, min and max (`seed_stats`) of every number."""
  from rcjax import plots, plots_column

  srcs, labels = _sources(paths, labels, step)
  rows = []
  for src, label in zip(srcs, labels):
    overall, _, _ = max_abs(src, seed=seed, permutations=permutations, kinds=kinds, progress=progress)
    rows.append({"label": label, "path": src.path, "model_family": src.family, "num_blocks": src.num_blocks,
                 **{k: overall[k] for k in ("max_abs_corr", "max_abs_corr_null", "max_abs_corr_null_q95",
                                            "block", "pair")}})
  names = list(dict.fromkeys(labels))
  keys = ("max_abs_corr", "max_abs_corr_null", "max_abs_corr_null_q95")
  by_label = {n: {"paths": [r["path"] for r in rows if r["label"] == n],
                  **{k: seed_stats([r[k] for r in rows if r["label"] == n]) for k in keys}} for n in names}
  seeds = len(names) < len(rows)
  first = {n: next(r for r in rows if r["label"] == n) for n in names}
  notes = None if seeds or len(names) > 3 else [
      "" if first[n]["pair"] is None else f"{plots._short(first[n]['pair'][0], 18)}\nvs "
      f"{plots._short(first[n]['pair'][1], 18)} (block {first[n]['block']})" for n in names]
  count = {n: by_label[n][keys[0]]["n"] for n in names}
  mean = lambda k: [by_label[n][k]["mean"] for n in names]
  ticks = [textwrap.fill(n, 11) + (f"\n({count[n]} seeds)" if count[n] > 1 else "") for n in names]
  fig = plots_column.bars(
      ticks, mean(keys[0]), mean(keys[1]), null95=mean(keys[2]), annotations=notes,
      spread=[(by_label[n][keys[0]]["min"], by_label[n][keys[0]]["max"]) if count[n] > 1 else (np.nan, np.nan)
              for n in names] if seeds else None,
      title=textwrap.fill(f"max |corr| between {_describe(kinds)} of different leaves, over blocks"
                          + ("; mean and min..max over seeds" if seeds else ""), 60))
  _write(out, {"max_abs_corr.png": fig}, {"bars.json": rows, **({"bars_by_label.json": by_label} if seeds else {})})
  return _jsonable(rows)


def _units(src: Source, leaf: str | None, stat: str) -> dict[str, np.ndarray]:
  """`{label: statistic vector}` of the selected weights of every block (default: the MLP weights
  (embed, mlp) of a GPT, or every hidden kernel of an MLP)."""
  chosen: list[tuple[str, str, RC]] = []
  for i, leaves in src.blocks():
    chosen += [(f"block {i}: {p}" if src.num_blocks > 1 else p, p, b) for p, b in leaves]
  if leaf is not None:
    chosen = [c for c in chosen if fnmatch.fnmatch(c[1], leaf)]
  elif any(b.axes[-2:] == ("embed", "mlp") for _, _, b in chosen):
    chosen = [c for c in chosen if c[2].axes[-2:] == ("embed", "mlp")]
  else:
    chosen = [c for c in chosen if c[2].fan_in and len(c[2].width_dims) >= 2
              and any(d in c[2].fan_in for d in c[2].width_dims) and any(d not in c[2].fan_in for d in c[2].width_dims)]
  if not chosen:
    raise ValueError(f"{src.path}: no weight matches {leaf!r}" if leaf else f"{src.path}: no MLP/hidden weight found")
  out = {}
  for label, path, b in chosen:
    dims = b.fan_in if stat == "R" else tuple(d for d in range(len(b.axes)) if d not in b.fan_in)
    out[label] = diag.leaf_stats(path, b, tuple(b.axes[d] for d in dims), ("mean",))[f"{path}.{stat}"]
  return out


def _steps(a0: Source, b0: Source, steps: Sequence[int] | None) -> list[int]:
  common = sorted(set(a0.steps) & set(b0.steps))
  if steps is None:
    steps = [common[round(k)] for k in np.linspace(0, len(common) - 1, min(4, len(common)))] if common else []
  for s in steps:
    for src in (a0, b0):
      if s not in src.steps:
        raise ValueError(f"step {s} is not saved in {src.path}; saved steps: {src.steps}")
  if not steps:
    raise ValueError(f"the runs share no saved step ({a0.steps} vs {b0.steps}); pass --steps")
  return list(steps)


def _compare_pair(run_a, run_b, steps, leaf, stat, columns, names, seed, permutations):
  """Rows of distances (every step x shared weight) of one pair of runs, and the cells drawn for it."""
  a0, b0 = Source(run_a), Source(run_b)
  if a0.kind != "rcjax" or b0.kind != "rcjax":
    raise ValueError("compare needs rcjax run directories (checkpoints at several steps)")
  steps = _steps(a0, b0, steps)
  ref_step = min(a0.steps)
  ref = _units(Source(run_a, ref_step), leaf, stat)
  rows, cells, cols = [], [], None
  for s in steps:
    ua, ub = _units(Source(run_a, s), leaf, stat), _units(Source(run_b, s), leaf, stat)
    shared = [u for u in ua if u in ub]
    if not shared:
      raise ValueError(f"step {s}: the runs have no weight in common ({list(ua)[:3]} vs {list(ub)[:3]})")
    cols = cols or [shared[round(k)] for k in np.linspace(0, len(shared) - 1, min(columns, len(shared)))]
    row = []
    for u in shared:
      d = diag.distribution_distance(ua[u], ub[u], reference=(ref[u], ua[u]), key=seed, permutations=permutations)
      rows.append({"step": s, "unit": u, "n_a": ua[u].size, "n_b": ub[u].size, **d})
      if u in cols:
        series = {names[0]: ua[u], names[1]: ub[u], **({f"{names[0]} at step {ref_step}": ref[u]} if s != ref_step
                                                       else {})}
        row.append({"series": series, "text": f"W1 {d['w1']:.2g}\nnull 95% {d['w1_null_q95']:.2g}\n"
                                              f"{names[0]}@{ref_step} vs @{s}: {d['reference']:.2g}"})
    cells.append(row)
  return {"run_a": a0.path, "run_b": b0.path, "steps": steps, "reference_step": ref_step, "rows": rows,
          "cells": cells, "cols": cols}


def figure_compare(run_a: str, run_b: str, out: str, *, steps: Sequence[int] | None = None, leaf: str | None = None,
                   stat: str = "R", columns: int = 4, labels: Sequence[str] | None = None, seed: int = 0,
                   permutations: int = 200, more: Sequence[tuple[str, str]] = ()) -> dict:
  """The paper's Figure 4.5: distributions of a per-neuron statistic (default: row means `.R` of the MLP
  weight) in two runs (e.g. two widths) at several steps, with 1-D Wasserstein distances, their permutation
  null, and a reference distance (run A at its first saved step vs run A at the step). `more`: further
  (run A, run B) pairs, e.g. other seeds: `compare_seeds.json` gets mean, std, min and max (`seed_stats`)
  of every distance over all pairs, and how many pairs are above their null; the figure shows the first."""
  from rcjax import plots_column

  if stat not in ("R", "C"):
    raise ValueError(f"--stat must be R or C, got {stat!r}")
  names = list(labels or [os.path.basename(os.path.normpath(p)) for p in (run_a, run_b)])
  pairs = [_compare_pair(a, b, steps, leaf, stat, columns, names, seed, permutations)
           for a, b in [(run_a, run_b), *more]]
  first = pairs[0]
  if any([(r["step"], r["unit"]) for r in p["rows"]] != [(r["step"], r["unit"]) for r in first["rows"]]
         for p in pairs):
    raise ValueError("the pairs of runs differ in their saved steps or weights; give --steps")
  fig = plots_column.distributions([f"step {s}" for s in first["steps"]], first["cols"], first["cells"],
                                   title=f"{'row' if stat == 'R' else 'column'} means (.{stat}): {names[0]} vs "
                                         f"{names[1]}\nW1: 1-D Wasserstein distance between them")
  result = {"stat": stat, **{k: first[k] for k in ("run_a", "run_b", "steps", "reference_step", "rows")}}
  jsons = {"compare.json": result}
  if more:
    keys = ("w1", "w1_null_q95", "reference")
    jsons["compare_seeds.json"] = {"pairs": [[p["run_a"], p["run_b"]] for p in pairs], "stat": stat, "rows": [
        {"step": r["step"], "unit": r["unit"], **{k: seed_stats([p["rows"][i][k] for p in pairs]) for k in keys},
         "pairs_above_null": sum(p["rows"][i]["w1"] > p["rows"][i]["w1_null_q95"] for p in pairs)}
        for i, r in enumerate(first["rows"])]}
  _write(out, {"compare.png": fig}, jsons)
  return _jsonable({**result, **({"seeds": jsons["compare_seeds.json"]} if more else {})})
