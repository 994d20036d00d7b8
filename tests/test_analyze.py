"""python -m rcjax.analyze: run directories (made here with Checkpointer) and HF checkpoints, figures, errors."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from safetensors.numpy import save_file
from sklearn.datasets import load_digits

import rcjax
from rcjax import analyze, figures, plots_column
from rcjax import diagnostics as diag
from rcjax.checkpoint import Checkpointer
from rcjax.hf.synthetic import write_synthetic
from test_diagnostics import gpt_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_run(out, width, *, steps=300, every=150, bias=True, lr=0.3, seed=0):
  """A stand-in for `python -m train.mlp --param mf --depth 3`: mean-field MLP, SGD on sklearn digits,
  a run directory with config.json and checkpoints every `every` steps (0 = init)."""
  x, y = load_digits(return_X_y=True)
  x, y = (x / 16.0).astype(np.float32), y.astype(np.int32)
  model = rcjax.nn.MLP((width, width), 10, param="mf", bias=bias, bias_init="normal")
  params = model.init(jax.random.key(seed), x[:1])["params"]
  tx = rcjax.sgd(lr)
  state = tx.init(params)

  @jax.jit
  def step(p, s, xb, yb):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, xb), yb).mean()
    g = jax.grad(loss)(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  os.makedirs(out)
  config = {"width": width, "depth": 3, "param": "mf", "bias": "trainable" if bias else "none", "lr": lr}
  json.dump(config, open(os.path.join(out, "config.json"), "w"))
  rng = np.random.default_rng(seed)
  with Checkpointer(os.path.join(out, "checkpoints")) as ck:
    ck.save(0, params=params, config=config)
    for t in range(1, steps + 1):
      idx = rng.integers(0, len(x), 64)
      params, state = step(params, state, x[idx], y[idx])
      if t % every == 0:
        ck.save(t, params=params, config=config)
  return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  d = tmp_path_factory.mktemp("runs")
  r = {"w64": train_run(str(d / "w64"), 64), "w128": train_run(str(d / "w128"), 128),
       "nobias": train_run(str(d / "nobias"), 128, steps=0, bias=False), "gpt": str(d / "gpt")}
  with Checkpointer(d / "gpt" / "checkpoints") as ck:  # a stand-in for a train.gpt run: scanned 'layers' axis
    ck.save(0, params=gpt_params(E=128, H=8, D=16, M=256), config={"model": "gpt"})
    ck.save(10, params=gpt_params(E=128, H=8, D=16, M=256, planted=0.5), config={"model": "gpt"})
  json.dump({"model": "gpt"}, open(d / "gpt" / "config.json", "w"))
  write_synthetic(d / "llama", "llama", num_blocks=4, embed=64, heads=4, kv_heads=2, dtype="bfloat16", shards=2)
  r["llama"] = str(d / "llama")
  return r


def test_analyze_trained_mlp_vs_init(runs, tmp_path):
  kinds = ("mean", "vector")
  init, _, _ = analyze.max_abs(analyze.Source(runs["w128"], step=0), kinds=kinds, progress=False)
  s = analyze.analyze(runs["w128"], str(tmp_path / "trained"), kinds=kinds, progress=False)
  for key in ("model_family", "num_blocks", "max_abs_corr", "max_abs_corr_null", "per_block"):
    assert key in s
  assert s["model_family"] == "rcjax-mlp" and s["num_blocks"] == 1 and s["step"] == 300
  assert set(s["per_block"][0]["axes"]) == {"hidden_0", "hidden_1"}
  assert init["max_abs_corr"] < init["max_abs_corr_null"], init  # at init: within the null
  assert s["max_abs_corr"] > s["max_abs_corr_null"], s  # trained: RC structure above the null
  for f in s["figures"] + ["summary.json", "correlations.json"]:
    assert os.path.getsize(tmp_path / "trained" / f) > 1000, f
  corr = json.load(open(tmp_path / "trained" / "correlations.json"))["0"]["hidden_1"]
  assert corr["names"] == ["Dense_1/bias", "Dense_1/kernel.C", "Dense_2/kernel.R"]


def test_analyze_gpt_run_per_block(runs, tmp_path):
  s = analyze.analyze(runs["gpt"], str(tmp_path / "a"), progress=False, blocks=[1])
  assert s["model_family"] == "rcjax-gpt" and s["num_blocks"] == 3 and len(s["per_block"]) == 3 and s["step"] == 10
  assert all(b["max_abs_corr"] > 2 * b["max_abs_corr_null"] for b in s["per_block"])
  assert set(s["per_block"][0]["axes"]) == {"embed", "heads,head_dim (q·k)", "heads,head_dim (v·o)", "mlp"}
  assert s["attention_left_out"] == []
  assert sorted(f for f in os.listdir(tmp_path / "a") if f.endswith(".png")) == [
      "corr_block1.png", "max_abs_corr_per_block.png", "means_block1.png"]
  s0, per_block, _ = analyze.max_abs(analyze.Source(runs["gpt"], step=0), progress=False)
  assert s0["max_abs_corr"] < s0["max_abs_corr_null"] and len(per_block) == 3


def test_cli_on_hf_checkpoint(runs, tmp_path):
  out = tmp_path / "out"
  p = subprocess.run([sys.executable, "-m", "rcjax.analyze", runs["llama"], "--out", str(out), "--permutations", "50",
                      "--blocks", "0"],
                     cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr
  s = json.load(open(out / "summary.json"))
  assert s["model_family"] == "llama" and s["source"] == "hf" and s["num_blocks"] == 4 and len(s["per_block"]) == 4
  assert s["max_abs_corr"] < s["max_abs_corr_null"]  # random weights
  assert "block/s" not in p.stderr and "\r" not in p.stderr  # a pipe: no progress bar (rcjax._progress)


def test_cli_errors_are_one_line(runs, tmp_path):
  (tmp_path / "empty").mkdir()
  bad = tmp_path / "t5"
  bad.mkdir()
  json.dump({"model_type": "t5"}, open(bad / "config.json", "w"))
  (bad / "model.safetensors").write_bytes(b"")
  write_synthetic(tmp_path / "cut", "gpt2", num_blocks=1)
  f = tmp_path / "cut" / "model.safetensors"
  f.write_bytes(f.read_bytes()[:-7])
  write_synthetic(tmp_path / "shard", "qwen2", num_blocks=2, shards=2)
  os.remove(tmp_path / "shard" / "model-00001-of-00002.safetensors")
  t = write_synthetic(tmp_path / "nan", "gpt2", num_blocks=2)  # a diverged run: one NaN weight
  t["h.1.mlp.c_fc.weight"][3, 5] = np.nan
  save_file(t, str(tmp_path / "nan" / "model.safetensors"))
  cases = {"empty": "neither an rcjax run directory", "t5": "unsupported architecture", "cut": "truncated safetensors",
           "shard": "missing shard", "nan": "block 1, leaf mlp.c_fc.weight has 1 non-finite (NaN/inf) of its 1024"}
  cli = lambda c: [sys.executable, "-m", "rcjax.analyze", str(tmp_path / c), "--out", str(tmp_path / f"o_{c}"),
                   "--quiet"]
  procs = {c: subprocess.Popen(cli(c), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for c in cases}
  for c, p in procs.items():
    _, err = p.communicate(timeout=300)
    assert p.returncode == 2, (c, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rcjax.analyze: error: ") and cases[c] in lines[0], (c, err)
    assert not (tmp_path / f"o_{c}").exists()  # nothing written on bad input
  assert analyze.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
  assert analyze.main(["bars", runs["w64"], str(tmp_path / "t5"), "--out", str(tmp_path / "o")]) == 2
  assert analyze.main([runs["w64"], "--permutations", "0", "--out", str(tmp_path / "o")]) == 2
  assert analyze.main([runs["gpt"], "--blocks", "7", "--out", str(tmp_path / "o")]) == 2  # no wrap to a block
  assert analyze.main(["corr", runs["gpt"], "--block", "-7", "--out", str(tmp_path / "o")]) == 2
  assert not (tmp_path / "o").exists()
  with pytest.raises(ValueError, match="permutations must be a positive integer"):
    diag.rc_correlation(gpt_params(L=1), "embed", permutations=0)


def test_nothing_written_when_drawing_fails(runs, tmp_path, monkeypatch):
  from rcjax import plots

  def fail(*args, **kwargs):
    raise ValueError("cannot draw")

  monkeypatch.setattr(plots, "stat_histograms", fail)  # after the bars and correlation figures
  with pytest.raises(ValueError, match="cannot draw"):
    analyze.analyze(runs["gpt"], str(tmp_path / "o"), permutations=20, progress=False)
  assert not (tmp_path / "o").exists()


def test_figure_commands(runs, tmp_path, capsys):
  # Figure 4.2: correlation matrices of several runs side by side
  assert analyze.main(["corr", runs["w128"], runs["nobias"], "--labels", "bias", "no bias", "--out",
                       str(tmp_path / "f42"), "--permutations", "50"]) == 0
  c = json.load(open(tmp_path / "f42" / "corr.json"))
  assert c["bias"]["axes"] == ["hidden_0", "hidden_1"] and len(c["bias"]["names"]) == 6
  assert c["no bias"]["names"] == ["Dense_0/kernel.C", "Dense_1/kernel.R", "Dense_1/kernel.C", "Dense_2/kernel.R"]
  # Figure 4.4: max |corr| per checkpoint, rcjax runs and an HF checkpoint together
  assert analyze.main(["bars", runs["gpt"], runs["w128"], runs["llama"], "--out", str(tmp_path / "f44"),
                       "--permutations", "50", "--quiet"]) == 0
  bars = json.load(open(tmp_path / "f44" / "bars.json"))
  assert [b["label"] for b in bars] == ["gpt", "w128", "llama"] and bars[0]["max_abs_corr"] > 0.9
  # Figure 4.5: row-mean distributions of two widths at several steps, with W1 and a reference
  assert analyze.main(["compare", runs["w64"], runs["w128"], "--steps", "0", "300", "--out", str(tmp_path / "f45"),
                       "--permutations", "50"]) == 0
  r = json.load(open(tmp_path / "f45" / "compare.json"))
  assert r["steps"] == [0, 300] and r["reference_step"] == 0
  row = next(x for x in r["rows"] if x["step"] == 300 and x["unit"] == "Dense_1/kernel")
  a = Checkpointer(os.path.join(runs["w64"], "checkpoints"), read_only=True).restore(300)["params"]
  b = Checkpointer(os.path.join(runs["w128"], "checkpoints"), read_only=True).restore(300)["params"]
  ra, rb = (np.asarray(p["Dense_1"]["kernel"].value).mean(axis=1) for p in (a, b))  # row means
  assert (row["n_a"], row["n_b"]) == (64, 128)
  assert row["w1"] == pytest.approx(diag.wasserstein1(ra, rb), rel=1e-5)
  for f in ("f42/corr.png", "f44/max_abs_corr.png", "f45/compare.png"):
    assert os.path.getsize(tmp_path / f) > 1000
  assert analyze.main(["compare", runs["w64"], runs["w128"], "--steps", "7", "--out", str(tmp_path / "x")]) == 2
  assert "step 7 is not saved" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_histograms_bin_each_scale_apart():
  """Row means (~1e-3) beside norm scales (~1): not one set of bins for both (the means fell into one bin)."""
  from rcjax import plots

  rng = np.random.default_rng(0)
  series = {"ln.weight": 1 + 0.05 * rng.normal(size=512), "up.weight.R": 0.002 * rng.normal(size=512),
            "q.weight.R": 0.003 * rng.normal(size=512), "bias": np.zeros(512)}
  assert plots._scale_groups(series) == [["ln.weight"], ["up.weight.R", "q.weight.R"]]  # constant: not drawn
  fig = plots.stat_histograms([{"title": "axis embed", "series": series}])
  drawn = [ax for ax in fig.axes if ax.patches]
  assert [ax.get_title() for ax in drawn] == ["axis embed (1/2, own bins)", "axis embed (2/2, own bins)"]
  for ax in drawn:
    for patch in ax.patches:  # every step histogram spreads over many of its panel's bins
      heights = patch.get_xy()[:, 1]
      assert np.count_nonzero(heights > 0) > 20, ax.get_title()


def test_negative_block_and_seed(runs, tmp_path):
  """--block -1 is the last block (seeded as such), negative seeds and keys are valid entropy."""
  for b in ("-1", "2"):
    assert analyze.main(["corr", runs["gpt"], "--block", b, "--out", str(tmp_path / b), "--permutations", "20"]) == 0
  last, neg = (json.load(open(tmp_path / b / "corr.json")) for b in ("2", "-1"))
  assert neg == last
  assert analyze.main([runs["w64"], "--seed", "-1", "--out", str(tmp_path / "s"), "--permutations", "20",
                       "--quiet"]) == 0
  p = diag.blocks(gpt_params(L=1))[0][1]
  a, b = (diag.rc_correlation(p, "embed", key=k, permutations=20) for k in (-1, 1))
  assert a["max_abs_corr_null"] != b["max_abs_corr_null"]


def test_titles_follow_kinds(runs, tmp_path, monkeypatch):
  from rcjax import plots

  seen = {}

  def spy_on(module, name):  # records the arguments of a plotting function
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
      seen.setdefault(name, []).append((args, kwargs))
      return real(*args, **kwargs)
    return wrapper

  for name in ("max_abs_bars", "stat_histograms"):
    monkeypatch.setattr(plots, name, spy_on(plots, name))
  analyze.analyze(runs["w64"], str(tmp_path / "a"), kinds=("mean", "rms"), permutations=20, progress=False)
  (_, bars), = seen["max_abs_bars"]
  assert bars["title"].endswith("max |corr| between row/column means (.R/.C) and row/column RMS (.R_rms/.C_rms) "
                                "of different leaves")
  (panels,), hist = seen["stat_histograms"][0]
  assert hist["title"].endswith(": row/column means (.R/.C), row/column RMS (.R_rms/.C_rms) and biases and scales")
  assert any(n.endswith("_rms") for p in panels for n in p["series"])
  monkeypatch.setattr(plots_column, "bars", spy_on(plots_column, "bars"))
  figures.figure_bars([runs["w64"]], str(tmp_path / "b"), kinds=("rms",), permutations=20, progress=False)
  assert " ".join(seen["bars"][-1][1]["title"].split()) == (  # wrapped to the column
      "max |corr| between row/column RMS (.R_rms/.C_rms) of different leaves, over blocks")
