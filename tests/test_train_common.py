"""train.common: the run-directory checks and metrics files both trainers share (no JAX work: fast)."""

import argparse
import dataclasses
import json
import typing

import pytest

from train import common


@dataclasses.dataclass(frozen=True)
class C:
  width: int = common.field(8, "hidden width")
  epochs: int = common.field(3, "epochs")
  transfer_from: typing.Optional[str] = common.field(None, "source run")
  out: str = common.field("", "run directory")
  progress: bool = common.field(True, "progress bar")


def check(out, config, **kw):
  common.check_run_dir(out, config, prog="train.x", resumable=("epochs", "out", "progress"), counts_up="epochs",
                       **kw)


def test_what_a_run_directory_may_hold_before_its_config(tmp_path):
  check(tmp_path / "missing", C())
  (tmp_path / ".config.json.123").write_text("{")  # an interrupted atomic write
  check(tmp_path, C())
  (tmp_path / "checkpoints").mkdir()
  with pytest.raises(ValueError, match=r"is not a train.x run directory \(no config.json; it holds \['checkpoints'\]"):
    check(tmp_path, C())
  check(tmp_path, C(), before_config=("checkpoints",))
  (tmp_path / "notes.txt").write_text("mine")
  with pytest.raises(ValueError, match=r"it holds \['notes.txt'\]\); choose another --out"):
    check(tmp_path, C(), before_config=("checkpoints",))
  (tmp_path / "file").write_text("")
  with pytest.raises(ValueError, match="exists and is not a directory"):
    check(tmp_path / "file", C())


def test_config_differences_are_listed_old_to_new(tmp_path):
  out = tmp_path / "a" / "run"
  common.write_config(out, C(width=8, transfer_from=str(tmp_path / "a" / "src"), out=str(out)))
  assert (out / "config.json").read_text().endswith("}\n") and not list(out.glob(".config.json.*"))
  check(out, C(width=8, epochs=5, progress=False, transfer_from=str(tmp_path / "a" / "src"), out=str(out)))
  with pytest.raises(ValueError, match=r"different config \(width: 8 -> 16, epochs: 3 -> 2 \(--epochs may grow"):
    check(out, C(width=16, epochs=2, transfer_from=str(tmp_path / "a" / "src"), out=str(out)))
  moved = tmp_path / "b"
  (tmp_path / "a").rename(moved)  # the source sits at the same place relative to the run: the same run
  check(moved / "run", C(transfer_from=str(moved / "src"), out=str(moved / "run")))
  with pytest.raises(ValueError, match="transfer_from: "):
    check(moved / "run", C(transfer_from=str(tmp_path / "elsewhere"), out=str(moved / "run")))


def test_a_field_newer_than_the_config_json_compares_its_default(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"epochs": 3}))
  check(tmp_path, C())
  with pytest.raises(ValueError, match=r"width: 8 -> 9"):
    check(tmp_path, C(width=9))
  for text, what in (("{", "is not valid JSON"), ("[1]", r"is not a JSON object \(it holds a list\)")):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match=what):
      check(tmp_path, C())


def test_truncate_metrics_keeps_lines_as_written_and_drops_a_partial_one(tmp_path):
  path = tmp_path / "metrics.jsonl"
  assert common.truncate_metrics(path, lambda r: True) == [] and not path.exists()
  common.write_metrics(path, [{"step": 1, "loss": float("nan")}, {"step": 2, "loss": 1.5}, {"step": 3}])
  assert path.read_text().splitlines()[0] == '{"step": 1, "loss": null}'  # strict JSON
  with open(path, "a") as f:
    f.write('{"step": 4, "lo')  # a killed run's partial last line
  assert [r["step"] for r in common.read_metrics(path)] == [1, 2, 3]
  kept = common.truncate_metrics(path, lambda r: r["step"] <= 2)
  assert kept == [{"step": 1, "loss": None}, {"step": 2, "loss": 1.5}]
  assert path.read_text() == '{"step": 1, "loss": null}\n{"step": 2, "loss": 1.5}\n'
  assert not list(tmp_path.glob("*.tmp"))


def test_flags_come_from_the_fields():
  p = common.add_flags(argparse.ArgumentParser(formatter_class=common.HelpFormatter), C)
  assert C(**vars(p.parse_args([]))) == C()
  assert C(**vars(p.parse_args(["--width", "4", "--transfer-from", "r", "--no-progress"]))) == C(
      width=4, transfer_from="r", progress=False)
  text = " ".join(p.format_help().split())
  assert "--width WIDTH hidden width (default: 8)" in text and "--no-progress turn off: progress bar" in text
