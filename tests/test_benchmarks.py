"""Benchmark scripts run in --smoke mode so they cannot rot (no timing is asserted)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import transfer as bench_transfer


def test_transfer_benchmark_smoke(tmp_path, fast_compiles_here):
  out = tmp_path / "t.json"
  rows = bench_transfer.main(["--smoke", "--kernel", "auto,interpret,tiled", "--json", str(out)])
  assert json.loads(out.read_text()) == json.loads(json.dumps(rows))
  donated = [r for r in rows if "donate_s" in r]
  rows = [r for r in rows if "donate_s" not in r]
  # the tiled-order probe: integer growths only (the MLP and the GPT 2x, not the shrink), checked against
  # apply_maps with tiled maps
  tiled = [r for r in rows if r["kernel"] == "tiled"]
  assert [r["case"] for r in tiled] == ["mlp N=16 2x kernel=tiled", "gpt tiny-llama 2x bf16 kernel=tiled"]
  assert all(r["bitwise_equal_to_takes"] is True and r["rcjax_vs_copy"] > 0 for r in tiled), tiled
  rows = [r for r in rows if r["kernel"] != "tiled"]
  assert {r["kernel"] for r in rows} == {"auto", "interpret"} and len(rows) % 2 == 0
  # grow(donate=True) on a GPT whose MLP alone grows: the untouched leaves are shared, not allocated again
  assert len(donated) == 1 and 0 < donated[0]["new_GB_donate"] < donated[0]["new_GB"], donated
  for row in rows:
    assert "error" not in row, row
    for k in ("rcjax_s", "rcjax_GBps", "copy_GBps", "rcjax_vs_copy", "naive_vs_copy", "bytes_moved_GB"):
      assert row[k] > 0, (row["case"], k)
    # the kernel (interpreted here) gives the default path's output bit for bit
    assert row.get("bitwise_equal_to_first") is (True if row["kernel"] == "interpret" else None), row["case"]


def test_train_step_benchmark_smoke(tmp_path, fast_compiles_here):
  from benchmarks import train_step as bench_train

  rows = bench_train.main(["--smoke", "--json", str(tmp_path / "s.json")])
  assert {r["case"].split()[0] for r in rows} == {"mlp", "gpt"}
  for row in rows:
    assert "error" not in row, row
    assert row["step_s"] > 0 and (row.get("examples_per_s", 0) > 0 or row.get("tokens_per_s", 0) > 0)
  gpt = next(r for r in rows if r["case"].startswith("gpt"))
  assert gpt["wall_s"] > gpt["step_s"]  # setup, compile and every step: what a GPU session budgets


def test_train_step_variants_and_profile_smoke(tmp_path, fast_compiles_here):
  from benchmarks import profile_step
  from benchmarks import train_step as bench_train

  assert bench_train.variant_fields("scan+bf16residual", "bfloat16") == {"unroll": 1, "residual_dtype": jnp.bfloat16}
  assert bench_train.variant_fields("fusedloss4+bf16residual", "bfloat16") == {"loss_chunks": 4,
                                                                                "residual_dtype": jnp.bfloat16}
  assert bench_train.variant_fields("fusedproj+fusedloss", "bfloat16") == {"fuse_projections": True, "loss_chunks": 8}
  with pytest.raises(ValueError, match="unknown variant 'fusedloss0'"):
    bench_train.variant_fields("fusedloss0", "bfloat16")
  with pytest.raises(ValueError, match="unknown variant 'fast'"):
    bench_train.variant_fields("fast", "bfloat16")
  # (the default variant runs in test_train_step_benchmark_smoke: one GPT compile fewer here)
  rows = bench_train.main(["--smoke", "--only", "gpt", "--variants", "scan+fusedloss"])
  assert [r["case"].split()[-1] for r in rows] == ["scan+fusedloss"]
  assert all("error" not in r for r in rows)
  mem = bench_train.main(["--smoke", "--only", "gpt", "--memory", "--variants", "fusedloss"])
  assert mem[0]["case"].endswith("memory fusedloss") and mem[0]["temp_GiB"] > 0 and mem[0]["args_GiB"] > 0
  s = profile_step.main(["--smoke", "--steps", "2", "--out", str(tmp_path / "trace"),
                         "--json", str(tmp_path / "p.json")])
  assert json.loads((tmp_path / "p.json").read_text())["case"] == s["case"]
  assert s["kernel_ms_per_step"] > 0 and s["kernels"] and sum(c["share"] for c in s["classes"].values()) == \
      pytest.approx(1.0)


def test_profile_summary_counts_device_streams_only():
  from benchmarks.profile_step import summarise

  meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
          {"ph": "M", "name": "thread_name", "pid": 1, "tid": 1, "args": {"name": "Stream #13(Compute)"}},
          {"ph": "M", "name": "thread_name", "pid": 1, "tid": 2, "args": {"name": "XLA Ops"}},
          {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}}]
  ev = [{"ph": "X", "pid": 1, "tid": 1, "name": "nvjet_sm90_gemm", "ts": 0, "dur": 30},
        {"ph": "X", "pid": 1, "tid": 1, "name": "loop_add_fusion", "ts": 20, "dur": 20},  # overlaps 10
        {"ph": "X", "pid": 1, "tid": 2, "name": "fusion.1", "ts": 0, "dur": 1000},  # an op line, not a kernel
        {"ph": "X", "pid": 2, "tid": 3, "name": "python", "ts": 0, "dur": 1000}]
  s = summarise({"traceEvents": meta + ev}, steps=2)
  assert s["kernel_ms_per_step"] == pytest.approx(0.025) and s["busy_ms_per_step"] == pytest.approx(0.020)
  assert s["classes"]["matmul"]["share"] == pytest.approx(0.6)
  assert s["classes"]["elementwise fusion"]["share"] == pytest.approx(0.4)


def test_device_check_reports_a_device_that_disagrees(fast_compiles_here, monkeypatch, capsys):
  # On a CPU-only machine the "device" is the host, so agreement proves nothing: make one side of every
  # comparison draw from another key (as a device whose random bits differ would) and check the script
  # says MISMATCH and exits non-zero.
  from benchmarks import device_check

  calls = []

  def on(device, tree):
    if isinstance(tree, jax.Array) and jax.dtypes.issubdtype(tree.dtype, jax.dtypes.prng_key):
      calls.append(device)
      if len(calls) % 2:
        tree = jax.random.fold_in(tree, 1)
    return jax.device_put(tree, device)

  monkeypatch.setattr(device_check, "_on", on)
  assert device_check.main(["--smoke"]) == 1
  out = capsys.readouterr().out
  assert "MISMATCH" in out and "FAILED" in out, out


def test_repeat_kernel_benchmark_smoke(tmp_path):
  from benchmarks import repeat_kernel

  rows = repeat_kernel.main(["--smoke", "--json", str(tmp_path / "r.json")])
  assert {r["impl"] for r in rows} >= {"xla", "pallas block=4096 warps=4", "pallas words block=16384 warps=8",
                                      "xla tiled order"}
  ok = [r.get("bitwise_equal_to_takes" if r["impl"] == "xla tiled order" else "bitwise_equal_to_xla") for r in rows]
  assert all(ok), [r for r, o in zip(rows, ok) if not o]
  assert json.loads((tmp_path / "r.json").read_text()) == rows
  assert repeat_kernel.parse_configs("8192:4,16384:8:words") == [(8192, 4, False), (16384, 8, True)]
  with pytest.raises(ValueError, match="BLOCK:WARPS or BLOCK:WARPS:words"):
    repeat_kernel.parse_configs("8192:4:bytes")


def test_hf_memory_benchmark_smoke(tmp_path):
  from benchmarks import hf_memory

  rows = hf_memory.main(["--smoke", "--dir", str(tmp_path / "ckpt"), "--json", str(tmp_path / "m.json")])
  assert [r["blocks"] for r in rows] == [2] and rows[0]["num_blocks"] == 2
  assert rows[0]["rss_peak_mb"] >= rows[0]["rss_base_mb"] > 0 and rows[0]["numpy_peak_mb"] > 0
  assert json.loads((tmp_path / "m.json").read_text()) == rows
  assert not (tmp_path / "ckpt" / "llama_64_128_2").exists()  # the synthetic checkpoint is removed


def test_benchmark_arguments_are_checked_before_any_work(tmp_path, capsys):
  from benchmarks import profile_step, transfer
  from benchmarks import train_step as bench_train

  for argv, msg in ((["--only", "gpt", "--gpt", "tiny:x"], "positive integer"),
                    (["--only", "gpt", "--gpt", "tiny:0"], "positive integer"),
                    (["--only", "gpt", "--gpt", "nope"], "unknown train.gpt preset 'nope'"),
                    (["--reps", "0"], "--reps must be at least 1")):
    with pytest.raises(SystemExit):
      bench_train.main(argv)
    assert msg in capsys.readouterr().err
  with pytest.raises(SystemExit):
    profile_step.main(["--smoke", "--steps", "0"])
  assert "--steps and --top must be at least 1" in capsys.readouterr().err
  assert transfer.main(["--smoke", "--only", "nomatch", "--json", str(tmp_path / "t.json")]) == []
  assert json.loads((tmp_path / "t.json").read_text()) == [] and "no case matches" in capsys.readouterr().err


def test_importance_benchmark_smoke(tmp_path, fast_compiles_here):
  from benchmarks import importance as bench_importance

  rows = bench_importance.main(["--smoke", "--only", "mlp", "--out", str(tmp_path)])
  shrunk = [r for r in rows if r["target"] != "source"]
  assert {r["sampler"] for r in shrunk} == set(bench_importance.SAMPLERS) | {"scratch"}
  assert all(np.isfinite(r["shrunk"]) and np.isfinite(r["retrained"]) for r in shrunk)
  assert (tmp_path / "importance.png").is_file() and (tmp_path / "table.md").is_file()


def test_checkpoint_verify_benchmark_smoke(tmp_path):
  from benchmarks import checkpoint_verify

  rows = checkpoint_verify.main(["--smoke", "--dir", str(tmp_path), "--json", str(tmp_path / "c.json")])
  assert json.loads((tmp_path / "c.json").read_text()) == rows and len(rows) == 1
  assert all(rows[0][k] > 0 for k in ("save_plain_s", "save_verified_s", "restore_plain_s", "restore_verified_s"))


def test_hf_grow_benchmark_smoke(tmp_path):
  from benchmarks import hf_grow

  rows = hf_grow.main(["--smoke", "--dir", str(tmp_path / "work"), "--out", str(tmp_path / "out")])
  (row,) = rows
  assert row["direction"] == "grow" and row["rcjax --no-check"]["bytes_written"] > row["bytes_read"] > 0
  assert row["rcjax --no-check"]["rss_mb"] > 0 and row["rcjax check"]["phases"]["check_s"] >= 0
  assert json.loads((tmp_path / "out" / "results.json").read_text())["rows"][0]["shape"] == "smoke"
