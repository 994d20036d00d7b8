"""Matplotlib figures (the paper's figures and training curves). Drawing only: every function takes
already-computed numbers (from `rcjax.diagnostics`, metrics files, ...) and returns a Figure or writes a PNG.
matplotlib is imported lazily with the Agg backend, so importing rcjax stays light and headless-safe."""

from __future__ import annotations


def _plt():
  import matplotlib

  matplotlib.use("Agg", force=False)
  import matplotlib.pyplot as plt

  return plt


def save(fig, path, *, pdf: bool = False, dpi: int = 120) -> str:
  """Write `fig` as a PNG at `path` (parent folders created, `dpi` dots per inch), with `pdf` also as a
  PDF beside it (same name, `.pdf`), and close it; returns the PNG's path."""
  import os

  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if pdf:
    fig.savefig(os.path.splitext(path)[0] + ".pdf", bbox_inches="tight")
  fig.savefig(path, dpi=dpi, bbox_inches="tight")
  _plt().close(fig)
  return path


# ----------------------------------------------------------------------------------------------
# Training figures (train.mlp / train.gpt): loss and accuracy curves, weight heat plots.
# ----------------------------------------------------------------------------------------------

_LABELS = {"train_loss": "training loss", "test_loss": "test loss", "test_acc": "test accuracy",
           "train_acc": "training accuracy", "epoch": "epoch", "step": "SGD step",
           "flops": "training FLOPs (cumulative)"}


def _finite(v) -> bool:
  import math

  return isinstance(v, (int, float)) and math.isfinite(v)


def _mark_transfers(ax, lines, x, key, color) -> None:
  """A transfer: a dotted vertical line at its x, a dot on the curve, and 'N -> N'' above it."""
  for m in lines:
    if m.get("event") != "transfer" or x not in m:
      continue
    ax.axvline(m[x], color=color, lw=0.8, ls=":", alpha=0.8)
    if _finite(m.get(key)):
      ax.plot([m[x]], [m[key]], "o", color=color, markersize=4)
    what = f"transfer {m['from_width']} -> {m.get('width', '?')}" if "from_width" in m else "transfer"
    ax.annotate(what, (m[x], 1.0), xycoords=("data", "axes fraction"), fontsize=7, color=color,
                rotation=90, va="top", ha="right")


def _diverged(ax, lines, x, key, color) -> bool:
  """Mark where a curve stops being finite (NaN or inf: a diverged run) with an x; True if it does."""
  bad = [m for m in lines if x in m and key in m and not _finite(m[key])]
  if not bad:
    return False
  good = [m for m in lines if x in m and _finite(m.get(key)) and m[x] < bad[0][x]]
  y = good[-1][key] if good else None
  if y is not None:
    ax.plot([bad[0][x]], [y], "x", color=color, markersize=7, mew=2)
  ax.annotate(f"{bad[0][key]} at {x} {bad[0][x]}", (bad[0][x], 0.02), xycoords=("data", "axes fraction"),
              xytext=(-5, 0), textcoords="offset points", fontsize=7, color=color, rotation=90, va="bottom",
              ha="right")
  return True


def training_curves(runs, *, panels=("train_loss", "test_acc"), x="epoch", title=None, styles=None,
                    log_y=("train_loss", "test_loss")):
  """Curves of metrics (one panel per metric, one line per run), transfers and divergence marked.

  Args:
    runs: `{label: [metrics dict, ...]}`, e.g. the lines of train.mlp's `metrics.jsonl` files. Lines
      whose `event` is 'transfer' are drawn as the first point of the transferred part (a dot), under a
      dotted vertical line labelled with the widths, so a combined run shows the jump (or the absence
      of one) at the transfer. Non-finite values (a diverged run) are left out of the curve, and where
      they start is marked with an x and labelled; a panel with no finite value says so.
    panels: metric keys, one panel each.
    x: the key for the x axis ('epoch', 'step' or 'flops').
    title: figure title.
    styles: optional `{label: dict of matplotlib line kwargs}` (e.g. `{'scratch': {'color': 'k'}}`).
    log_y: metric keys drawn on a log y axis.

  Returns:
    A matplotlib Figure.
  """
  plt = _plt()
  fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
  styles = styles or {}
  for ax, key in zip(axes[0], panels):
    drawn, positive = False, True
    for label, lines in runs.items():
      pts = [(m[x], m[key]) for m in lines if key in m and x in m and _finite(m[key])]
      if not pts and not any(key in m for m in lines):
        continue
      xs, ys = zip(*pts) if pts else ((), ())
      (line,) = ax.plot(xs, ys, label=label, **styles.get(label, {}))
      drawn, positive = drawn or bool(pts), positive and all(y > 0 for y in ys)
      _mark_transfers(ax, lines, x, key, line.get_color())
      _diverged(ax, lines, x, key, line.get_color())
    ax.set_xlabel(_LABELS.get(x, x))
    ax.set_ylabel(_LABELS.get(key, key))
    if not drawn:
      ax.text(0.5, 0.5, f"no finite {_LABELS.get(key, key)}", transform=ax.transAxes, ha="center", va="center")
    elif key in log_y and positive:
      ax.set_yscale("log")
    if x == "flops":
      ax.set_xscale("log")
    ax.grid(alpha=0.3)
  return _finish_panels(fig, axes, title)


def _finish_panels(fig, axes, title):
  """A row of curve panels finished: the legend in the last panel, the title, a tight layout."""
  axes[0][-1].legend(fontsize=7, loc="best")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return fig


def seed_band_curves(runs_per_seed, *, panels=("train_loss", "test_acc"), x="epoch", title=None, styles=None):
  """Mean over seeds (a line) and min..max (a band) of metrics curves, one panel per metric.

  Args:
    runs_per_seed: one `{label: [metrics dict, ...]}` per seed (the same labels and x values in each;
      transfer lines, which repeat an x, are dropped).
    panels, x, title, styles: as in `training_curves`.
  """

  plt = _plt()
  fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
  styles = styles or {}
  for ax, key in zip(axes[0], panels):
    for label in runs_per_seed[0]:
      seed_band(ax, [runs[label] for runs in runs_per_seed], x, key, label, styles.get(label, {}))
    ax.set_xlabel(_LABELS.get(x, x))
    ax.set_ylabel(_LABELS.get(key, key))
    if x == "flops":
      ax.set_xscale("log")
    ax.grid(alpha=0.3)
  return _finish_panels(fig, axes, title)


def seed_band(ax, lines_per_seed, x: str, key: str, label: str, style: dict) -> None:
  """Draw one label's curve over seeds on `ax`: the mean as a line, min..max as a band, at the x values
  every seed has (transfer lines, which repeat an x, and non-finite values dropped)."""
  import numpy as np

  curves = [{m[x]: m[key] for m in lines if m.get("event") != "transfer" and _finite(m.get(key))}
            for lines in lines_per_seed]
  xs = sorted(set.intersection(*(set(c) for c in curves)))
  if not xs:
    return
  ys = np.array([[c[v] for v in xs] for c in curves])
  (line,) = ax.plot(xs, ys.mean(0), label=label, **style)
  ax.fill_between(xs, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.2, lw=0)


def weight_heatmaps(grid, *, title=None, cmap="RdBu_r", vmax=3.0):
  """A grid of heat plots of (already normalised and ordered) weight matrices, e.g. the paper's Figure 4.1.

  Args:
    grid: rows of `(panel title, 2-D array)` pairs; every row has the same number of panels.
    title: figure title.
    cmap: matplotlib colormap (diverging, centred on 0).
    vmax: colour range is [-vmax, vmax] (values are in units of the matrix's std when normalised).

  Returns:
    A matplotlib Figure.
  """
  plt = _plt()
  rows, cols = len(grid), max(len(r) for r in grid)
  fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False, layout="constrained")
  image = None
  for r, row in enumerate(grid):
    for c in range(cols):
      ax = axes[r][c]
      if c >= len(row):
        ax.axis("off")
        continue
      name, mat = row[c]
      image = ax.imshow(mat, cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest", aspect="auto")
      ax.set_title(name, fontsize=9)
      ax.set_xticks([])
      ax.set_yticks([])
  if image is not None:
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
  if title:
    fig.suptitle(title)
  return fig


def lm_loss_curve(records, floor=None):
  """train.gpt: training (and eval) loss against step from metrics.jsonl records; growth events as
  vertical lines, the data's loss floor (entropy rate of the synthetic language) as a dashed line."""
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6, 3.5))
  train, evals = [], []
  for r in records:
    if r.get("event") == "resume":  # a restarted run redoes the steps after its checkpoint
      train = [p for p in train if p[0] <= r["step"]]
      evals = [p for p in evals if p[0] <= r["step"]]
    elif "loss" in r and "event" not in r:
      train.append((r["step"], r["loss"]))
    elif "eval_loss" in r:
      evals.append((r["step"], r["eval_loss"]))
  bad = [p for p in train + evals if not _finite(p[1])]
  train, evals = [p for p in train if _finite(p[1])], [p for p in evals if _finite(p[1])]
  for pts, label in ((train, "train"), (evals, "eval")):
    if pts:
      ax.plot(*zip(*pts), label=label, marker="." if len(pts) < 30 else None)
  if bad:
    first = min(bad)
    ax.axvline(first[0], color="tab:red", lw=0.8, ls="--", label=f"loss {first[1]} from step {first[0]}")
  ys = [p[1] for p in train + evals] + ([floor] if floor is not None else [])
  if ys:  # the floor inside the axes, not on their edge
    lo, hi = min(ys), max(ys)
    pad = 0.06 * (hi - lo) if hi > lo else 0.1 * max(abs(hi), 1.0)
    ax.set_ylim(lo - pad, hi + pad)
  else:
    ax.text(0.5, 0.5, "no finite loss", transform=ax.transAxes, ha="center", va="center")
  for r in records:
    if r.get("event") == "grow":
      ax.axvline(r["step"], color="gray", lw=0.8, ls=":")
      ax.annotate(f"grow to {r['sizes'].get('embed')}", (r["step"], 1.0), xycoords=("data", "axes fraction"),
                  fontsize=7, va="top", rotation=90)
  if floor is not None:
    ax.axhline(floor, color="k", ls="--", lw=0.8, label=f"floor {floor:.3f} nats")
  ax.set_xlabel("step")
  ax.set_ylabel("cross-entropy (nats/token)")
  ax.legend(fontsize=8)
  return fig



# ----------------------------------------------------------------------------------------------
# Diagnostics figures (rcjax.diagnostics / rcjax.analyze): correlation matrices, max-abs-correlation
# bars, row/column-mean histograms and distributions across widths.
# ----------------------------------------------------------------------------------------------


def _short(name: str, width: int = 28) -> str:
  """A readable statistic label: '.weight' dropped, long HF prefixes shortened, ellipsis past `width`."""
  s = name.replace(".weight", "").replace("self_attn.", "attn.").replace("attention.", "attn.")
  s = s[len("layers/"):] if s.startswith("layers/") else s
  s = s.replace("query_key_value.", "qkv.").replace("post_attention_layernorm", "post_ln")
  s = s.replace("input_layernorm", "in_ln")
  return s if len(s) <= width else "…" + s[-(width - 1):]


def correlation_matrices(panels, *, title=None, ncols=None, annotate_max=20):
  """Correlation matrices of per-neuron statistics (the paper's Figure 4.2), one panel each.

  Args:
    panels: dicts with `title`, `names` (K), `corr` (K x K, NaN where undefined) and optionally `null`
      (K x K |corr| quantile of the permutation null: entries within it are printed in grey) and
      `groups` (`[(start index, label), ...]`: lines separating neuron axes in a block-diagonal matrix).
    title: figure title; ncols: panels per row.
    annotate_max: numbers are printed in the cells of matrices of at most this many statistics.
  """
  import numpy as np

  plt = _plt()
  n = len(panels)
  sizes = [max(len(p["names"]), 2) for p in panels]
  if n <= 4 and ncols is None:  # one row, each panel as wide as its matrix
    ratios = [k + 4 for k in sizes]
    height = 0.34 * max(sizes) + 2.6
    fig, axs = plt.subplots(1, n, figsize=(0.34 * sum(sizes) + 2.4 * n + 1.2, height), squeeze=False,
                            layout="constrained", gridspec_kw={"width_ratios": ratios})
  else:
    ncols = ncols or 3
    nrows = -(-n // ncols)
    cell = 0.34 * max(sizes) + 2.6
    fig, axs = plt.subplots(nrows, ncols, figsize=(cell * ncols + 1.0, cell * nrows + 0.8), squeeze=False,
                            layout="constrained")
  im = None
  for ax, p in zip(axs.flat, panels):
    corr = np.array(p["corr"], float)
    k = len(p["names"])
    np.fill_diagonal(corr, np.nan)
    ax.set_facecolor("0.92")  # undefined entries (diagonal, constant statistics, different axes)
    im = ax.imshow(np.ma.masked_invalid(corr), cmap="RdBu_r", vmin=-1, vmax=1)
    labels = [_short(s) for s in p["names"]]
    ax.set_xticks(range(k), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(k), labels, fontsize=7)
    ax.set_title(p.get("title", ""), fontsize=9)
    null = p.get("null")
    if k <= annotate_max:
      for i in range(k):
        for j in range(k):
          if i != j and not np.isnan(corr[i, j]):
            weak = null is not None and abs(corr[i, j]) <= np.asarray(null)[i, j]
            ax.text(j, i, f"{corr[i, j]:.2f}", ha="center", va="center", fontsize=6 if k > 10 else 7,
                    color="0.55" if weak else ("white" if abs(corr[i, j]) > 0.6 else "black"),
                    fontweight="normal" if weak else "bold")
    for start, _ in p.get("groups", [])[1:]:
      ax.axhline(start - 0.5, color="k", lw=0.8)
      ax.axvline(start - 0.5, color="k", lw=0.8)
  for ax in list(axs.flat)[n:]:
    ax.axis("off")
  if im is not None:
    fig.colorbar(im, ax=axs, shrink=0.6, label="correlation")
  note = ("bold: |corr| above the 99% permutation null; grey text: within it; grey cells: undefined"
          if any(len(p["names"]) <= annotate_max for p in panels) else "grey cells: undefined (other neuron axes)")
  fig.suptitle((title + "\n" if title else "") + note, fontsize=9)
  return fig


def max_abs_bars(labels, values, nulls, *, null95=None, annotations=None, title=None, xlabel="block"):
  """Bars of max |corr| (per block, or per model: the paper's Figure 4.4) with the null's 99% quantile
  (black tick) and optionally its 95% quantile (grey dashes); `annotations` (e.g. the pair reaching the
  maximum) are printed under each label."""
  import numpy as np

  plt = _plt()
  n = len(values)
  ticks = [str(l) for l in labels] if annotations is None else [f"{l}\n{a}" for l, a in zip(labels, annotations)]
  long = max(len(line) for t in ticks for line in t.split("\n"))
  width = max(4.5, n * (0.35 if annotations is None else max(1.4, 0.075 * long)) + 2.5)
  fig, ax = plt.subplots(figsize=(width, 3.6 + (0.5 if annotations is not None else 0)))
  x = np.arange(n)
  ax.bar(x, np.nan_to_num(np.asarray(values, float)), color="tab:blue", label="max |corr|")
  w = 0.42
  ax.hlines(nulls, x - w, x + w, color="k", lw=2, label="null 99%")
  if null95 is not None:
    ax.hlines(null95, x - w, x + w, color="0.5", lw=1.2, ls="--", label="null 95%")
  rotate = annotations is None and (n > 12 or long >= 8)
  ax.set_xticks(x, ticks, rotation=45 if rotate else 0, ha="right" if rotate else "center",
                fontsize=8 if annotations is None else 7)
  ax.set_ylim(0, 1.02)
  ax.set_ylabel("max |corr| (different leaves)")
  ax.set_xlabel(xlabel)
  if title:
    ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
  return fig


def _bins(vals, most: int = 40) -> int:
  import math

  return int(min(most, max(8, 1.5 * math.sqrt(min([len(v) for v in vals] or [64])))))


def _scale_groups(series, ratio: float = 5.0) -> list[list[str]]:
  """Names of `series` grouped so that one set of bins suits every member of a group: a series joins the
  first group whose combined 1-99% range stays within `ratio` times the narrowest member's range (so row
  means of ~1e-3 and norm scales of ~1 are never binned together). Constant series are left out."""
  import numpy as np

  groups = []  # [names, lo, hi, narrowest span]
  for name, v in series.items():
    v = np.ravel(np.asarray(v, float))
    v = v[np.isfinite(v)]
    if not v.size or np.ptp(v) == 0:
      continue
    lo, hi = np.quantile(v, [0.01, 0.99])
    span = max(hi - lo, 1e-3 * np.ptp(v))
    for g in groups:
      l, h, narrow = min(g[1], lo), max(g[2], hi), min(g[3], span)
      if h - l <= ratio * narrow:
        g[0].append(name)
        g[1:] = [l, h, narrow]
        break
    else:
      groups.append([[name], lo, hi, span])
  return [g[0] for g in groups]


def stat_histograms(panels, *, title=None, ncols=None, bins=None):
  """Histograms of per-neuron statistics (row means .R, column means .C, biases, scales) per neuron axis.

  Args:
    panels: dicts with `title` and `series` (`{name: vector}`). Series of comparable range are overlaid
      as step histograms (density) on shared bins; series whose ranges differ by more than 5x (row means
      of ~1e-3 beside norm scales of ~1) get panels of their own (`_scale_groups`), each with its own bins.
  """
  import numpy as np

  plt = _plt()
  cells = []
  for p in panels:
    groups = _scale_groups(p["series"]) or [[]]
    for k, names in enumerate(groups):
      part = f" ({k + 1}/{len(groups)}, own bins)" if len(groups) > 1 else ""
      cells.append((p.get("title", "") + part, {n: np.ravel(np.asarray(p["series"][n], float)) for n in names}))
  n = len(cells)
  ncols = ncols or min(n, 3)
  nrows = -(-n // ncols)
  fig, axs = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.2 * nrows), squeeze=False)
  for ax, (name, series) in zip(axs.flat, cells):
    vals = list(series.values())
    edges = np.histogram_bin_edges(np.concatenate(vals) if vals else [0.0], bins=bins or _bins(vals))
    for label, v in series.items():
      ax.hist(v, bins=edges, density=True, histtype="step", lw=1.3, label=_short(label))
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("per-neuron value", fontsize=8)
    ax.tick_params(labelsize=7)
    if series:
      ax.legend(fontsize=6, loc="best")
  for ax in list(axs.flat)[n:]:
    ax.axis("off")
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  return fig


def distribution_grid(row_labels, col_labels, cells, *, title=None, bins=None):
  """Distributions of one statistic for several models (the paper's Figure 4.5): rows (e.g. training
  steps) x columns (e.g. blocks); `cells[r][c]` is `{'series': {label: vector}, 'text': str}` (the text,
  e.g. the Wasserstein distances, goes above the panel). A third series is drawn dotted grey."""
  import numpy as np

  plt = _plt()
  nr, nc = len(row_labels), len(col_labels)
  fig, axs = plt.subplots(nr, nc, figsize=(3.6 * nc + 0.6, 2.7 * nr + 1.0), squeeze=False)
  colors = ["tab:blue", "tab:orange", "0.45"]
  handles = {}
  for r in range(nr):
    for c in range(nc):
      ax, cell = axs[r, c], cells[r][c]
      vals = [np.asarray(v, float) for v in cell["series"].values()]
      edges = np.histogram_bin_edges(np.concatenate(vals), bins=bins or 2 * _bins(vals))
      for label, v, color in zip(cell["series"], vals, colors):
        *_, patches = ax.hist(v, bins=edges, density=True, histtype="step", lw=1.3, color=color,
                              ls=":" if color == "0.45" else "-", label=label)
        handles.setdefault(label if color != "0.45" else "reference (" + label + ")", patches[0])
      ax.set_title((col_labels[c] + "\n" if r == 0 else "") + cell.get("text", ""), fontsize=7.5)
      ax.tick_params(labelsize=7)
      if c == 0:
        ax.set_ylabel(f"{row_labels[r]}\ndensity", fontsize=9)
  fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(3, len(handles)), fontsize=8,
             frameon=False)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout(rect=(0, 0.06 if nr > 1 else 0.1, 1, 1))
  return fig
