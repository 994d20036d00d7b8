"""Checkpointer: params restore as RC boxes without a model, optimizer state onto a target, shardings."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import rcjax
from rcjax.checkpoint import Checkpointer


def setup():
  model = rcjax.nn.MLP(features=(8, 8), out_features=3, param="mup")
  p = model.init(jax.random.key(0), jnp.ones((2, 5)))["params"]
  tx = rcjax.adamw(1e-3)
  return p, tx, tx.init(p)


def test_roundtrip_params_and_state(tmp_path):
  p, tx, s = setup()
  big_p, big_s = rcjax.grow((p, s), jax.random.key(1), factor=2)
  with Checkpointer(tmp_path) as ck:
    ck.save(1, params=p, opt_state=s, config={"width": 8})
    ck.save(2, params=big_p, opt_state=big_s, config={"width": 16}, extra={"event": "grow"})
  ck = Checkpointer(tmp_path)
  assert ck.all_steps() == [1, 2] and ck.latest_step() == 2
  r = ck.restore()  # no target: params at the saved (grown) shapes, as RC boxes
  assert r["step"] == 2 and r["config"] == {"width": 16} and r["extra"] == {"event": "grow"}
  assert r["opt_state"] is None
  assert jax.tree.structure(r["params"], is_leaf=rcjax.is_rc) == jax.tree.structure(big_p, is_leaf=rcjax.is_rc)
  chex.assert_trees_all_equal(rcjax.unbox(r["params"]), rcjax.unbox(big_p))
  r = ck.restore(1, opt_state=jax.eval_shape(tx.init, p))
  chex.assert_trees_all_equal(rcjax.unbox(r["opt_state"]), rcjax.unbox(s))
  assert rcjax.is_rc(r["opt_state"][0].mu["Dense_1"]["kernel"])


def test_restore_onto_a_mesh(tmp_path):
  p, _, _ = setup()
  with Checkpointer(tmp_path) as ck:
    ck.save(0, params=p)
  mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("a", "b"))
  def target(b):
    spec = P(*[("a" if b.axes[d] == "hidden_0" else "b") if d in b.width_dims else None for d in range(b.value.ndim)])
    return b.replace(value=jax.ShapeDtypeStruct(b.shape, b.value.dtype, sharding=NamedSharding(mesh, spec)))
  r = Checkpointer(tmp_path).restore(params=jax.tree.map(target, p, is_leaf=rcjax.is_rc))
  k = r["params"]["Dense_1"]["kernel"].value
  assert k.sharding.spec == P("a", "b")
  np.testing.assert_array_equal(k, p["Dense_1"]["kernel"].value)


def test_errors(tmp_path):
  p, tx, s = setup()
  with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
    Checkpointer(tmp_path / "empty").restore()
  with Checkpointer(tmp_path) as ck:
    ck.save(3, params=p)
  ck = Checkpointer(tmp_path)
  with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 4.*\[3\]"):
    ck.restore(4)
  with pytest.raises(ValueError, match="holds no optimizer state"):
    ck.restore(opt_state=jax.eval_shape(tx.init, p))
  big = rcjax.grow(p, jax.random.key(0))
  with pytest.raises(ValueError, match=r"leaf \['Dense_0'\]\['bias'\] was saved with shape \(8,\), the target has \(16,\)"):
    ck.restore(params=big)


def test_keep_steps_survive_max_to_keep_and_plain_leaves_restore(tmp_path):
  p, _, _ = setup()
  p = {**p, "norm": {"scale": jnp.full((3,), 2.0)}}  # a plain leaf (a stock flax layer) beside the RC ones
  ck = Checkpointer(tmp_path, max_to_keep=2, keep_steps={3, 5})
  for step in range(1, 9):
    ck.save(step, params=p)
    ck.wait()
  assert ck.all_steps() == [3, 5, 7, 8]  # --save-steps of train.gpt are not --keep's to delete
  r = ck.restore(3)  # without a target: RC leaves as boxes, the plain leaf as an array
  assert not isinstance(r["params"]["norm"]["scale"], rcjax.RC)
  chex.assert_trees_all_equal(rcjax.unbox(r["params"]), rcjax.unbox(p))
  assert ck.params_template()["norm"]["scale"].shape == (3,)
  with pytest.raises(TypeError, match="config/extra must be JSON data"):
    ck.save(9, params=p, config={"path": tmp_path})
  assert ck.all_steps() == [3, 5, 7, 8] and not list(tmp_path.glob("*tmp*"))
