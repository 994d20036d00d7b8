"""Matplotlib figures (the paper's figures and training curves). Drawing only: every function takes
already-computed numbers (from `rcjax.diagnostics`, metrics files, ...) and returns a Figure or writes a PNG.
matplotlib is imported lazily with the Agg backend, so importing rcjax stays light and headless-safe."""

from __future__ import annotations


def _plt():
  import matplotlib

  matplotlib.use("Agg", force=False)
  import matplotlib.pyplot as plt

  return plt


def save(fig, path) -> str:
  """Write `fig` as a PNG at `path` (parent folders created) and close it; returns the path."""
  import os

  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  _plt().close(fig)
  return path


# ----------------------------------------------------------------------------------------------
# Training figures (train.mlp / train.gpt): loss and accuracy curves, weight heat plots.
# ----------------------------------------------------------------------------------------------

_LABELS = {"train_loss": "training loss", "test_loss": "test loss", "test_acc": "test accuracy",
           "train_acc": "training accuracy", "epoch": "epoch", "step": "SGD step",
           "flops": "training FLOPs (cumulative)"}


def training_curves(runs, *, panels=("train_loss", "test_acc"), x="epoch", title=None, styles=None,
                    log_y=("train_loss", "test_loss")):
  """Curves of metrics (one panel per metric, one line per run), transfer events marked by a dot.

  Args:
    runs: `{label: [metrics dict, ...]}`, e.g. the lines of train.mlp's `metrics.jsonl` files. Lines
      whose `event` is 'transfer' are drawn as the first point of the transferred part (a dot), so a
      combined run shows the jump (or the absence of one) at the transfer.
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
    for label, lines in runs.items():
      pts = [(m[x], m[key]) for m in lines if key in m and x in m]
      if not pts:
        continue
      xs, ys = zip(*pts)
      (line,) = ax.plot(xs, ys, label=label, **styles.get(label, {}))
      for m in lines:
        if m.get("event") == "transfer" and key in m:
          ax.plot([m[x]], [m[key]], "o", color=line.get_color(), markersize=4)
    ax.set_xlabel(_LABELS.get(x, x))
    ax.set_ylabel(_LABELS.get(key, key))
    if key in log_y:
      ax.set_yscale("log")
    if x == "flops":
      ax.set_xscale("log")
    ax.grid(alpha=0.3)
  axes[0][-1].legend(fontsize=7, loc="best")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return fig


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
  fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False)
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


# ----------------------------------------------------------------------------------------------
# Diagnostics figures (rcjax.diagnostics / rcjax.analyze): correlation matrices, max-abs-correlation
# bars, row/column-mean histograms and distributions across widths.
# ----------------------------------------------------------------------------------------------
