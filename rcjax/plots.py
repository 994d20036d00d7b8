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
  for pts, label in ((train, "train"), (evals, "eval")):
    if pts:
      ax.plot(*zip(*pts), label=label, marker="." if len(pts) < 30 else None)
  for r in records:
    if r.get("event") == "grow":
      ax.axvline(r["step"], color="gray", lw=0.8, ls=":")
      ax.annotate(f"grow to {r['sizes'].get('embed')}", (r["step"], ax.get_ylim()[1]), fontsize=7,
                  va="top", rotation=90)
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
