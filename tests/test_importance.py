"""Shrinking by importance: rcjax.importance scores, shrink(sampler='importance' | 'importance-sample'),
and `python -m rcjax.shrink --sampler importance`."""

import math
import os
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rcjax
import rcjax.importance  # noqa: F401
import rcjax.transfer  # noqa: F401  (the module; `rcjax.transfer` is also the function)
from hf_reference import write_tiny
from rcjax import sharding
from rcjax.cli import hf as hf_cli
from rcjax.maps import _top
from test_gpt import X, gpt
from test_sharding import _collectives

pytestmark = pytest.mark.usefixtures("fast_compiles")
transfer_module = sys.modules["rcjax.transfer"]
XM = jax.random.normal(jax.random.key(0), (16, 5))


def _mlp():
  model = rcjax.nn.MLP(features=(6, 4), out_features=3, param="mf")
  return model, model.init(jax.random.key(0), XM)["params"]


def test_ties_rank_one_copy_per_score_first():
  """Copies (equal scores) are kept one per score before any second copy, highest scores first; the
  stochastic variant too; maps are sorted."""
  s = jnp.array([3.0, 1.0, 2.0, 5.0, 4.0])
  dup = jnp.repeat(s, 3)  # neuron i's copies at 3i, 3i+1, 3i+2
  for k, types in ((5, [0, 1, 2, 3, 4]), (3, [0, 3, 4]), (7, [0, 1, 2, 3, 4])):
    m = np.asarray(_top(jax.random.key(0), dup, k, False))
    assert list(m) == sorted(m)
    assert sorted(set((m // 3).tolist())) == types, (k, m)
    assert len(set((m // 3).tolist())) == min(k, 5)
  for seed in range(3):
    m = np.asarray(_top(jax.random.key(seed), dup, 4, True))
    assert len(set((m // 3).tolist())) == 4 and list(m) == sorted(m)


def test_shrink_of_grown_duplicates_recovers_the_function():
  """grow with r1 = r2 = 0 duplicates neurons; importance shrinking back keeps one copy of each and the
  fan-in rescaling undoes the growth's: the small model's function (MLP: activation and weight scores;
  GQA GPT: activation scores)."""
  model, p = _mlp()
  big = rcjax.grow(p, jax.random.key(1), factor=3)
  for scores in (rcjax.importance.activations(model, big, [XM]), rcjax.importance.weights(big)):
    back = rcjax.shrink(big, jax.random.key(2), sizes=rcjax.width_axes(p), sampler="importance", scores=scores)
    np.testing.assert_allclose(model.apply({"params": back}, XM), model.apply({"params": p}, XM), atol=1e-5)
    # fewer than the neuron types: the kept incoming weights are distinct columns of p's
    half = rcjax.shrink(big, jax.random.key(2), sizes={"hidden_0": 3}, sampler="importance", scores=scores)
    cols = np.asarray(half["Dense_0"]["kernel"].value).T
    src = np.asarray(p["Dense_0"]["kernel"].value).T
    hits = [int(np.argmin(np.abs(src - c).sum(1))) for c in cols]
    assert len(set(hits)) == 3 and all(np.allclose(src[h], c) for h, c in zip(hits, cols))

  gm, gp = gpt("llama", "mup")
  sizes = {k: v for k, v in rcjax.width_axes(gp).items() if k != "head_dim"}
  gbig = rcjax.transfer_model(gm, gp, jax.random.key(1), {k: 2 * v for k, v in sizes.items()})
  s = rcjax.importance.activations(gm, gbig, [X])
  assert {k: v.shape for k, v in s.items()} == {"embed": (64,), "mlp": (192,), "heads": (8,), "kv_heads": (4,),
                                                "head_dim": (8,)}
  gback = rcjax.transfer_model(gm, gbig, jax.random.key(2), sizes, sampler="importance", scores=s)
  np.testing.assert_allclose(gm.apply({"params": gback}, X), gm.apply({"params": gp}, X), atol=1e-4)


def test_scores_keep_what_matters_and_are_deterministic():
  """A neuron made dead (zero incoming and outgoing weights) scores 0 and is dropped first; the same key and
  data give bitwise the same result; importance-sample depends on the key; the optimizer state follows."""
  model, p = _mlp()
  k = p["Dense_0"]["kernel"]
  p = {**p, "Dense_0": {**p["Dense_0"], "kernel": k.replace(value=k.value.at[:, 2].set(0.0))}}
  p["Dense_1"] = {**p["Dense_1"], "kernel": p["Dense_1"]["kernel"].replace(
      value=p["Dense_1"]["kernel"].value.at[2].set(0.0))}
  for s in (rcjax.importance.weights(p), rcjax.importance.activations(model, p, [XM], aggregation="l2")):
    assert s["hidden_0"][2] == 0 and np.all(np.delete(s["hidden_0"], 2) > 0)
  scores = rcjax.importance.activations(model, p, [XM[:8], XM[8:]])
  np.testing.assert_allclose(scores["hidden_0"], rcjax.importance.activations(model, p, [XM])["hidden_0"], rtol=1e-6)
  opt = rcjax.adamw(1e-3).init(p)
  kw = dict(sizes={"hidden_0": 5, "hidden_1": 2}, scores=scores)
  a = rcjax.shrink((p, opt), jax.random.key(3), sampler="importance", **kw)
  b = rcjax.shrink((p, opt), jax.random.key(4), sampler="importance", **kw)
  chex.assert_trees_all_equal(rcjax.unbox(a), rcjax.unbox(b))  # top-k: no randomness
  assert a[0]["Dense_0"]["kernel"].shape == (5, 5) and not np.any(np.all(a[0]["Dense_0"]["kernel"].value == 0, 0))
  assert jax.tree.structure(a[1]) == jax.tree.structure(opt) and a[1][0].mu["Dense_0"]["kernel"].shape == (5, 5)
  samples = [rcjax.shrink(p, jax.random.key(i), sampler="importance-sample", norm_rate=0.1, random_rate=0.2,
                          **kw) for i in (5, 5, 6)]
  chex.assert_trees_all_equal(rcjax.unbox(samples[0]), rcjax.unbox(samples[1]))
  assert not np.array_equal(samples[0]["Dense_0"]["kernel"].value, samples[2]["Dense_0"]["kernel"].value)


def test_sharded_importance_shrink_never_gathers_a_leaf():
  """On an 8-device mesh: weight scores of sharded params equal the unsharded ones, the shrink equals the
  one-device shrink bitwise, and its compiled program has no collective bigger than a vector per layer
  (all-gather / all-reduce) or one device's share of a
  leaf (the bounds of test_sharding's uniform shrink)."""
  model, p = gpt("llama", "mup")
  mesh = sharding.make_mesh("data=1,fsdp=4,tensor=2")
  ps = sharding.shard(p, mesh)
  w, w1 = rcjax.importance.weights(ps), rcjax.importance.weights(p)
  for k in w1:
    np.testing.assert_allclose(w[k], w1[k], rtol=1e-5)
  sizes = {"embed": 20, "mlp": 40}
  small = rcjax.shrink(ps, jax.random.key(3), sizes=sizes, sampler="importance", scores=w)
  chex.assert_trees_all_equal(rcjax.unbox(small), rcjax.unbox(
      rcjax.shrink(p, jax.random.key(3), sizes=sizes, sampler="importance", scores=w)))
  old = rcjax.sizes(ps)
  kw = dict(old=tuple(sorted((k, old[k]) for k in set(sizes) | {"kv_heads"})), new=tuple(sorted(sizes.items())),
            sampler="importance", r1=0.0, r2=0.0, exact=False, moment=None, blocks=(),
            shardings=sharding.leaf_shardings(ps))
  sc = rcjax.maps.check_scores(w, old, sizes, {}, "importance")
  hlo = transfer_module._transfer_jit.lower(ps, jax.random.key(3), scores=sc, **kw).compile().as_text()
  boxes = [b for t in (p, small) for _, b in rcjax.rc.leaves_with_paths(t)]
  vector = lambda b: b.value.ndim - ("layers" in b.axes) <= 1
  vectors = max(math.prod(b.shape) for b in boxes if vector(b))
  share = max(math.prod(b.shape) // 8 for b in boxes)
  for kind, n in _collectives(hlo):
    assert n <= (vectors if kind in ("all-gather", "all-reduce") else share), (kind, n)


@pytest.mark.parametrize("kw, message", [
    (dict(scores={"hidden_0": np.ones(5), "hidden_1": np.ones(4)}), "has shape (5,), expected (6,)"),
    (dict(scores={"hidden_0": np.r_[np.ones(5), np.nan], "hidden_1": np.ones(4)}), "NaN or infinite"),
    (dict(scores={"hidden_0": -np.ones(6), "hidden_1": np.ones(4)}), "negative"),
    (dict(scores={"hidden_0": np.ones(6)}), "axis 'hidden_1' shrinks from 4 to 2 but scores has no entry"),
    (dict(scores={"hidden_0": np.ones(6), "hidden_1": np.ones(4), "hiden": np.ones(3)}), "'hiden'"),
    (dict(), "needs scores="),
])
def test_bad_scores_are_one_clear_error(kw, message):
  _, p = _mlp()
  with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(").replace(")", r"\)")):
    rcjax.shrink(p, jax.random.key(0), factor=0.5, sampler="importance", **kw)
  for grow in (lambda: rcjax.grow(p, jax.random.key(0), sampler="importance"),
               lambda: rcjax.transfer(p, jax.random.key(0), {"hidden_0": 12}, sampler="importance")):
    with pytest.raises(ValueError, match="only shrinks"):
      grow()
  with pytest.raises(ValueError, match="scores= is for sampler"):
    rcjax.shrink(p, jax.random.key(0), factor=0.5, scores={"hidden_0": np.ones(6)})


def test_shrink_cli_by_importance(tmp_path, capsys):
  """The CLI: activations on a calibration text file (bytes: the tiny model has no tokenizer); bad input
  is one line, exit 2, nothing written."""
  src = str(tmp_path / "src")
  write_tiny(src, "llama", kv_heads=2, vocab=256)
  text = tmp_path / "calib.txt"
  text.write_text("To be, or not to be, that is the question. " * 20)
  empty = tmp_path / "empty.txt"
  empty.write_text("  \n")
  dst = str(tmp_path / "small")
  code = hf_cli.main([src, dst, "--factor", "0.5", "--sampler", "importance", "--no-check", "--calibration",
                       str(text), "--calibration-len", "32"], direction="shrink")
  out = capsys.readouterr()
  assert code == 0, out.err
  n = len(text.read_text().encode()) // 32 * 32  # bytes, in windows of 32
  assert os.path.isfile(os.path.join(dst, "config.json")) and f"scoring neurons on {n} calibration tokens" in out.out
  for flags, message in ((["--calibration", str(empty)], "is empty"), ([], "needs --calibration FILE"),
                         (["--calibration", str(tmp_path / "nope.txt")], "no such file"),
                         (["--scores", "weights", "--calibration", str(text)], "reads no --calibration")):
    dst = tmp_path / "bad"
    code = hf_cli.main([src, str(dst), "--factor", "0.5", "--sampler", "importance", *flags], direction="shrink")
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not dst.exists()
  # argparse (through rcjax._cli: exit status 2): importance is not a growth sampler
  code = hf_cli.main([src, str(tmp_path / "bad"), "--factor", "2", "--sampler", "importance"], direction="grow")
  assert code == 2 and "invalid choice: 'importance'" in capsys.readouterr().err


def test_calibration_tokens_use_the_tokenizer_of_src_else_bytes(tmp_path):
  text = tmp_path / "c.txt"
  text.write_text("to be or not to be , that is the question .")
  np.testing.assert_array_equal(rcjax.importance.calibration_tokens(str(text), str(tmp_path), 256),
                                np.frombuffer(text.read_bytes(), np.uint8))
  with pytest.raises(ValueError, match="no tokenizer and a vocabulary of 64 < 256"):
    rcjax.importance.calibration_tokens(str(text), str(tmp_path), 64)
  tokenizers = pytest.importorskip("tokenizers")
  pytest.importorskip("transformers")
  words = ["to", "be", "or", "not", "that", "is", "the", "question", ",", "."]
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}},
                                                         unk_token="[UNK]"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok.save(str(tmp_path / "tokenizer.json"))
  (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]"}')
  ids = rcjax.importance.calibration_tokens(str(text), str(tmp_path), 64)
  assert ids.tolist() == [1, 2, 3, 4, 1, 2, 9, 5, 6, 7, 8, 10]
  batches = rcjax.importance.token_batches(ids, 2, 5)
  assert [b.shape for b in batches] == [(2, 5)] and batches[0].ravel().tolist() == ids[:10].tolist()
