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
  for r in json.loads((out / "corr.json").read_text()).values():  # the drawn pairs are the matrix's entries
    corr, pairs, names = np.array(r["corr"], float), r["pairs"], r["names"]
    drawn = {v for row in pairs["corr"] for v in row if v is not None}
    within = {corr[i, j] for (s, _), e in zip(r["groups"], [g[0] for g in r["groups"][1:]] + [len(names)])
              for i in range(s, e) for j in range(i + 1, e)}
    assert drawn == within and len(pairs["cols"]) == len(r["axes"])


def test_bars_with_repeated_labels_give_mean_and_spread_over_seeds(tmp_path):
  from rcjax import analyze
  from rcjax.hf.synthetic import write_synthetic

  paths = [str(tmp_path / f"m{s}") for s in range(3)]
  for s, p in enumerate(paths):
    write_synthetic(p, "gpt2", num_blocks=1, embed=16, heads=2, mlp=32, vocab=32, seed=s)
  assert analyze.main(["bars", *paths, "--labels", "a", "a", "b", "--out", str(tmp_path / "o"), "--quiet",
                       "--permutations", "20"]) == 0
  rows = json.loads((tmp_path / "o" / "bars.json").read_text())
  by = json.loads((tmp_path / "o" / "bars_by_label.json").read_text())
  assert (tmp_path / "o" / "max_abs_corr.png").stat().st_size > 0 and list(by) == ["a", "b"]
  a = [r["max_abs_corr"] for r in rows if r["label"] == "a"]
  assert by["a"]["max_abs_corr"]["n"] == 2 and np.isclose(by["a"]["max_abs_corr"]["mean"], np.mean(a), atol=1e-6)
  assert by["b"]["max_abs_corr"] | {"n": 1} == by["b"]["max_abs_corr"] and by["b"]["max_abs_corr"]["std"] == 0


def test_fig45_smoke_over_two_seeds_writes_png_pdf_json_and_the_mean_distance(tmp_path):
  from rcjax import figures

  assert mlp_figures.main(["fig45", "--out", str(tmp_path), "--smoke", "--seeds", "0", "1"]) == 0
  out = tmp_path / "fig45"
  assert all((out / f).stat().st_size > 0 for f in ("compare.png", "compare.pdf", "compare.json"))
  rows = json.loads((out / "compare.json").read_text())["rows"]
  assert rows and all(_finite(r["w1"]) and _finite(r["w1_null_q95"]) for r in rows)
  second = figures.figure_compare(str(tmp_path / "seed1" / "fig45_n16_normal13"),
                                  str(tmp_path / "seed1" / "fig45_n32_normal13"), str(tmp_path / "s1"),
                                  permutations=20)["rows"]
  seeds = json.loads((out / "compare_seeds.json").read_text())["rows"]
  for r, a, b in zip(seeds, rows, second):
    assert r["w1"]["n"] == 2 and np.isclose(r["w1"]["mean"], (a["w1"] + b["w1"]) / 2, atol=1e-6)
    assert r["pairs_above_null"] == (a["w1"] > a["w1_null_q95"]) + (b["w1"] > b["w1_null_q95"])


def test_fig41_smoke_over_two_seeds_counts_unchanged_neurons(tmp_path):
  assert mlp_sweep.main(["fig41", "--dataset", "digits", "--out", str(tmp_path), "--width", "12", "--small", "6",
                         "--epochs", "1", "--no-progress", "--seeds", "0", "1"]) == 0
  each = []
  for s in (0, 1):
    assert (tmp_path / f"seed{s}" / "fig4_1.png").stat().st_size > 0 and (tmp_path / f"seed{s}" / "fig4_1.pdf").exists()
    each.append(json.loads((tmp_path / f"seed{s}" / "fig4_1.json").read_text()))
  assert set(each[0]) == {"sp", "mf", "mup"} and all(0 <= n["unchanged_neurons"] <= 12 for n in each[0].values())
  seeds = json.loads((tmp_path / "fig4_1_seeds.json").read_text())["runs"]
  for p in ("sp", "mf", "mup"):
    assert np.isclose(seeds[p]["std_init"]["mean"], np.mean([e[p]["std_init"] for e in each]))
    assert seeds[p]["unchanged_neurons"]["n"] == 2


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
