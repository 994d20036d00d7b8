"""train.mlp end to end on the embedded digits (tiny widths): outputs, FLOP accounting, transfer mid-training
(exact transfer keeps the test loss, then training goes on), errors that write nothing and NaN handling (kill -9 and resume: tests/test_reliability.py)."""

import dataclasses
import fcntl
import json
import os
import pathlib
import shutil
import sys

import numpy as np
import pytest

from rcjax.checkpoint import Checkpointer
from train import mlp


def cfg(out, **kw):
  base = dict(dataset="digits", width=16, epochs=3, lr=0.5, momentum=0.5, out=str(out), progress=False,
              plot=False)  # curves.png: drawn by the source run only (test_outputs_and_flops checks it)
  return mlp.Config(**{**base, **kw})


@pytest.fixture(scope="session")
def source(tmp_path_factory):
  """A trained N=16 mean-field run (3 epochs, momentum SGD) that other tests transfer from, trained once
  per session even under pytest-xdist (workers share it through a file lock)."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # the session's folder, shared by the workers
  out = root / "train_mlp_source_n16"
  with open(root / "train_mlp_source_n16.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (out / "done").exists():
      shutil.rmtree(out, ignore_errors=True)
      mlp.run(cfg(out, plot=True))
      (out / "done").write_text("")
    fcntl.flock(lock, fcntl.LOCK_UN)
  return out, mlp.read_metrics(out / "metrics.jsonl")


def test_outputs_and_flops(source):
  out, lines = source
  assert [m["epoch"] for m in lines] == [0, 1, 2, 3]
  assert json.loads((out / "config.json").read_text())["width"] == 16
  assert mlp.read_metrics(out / "metrics.jsonl") == lines
  assert (out / "curves.png").stat().st_size > 0
  ck = Checkpointer(out / "checkpoints", read_only=True)
  assert ck.all_steps() == [0, 1, 2, 3] and set(os.listdir(out)) >= {"config.json", "metrics.jsonl", "curves.png"}
  steps = 1437 // 64
  fpe = 6 * (64 * 16 + 16 * 16 + 16 * 10)  # 3 x forward matmul FLOPs per example
  for m in lines:
    assert m["step"] == m["epoch"] * steps and m["flops"] == m["step"] * 64 * fpe
    assert {"train_loss", "train_acc", "test_loss", "test_acc", "width"} <= set(m)
  assert ck.metadata(2)["extra"] == {"epoch": 2, "step": 2 * steps, "flops": lines[2]["flops"]}
  assert lines[-1]["train_loss"] < lines[0]["train_loss"] - 0.3  # it learns


def test_flags_from_config():
  c = mlp.Config(**vars(mlp.parser().parse_args(
      ["--width", "8", "--depth", "7", "--bias", "constant", "--exact", "--no-progress",
       "--transfer-from", "runs/a", "--random-rate", "0.1"])))
  assert (c.width, c.depth, c.bias, c.exact, c.progress, c.transfer_from, c.random_rate) == (
      8, 7, "constant", True, False, "runs/a", 0.1)
  assert mlp.Config(**vars(mlp.parser().parse_args([]))) == mlp.Config()


@pytest.mark.parametrize("bias,check", [("constant", lambda b: np.all(b == 0.25)),
                                        ("trainable", lambda b: np.std(b) > 0.1),
                                        ("none", None)])
def test_bias_settings(bias, check):
  import jax
  import jax.numpy as jnp
  c = mlp.Config(width=32, depth=4, bias=bias, bias_value=0.25)
  p = mlp.build_model(c).init(jax.random.key(0), jnp.ones((1, 64)))["params"]
  assert len(p) == 4 and p["Dense_2"]["kernel"].axes == ("hidden_1", "hidden_2")
  if check is None:
    assert "bias" not in p["Dense_1"]
  else:
    assert check(np.asarray(p["Dense_1"]["bias"].value))


def test_exact_transfer_mid_training_keeps_the_loss_then_trains(source, tmp_path):
  src, src_lines = source
  lines = mlp.run(cfg(tmp_path / "t64", width=64, epochs=4, transfer_from=str(src), transfer_epoch=2,
                      exact=True, split_rate=0.5, cancel_rate=0.5))  # (the symmetry breaking keeps the loss too)
  assert [m["epoch"] for m in lines] == [0, 1, 2, 2, 3, 4]  # continuous in epoch
  before, after = lines[2], lines[3]
  assert (after["split_rate"], after["cancel_rate"]) == (0.5, 0.5)
  assert before == src_lines[2] and after["event"] == "transfer"
  assert (before["width"], after["width"], after["from_width"]) == (16, 64, 16)
  np.testing.assert_allclose(after["test_loss"], before["test_loss"], rtol=1e-5)
  np.testing.assert_allclose(after["train_loss"], before["train_loss"], rtol=1e-5)
  assert after["flops"] == before["flops"] and after["step"] == before["step"]
  assert lines[-1]["train_loss"] < after["train_loss"] - 0.2
  fpe64 = 6 * (64 * 64 + 64 * 64 + 64 * 10)
  assert lines[-1]["flops"] == before["flops"] + 2 * 22 * 64 * fpe64  # source FLOPs + own FLOPs
  assert Checkpointer(tmp_path / "t64" / "checkpoints", read_only=True).all_steps() == [2, 3, 4]


def test_shrink_with_fresh_neurons_and_noise(source, tmp_path):
  lines = mlp.run(cfg(tmp_path / "t8", width=8, epochs=3, transfer_from=str(source[0]), transfer_epoch=2,
                      random_rate=0.25, norm_rate=0.05, sampler="stride"))
  before, after = lines[2], lines[3]
  assert after["event"] == "transfer" and (after["from_width"], after["width"]) == (16, 8)
  assert after["test_loss"] != before["test_loss"]  # pruning with fresh neurons changes the function
  assert not (tmp_path / "t8" / "curves.png").exists()  # plot=False (cfg's): no figure drawn
  assert lines[-1]["train_loss"] < after["train_loss"]


def _tree_state(path: pathlib.Path) -> dict:
  return {str(p): p.stat().st_mtime_ns for p in sorted(path.rglob("*"))}


@pytest.mark.parametrize("kw,error,match", [
    (dict(dataset="mnist"), ValueError, "unknown --dataset 'mnist'"),
    (dict(width=0), ValueError, "--width must be positive"),
    (dict(depth=1), ValueError, "--depth"),
    (dict(init="laplace"), ValueError, "unknown init 'laplace'"),
    (dict(batch_size=5000), ValueError, "larger than the training set"),
    (dict(transfer_from="/nonexistent/run", transfer_epoch=1), FileNotFoundError, "no such run directory"),
    (dict(transfer_from="SRC", transfer_epoch=4, epochs=6), FileNotFoundError,
     r"no checkpoint at epoch 4; saved epochs: \[0, 1, 2, 3\]"),
])
def test_bad_input_writes_nothing(source, tmp_path, kw, error, match):
  kw = {k: (str(source[0]) if v == "SRC" else v) for k, v in kw.items()}
  out = tmp_path / "out"
  with pytest.raises(error, match=match):
    mlp.run(cfg(out, **kw))
  assert not out.exists()


def test_incompatible_checkpoint(source, tmp_path):
  src, _ = source
  with pytest.raises(ValueError, match=r"depth \(weight layers\) is 3, this run's is 4"):
    mlp.run(cfg(tmp_path / "o1", depth=4, transfer_from=str(src), transfer_epoch=1))
  with pytest.raises(ValueError, match="parametrization is 'mf', this run's is 'sp'"):
    mlp.run(cfg(tmp_path / "o2", param="sp", transfer_from=str(src), transfer_epoch=1))
  with pytest.raises(ValueError, match="exact=True needs new sizes >= old sizes"):
    mlp.run(cfg(tmp_path / "o3", width=8, exact=True, transfer_from=str(src), transfer_epoch=1))
  other = tmp_path / "other_input"  # a checkpoint of an MLP on 5 inputs (digits have 64)
  import jax
  import jax.numpy as jnp
  import rcjax
  p = rcjax.nn.MLP(features=(16, 16), out_features=10).init(jax.random.key(0), jnp.ones((1, 5)))["params"]
  with Checkpointer(other / "checkpoints") as ck:
    ck.save(1, params=p)
  with pytest.raises(ValueError, match="input size is 5, this run's is 64"):
    mlp.run(cfg(tmp_path / "o4", transfer_from=str(other), transfer_epoch=1))
  # A transfer keeps the source's RC metadata (init of fresh neurons, muP base): other flags are refused.
  with pytest.raises(ValueError, match="trained with --init uniform, this run has --init normal:5,1"):
    mlp.run(cfg(tmp_path / "o5", init="normal:5,1", random_rate=1.0, transfer_from=str(src), transfer_epoch=1))
  with pytest.raises(ValueError, match="trained with --bias trainable, this run has --bias constant"):
    mlp.run(cfg(tmp_path / "o6", bias="constant", transfer_from=str(src), transfer_epoch=1))
  assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3", "o4", "o5", "o6"))


def test_other_config_in_out_dir_is_refused_and_kept(source, capsys):
  src, _ = source
  before = _tree_state(src)
  assert mlp.main(["--dataset", "digits", "--width", "32", "--out", str(src), "--no-progress"]) == 2
  assert "holds a run with a different config (width: 16 -> 32" in capsys.readouterr().err
  # --epochs may grow (training continues), not shrink below what the directory holds
  assert mlp.main(["--dataset", "digits", "--width", "16", "--epochs", "2", "--lr", "0.5", "--momentum", "0.5",
                   "--out", str(src), "--no-progress"]) == 2
  assert "epochs: 3 -> 2 (--epochs may grow, not shrink)" in capsys.readouterr().err
  assert _tree_state(src) == before


def test_damaged_config_json_is_named(source, tmp_path, capsys):
  shutil.copytree(source[0], tmp_path / "run")
  (tmp_path / "run" / "config.json").write_text("")  # as a crash mid-write once could leave it
  assert mlp.main(["--dataset", "digits", "--width", "16", "--out", str(tmp_path / "run"), "--no-progress"]) == 2
  assert f"{tmp_path / 'run' / 'config.json'} is not valid JSON" in capsys.readouterr().err
  assert not list((tmp_path / "run").glob(".config.json.*"))


def test_a_moved_folder_of_runs_resumes(source, tmp_path):
  shutil.copytree(source[0], tmp_path / "a" / "src")
  kw = dict(width=32, transfer_epoch=2)
  lines = mlp.run(cfg(tmp_path / "a" / "t", transfer_from=str(tmp_path / "a" / "src"), **kw))
  (tmp_path / "a").rename(tmp_path / "b")  # the source sits at the same place relative to the run
  assert mlp.run(cfg(tmp_path / "b" / "t", transfer_from=str(tmp_path / "b" / "src"), **kw)) == lines


def test_nan_loss_stops_keeps_last_good_checkpoint(tmp_path, capsys):
  out = tmp_path / "nan"
  argv = ["--dataset", "digits", "--width", "16", "--epochs", "3", "--param", "sp", "--lr", "1e30",
          "--out", str(out), "--no-progress"]
  assert mlp.main(argv) == 1
  assert "loss became nan in epoch 1" in capsys.readouterr().err
  assert Checkpointer(out / "checkpoints", read_only=True).all_steps() == [0]
  assert [m["epoch"] for m in mlp.read_metrics(out / "metrics.jsonl")] == [0]


def _fake_run(path, losses, width, transfer_at=None, source=None):
  path.mkdir(parents=True)
  lines, flops = [], 0
  for epoch, loss in enumerate(losses):
    flops += 0 if epoch == 0 else width
    lines.append({"epoch": epoch, "step": epoch, "width": width, "train_loss": loss, "train_acc": 0.5,
                  "test_loss": loss, "test_acc": 1 - loss / 3, "flops": flops})
  if transfer_at is not None:
    event = dict(lines[transfer_at], event="transfer", flops=source[transfer_at]["flops"])
    lines = source[:transfer_at + 1] + [event]
    for epoch, loss in enumerate(losses[transfer_at + 1:], transfer_at + 1):
      lines.append(dict(lines[-1], epoch=epoch, train_loss=loss, test_loss=loss, test_acc=1 - loss / 3,
                        flops=lines[-1]["flops"] + width))
      lines[-1].pop("event", None)
  (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
  return lines


def test_sweep_redraws_from_metrics_without_training(tmp_path, capsys):
  from train import mlp_sweep
  small = _fake_run(tmp_path / "n10", [2.3, 2.0, 1.5, 1.2], 10)
  _fake_run(tmp_path / "n100", [2.3, 1.8, 1.0, 0.5], 100)
  t = _fake_run(tmp_path / "n10_to_n100_r1=0_r2=0", [2.3, 2.0, 1.0, 0.45], 100, transfer_at=1, source=small)
  argv = ["fig43b", "--plot-only", "--dataset", "digits", "--out", str(tmp_path), "--small", "10", "--large",
          "100", "--transfer-epoch", "1", "--r1", "0", "--r2", "0", "--epochs", "3"]
  assert mlp_sweep.main(argv) == 0
  assert (tmp_path / "fig4_3_be.png").stat().st_size > 0
  s = json.loads((tmp_path / "fig4_3_be.json").read_text())["n10_to_n100_r1=0_r2=0"]
  assert t[2]["event"] == "transfer" and s["train_loss_before"] == 2.0 == s["train_loss_after"]
  assert s["epoch_reaching_scratch_loss"] == 3 and s["final_test_acc"] == 1 - 0.45 / 3
  assert s["flops_vs_scratch"] == (10 + 200) / 300  # 1 epoch at N=10, 2 at N=100 vs 3 at N=100
  assert mlp_sweep.main(["fig43c", "--plot-only", "--dataset", "digits", "--out", str(tmp_path)]) == 1
  assert "no metrics in" in capsys.readouterr().err
  # The transfers' flags are checked before the source and scratch runs train.
  late = tmp_path / "late"
  assert mlp_sweep.main(["fig43b", "--dataset", "digits", "--out", str(late), "--small", "8", "--large", "16",
                         "--epochs", "2", "--transfer-epoch", "4"]) == 1
  assert "--transfer-epoch must be in [0, --epochs=2), got 4" in capsys.readouterr().err
  assert not late.exists()
  # A transfer folder of other flags (another --transfer-epoch) is refused before anything trains.
  run = tmp_path / "n10_to_n100_r1=0_r2=0"
  config = mlp.Config(dataset="digits", param="mf", lr=1.0, epochs=3, width=100, transfer_epoch=1,
                      transfer_from=str(tmp_path / "n10"), random_rate=0.0, norm_rate=0.0, out=str(run))
  (run / "config.json").write_text(json.dumps(dataclasses.asdict(config)))
  before = _tree_state(tmp_path)
  assert mlp_sweep.main(["fig43b", "--dataset", "digits", "--out", str(tmp_path), "--small", "10", "--large", "100",
                         "--transfer-epoch", "2", "--r1", "0", "--r2", "0", "--epochs", "3", "--no-progress"]) == 1
  assert "holds a run with a different config (transfer_epoch: 1 -> 2)" in capsys.readouterr().err
  assert _tree_state(tmp_path) == before
  # Figure 4.1's muP run may not sit at its base width (it would be SP).
  assert mlp_sweep.main(["fig41", "--dataset", "digits", "--out", str(late), "--width", "100"]) == 1
  assert "muP with base 100 = N would be SP" in capsys.readouterr().err and not late.exists()


def test_digits_without_scikit_learn_is_a_one_line_error(monkeypatch):
  from train import data as data_lib
  monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails as if not installed
  with pytest.raises(data_lib.DataUnavailable, match=r"needs scikit-learn.*pip install -e '\.\[train\]'"):
    data_lib._digits()


def test_ordered_normalised_shows_rc_structure():
  from train import mlp_sweep
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(30, 1)), rng.normal(size=(1, 20))
  w = mlp_sweep.ordered_normalised(a + b + 0.01 * rng.normal(size=(30, 20)))
  assert abs(w.mean()) < 1e-6 and abs(w.std() - 1) < 1e-6
  assert np.all(np.diff(w.mean(axis=1)) >= 0) and np.all(np.diff(w.mean(axis=0)) >= 0)
