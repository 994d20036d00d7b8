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


# ----------------------------------------------------------------------------------------------
# Diagnostics figures (rcjax.diagnostics / rcjax.analyze): correlation matrices, max-abs-correlation
# bars, row/column-mean histograms and distributions across widths.
# ----------------------------------------------------------------------------------------------
