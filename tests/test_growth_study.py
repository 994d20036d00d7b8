"""benchmarks.growth end to end (its smoke preset): the same data and eval batches for every run, exact
growth, FLOPs that include the small phase, and the headline fraction computed against the scratch run."""

import dataclasses
import json
import os

import numpy as np
import pytest

from benchmarks import growth

pytestmark = pytest.mark.usefixtures("fast_compiles")


def test_growth_study_smoke(tmp_path):
  out = str(tmp_path / "study")
  logged = []
  r = growth.study("smoke", seeds=[0, 1], variants="at=0.5", out=out, log=logged.append)
  assert sorted(os.listdir(out)) == ["growth.png", "results.json", "runs"]
  saved = json.load(open(os.path.join(out, "results.json")))
  assert saved["table"] == r["table"] and logged[-1] == growth.format_table(r["table"])  # the table it prints
  assert sorted(os.listdir(os.path.join(out, "runs"))) == [  # the sweep on seed 0, then the other runs
      f"{n}.jsonl" for n in ("grown_at0.5_s0", "grown_at0.5_s1", "scratch_lr0.03_s0", "scratch_s1", "small_lr0.03_s0",
                             "small_s1")]
  for row in saved["table"].values():  # the baseline (scratch) and every run: finite numbers
    assert all(np.isfinite(row[k]) for k in ("final_mean", "final_std", "total_flops_fraction")), row
  c, t = r["curves"], r["table"]
  for s in ("0", "1"):
    small, grown, scratch = c["small"][s], c["grown_at0.5"][s], c["scratch"][s]
    g = grown["grow"]
    assert g["step"] == 6 and g["loss_before"] == pytest.approx(g["loss_after"], rel=1e-5)  # exact growth
    # Until growth the grown run IS the small run (same seed, lr, data order, eval batches).
    before = [i for i, st in enumerate(small["step"]) if st < g["step"]]
    assert before and all(small["eval_loss"][i] == grown["eval_loss"][i] for i in before)
    # FLOPs: the small phase at the small model's cost, then the large model's.
    f_small, f_large = small["flops"][-1] / 12, scratch["flops"][-1] / 12
    assert f_small < f_large and grown["flops"][-1] == pytest.approx(6 * f_small + 6 * f_large, rel=1e-6)
  assert c["small"]["0"]["eval_loss"] != c["small"]["1"]["eval_loss"]  # seeds differ
  assert all(x is not None and x <= 1.0 for x in t["scratch"]["fraction"])  # it reaches its own final loss
  assert t["small"]["total_flops_fraction"] == pytest.approx(f_small / f_large, rel=1e-6)
  for name, row in t.items():  # the headline: FLOPs to the scratch run's final eval loss / scratch's FLOPs
    for s, x in zip(("0", "1"), row["fraction"]):
      target = c["scratch"][s]["eval_loss"][-1]
      hits = [f for f, l in zip(c[name][s]["flops"], c[name][s]["eval_loss"]) if l <= target]
      assert x == (hits[0] / c["scratch"][s]["flops"][-1] if hits else None)
    assert (row["fraction_mean"] is None) == (None in row["fraction"])
  assert "| grown_at0.5 |" in growth.format_table(t) and np.isfinite(t["grown_at0.5"]["final_mean"])


def test_growth_study_rejects_bad_variants_in_one_line(capsys):
  for argv, msg in ((["--variants", "at=2"], "needs at=F"), (["--variants", "at=0.5,nope=1"], "KNOB=VALUE"),
                    (["--seeds", "x"], "comma-separated numbers"), (["--variants", "at=0.5,opt=bad"], "grow_opt")):
    assert growth.main(["--smoke", "--out", "/nonexistent/never"] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m benchmarks.growth: error: ") and msg in err and err.count("\n") == 1, err


def test_grow_warmup_rewarms_the_lr_and_grow_opt_resets_adams_moments():
  import jax.numpy as jnp
  import optax

  from train import gpt

  cfg = gpt.Config(steps=100, warmup=10, lr=1.0, grow_at=50, grow_to=128, grow_warmup=10)
  new, old = gpt.lr_schedule(cfg), gpt.lr_schedule(gpt.Config(steps=100, warmup=10, lr=1.0))
  for s in (1, 10, 50, 60, 61, 100):  # step s runs at schedule(s - 1): unchanged up to growth and after the ramp
    assert float(new(s - 1)) == pytest.approx(float(old(s - 1)))
  for s in (51, 55):
    assert float(new(s - 1)) == pytest.approx(float(old(s - 1)) * (s - 50) / 10)
  tx = optax.adam(1e-3)
  p = {"w": jnp.ones(3)}
  state = tx.update({"w": jnp.full(3, 2.0)}, tx.init(p), p)[1]
  assert gpt.reset_adam(state, "transfer") is state
  nu = gpt.reset_adam(state, "reset-nu")[0]
  assert float(nu.count) == 1 and float(nu.mu["w"][0]) != 0 and not jnp.any(nu.nu["w"])
  full = gpt.reset_adam(state, "reset")[0]
  assert int(full.count) == 0 and not jnp.any(full.mu["w"]) and not jnp.any(full.nu["w"])
  with pytest.raises(ValueError, match="grow_opt must be one of"):
    gpt.validate(dataclasses.replace(cfg, grow_opt="zero", dataset="markov"))
