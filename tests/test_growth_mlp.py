"""benchmarks.growth_mlp end to end (its smoke preset) and the teacher-student data it studies."""

import json
import os

import numpy as np
import pytest

from benchmarks import growth_mlp
from benchmarks.growth import format_table
from train import data, teacher_data

pytestmark = pytest.mark.usefixtures("fast_compiles")


def test_growth_mlp_smoke(tmp_path):
  out = str(tmp_path / "study")
  logged = []
  r = growth_mlp.study("smoke", variants="at=0.5,cancel=2.0", out=out, epochs=2, log=logged.append)
  assert sorted(os.listdir(out)) == ["growth.png", "results.json", "runs"]
  saved = json.load(open(os.path.join(out, "results.json")))
  assert saved["table"] == r["table"] and logged[-1] == format_table(r["table"])  # the table it prints
  for row in saved["table"].values():  # the baseline (scratch) and every run: finite numbers
    assert all(np.isfinite(row[k]) for k in ("final_mean", "final_std", "total_flops_fraction")), row
  c, t = r["curves"], r["table"]
  for s in ("0", "1"):
    small, grown, scratch = c["small"][s], c["grown_at0.5_cancel2.0"][s], c["scratch"][s]
    g = grown["grow"]  # an exact growth: the test loss right before and right after it is equal
    assert g["epoch"] == 1 and g["loss_before"] == pytest.approx(g["loss_after"], rel=1e-5)
    assert grown["eval_loss"][:2] == small["eval_loss"][:2]  # until growth the grown run IS the small run
    per_epoch_small, per_epoch_large = small["flops"][-1] / 2, scratch["flops"][-1] / 2  # the FLOPs of each phase
    assert per_epoch_small < per_epoch_large
    assert grown["flops"][-1] == pytest.approx(per_epoch_small + per_epoch_large, rel=1e-9)
  assert c["small"]["0"]["eval_loss"] != c["small"]["1"]["eval_loss"]  # seeds differ
  for name, row in t.items():  # the headline: FLOPs to the scratch run's final test loss / scratch's FLOPs
    for s, x in zip(("0", "1"), row["fraction"]):
      target = c["scratch"][s]["eval_loss"][-1]
      hits = [f for f, l in zip(c[name][s]["flops"], c[name][s]["eval_loss"]) if l <= target]
      assert x == (hits[0] / c["scratch"][s]["flops"][-1] if hits else None)
  assert growth_mlp.main(["--smoke", "--variants", "at=1.5", "--out", str(tmp_path / "x")]) == 2


def test_teacher_data_deterministic_disjoint_balanced():
  d = data.load("teacher")
  assert d.x_train.shape == (teacher_data.N_TRAIN, teacher_data.DIM) and d.x_test.shape[0] == teacher_data.N_TEST
  again = teacher_data.teacher()
  assert np.array_equal(d.x_train, again.x_train) and np.array_equal(d.y_test, again.y_test)
  train_rows = {row.tobytes() for row in d.x_train}
  assert not any(row.tobytes() in train_rows for row in d.x_test)  # disjoint splits
  counts = np.bincount(d.y_train, minlength=10)
  assert counts.min() > 0.3 * counts.mean()  # no class vanishes: the labels carry information
  small = teacher_data.teacher(n_train=8, n_test=4, width=16)  # the labels are the teacher's argmax
  assert small.y_train.dtype == np.int32 and set(small.y_train) <= set(range(10))
  with pytest.raises(ValueError, match="teacher: sizes"):
    teacher_data.teacher(n_train=0)


def test_growth_from_knob_sets_the_small_width_heads_and_mup_base():
  from benchmarks import growth

  small, large, _ = growth.configs("cpu")
  c = growth.variant_config(small, growth.parse_variant("from=16,at=0.25,cancel=2.0"), large.width)
  assert (c.width, c.heads, c.base_width, c.grow_to, c.grow_at, c.cancel_rate) == (16, 1, 16, 64, 375, 2.0)
  assert growth.variant_config(small, growth.parse_variant("from=16,at=0.25,base=32"), 64).base_width == 32
  with pytest.raises(ValueError, match="from=12"):
    growth.variant_config(small, growth.parse_variant("from=12,at=0.5"), 64)
