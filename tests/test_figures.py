"""The paper's figure commands in smoke mode write their PNG, PDF and JSON (issue 27), and the numbers quoted
in docs/figures.md agree with the JSON files committed beside it (docs/figures/)."""

import json
import pathlib
import re

import numpy as np

from train import mlp_figures, mlp_sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _finite(x) -> bool:
  return isinstance(x, (int, float)) and np.isfinite(x)


def test_fig42_smoke_writes_png_pdf_json(tmp_path, capsys):
  assert mlp_figures.main(["fig42", "--out", str(tmp_path), "--smoke"]) == 0
  out = tmp_path / "fig42"
  assert all((out / f).stat().st_size > 0 for f in ("corr.png", "corr.pdf", "corr.json", "training.json"))
  runs = json.loads((out / "training.json").read_text())["runs"]
  assert len(runs) == 3 and all(_finite(r["train_loss"]) and 0 <= r["max_abs_corr"] <= 1 for r in runs.values())
  printed = capsys.readouterr().out
  assert all(label in printed for label in runs) and "max_abs_corr=" in printed


def test_fig45_smoke_writes_png_pdf_json(tmp_path):
  assert mlp_figures.main(["fig45", "--out", str(tmp_path), "--smoke"]) == 0
  out = tmp_path / "fig45"
  assert all((out / f).stat().st_size > 0 for f in ("compare.png", "compare.pdf", "compare.json"))
  rows = json.loads((out / "compare.json").read_text())["rows"]
  assert rows and all(_finite(r["w1"]) and _finite(r["w1_null_q95"]) for r in rows)


def test_fig41_smoke_writes_json_and_counts_unchanged_neurons(tmp_path):
  assert mlp_sweep.main(["fig41", "--dataset", "digits", "--out", str(tmp_path), "--width", "12", "--small", "6",
                         "--epochs", "1", "--no-progress"]) == 0
  assert (tmp_path / "fig4_1.png").stat().st_size > 0 and (tmp_path / "fig4_1.pdf").stat().st_size > 0
  numbers = json.loads((tmp_path / "fig4_1.json").read_text())
  assert set(numbers) == {"sp", "mf", "mup"} and all(0 <= n["unchanged_neurons"] <= 12 for n in numbers.values())


def test_unchanged_columns_marks_exactly_the_columns_that_did_not_move():
  w0 = np.random.default_rng(0).normal(size=(5, 4))
  w1 = w0.copy()
  w1[:, [0, 2]] += 0.5
  live, n = mlp_sweep.unchanged_columns(w0, w1)
  assert live.tolist() == [True, False, True, False] and n["unchanged_neurons"] == 2


def _lookup(obj, key: str):
  for part in key.split("/"):
    obj = obj[int(part)] if isinstance(obj, list) else obj[part]
  return obj


def test_numbers_in_docs_figures_md_agree_with_the_committed_json():
  text = (ROOT / "docs" / "figures.md").read_text()
  rows = re.findall(r"^\| *(-?[0-9.]+) *\| *`([^`]+\.json)` *\| *`([^`]+)` *\|", text, flags=re.M)
  assert len(rows) >= 10, "docs/figures.md lost its table of quoted numbers"
  for value, file, key in rows:
    got = _lookup(json.loads((ROOT / "docs" / "figures" / file).read_text()), key)
    decimals = len(value.split(".")[1]) if "." in value else 0
    assert round(float(got), decimals) == float(value), (file, key, got, value)
    assert value in text.replace(f"| {value} |", ""), f"{value} ({key}) is in the table but not in the text"


def test_fig43_over_three_seeds_gives_mean_and_spread(tmp_path):
  argv = ["fig43a", "--dataset", "digits", "--out", str(tmp_path), "--large", "8", "--epochs", "1",
          "--inits", "gaussian", "--seeds", "0", "1", "2", "--no-progress"]
  assert mlp_sweep.main(argv) == 0
  assert all((tmp_path / f).stat().st_size > 0 for f in ("fig4_3_ad_seeds.png", "fig4_3_ad_seeds_flops.png",
                                                         "fig4_3_ad_seeds.pdf"))
  seeds = json.loads((tmp_path / "fig4_3_ad_seeds.json").read_text())["runs"]["gaussian"]["final_train_loss"]
  each = [json.loads((tmp_path / f"seed{s}" / "fig4_3_ad.json").read_text())["gaussian"]["final_train_loss"]
          for s in (0, 1, 2)]
  assert seeds["n"] == 3 and np.isclose(seeds["mean"], np.mean(each)) and np.isclose(seeds["std"], np.std(each, ddof=1))
  assert seeds["min"] <= seeds["mean"] <= seeds["max"] and seeds["std"] > 0  # seeds differ
