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
