"""Nothing lost, nothing silently wrong: checkpoints verify against their digests (every kind of file
bit-flipped, truncated, deleted), the trainers fall back to the newest step that verifies, NaN guards,
strict-JSON metrics, read-only and full disks, one-line errors, and kill -9 at points of a run then resume
(bitwise the same metrics and final state as an uninterrupted run)."""

import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import uuid

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rcjax
from rcjax import analyze
from rcjax.checkpoint import DIGEST, Checkpointer, CorruptCheckpoint, UnverifiedCheckpointWarning
from train import gpt, mlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", JAX_DEFAULT_MATMUL_PRECISION="highest")


def strict_lines(path) -> list[dict]:
  """metrics.jsonl parsed as strict JSON: NaN, Infinity and -Infinity are refused."""
  def refuse(name):
    raise AssertionError(f"{path}: non-standard JSON constant {name}")
  with open(path) as f:
    return [json.loads(line, parse_constant=refuse) for line in f if line.strip()]


def leaves(tree) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(rcjax.rc.unbox(tree))]


def assert_bitwise(a, b):
  la, lb = leaves(a), leaves(b)
  assert len(la) == len(lb) > 0
  for x, y in zip(la, lb):
    assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def flip(path, offset=None):
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2 if offset is None else offset] ^= 0x10
  open(path, "wb").write(bytes(data))


def truncate(path):
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size // 2)


def biggest(step_dir, under="params") -> str:
  files = [os.path.join(r, n) for r, _, ns in os.walk(os.path.join(step_dir, under)) for n in ns]
  return max(files, key=os.path.getsize)


# --- Checkpointer: every kind of file ----------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """Steps 1 and 2 of an MLP with Adam state, saved with digests."""
  d = tmp_path_factory.mktemp("saved") / "checkpoints"
  params = rcjax.nn.MLP((16,), 3).init(jax.random.key(0), jnp.ones((1, 5)))["params"]
  state = optax.adam(1e-3).init(params)
  with Checkpointer(d) as ck:
    for step in (1, 2):
      params = jax.tree.map(lambda x: x + step, params)
      ck.save(step, params=params, opt_state=state, config={"width": 16, "step": step})
  return d


def file_kinds(step_dir) -> list[str]:
  """One file of each kind in a step folder (names made of hex digests grouped)."""
  kinds = {}
  for root, _, names in os.walk(step_dir):
    for n in names:
      rel = os.path.relpath(os.path.join(root, n), step_dir)
      kinds.setdefault(re.sub(r"[0-9a-f]{16,}", "*", rel), rel)
  return sorted(kinds.values())


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_every_kind_of_checkpoint_file_is_checked(saved, tmp_path, damage):
  kinds = file_kinds(saved / "2")
  assert DIGEST in kinds and len(kinds) >= 10 and any(k.startswith("opt_state/") for k in kinds), kinds
  for i, rel in enumerate(kinds):
    d = tmp_path / str(i)
    shutil.copytree(saved, d)
    path = str(d / "2" / rel)
    assert os.path.getsize(path) > 1
    {"flip": flip, "truncate": truncate, "delete": os.remove}[damage](path)
    ck = Checkpointer(d, read_only=True)
    if rel == DIGEST and damage == "delete":  # an undigested step: read with a warning (docs/reliability.md)
      assert ck.verify(2) is False
      with pytest.warns(UnverifiedCheckpointWarning, match="step 2 .* no digest"):
        ck.restore(2)
      continue
    with pytest.raises(CorruptCheckpoint, match=r"^checkpoint step 2 is corrupt: ") as e:
      ck.verify(2)
    assert "\n" not in str(e.value) and e.value.step == 2
    assert e.value.path == path or rel == DIGEST, (rel, str(e.value))
    with pytest.raises(CorruptCheckpoint, match="step 2"):
      ck.restore(2)
    said = []
    assert ck.latest_good_step(said.append) == 1
    assert said[0] == str(e.value) and said[-1] == "falling back to checkpoint step 1, the newest that verifies"
  assert_bitwise(ck.restore(1)["params"], Checkpointer(saved, read_only=True).restore(1)["params"])


def test_no_step_verifies_is_one_error_and_set_aside_moves_steps(saved, tmp_path):
  d = tmp_path / "checkpoints"
  shutil.copytree(saved, d)
  for step in (1, 2):
    flip(biggest(d / str(step)))
  ck = Checkpointer(d, read_only=True)
  said = []
  with pytest.raises(CorruptCheckpoint, match=r"verifies \(steps \[1, 2\] are all corrupt"):
    ck.latest_good_step(said.append)
  assert len(said) == 2 and all("is corrupt" in s for s in said)
  ck.set_aside_after(1)
  assert ck.all_steps() == [1] and os.listdir(tmp_path / "checkpoints.corrupt") == ["2"]


def test_analyze_refuses_unverified_and_corrupt_runs(saved, tmp_path, capsys):
  run = tmp_path / "run"
  shutil.copytree(saved, run / "checkpoints")
  (run / "config.json").write_text("{}")
  argv = [str(run), "--out", str(tmp_path / "o"), "--quiet", "--permutations", "5"]
  flip(biggest(run / "checkpoints" / "2"))
  assert analyze.main(argv) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("rcjax.analyze: error: checkpoint step 2 is corrupt: ")
  assert analyze.main(argv[:1] + ["--step", "1"] + argv[1:]) == 0  # step 1 verifies
  shutil.rmtree(run / "checkpoints" / "2")
  shutil.copytree(saved / "2", run / "checkpoints" / "2")
  os.remove(run / "checkpoints" / "2" / DIGEST)  # as saved before rcjax recorded digests
  shutil.rmtree(tmp_path / "o")
  assert analyze.main(argv) == 2
  assert "step 2 has no digest" in capsys.readouterr().err and not (tmp_path / "o").exists()
  assert analyze.main(argv + ["--unverified"]) == 0
  assert json.load(open(tmp_path / "o" / "summary.json"))["step"] == 2


# --- train.mlp ------------------------------------------------------------------------------------

MLP_ARGS = ["--dataset", "digits", "--width", "8", "--lr", "0.5", "--momentum", "0.5", "--no-progress", "--no-plot"]


@pytest.fixture(scope="module")
def mlp_ref(tmp_path_factory):
  """An uninterrupted 5-epoch train.mlp run."""
  out = tmp_path_factory.mktemp("mlp") / "ref"
  assert mlp.main(MLP_ARGS + ["--epochs", "5", "--out", str(out)]) == 0
  return out


def restored(run_dir, opt=True):
  ck = Checkpointer(os.path.join(run_dir, "checkpoints"), read_only=True)
  r = ck.restore()
  template = r["params"]
  state = mlp.restore_opt_state(ck, r["step"], template, rcjax.sgd(0.5, momentum=0.5)) if opt else None
  return r["step"], r["params"], state


def test_mlp_falls_back_to_the_newest_checkpoint_that_verifies(mlp_ref, tmp_path, capsys):
  out = tmp_path / "run"
  shutil.copytree(mlp_ref, out)
  flip(biggest(out / "checkpoints" / "5"))
  truncate(biggest(out / "checkpoints" / "4"))
  assert mlp.main(MLP_ARGS + ["--epochs", "5", "--out", str(out)]) == 0
  err = capsys.readouterr().err
  assert "train.mlp: checkpoint step 5 is corrupt: " in err and "SHA-256 mismatch" in err
  assert "train.mlp: checkpoint step 4 is corrupt: " in err and "truncated" in err
  assert "falling back to checkpoint step 3, the newest that verifies" in err
  assert sorted(os.listdir(out / "checkpoints.corrupt")) == ["4", "5"]
  assert (out / "metrics.jsonl").read_text() == (mlp_ref / "metrics.jsonl").read_text()
  strict_lines(out / "metrics.jsonl")
  assert_bitwise(restored(out)[1], restored(mlp_ref)[1])
  for step in (3, 4, 5):
    flip(biggest(out / "checkpoints" / str(step)))
  flip(biggest(out / "checkpoints" / "0"), offset=0)
  for step in (1, 2):
    os.remove(biggest(out / "checkpoints" / str(step)))
  assert mlp.main(MLP_ARGS + ["--epochs", "5", "--out", str(out)]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith(f"train.mlp: error: no checkpoint in {out}/checkpoints verifies (steps [0, 1, 2, 3, 4, 5] "
                            "are all corrupt"), err[-1]


def test_mlp_config_json_not_an_object_and_bad_input_exit_2(tmp_path, capsys):
  (tmp_path / "config.json").write_text("[1, 2]")
  assert mlp.main(MLP_ARGS + ["--epochs", "1", "--out", str(tmp_path)]) == 2
  assert capsys.readouterr().err.strip().splitlines() == [
      f"train.mlp: error: {tmp_path}/config.json is not a JSON object (it holds a list); fix or remove it"]
  assert mlp.main(MLP_ARGS + ["--epochs", "1", "--width", "0", "--out", str(tmp_path / "x")]) == 2
  assert mlp.main(["--width", "x"]) == 2  # argparse's own exit status


POINTS = ["train@1", "save@2", "saving@3", "saved@4", "digest@5"]  # rcjax.checkpoint.kill_point


def kill_at_points(cmd, points, env=()):
  """Run `cmd` once per point, each killed (SIGKILL) at its point by the RCJAX_KILL_AT hook."""
  for point in points:
    p = subprocess.run(cmd, cwd=ROOT, env={**ENV, **dict(env), "RCJAX_KILL_AT": point}, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == -signal.SIGKILL, (point, p.returncode, p.stderr[-2000:])


@pytest.mark.slow
def test_mlp_kill_9_at_points_then_resume_is_bitwise_the_same(mlp_ref, tmp_path):
  out = tmp_path / "part"
  argv = MLP_ARGS + ["--epochs", "5", "--out", str(out)]
  kill_at_points([sys.executable, "-m", "train.mlp"] + argv, POINTS)
  assert not (out / "checkpoints" / "5" / DIGEST).exists()  # killed before the digest's rename
  assert mlp.main(argv) == 0  # the last resume, in this process
  assert (out / "metrics.jsonl").read_text() == (mlp_ref / "metrics.jsonl").read_text()
  (s1, p1, o1), (s2, p2, o2) = restored(out), restored(mlp_ref)
  assert s1 == s2 == 5
  assert_bitwise(p1, p2)
  assert_bitwise(o1, o2)


# --- train.gpt ------------------------------------------------------------------------------------

GPT_ARGS = ["--width", "16", "--depth", "1", "--heads", "2", "--seq-len", "8", "--batch-size", "8", "--steps", "10",
            "--ckpt-every", "2", "--log-every", "1", "--dtype", "float32", "--progress", "false", "--plot", "false"]
GPT_ENV = {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}  # as the fast_compiles fixture, in subprocesses


@pytest.fixture(scope="module")
def gpt_ref(tmp_path_factory):
  from conftest import fast_compiles
  out = tmp_path_factory.mktemp("gpt") / "ref"
  with fast_compiles():
    assert gpt.main(GPT_ARGS + ["--out", str(out)]) == 0
  return out


def losses(run_dir) -> list[tuple]:
  return [(r["step"], r["loss"], r["tokens"], r["flops"]) for r in strict_lines(os.path.join(run_dir, "metrics.jsonl"))
          if "loss" in r and "event" not in r]


def gpt_state(run_dir):
  ck = Checkpointer(os.path.join(run_dir, "checkpoints"), read_only=True)
  template = ck.params_template()
  cfg, _ = gpt.parse(GPT_ARGS)
  r = ck.restore(params=template, opt_state=jax.eval_shape(gpt.build_optimizer(cfg).init, template))
  return r["step"], r["params"], r["opt_state"]


@pytest.mark.usefixtures("fast_compiles_here")
def test_gpt_falls_back_and_truncates_metrics_on_resume(gpt_ref, tmp_path, capsys):
  out = tmp_path / "run"
  shutil.copytree(gpt_ref, out)
  config = json.loads((out / "config.json").read_text())
  (out / "config.json").write_text(json.dumps({**config, "out": str(out)}))  # as if run here
  truncate(biggest(out / "checkpoints" / "10", "opt_state"))
  assert gpt.main(GPT_ARGS + ["--out", str(out)]) == 0
  err = capsys.readouterr().err
  assert "train.gpt: checkpoint step 10 is corrupt: " in err and "truncated" in err
  assert "falling back to checkpoint step 8, the newest that verifies" in err
  assert losses(out) == losses(gpt_ref)  # steps 9 and 10 once each (the stale lines were dropped)
  recs = strict_lines(out / "metrics.jsonl")
  assert [r for r in recs if r.get("event") == "resume"] == [{"event": "resume", "step": 8}]
  assert_bitwise(gpt_state(out)[1], gpt_state(gpt_ref)[1])


@pytest.mark.usefixtures("fast_compiles_here")
def test_gpt_stops_on_a_nan_batch_and_refuses_lr_inf(tmp_path, capsys, monkeypatch):
  out = tmp_path / "nan"
  real = gpt.global_batch

  def poisoned(data, step, *a, **kw):  # step 3's tokens are out of the vocabulary: NaN embeddings
    b = real(data, step, *a, **kw)
    return b + 1000 if step == 3 and not kw.get("eval") else b
  monkeypatch.setattr(gpt, "global_batch", poisoned)
  assert gpt.main(GPT_ARGS + ["--log-every", "5", "--out", str(out)]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("train.gpt: error: the loss and the gradient norm became non-finite at step 3; "
                            "stopped without saving it (the last good checkpoint is step 2 in "), err
  assert Checkpointer(out / "checkpoints", read_only=True).all_steps() == [2]
  assert all(math.isfinite(x) for x in leaves(gpt_state(out)[1]) for x in x.ravel())
  assert strict_lines(out / "metrics.jsonl") == []  # nothing logged: the first log step (5) never came
  monkeypatch.setattr(gpt, "global_batch", real)
  assert gpt.main(GPT_ARGS + ["--lr", "inf", "--out", str(tmp_path / "inf")]) == 2
  assert capsys.readouterr().err.strip() == "train.gpt: error: lr must be a finite number, got inf"
  assert not (tmp_path / "inf").exists()


def test_gpt_config_json_not_an_object(tmp_path, capsys):
  (tmp_path / "config.json").write_text('"a string"')
  assert gpt.main(GPT_ARGS + ["--out", str(tmp_path)]) == 2
  assert capsys.readouterr().err.strip() == (f"train.gpt: error: {tmp_path}/config.json is not a JSON object "
                                             "(it holds a str); fix or remove it")


@pytest.mark.slow
@pytest.mark.usefixtures("fast_compiles_here")
def test_gpt_kill_9_at_points_then_resume_is_bitwise_the_same(gpt_ref, tmp_path):
  out = tmp_path / "part"
  argv = GPT_ARGS + ["--out", str(out)]
  points = ["train@1", "save@2", "saving@4", "saved@6", "digest@8"]
  kill_at_points([sys.executable, "-m", "train.gpt"] + argv, points, GPT_ENV)
  assert gpt.main(argv) == 0
  assert losses(out) == losses(gpt_ref)  # every step once, bitwise the same
  (s1, p1, o1), (s2, p2, o2) = gpt_state(out), gpt_state(gpt_ref)
  assert s1 == s2 == 10
  assert_bitwise(p1, p2)
  assert_bitwise(o1, o2)


# --- disks ------------------------------------------------------------------------------------------

@contextlib.contextmanager
def tmpfs(path, options):
  """A tmpfs mounted at `path` (tests run as root), unmounted afterwards; None where mounting fails."""
  os.makedirs(path, exist_ok=True)
  ok = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                            capture_output=True).returncode == 0
  try:
    yield path if ok else None
  finally:
    if ok:
      subprocess.run(["umount", "-l", str(path)], check=True)


def test_read_only_out_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
  with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
    if ro is None:  # not root: a folder without write permission
      ro = tmp_path / "ro"
      os.chmod(ro, 0o555)
    assert mlp.main(MLP_ARGS + ["--epochs", "1", "--out", str(ro / "a")]) == 1
    assert gpt.main(GPT_ARGS + ["--out", str(ro / "b")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith(f"train.mlp: error: --out {ro}/a: ") and \
        err[1].startswith(f"train.gpt: error: --out {ro}/b: "), err
    assert os.listdir(ro) == []


def test_full_disk_during_a_save_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
  with tmpfs(tmp_path / "full", "size=200k") as full:
    if full is None:  # not root: orbax's save raises the OSError a full disk gives
      full = tmp_path / "full"
      real = Checkpointer.save

      def save(self, step, **kw):
        if step == 3:
          raise OSError(28, "No space left on device", f"{self.directory} (saving checkpoint step 3)")
        return real(self, step, **kw)
      monkeypatch.setattr(Checkpointer, "save", save)
    out = full / f"run-{uuid.uuid4().hex[:6]}"
    assert mlp.main(MLP_ARGS + ["--width", "16", "--epochs", "30", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    # the save is asynchronous: the full disk is met by the checkpoint or by the metrics written meanwhile
    assert (err[-1].startswith(f"train.mlp: error: {out}/checkpoints (saving checkpoint step ")
            or err[-1].startswith(f"train.mlp: error: {out}/metrics.jsonl: ")) and \
        err[-1].endswith(": no space left on device (the disk is full)"), err
    assert not any("Traceback" in line for line in err)
    for t in threading.enumerate():  # as the interpreter does at exit: a failed save cleans up in its thread
      if t.name.startswith("rcjax-digest-"):
        t.join()
    names = os.listdir(out / "checkpoints")
    assert not [n for n in names if "tmp" in n], names
    ck = Checkpointer(out / "checkpoints", read_only=True)
    good = ck.latest_good_step()
    assert good is not None and good < 30 and all(ck.verify(s) for s in ck.all_steps())
    # (metrics lines of the epochs after `good` may exist, as after a kill: a resume drops them)
    assert [m["epoch"] for m in strict_lines(out / "metrics.jsonl")][:good + 1] == list(range(good + 1))


def enospc_at_step_2(monkeypatch):
  """Where no tmpfs can be mounted (not root): saves raise the OSError a full disk gives, at step 2."""
  real = Checkpointer.save

  def save(self, step, **kw):
    if step == 2:
      raise OSError(28, "No space left on device", f"{self.directory} (saving checkpoint step 2)")
    return real(self, step, **kw)
  monkeypatch.setattr(Checkpointer, "save", save)


@pytest.mark.usefixtures("fast_compiles_here")
def test_full_disk_in_train_gpt_is_one_line_too(tmp_path, capsys, monkeypatch):
  with tmpfs(tmp_path / "full", "size=200k") as full:
    if full is None:
      full = tmp_path / "full"
      enospc_at_step_2(monkeypatch)
    out = full / "run"
    assert gpt.main(GPT_ARGS + ["--steps", "40", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"train.gpt: error: {out}/checkpoints (saving checkpoint step ") \
        and err[0].endswith("): no space left on device (the disk is full)"), err
    for t in threading.enumerate():
      if t.name.startswith("rcjax-digest-"):
        t.join()
    ck = Checkpointer(out / "checkpoints", read_only=True)
    assert not [n for n in os.listdir(out / "checkpoints") if "tmp" in n]
    assert all(ck.verify(s) for s in ck.all_steps())
