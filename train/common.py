"""What train.mlp and train.gpt share: config fields that carry their flag's help, and the run directory
(`--out`): the check that it holds nothing but a run of this config, config.json, metrics.jsonl (read,
rewritten atomically, cut back to the checkpoint a run resumes from) and the optimizer state of a
checkpoint.

A run directory holds `config.json` (the config, as `dataclasses.asdict`), `metrics.jsonl` (one strict
JSON record a line) and `checkpoints/`; each trainer adds its plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Iterable

import jax

from rcjax import _cli
from rcjax.checkpoint import Checkpointer

# Config fields that name files: two spellings of one path (relative, ./, a trailing /) are the same.
PATH_FIELDS = ("out", "transfer_from", "data_dir")


def field(default, help_: str, choices=None):
  """A config field whose metadata holds its flag's --help (and the flag's choices).

  >>> import dataclasses
  >>> @dataclasses.dataclass(frozen=True)
  ... class C:
  ...   width: int = field(8, "hidden width")
  >>> dataclasses.fields(C)[0].metadata["help"]
  'hidden width'
  """
  return dataclasses.field(default=default, metadata={"help": help_, "choices": choices})


def flag(name: str) -> str:
  """The command-line flag of a config field: `transfer_from` -> `--transfer-from`."""
  return "--" + name.replace("_", "-")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
  """Adds '(default: X)' once: not to on/off flags or None defaults, nor to a help that names its default."""

  def _get_help_string(self, action):
    if action.default is None or isinstance(action.default, bool) or "default" in (action.help or ""):
      return action.help
    return super()._get_help_string(action)


def add_flags(p: argparse.ArgumentParser, config_class) -> argparse.ArgumentParser:
  """Add a flag for every field of a config dataclass made with `field` (train.mlp's flags): the field's
  default, choices and help; a bool field that is on by default is turned off by `--no-NAME`, one that is
  off turned on by `--NAME`. Returns `p`; `config_class(**vars(p.parse_args(argv)))` is the config."""
  hints = typing.get_type_hints(config_class)
  for f in dataclasses.fields(config_class):
    kind = hints[f.name]
    if kind is bool:
      if f.default:
        p.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false",
                       help=f"turn off: {f.metadata['help']} (on by default)")
      else:
        p.add_argument(flag(f.name), dest=f.name, action="store_true", help=f.metadata["help"])
      continue
    if kind not in (int, float, str):
      kind = str  # Optional[str]
    p.add_argument(flag(f.name), dest=f.name, type=kind, default=f.default, choices=f.metadata["choices"],
                   help=f.metadata["help"])
  return p


# --- the run directory -----------------------------------------------------------------------------

def check_run_dir(out, config, *, prog: str, resumable: Iterable[str], counts_up: str | None = None,
                  before_config: Iterable[str] = ()) -> None:
  """Refuse an --out that holds something else than a run of `config` (a frozen config dataclass); nothing
  is written. It may not exist yet, be empty, or hold only what a run writes before its config.json: the
  `.config.json.*` of an interrupted write, and the entries `before_config`.

  Args:
    out: the run directory.
    config: this run's config; its fields other than `resumable` must equal those in config.json (a
      field newer than the run's config.json compares its default; paths compare where they point, and
      `transfer_from` also by its place relative to the run, for a moved folder of runs).
    prog: the trainer named in the messages (train.mlp, train.gpt).
    resumable: fields that may change between a run and its resumption.
    counts_up: a resumable field that may grow, not shrink (train.mlp's epochs).
    before_config: what the trainer creates in `out` before config.json (train.gpt: `checkpoints`).

  Raises:
    ValueError: one line naming the directory and what is wrong.
  """
  out = Path(out)
  if not out.exists():
    return
  if not out.is_dir():
    raise ValueError(f"--out {out} exists and is not a directory")
  cfg = out / "config.json"
  if not cfg.exists():
    other = sorted(n for n in os.listdir(out) if n not in before_config and not n.startswith(".config.json."))
    if other:
      raise ValueError(f"--out {out} exists and is not a {prog} run directory (no config.json; it holds "
                       f"{other[:3]}); choose another --out")
    return
  old = read_config(cfg)
  diffs = config_diffs(old, config, resumable)
  if counts_up and isinstance(old.get(counts_up), int) and getattr(config, counts_up) < old[counts_up]:
    diffs.append(f"{counts_up}: {old[counts_up]} -> {getattr(config, counts_up)} "
                 f"({flag(counts_up)} may grow, not shrink)")
  if diffs:
    raise ValueError(f"--out {out} holds a run with a different config ({', '.join(diffs)}); rerun with "
                     "the same flags to resume it, or choose another --out")


def read_config(path) -> dict:
  """A run's config.json as a dict; ValueError naming the file if it is not a JSON object."""
  try:
    old = json.loads(Path(path).read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e}); fix or remove it") from None
  if not isinstance(old, dict):
    raise ValueError(f"{path} is not a JSON object (it holds a {type(old).__name__}); fix or remove it")
  return old


def config_diffs(old: dict, config, resumable: Iterable[str]) -> list[str]:
  """`field: old -> new` for each field of `config` that differs from the recorded `old` (see
  `check_run_dir`)."""
  defaults = {f.name: f.default for f in dataclasses.fields(config)}  # fields newer than the run's config.json
  new = dataclasses.asdict(config)

  def same(k, a, b):  # a path spelled another way, or a source at the same place relative to the run
    if a == b:
      return True
    if k not in PATH_FIELDS or not (a and b and isinstance(a, str) and isinstance(b, str)):
      return False
    return os.path.realpath(a) == os.path.realpath(b) or (k == "transfer_from" and (
        os.path.relpath(a, old.get("out") or ".") == os.path.relpath(b, new.get("out") or ".")))

  return [f"{k}: {old.get(k, defaults[k])!r} -> {v!r}" for k, v in new.items()
          if k not in resumable and not same(k, old.get(k, defaults[k]), v)]


def write_config(out, config) -> None:
  """Write `out/config.json` (creating `out`) atomically: a crash mid-write leaves the old file, and
  other processes never read a partial one."""
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  tmp = out / f".config.json.{os.getpid()}"
  tmp.write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
  os.replace(tmp, out / "config.json")


# --- metrics.jsonl ---------------------------------------------------------------------------------

def metrics_records(path) -> list[tuple[str, Any]]:
  """(line, parsed record) for each line of a metrics.jsonl file (none if it does not exist); a line that
  does not parse (the partial last line of a killed run) is skipped."""
  out = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        if not line.strip():
          continue
        try:
          out.append((line, json.loads(line)))
        except ValueError:
          continue
  return out


def read_metrics(path) -> list:
  """The records of a metrics.jsonl file (an empty list if it does not exist)."""
  return [rec for _, rec in metrics_records(path)]


def _replace_text(path, text: str) -> None:
  """Write `path` through a temporary file and a rename: the old file stays whole if the write fails, and
  the error names `path` (a write's ENOSPC carries no file name)."""
  path = Path(path)
  tmp = path.with_name(path.name + ".tmp")
  try:
    tmp.write_text(text)
  except OSError as e:
    tmp.unlink(missing_ok=True)
    raise OSError(e.errno, e.strerror, str(path)) from e
  os.replace(tmp, path)


def write_metrics(path, records: list[dict]) -> None:
  """Replace metrics.jsonl by `records`, one strict JSON line each (NaN/inf as null)."""
  _replace_text(path, "".join(_cli.json_line(m) + "\n" for m in records))


def truncate_metrics(path, keep: Callable[[Any], bool]) -> list:
  """Cut metrics.jsonl back to the records `keep` accepts (on resume: those up to the checkpoint resumed
  from, so no step is logged twice), each line as it was; returns them. A missing file stays missing."""
  if not os.path.exists(path):
    return []
  kept = [(line, rec) for line, rec in metrics_records(path) if keep(rec)]
  _replace_text(path, "".join(line if line.endswith("\n") else line + "\n" for line, _ in kept))
  return [rec for _, rec in kept]


# --- checkpoints -----------------------------------------------------------------------------------

def resume_step(ckpt_dir, prog: str, *, main: bool = True, sync: Callable[[], None] = lambda: None) -> int | None:
  """The newest checkpoint step in `ckpt_dir` that verifies (None: no checkpoint). Corrupt steps are
  reported in one line each (`prog: ...`, from the `main` process) and, after `sync` (a barrier: every
  process has verified), moved by the main process to `checkpoints.corrupt/`. Raises `CorruptCheckpoint`
  if none verifies."""
  if not os.path.isdir(ckpt_dir):
    return None
  report = (lambda message: print(f"{prog}: {message}", file=sys.stderr)) if main else None
  ck = Checkpointer(ckpt_dir, read_only=True)
  good = ck.latest_good_step(report)
  sync()
  if main:
    ck.set_aside_after(good, report)
  return good


def quiet_logs() -> None:
  """Drop orbax's warnings on every read-only checkpoint folder a run opens (e.g. the transfer source), and
  its traceback of a failed save (the error is reported in one line; with --debug, kept)."""
  from rcjax.checkpoint import _no_read_only_warning
  from rcjax.integrity import quiet_orbax_noise
  logging.getLogger("absl").addFilter(_no_read_only_warning)  # a no-op if already added
  if not _cli.debugging(None):
    quiet_orbax_noise()


def restore_opt_state(ckpt: Checkpointer, step: int, params, tx):
  """The optimizer state saved at `step` (plain SGD has none: then a fresh `tx.init(params)`)."""
  target = jax.eval_shape(tx.init, params)
  if not jax.tree.leaves(target):
    return tx.init(params)
  return ckpt.restore(step, params=params, opt_state=target)["opt_state"]
