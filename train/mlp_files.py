"""The files of a train.mlp run that both training and a transfer from a run read: its metrics lines and
the optimizer state saved with a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import jax

from rcjax.checkpoint import Checkpointer


def read_metrics(path) -> list[dict]:
  """The lines of a metrics.jsonl file (an empty list if it does not exist)."""
  path = Path(path)
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def restore_opt_state(ckpt: Checkpointer, step: int, params, tx):
  """The optimizer state saved at `step` (plain SGD has none: then a fresh `tx.init(params)`)."""
  target = jax.eval_shape(tx.init, params)
  if not jax.tree.leaves(target):
    return tx.init(params)
  return ckpt.restore(step, params=params, opt_state=target)["opt_state"]
