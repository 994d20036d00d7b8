"""Transfer mid-training for train.mlp: load another run's checkpoint, check it fits, grow or shrink it.

Used by `python -m train.mlp --transfer-from RUN_DIR --transfer-epoch E ...`; see train/mlp.py.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any


import rcjax
from rcjax.checkpoint import Checkpointer
from train.common import read_metrics, restore_opt_state


@dataclasses.dataclass
class Source:
  """The transferred state a run continues from.

  Attributes:
    params, opt_state: transferred to the target width (boxed).
    step, flops: SGD steps and cumulative training FLOPs of the source run up to the transfer epoch.
    lines: the source's metrics lines up to (and including) the transfer epoch.
    event: fields of the metrics line right after the transfer (`event: 'transfer'`, ...).
  """
  params: Any
  opt_state: Any
  step: int
  flops: int
  lines: list
  event: dict


def _structure(leaves: dict) -> dict:
  """depth, input size, classes, parametrization, biases and widths of a checkpoint's param metadata."""
  kernels = {int(m.group(1)): v for p, v in leaves.items()
             if (m := re.fullmatch(r"\['Dense_(\d+)'\]\['kernel'\]", p))}
  if not kernels or sorted(kernels) != list(range(len(kernels))):
    raise ValueError("it does not hold a train.mlp MLP (Dense_0 .. Dense_L kernels)")
  depth = len(kernels)
  return {"depth": depth, "input": kernels[0]["shape"][0], "classes": kernels[depth - 1]["shape"][1],
          "param": kernels[0]["param"], "bias": any(p.endswith("['bias']") for p in leaves),
          "width": kernels[0]["shape"][1]}


def load_source(config, data, optimizer, key) -> Source:
  """Load `config.transfer_from` at `config.transfer_epoch`, check it fits `config` and `data`, transfer.

  Args:
    config: the target run's `train.mlp.Config`.
    data: the target run's `train.data.Dataset` (input size and classes must match the source's).
    optimizer: `Config -> optax transformation` (the source's optimizer state is restored with the
      source's config and transferred with the params when the optimizers match).
    key: transfer key.

  Raises:
    FileNotFoundError: no run directory, or no checkpoint at that epoch.
    ValueError: an incompatible checkpoint (depth, input size, classes, parametrization, biases, init,
      muP base), or a transfer rcjax refuses (e.g. --exact with a shrink).
  """
  src = Path(config.transfer_from)
  where = f"--transfer-from {src}"
  ckpt, meta, s = _checked_source(config, data, src, where)
  epoch = config.transfer_epoch
  src_cfg = meta.get("config") or {}
  _check_flags(config, src_cfg, where)
  src_config = dataclasses.replace(config, **{k: v for k, v in src_cfg.items()
                                              if k in {f.name for f in dataclasses.fields(config)}})
  params = ckpt.restore(epoch)["params"]
  src_tx = optimizer(src_config)
  same_opt = src_config.momentum == config.momentum
  opt_state = restore_opt_state(ckpt, epoch, params, src_tx)
  sizes = {f"hidden_{l}": config.width for l in range(config.depth - 1)}
  kw = dict(sampler=config.sampler, random_rate=config.random_rate, norm_rate=config.norm_rate,
            exact=config.exact, check_finite=True, split_rate=config.split_rate, cancel_rate=config.cancel_rate)
  try:
    if same_opt:
      params, opt_state = rcjax.transfer((params, opt_state), key, sizes, **kw)
    else:  # a different optimizer: transfer params, start a fresh optimizer state
      params = rcjax.transfer(params, key, sizes, **kw)
      opt_state = optimizer(config).init(params)
  except (ValueError, TypeError) as e:
    raise ValueError(f"{where}: transfer failed: {e}") from None
  extra = meta.get("extra") or {}
  lines = [m for m in read_metrics(src / "metrics.jsonl") if m["epoch"] <= epoch]
  event = {"event": "transfer", "from_width": s["width"], "from_run": str(src), "random_rate": config.random_rate,
           "norm_rate": config.norm_rate, "sampler": config.sampler, "exact": config.exact,
           "split_rate": config.split_rate, "cancel_rate": config.cancel_rate}
  return Source(params, opt_state, int(extra.get("step", 0)), int(extra.get("flops", 0)), lines, event)


def _checked_source(config, data, src: Path, where: str):
  """The source run's checkpointer, metadata at `config.transfer_epoch` and structure, checked against
  this run's depth, input size, classes, parametrization and biases."""
  if not src.is_dir():
    raise FileNotFoundError(f"{where}: no such run directory")
  if not (src / "checkpoints").is_dir():
    raise FileNotFoundError(f"{where} holds no checkpoints/ folder (not a train.mlp run directory?)")
  ckpt = Checkpointer(src / "checkpoints", read_only=True)
  epoch = config.transfer_epoch
  if epoch not in ckpt.all_steps():
    raise FileNotFoundError(f"{where} has no checkpoint at epoch {epoch}; saved epochs: {ckpt.all_steps()}")
  meta = ckpt.metadata(epoch)
  try:
    s = _structure(meta["leaves"])
  except ValueError as e:
    raise ValueError(f"{where}: incompatible checkpoint: {e}") from None
  want = {"depth": config.depth, "input": data.input_dim, "classes": data.num_classes, "param": config.param,
          "bias": config.bias != "none"}
  names = {"depth": "depth (weight layers)", "input": "input size", "classes": "number of classes",
           "param": "parametrization", "bias": "biases"}
  for k, v in want.items():
    if s[k] != v:
      raise ValueError(f"{where}: incompatible checkpoint at epoch {epoch}: its {names[k]} is {s[k]!r}, "
                       f"this run's is {v!r} (--dataset {config.dataset}, --depth {config.depth}, "
                       f"--param {config.param}, --bias {config.bias})")
  return ckpt, meta, s


def _check_flags(config, src_cfg: dict, where: str) -> None:
  """This run's init, biases and muP base must be the source's (a transfer keeps every leaf's RC metadata)."""
  ours = {"init": config.init, "bias": config.bias}
  if config.bias == "constant":
    ours["bias_value"] = config.bias_value
  if config.param == "mup" and config.base:
    ours["base"] = config.base
  theirs = dict(src_cfg, base=src_cfg.get("base") or src_cfg.get("width"))
  for k, v in ours.items():
    if k in src_cfg and theirs[k] != v:
      flag = "--" + k.replace("_", "-")
      raise ValueError(f"{where} was trained with {flag} {theirs[k]}, this run has {flag} {v}: a transfer "
                       f"keeps the source's {'muP base' if k == 'base' else 'init and biases'}; pass "
                       f"{flag} {theirs[k]}" + (" or leave it out" if k == "base" else ""))
