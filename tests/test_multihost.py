"""The multi-host code path on one machine: two processes with 4 CPU devices each, joined through
jax.distributed's coordinator on localhost, train on one (2,2,2) mesh and agree on the loss."""

import json
import os
import re
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def run_two(cmd: list[str], extra=lambda i: [], returncode: int = 0) -> list[str]:
  """Run `cmd --process-id i *extra(i)` for i = 0, 1 (4 CPU devices each); assert both exit with
  `returncode`; their outputs."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
         "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
  procs = [subprocess.Popen(cmd + ["--process-id", str(i), *extra(i)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = []
  for p in procs:
    try:
      outs.append(p.communicate(timeout=240)[0])
    finally:
      p.kill()
  for i, (p, text) in enumerate(zip(procs, outs)):
    assert p.returncode == returncode, f"process {i} exited {p.returncode}:\n{text[-3000:]}"
  return outs


def test_two_processes_agree_on_the_loss(tmp_path):
  out = str(tmp_path / "run")
  port = free_port()
  cmd = [sys.executable, "-m", "train.gpt", "--dataset", "markov", "--width", "32", "--seq-len", "16", "--batch-size", "8",
         "--steps", "3", "--log-every", "1", "--dtype", "float32", "--mesh", "data=2,fsdp=2,tensor=2",
         "--progress", "false", "--out", out, "--coordinator", f"localhost:{port}", "--num-processes", "2"]
  outs = run_two(cmd)
  losses = [re.search(rf"process {i}: step 3 loss ([\d.]+)", text) for i, text in enumerate(outs)]
  assert all(losses), outs
  assert losses[0].group(1) == losses[1].group(1)
  # Only process 0 writes logs: one record per step, each once.
  with open(os.path.join(out, "metrics.jsonl")) as f:
    steps = [r["step"] for r in map(json.loads, f) if "loss" in r and "event" not in r]
  assert steps == [1, 2, 3]
  assert os.path.isdir(os.path.join(out, "checkpoints", "3"))


def test_two_processes_grow_an_hf_checkpoint_shard_by_shard(tmp_path):
  """`python -m rcjax.grow --mesh` over two processes (4 CPU devices each): each process reads and
  writes only its own shards; the files equal a one-process run's byte for byte."""
  sys.path.insert(0, os.path.join(ROOT, "tests"))
  from hf_reference import write_tiny
  from rcjax.cli import hf as hf_cli

  src = str(tmp_path / "src")
  write_tiny(src, "llama", kv_heads=2)
  flags = ["--factor", "2", "--mesh", "fsdp=4,tensor=2", "--seed", "5"]
  assert hf_cli.main([src, str(tmp_path / "one"), *flags]) == 0  # this process: 8 devices
  port = free_port()
  cmd = [sys.executable, "-m", "rcjax.grow", src, str(tmp_path / "two"), *flags,
         "--coordinator", f"localhost:{port}", "--num-processes", "2"]
  outs = run_two(cmd)
  assert "max |logit difference|" in outs[0] and "max |logit difference|" not in outs[1]  # process 0 reports
  diff = float(outs[0].split("max |logit difference| ")[1].split()[0])
  assert diff < 1e-4
  one, two = (open(tmp_path / d / "model.safetensors", "rb").read() for d in ("one", "two"))
  assert one == two
  assert sorted(os.listdir(tmp_path)) == ["one", "src", "two"]  # no temporary directory left


def test_processes_started_with_other_flags_all_stop_with_one_clear_error(tmp_path):
  # Another --seed on process 1 alone used to train a silent mix of two runs; now both processes refuse.
  port = free_port()
  cmd = [sys.executable, "-m", "train.gpt", "--dataset", "markov", "--width", "32", "--seq-len", "16", "--batch-size", "8", "--steps", "2",
         "--progress", "false", "--out", str(tmp_path / "run"), "--coordinator", f"localhost:{port}",
         "--num-processes", "2"]
  outs = run_two(cmd, extra=lambda i: ["--seed", str(5 * i)], returncode=2)
  for i, text in enumerate(outs):
    assert f"the processes disagree on train.gpt flags ['seed'] (process {i} has seed={5 * i})" in text, text[-2000:]
  assert not (tmp_path / "run").exists()
