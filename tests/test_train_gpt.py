"""train.gpt end to end: loss toward the synthetic language's floor, exact growth mid-training under the
sharded step, restore onto other meshes, kill-and-resume, bad input, and the TFDS path (mock data)."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rcjax
from rcjax import sharding
from rcjax.checkpoint import Checkpointer
from train import gpt
from train.gpt import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(width=32, depth=2, heads=4, seq_len=16, batch_size=8, log_every=1, progress=False, dtype="float32",
            dataset="markov", plot=False)  # the synthetic language (exact floor), not the default real text


pytestmark = pytest.mark.usefixtures("fast_compiles")


def metrics(run_dir):
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
  with pytest.raises(ValueError, match="has 3 devices but there are 8"):
    gpt.run(Config(**TINY, mesh="data=3", out=str(tmp_path / "a")))
  with pytest.raises(ValueError, match="width 30 is not divisible by heads 4"):
    gpt.run(Config(**{**TINY, "width": 30}, out=str(tmp_path / "a")))
  with pytest.raises(ValueError, match=r"batch_size 12 must be divisible by data\*fsdp = 8"):
    gpt.validate(Config(**{**TINY, "batch_size": 12}, mesh="fsdp=4,data=2"))
  assert not os.path.exists(tmp_path / "a")
  assert gpt.main(["--mesh", "data=5", "--out", str(tmp_path / "c"), "--progress", "false"]) == 2
  assert "train.gpt: error: mesh 'data=5' has 5 devices but there are 8" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "c")
  other = tmp_path / "notarun"  # a folder of something else: train.gpt writes nothing into it
  other.mkdir()
  (other / "metrics.jsonl").write_text('{"precious": 1}\n')
  with pytest.raises(ValueError, match=r"notarun exists and is not a train.gpt run directory.*metrics.jsonl"):
    gpt.run(Config(**TINY, out=str(other)))
  (other / "metrics.jsonl").unlink()
  (other / "config.json").write_text("{")
  with pytest.raises(ValueError, match="config.json is not valid JSON"):
    gpt.run(Config(**TINY, out=str(other)))
  assert sorted(os.listdir(other)) == ["config.json"]
  # The same folder spelled another way (relative, ./, a trailing /) is the same run.
  (other / "config.json").write_text(json.dumps(dataclasses.asdict(Config(**TINY, out=str(other)))))
  rel = os.path.relpath(other)
  for spelling in (rel, "./" + rel + "/"):
    gpt._check_run_dir(Config(**TINY, out=spelling))
  with pytest.raises(ValueError, match="width 36: heads would be 4.5"):
    gpt.validate(Config(**TINY, grow_at=1, grow_to=36))
  with pytest.raises(ValueError, match=r"unroll must be >= 0 \(0: all blocks\), got -1"):
    gpt.validate(Config(**TINY, unroll=-1))
  with pytest.raises(ValueError, match=r"loss_chunks must be in \[0, seq_len"):
    gpt.validate(Config(**TINY, loss_chunks=-1))
  assert gpt.build_model(Config(**TINY)).unroll == TINY.get("depth", Config.depth)  # unrolled by default
  with pytest.raises(ValueError, match=r"residual_dtype must be one of \('float32', 'compute'\)"):
    gpt.validate(Config(**TINY, residual_dtype="bfloat16"))
  assert gpt.build_model(Config(**TINY)).residual_dtype is None  # float32, the params' dtype
  bf16 = Config(**{**TINY, "dtype": "bfloat16"}, residual_dtype="compute")
  assert gpt.build_model(bf16).residual_dtype == jnp.bfloat16
  assert "residual_dtype" in gpt.RESUMABLE  # no param depends on it
  cfg, _ = gpt.parse(["--preset", "tiny", "--fuse-projections", "true"])
  assert gpt.build_model(cfg).fuse_projections and not gpt.build_model(Config(**TINY)).fuse_projections
  assert "fuse_projections" in gpt.RESUMABLE  # same params, fused or not


def test_grow_mid_training_restore_elsewhere_and_transfer(tmp_path):
  """One run (a fixture would run once per xdist worker): 3 steps on a (2,2,2) mesh, growing 32 -> 64
  after step 2 (mean-field Llama, init N(1, 3), r1 = r2 = 0); then its checkpoint on other meshes, a
  transfer to width 128, and runs that must refuse its run directory."""
  out = str(tmp_path / "run")
  cfg = Config(**TINY, style="llama", kv_heads=2, param="mf", init="normal:1,3", lr=1e-3, steps=3,
               grow_at=2, grow_to=64, mesh="data=2,fsdp=2,tensor=2", out=out)
  summary = gpt.run(cfg)
  grow = [r for r in metrics(out) if r.get("event") == "grow"]
  assert len(grow) == 1 and grow[0]["step"] == 2
  np.testing.assert_allclose(grow[0]["loss_after"], grow[0]["loss_before"], rtol=1e-6)
  assert {k: summary["sizes"][k] for k in ("embed", "heads", "kv_heads")} == {"embed": 64, "heads": 8, "kv_heads": 4}
  ckpt = Checkpointer(os.path.join(out, "checkpoints"))
  assert ckpt.all_steps() == [3]
  # Params and AdamW state were grown together: step 3's state restores at the grown shapes.
  template = ckpt.params_template(3)
  r = ckpt.restore(3, params=template, opt_state=jax.eval_shape(gpt.build_optimizer(cfg).init, template))
  assert r["opt_state"][1][0].mu["blocks"]["up"].shape == r["params"]["blocks"]["up"].shape == (2, 64, 192)
  # init N(1, 3) (mf: init scale 1; duplication keeps the entries), barely moved by 3 steps of lr 1e-3
  w = np.asarray(r["params"]["blocks"]["up"].value)
  assert abs(w.mean() - 1) < 0.1 and abs(w.var() - 3) < 0.3

  # The (2,2,2) checkpoint restores onto (8,1,1) and onto one device with identical params.
  ref = gpt.load_params(out, sharding.make_mesh("data=2,fsdp=2,tensor=2"))
  assert ref["blocks"]["q"].value.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
  for mesh in (sharding.make_mesh("data=8"), sharding.make_mesh("data=1", jax.devices()[:1])):
    other = gpt.load_params(out, mesh)
    assert other["blocks"]["q"].value.sharding.mesh == mesh
    chex.assert_trees_all_equal(rcjax.unbox(other), rcjax.unbox(ref))

  # Another config in this run directory, or another architecture to transfer from: errors, nothing written.
  before = {f: open(os.path.join(out, f)).read() for f in ("config.json", "metrics.jsonl")}
  with pytest.raises(ValueError, match=r"holds a run with a different config \(style: 'llama' -> 'gpt2'\); rerun with"):
    gpt.run(dataclasses.replace(cfg, style="gpt2"))
  assert before == {f: open(os.path.join(out, f)).read() for f in before}
  with pytest.raises(ValueError, match="holds another architecture: leaf"):
    gpt.run(Config(**TINY, transfer_from=out, steps=1, out=str(tmp_path / "b")))
  assert not os.path.exists(tmp_path / "b")

  # --transfer-from: a width-128 run starting from this width-64 one.
  big = str(tmp_path / "big")
  summary = gpt.run(dataclasses.replace(cfg, width=128, heads=16, kv_heads=8, grow_at=0, grow_to=0,
                                        transfer_from=out, steps=1, mesh="data=-1", out=big))
  rec = [r for r in metrics(big) if r.get("event") == "transfer"][0]
  assert rec["from_sizes"]["embed"] == 64 and summary["sizes"]["embed"] == 128


def test_transfer_from_a_run_keeps_its_parametrization_through_a_resume(tmp_path):
  """A muP run transferred 32 -> 64 (and grown to 128 after step 1) keeps the source's RC metadata (base
  32); resumed mid-way it logs bitwise the losses and FLOPs of an uninterrupted run; another --param or --base-width is refused; a
  finished run directory returns its summary and writes nothing; growth leaves head_dim out."""
  src = str(tmp_path / "src")
  gpt.run(Config(**TINY, steps=2, out=src))
  kw = dict(TINY, width=64, heads=8, transfer_from=src, grow_at=1, grow_to=128)  # head_dim 8, as the source's
  whole, part = str(tmp_path / "whole"), str(tmp_path / "part")
  gpt.run(Config(**kw, steps=3, out=whole))
  gpt.run(Config(**kw, steps=2, out=part))
  gpt.run(Config(**kw, steps=3, out=part))  # resumes from step 2
  losses = lambda d: [(r["step"], r["loss"], r["flops"]) for r in metrics(d) if "loss" in r and "event" not in r]
  assert losses(part)[-1][0] == 3 and losses(part) == losses(whole)
  saved = Checkpointer(os.path.join(part, "checkpoints")).metadata(3)["leaves"]["['embed']"]
  assert saved["shape"] == [256, 128] and saved["base"] == [None, 32]  # the source's muP base
  for flags, match in ((dict(param="sp"), "trained with param 'mup'.*pass --param mup"),
                       (dict(init="normal:0,2"), "trained with init 'normal'"),
                       (dict(base_width=64), "muP base .* leave --base-width out")):
    with pytest.raises(ValueError, match=match):
      gpt.run(Config(**{**kw, **flags}, steps=1, out=str(tmp_path / "bad")))
  with pytest.raises(ValueError, match="has head_dim 8, this run 16 .*pass --heads 8"):
    gpt.run(Config(**{**kw, "width": 64, "heads": 4}, steps=1, out=str(tmp_path / "bad")))
  assert not os.path.exists(tmp_path / "bad")
  assert [r for r in metrics(part) if r.get("event") == "transfer"][0]["sizes"]["embed"] == 64
  # The same command again: the end record's summary, nothing written.
  before = open(os.path.join(part, "metrics.jsonl")).read()
  again = gpt.run(Config(**kw, steps=3, out=part))
  assert again["finished_before"] and again["loss"] == losses(part)[-1][1]
  assert open(os.path.join(part, "metrics.jsonl")).read() == before
  with pytest.raises(ValueError, match="holds step 3, past --steps 2"):
    gpt.run(Config(**kw, steps=2, out=part))
  # Growth names only the axes that change (r1 > 0 draws fresh neurons along every axis it is given).
  assert "head_dim" not in gpt._changed(gpt.scaled_sizes(Config(**TINY), 64), gpt.load_params(
      src, sharding.make_mesh("data=1", jax.devices()[:1])))


def test_schedule_trains_from_step_one_and_peak_flops_table():
  s = gpt.lr_schedule(Config(**TINY, lr=1.0, min_lr=0.1, warmup=0, steps=10))
  np.testing.assert_allclose([s(0), s(9)], [1.0, 0.1], rtol=1e-6)  # step 1 at the peak, step 10 at min_lr
  s = gpt.lr_schedule(Config(**TINY, lr=1.0, min_lr=0.1, warmup=3, steps=10))
  np.testing.assert_allclose([s(0), s(1), s(2), s(9)], [1 / 3, 2 / 3, 1.0, 0.1], rtol=1e-6)
  assert [gpt.peak_for(k) for k in ("NVIDIA L40S", "NVIDIA L4", "NVIDIA H100 NVL", "NVIDIA H100 80GB HBM3",
                                    "cpu")] == [362e12, 121e12, 835e12, 989e12, None]


def test_bad_flags_fail_before_training(capsys):
  for flags, match in ((dict(head_dim=-8), "head_dim must be >= 0"), (dict(mlp=-5), "mlp must be >= 0"),
                       (dict(markov_symbols=0), r"markov_symbols must be in \[1, 62\]"),
                       (dict(random_rate=1.5), r"random_rate must be in \[0, 1\]"),
                       (dict(grow_at=5, grow_to=64, steps=2), "grow_at 5 is after the last step"),
                       (dict(dtype="float16"), "float16 would need loss scaling")):
    with pytest.raises(ValueError, match=match):
      gpt.validate(Config(**{**TINY, **flags}))
  assert gpt.main(["--head-dim", "-8", "--progress", "false"]) == 2
  assert "train.gpt: error: head_dim must be >= 0, got -8" in capsys.readouterr().err


def test_grow_mid_training_keeps_a_tied_sp_gpt2(tmp_path):
  # GPT-2 in SP with tied embeddings: the leaf-wise rules alone double the readout's sum over a doubled
  # embed; train.gpt grows through rcjax.transfer_model, whose final-norm correction keeps the loss,
  # also with the function-preserving symmetry breaking; copy_spread is logged from the growth on.
  out = str(tmp_path / "run")
  gpt.run(Config(**TINY, param="sp", steps=2, grow_at=1, grow_to=64, split_rate=0.5, cancel_rate=0.5, out=out))
  recs = metrics(out)
  grow = [r for r in recs if r.get("event") == "grow"][0]
  assert grow["sizes"]["embed"] == 64
  np.testing.assert_allclose(grow["loss_after"], grow["loss_before"], rtol=1e-5)
  steps = {r["step"]: r for r in recs if "loss" in r and "event" not in r}
  assert "copy_spread" not in steps[1] and set(steps[2]["copy_spread"]) == {"embed", "heads", "kv_heads", "mlp"}
  assert all(v > 0 for v in steps[2]["copy_spread"].values())


def test_kill_resume_and_loss_floor(tmp_path):
  """Kill a run (an order-1 Markov language over 8 letters) mid-way, restart the same command: it resumes
  from the last complete checkpoint, logs bitwise the same losses as before the kill, and ends near the
  language's entropy floor."""
  out = str(tmp_path / "run")
  args = ["--dataset", "markov", "--width", "32", "--seq-len", "16", "--batch-size", "32", "--steps", "150",
          "--lr", "1e-2", "--markov-order", "1", "--markov-symbols", "8", "--ckpt-every", "10", "--log-every", "1",
          "--dtype", "float32", "--progress", "false", "--out", out]
  cmd = [sys.executable, "-m", "train.gpt"] + args
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu",
         "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  deadline, path = time.time() + 180, os.path.join(out, "metrics.jsonl")
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(path) and max([r.get("step", 0) for r in metrics(out)], default=0) >= 45:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  first = {r["step"]: r["loss"] for r in metrics(out) if "loss" in r}
  killed_at = Checkpointer(os.path.join(out, "checkpoints")).latest_step()
  assert killed_at is not None and 10 <= killed_at < max(first) < 150, (killed_at, max(first))
  done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  recs = metrics(out)
  assert [r for r in recs if r.get("event") == "resume"] == [{"event": "resume", "step": killed_at}]
  after = recs[recs.index({"event": "resume", "step": killed_at}):]
  second = [r for r in after if "loss" in r and "event" not in r]
  assert second[0]["step"] == killed_at + 1 and second[-1]["step"] == 150
  again = {r["step"]: r["loss"] for r in second if r["step"] in first}
  assert len(again) >= 1 and again == {s: first[s] for s in again}  # bitwise the same losses
  # The run directory and the loss floor of the synthetic language.
  cfg, _ = gpt.parse(args)
  assert json.load(open(os.path.join(out, "config.json"))) == dataclasses.asdict(cfg)
  assert sorted(os.listdir(out)) == ["checkpoints", "config.json", "loss.png", "metrics.jsonl"]
  end = recs[-1]
  assert end["event"] == "end" and end["loss_floor"] == pytest.approx(1.0827, abs=1e-4)
  assert first[1] > end["loss_floor"] + 3.0  # step 1: near log(256)
  last = np.mean([r["loss"] for r in second[-10:]])
  assert last < end["loss_floor"] + 0.15, (last, end["loss_floor"])  # measured: floor + 0.085
  assert {"step", "loss", "tokens", "flops", "tokens_per_s", "mfu", "width"} <= set(second[-1])
  assert second[-1]["tokens"] == 150 * 32 * 16
  assert second[-1]["flops"] == pytest.approx(end["flops_per_token"] * 150 * 32 * 16)


def test_tfds_text_path_with_mock_data(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  from train.text_data import TextData
  with tfds.testing.mock_data(num_examples=8):
    data = TextData("tiny_shakespeare", seq_len=16, seed=0, data_dir=str(tmp_path / "tfds"), download=False)
  mesh = sharding.make_mesh("data=2,fsdp=2,tensor=2")
  batch = gpt.global_batch(data, 3, 8, sharding.batch_sharding(mesh))
  assert batch.shape == (8, 17) and batch.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"), None)
  np.testing.assert_array_equal(np.asarray(batch)[2:4], data.batch(3, range(2, 4)))
  assert int(batch.max()) < 256 and data.loss_floor() is None
  assert not np.array_equal(data.batch(3, range(2)), data.batch(3, range(2), eval=True))


def test_presets_have_their_published_sizes():
  # Parameter counts as the README states them (abstract init: nothing is allocated).
  want = {"gpt-small": 124.5, "gpt-medium": 354.9, "llama-small": 124.7, "llama-medium": 331.4}
  for name, millions in want.items():
    model = gpt.build_model(Config(**{**gpt.PRESETS[name], "preset": name}))
    p = jax.eval_shape(lambda k, m=model: m.init(k, jnp.zeros((1, 8), jnp.int32))["params"], jax.random.key(0))
    assert round(sum(x.size for x in jax.tree.leaves(rcjax.unbox(p))) / 1e6, 1) == millions, name
