"""The paper's figures drawn for one column of a paper: 3.3 in wide, text 6-7 pt at that size, PNG at 300 dpi.

Drawing only, like `rcjax.plots` (whose helpers it reuses): panels are stacked rather than side by side,
legends go below the panels, and correlation matrices show only the pairs that are defined (statistics
sharing a neuron index) as a small grid with their values printed, instead of a mostly empty matrix.
"""

from __future__ import annotations

import contextlib
import os

from rcjax import plots

WIDTH = 3.3  # inches: one column of a two-column paper
DPI = 300
STYLE = {"font.size": 7, "axes.titlesize": 7, "axes.labelsize": 7, "xtick.labelsize": 6.5, "ytick.labelsize": 6.5,
         "legend.fontsize": 6, "lines.linewidth": 1.0, "axes.linewidth": 0.6, "xtick.major.width": 0.6,
         "ytick.major.width": 0.6, "figure.titlesize": 7, "legend.frameon": False}


@contextlib.contextmanager
def style():
  """matplotlib settings of the column figures (fonts are fixed when an artist is made: draw inside)."""
  with plots._plt().rc_context(STYLE):
    yield


def save(fig, path, *, pdf: bool = True) -> str:
  """`rcjax.plots.save` at 300 dpi (a 3.3 in figure is ~1000 px wide); returns the PNG's path."""
  return plots.save(fig, path, pdf=pdf, dpi=DPI)


def curves(runs, *, panels=("train_loss", "test_acc"), x="epoch", title=None, styles=None, bands=False):
  """Metric curves stacked vertically (one panel per metric), the legend below; transfers and divergence
  marked as in `rcjax.plots.training_curves`. With `bands`, `runs` is a list with one `{label: lines}` per
  seed, drawn as the mean (a line) and min..max (a band) as in `rcjax.plots.seed_band_curves`."""
  import numpy as np

  with style():
    plt = plots._plt()
    fig, axes = plt.subplots(len(panels), 1, figsize=(WIDTH, 1.55 * len(panels) + 1.1), sharex=True,
                             layout="constrained")
    axes = np.atleast_1d(axes)
    styles = styles or {}
    labels = list(runs[0] if bands else runs)
    for ax, key in zip(axes, panels):
      for label in labels:
        if bands:
          plots.seed_band(ax, [r[label] for r in runs], x, key, label, styles.get(label, {}))
        else:
          lines = runs[label]
          pts = [(m[x], m[key]) for m in lines if key in m and x in m and plots._finite(m[key])]
          (line,) = ax.plot(*(zip(*pts) if pts else ((), ())), label=label, **styles.get(label, {}))
          plots._mark_transfers(ax, lines, x, key, line.get_color())
          plots._diverged(ax, lines, x, key, line.get_color())
      ax.set_ylabel(plots._LABELS.get(key, key))
      if key.endswith("loss"):
        ax.set_yscale("log")
      ax.grid(alpha=0.3, lw=0.5)
    axes[-1].set_xlabel(plots._LABELS.get(x, x))
    if x == "flops":
      axes[-1].set_xscale("log")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=2)
    if title:
      fig.suptitle(title)
  return fig


def heatmaps(grid, *, title=None, cmap="RdBu_r", vmax=3.0):
  """`rcjax.plots.weight_heatmaps` at one column: rows of `(panel title, matrix)`, one colorbar."""
  with style():
    plt = plots._plt()
    rows, cols = len(grid), max(len(r) for r in grid)
    fig, axes = plt.subplots(rows, cols, figsize=(WIDTH, 1.2 * rows + 0.5), squeeze=False, layout="constrained")
    image = None
    for r, row in enumerate(grid):
      for c in range(cols):
        ax = axes[r][c]
        ax.set_xticks([])
        ax.set_yticks([])
        if c >= len(row):
          ax.axis("off")
          continue
        name, mat = row[c]
        image = ax.imshow(mat, cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest", aspect="auto")
        ax.set_title(name, fontsize=6)
    if image is not None:
      fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, pad=0.02, aspect=30)
    if title:
      fig.suptitle(title)
  return fig


def pair_grid(panels, *, title=None):
  """Correlations of the defined pairs only (the paper's Figure 4.2 at one column), one panel per model,
  stacked: `panels` are dicts with `title`, `rows` (pair labels, R), `cols` (neuron axes, C), `corr` (R x C,
  NaN where a pair does not exist) and `above` (R x C booleans: |corr| above the permutation null).
  Values are printed in each cell, bold above the null and grey within it."""
  import numpy as np

  with style():
    plt = plots._plt()
    heights = [len(p["rows"]) + 1.2 for p in panels]
    fig, axs = plt.subplots(len(panels), 1, figsize=(WIDTH, 0.23 * sum(heights) + 0.9), squeeze=False,
                            layout="constrained", gridspec_kw={"height_ratios": heights})
    im = None
    for ax, p in zip(axs[:, 0], panels):
      corr = np.array(p["corr"], float)
      ax.set_facecolor("0.92")
      im = ax.imshow(np.ma.masked_invalid(corr), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
      ax.set_yticks(range(len(p["rows"])), p["rows"])
      prefix = os.path.commonprefix(list(p["cols"])) if len(p["cols"]) > 1 else ""
      ax.set_xticks(range(len(p["cols"])), [c[len(prefix):] for c in p["cols"]])
      ax.set_xlabel(f"neuron axis ({prefix}i)" if prefix else "neuron axis", labelpad=1)
      ax.tick_params(length=0)
      ax.set_title(p["title"], loc="left")
      for i in range(corr.shape[0]):
        for j in range(corr.shape[1]):
          if np.isfinite(corr[i, j]):
            up = bool(p["above"][i][j])
            ax.text(j, i, f"{corr[i, j]:.2f}", ha="center", va="center", fontsize=6,
                    color=("white" if abs(corr[i, j]) > 0.6 else "black") if up else "0.45",
                    fontweight="bold" if up else "normal")
    fig.colorbar(im, ax=axs[:, 0].tolist(), location="bottom", shrink=0.6, aspect=40, label="correlation")
    if title:
      fig.suptitle(title)
  return fig


def bars(labels, values, nulls, *, null95=None, spread=None, annotations=None, title=None, ylabel=None):
  """Max |corr| per model (the paper's Figure 4.4) at one column: a bar per model with the null's 99% (black)
  and 95% (grey dashes) quantiles; `spread` (per bar a (low, high) pair, e.g. min..max over seeds) is an
  error bar; `annotations` go under the labels."""
  import numpy as np

  with style():
    plt = plots._plt()
    n = len(values)
    fig, ax = plt.subplots(figsize=(WIDTH, 2.5 + (0.35 if annotations else 0)), layout="constrained")
    x = np.arange(n)
    v = np.nan_to_num(np.asarray(values, float))
    err = None if spread is None else np.abs(np.array(spread, float).T - v)
    ax.bar(x, v, color="tab:blue", label="max |corr|", yerr=err, capsize=2, error_kw={"lw": 0.8})
    ax.hlines(nulls, x - 0.42, x + 0.42, color="k", lw=1.5, label="null 99%")
    if null95 is not None:
      ax.hlines(null95, x - 0.42, x + 0.42, color="0.5", lw=1, ls="--", label="null 95%")
    ticks = [str(l) for l in labels] if not annotations else [f"{l}\n{a}" for l, a in zip(labels, annotations)]
    ax.set_xticks(x, ticks, fontsize=6)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel or "max |corr| (different leaves)")
    ax.legend(loc="upper left", ncol=3)
    if title:
      ax.set_title(title)
  return fig


def distributions(row_labels, col_labels, cells, *, title=None, bins=None):
  """`rcjax.plots.distribution_grid` (the paper's Figure 4.5) at one column: rows (steps) x columns (weights),
  each cell's text (the distances) inside its panel, one legend below."""
  import numpy as np

  with style():
    plt = plots._plt()
    nr, nc = len(row_labels), len(col_labels)
    fig, axs = plt.subplots(nr, nc, figsize=(WIDTH, 1.15 * nr + 0.7), squeeze=False, layout="constrained")
    colors, handles = ["tab:blue", "tab:orange", "0.45"], {}
    for r in range(nr):
      for c in range(nc):
        ax, cell = axs[r, c], cells[r][c]
        vals = [np.asarray(v, float) for v in cell["series"].values()]
        edges = np.histogram_bin_edges(np.concatenate(vals), bins=bins or 2 * plots._bins(vals))
        for label, v, color in zip(cell["series"], vals, colors):
          *_, patches = ax.hist(v, bins=edges, density=True, histtype="step", lw=0.9, color=color,
                                ls=":" if color == "0.45" else "-")
          handles.setdefault(label if color != "0.45" else "reference (" + label + ")", patches[0])
        ax.text(0.02, 0.96, cell.get("text", ""), transform=ax.transAxes, va="top", fontsize=5.5)
        ax.set_yticks([])
        if r == 0 and nc > 1:
          ax.set_title(col_labels[c])
        if c == 0:
          ax.set_ylabel(row_labels[r])
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=2)
    if title:
      fig.suptitle(title)
  return fig
