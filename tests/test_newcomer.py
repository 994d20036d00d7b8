"""The newcomer path: `python -m train.mlp` on a fresh machine (no network, no CIFAR-10) trains on the embedded
digits and says so; `--dataset auto` resolves once and is recorded; help texts, progress bars, plots."""

import io
import json
import math
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from rcjax import _progress, plots
from rcjax.hf import synthetic as hf_synthetic
from train import data as data_lib
from train import mlp

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _closed_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_fresh_machine_trains_on_digits_and_says_so(tmp_path):
  empty = tmp_path / "tfds"
  empty.mkdir()
  dead = f"http://127.0.0.1:{_closed_port()}"  # any network access fails at once
  env = {**os.environ, "TFDS_DATA_DIR": str(empty), "https_proxy": dead, "http_proxy": dead,
         "HTTPS_PROXY": dead, "HTTP_PROXY": dead, "NO_GCE_CHECK": "true", "PYTHONPATH": str(ROOT)}
  out = tmp_path / "run"
  proc = subprocess.run([sys.executable, "-m", "train.mlp", "--width", "64", "--epochs", "1", "--out", str(out)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  notice = [line for line in proc.stderr.splitlines() if "--dataset auto" in line]
  assert len(notice) == 1 and "digits" in notice[0] and "--dataset cifar10" in notice[0] and str(empty) in notice[0]
  assert "\r" not in proc.stderr  # no progress bar on a pipe: whole lines only
  assert json.loads((out / "config.json").read_text())["dataset"] == "digits"
  lines = mlp.read_metrics(out / "metrics.jsonl")
  assert [m["epoch"] for m in lines] == [0, 1] and lines[1]["train_loss"] < lines[0]["train_loss"]
  assert (out / "curves.png").stat().st_size > 0


def test_auto_keeps_the_dataset_a_run_started_with(tmp_path, monkeypatch):
  out = tmp_path / "run"
  out.mkdir()
  (out / "config.json").write_text(json.dumps({"dataset": "digits"}))
  monkeypatch.setattr(data_lib, "load_auto", lambda *a: pytest.fail("auto must not probe CIFAR-10 again"))
  config, data = mlp.load_data(mlp.Config(out=str(out)))
  assert config.dataset == data.name == "digits" and mlp.Config().dataset == "auto"
  config, _ = mlp.load_data(mlp.Config(out=str(tmp_path / "new"), transfer_from=str(out)))
  assert config.dataset == "digits"  # a transfer takes its source's dataset


def test_help_names_each_default_once():
  text = " ".join(mlp.parser().format_help().split())
  for block in text.split(" --")[1:]:
    assert block.count("default") <= 1, block
  assert "(default: 64)" in text and "on by default" in text


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_bars_only_on_a_terminal():
  piped, tty = io.StringIO(), _Terminal()
  assert list(_progress.bar(range(3), file=piped)) == [0, 1, 2] and piped.getvalue() == ""
  _progress.bar(range(3), file=piped).write("epoch 1 done", file=piped)
  assert piped.getvalue() == "epoch 1 done\n"
  list(_progress.bar(range(3), file=tty, mininterval=0))
  assert "3/3" in tty.getvalue()


def test_plots_mark_transfers_and_divergence_and_keep_the_floor_inside():
  run = [{"epoch": 0, "width": 8, "train_loss": 2.0}, {"epoch": 1, "width": 8, "train_loss": 1.0},
         {"epoch": 1, "width": 16, "train_loss": 1.0, "event": "transfer", "from_width": 8},
         {"epoch": 2, "width": 16, "train_loss": math.nan}]
  fig = plots.training_curves({"a": run, "b": [{"epoch": 0, "train_loss": math.nan}]}, panels=("train_loss",))
  ax = fig.axes[0]
  texts = [t.get_text() for t in ax.texts]
  assert "transfer 8 -> 16" in texts and any("nan at epoch 2" in t for t in texts)
  assert any(list(line.get_xdata()) == [1, 1] for line in ax.get_lines())  # the transfer's vertical line
  fig = plots.training_curves({"b": [{"epoch": 0, "test_acc": math.nan}]}, panels=("test_acc",))
  assert "no finite test accuracy" in [t.get_text() for t in fig.axes[0].texts]
  fig = plots.lm_loss_curve([{"step": s, "loss": 3.0 - 0.1 * s} for s in range(10)], floor=2.1)
  lo, hi = fig.axes[0].get_ylim()
  assert lo < 2.1 - 0.01 and hi > 3.0 + 0.01  # the floor (and the curve) off the axes' edges


def test_synthetic_checkpoint_cli_refuses_a_used_folder(tmp_path, capsys):
  (tmp_path / "x").write_text("")
  assert hf_synthetic.main([str(tmp_path), "--family", "llama"]) == 2
  assert "exists and is not an empty directory" in capsys.readouterr().err
