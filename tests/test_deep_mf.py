"""Deep mean-field MLPs that learn (issue 27): the 7-layer MFNN of the paper's Figure 4.2 stays at chance with
i.i.d. hidden weights and learns with train.mlp's `--hidden-init lowrank:K` (train/mlp_deep.py); and
`--dataset auto` falling back to digits picks mean-field's digits lr when --lr is not given."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rcjax
from train import data as data_lib
from train import mlp, mlp_deep

LN10 = float(np.log(10))


def test_seven_layer_mfnn_learns_with_the_lowrank_init(tmp_path):
  kw = dict(dataset="digits", depth=7, width=64, bias="constant", epochs=2, lr=0.1, progress=False, plot=False)
  lines = mlp.run(mlp.Config(hidden_init="lowrank:16", out=str(tmp_path / "lowrank"), **kw))
  assert abs(lines[0]["train_loss"] - LN10) < 0.05  # starts at chance
  assert min(m["train_loss"] for m in lines[1:]) < LN10 - 0.5, [m["train_loss"] for m in lines]


def test_lowrank_init_carries_signal_to_the_last_hidden_layer():
  model = rcjax.nn.MLP((128,) * 6, 10, param="mf", kernel_init="uniform", bias=False)
  x = jax.random.normal(jax.random.key(0), (32, 16))
  params = model.init(jax.random.key(1), x)["params"]
  structured = mlp_deep.lowrank_init(params, jax.random.key(2), 8)
  spread = lambda p: float(jnp.std(model.apply({"params": p}, x, return_hidden=True)[1][-1], axis=0).mean())
  assert spread(structured) > 0.1 > 100 * spread(params)  # iid: the signal is averaged away with depth
  assert jax.tree.map(jnp.shape, structured) == jax.tree.map(jnp.shape, params)
  again = mlp_deep.lowrank_init(params, jax.random.key(2), 8)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(structured), jax.tree.leaves(again)))


def test_bad_hidden_init_is_named():
  with pytest.raises(ValueError, match="hidden-init"):
    mlp.validate(mlp.Config(hidden_init="lowrank:0"))


def test_auto_fallback_to_digits_takes_the_mean_field_digits_lr(tmp_path, monkeypatch, capsys):
  digits = data_lib.load("digits")
  notice = "--dataset auto: CIFAR-10 is not prepared in X, so ... (64-dim; mean-field learns them at --lr 1); ..."
  monkeypatch.setattr(data_lib, "load_auto", lambda *a: (digits, notice))
  config, _ = mlp.load_data(mlp.Config(out=str(tmp_path / "a")), default_lr=True)
  assert config.lr == mlp.DIGITS_MF_LR and config.dataset == "digits"
  line = capsys.readouterr().err.strip()
  assert "\n" not in line and f"--lr {mlp.DIGITS_MF_LR:g}" in line and "--lr not given" in line
  assert mlp.load_data(mlp.Config(out=str(tmp_path / "b")))[0].lr == 0.1  # an explicit --lr is kept
  assert mlp.load_data(mlp.Config(out=str(tmp_path / "c"), param="sp"), default_lr=True)[0].lr == 0.1
  assert mlp.load_data(mlp.Config(out=str(tmp_path / "d"), dataset="digits"), default_lr=True)[0].lr == 0.1


@pytest.mark.parametrize("argv, given", [([], False), (["--width", "8"], False), (["--lr", "0.1"], True),
                                         (["--lr=0.3"], True)])
def test_lr_given(argv, given):
  assert mlp.lr_given(argv) is given
