"""Benchmark scripts run in --smoke mode so they cannot rot (no timing is asserted)."""

import json

from benchmarks import transfer as bench_transfer


def test_transfer_benchmark_smoke(tmp_path):
  out = tmp_path / "t.json"
  rows = bench_transfer.main(["--smoke", "--json", str(out)])
  assert json.loads(out.read_text()) == json.loads(json.dumps(rows))
  for row in rows:
    for k in ("rcjax_s", "rcjax_GBps", "copy_GBps", "rcjax_vs_copy", "naive_vs_copy", "bytes_moved_GB"):
      assert row[k] > 0, (row["case"], k)


def test_train_step_benchmark_smoke(tmp_path):
  from benchmarks import train_step as bench_train

  rows = bench_train.main(["--smoke", "--json", str(tmp_path / "s.json")])
  assert {r["case"].split()[0] for r in rows} == {"mlp", "gpt"}
  for row in rows:
    assert "error" not in row, row
    assert row["step_s"] > 0 and (row.get("examples_per_s", 0) > 0 or row.get("tokens_per_s", 0) > 0)


def test_device_check_passes_on_cpu():
  from benchmarks import device_check

  assert device_check.main(["--smoke"]) == 0
