"""rcjax.nn.loss: the readout fused into the cross-entropy over sequence chunks gives the loss and the
gradients of the plain form (logits, then the loss), on one device and sharded, without storing the
(B, T, vocab) logits."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rcjax
from rcjax import sharding
from rcjax.nn.loss import cross_entropy, linear_cross_entropy

pytestmark = pytest.mark.usefixtures("fast_compiles")

B, T, E, V = 2, 10, 16, 50
KH, KW, KT = jax.random.split(jax.random.key(0), 3)
H = jax.random.normal(KH, (B, T, E), jnp.float32)
TARGETS = jax.random.randint(KT, (B, T), 0, V)


def plain(h, w, spec, mult, dtype):
  logits = jnp.einsum(spec, h.astype(dtype), w.astype(dtype), preferred_element_type=dtype)
  return cross_entropy(logits * jnp.asarray(mult, dtype), TARGETS)


@pytest.mark.parametrize("spec", ["bte,ev->btv", "bte,ve->btv"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_same_loss_and_grads_as_the_logits(spec, dtype):
  w = 0.3 * jax.random.normal(KW, (E, V) if spec == "bte,ev->btv" else (V, E), jnp.float32)
  want, (gh, gw) = jax.value_and_grad(plain, (0, 1))(H, w, spec, 0.5, dtype)
  tol = 1e-6 if dtype == jnp.float32 else 2e-2  # bf16: the plain form rounds its gradients in bf16
  for chunks in (1, 3, 10):  # 3 does not divide T = 10: padded, masked positions
    fused = lambda h, w: linear_cross_entropy(h, w, TARGETS, chunks=chunks, spec=spec, multiplier=0.5,
                                              dtype=dtype)
    loss, (fh, fw) = jax.value_and_grad(fused, (0, 1))(H, w)
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(fused)(H, w), want, rtol=1e-6)  # undifferentiated: no gradient work
    assert fh.dtype == H.dtype and fw.dtype == w.dtype
    for got, ref in ((fh, gh), (fw, gw)):
      assert float(jnp.max(jnp.abs(got - ref)) / jnp.max(jnp.abs(ref))) < tol
  # the cotangent scales both gradients (here a loss weighted by 3)
  g3 = jax.grad(lambda h: 3 * linear_cross_entropy(h, w, TARGETS, chunks=3, spec=spec, dtype=dtype))(H)
  g1 = jax.grad(lambda h: linear_cross_entropy(h, w, TARGETS, chunks=3, spec=spec, dtype=dtype))(H)
  np.testing.assert_allclose(g3, 3 * g1, rtol=1e-2 if dtype == jnp.bfloat16 else 1e-6)


def test_bad_arguments_are_clear_errors():
  w = jnp.zeros((E, V))
  with pytest.raises(ValueError, match="chunks must be at least 1, got 0"):
    linear_cross_entropy(H, w, TARGETS, chunks=0)
  with pytest.raises(ValueError, match="spec must be"):
    linear_cross_entropy(H, w, TARGETS, chunks=2, spec="bte,ev->bvt")
  model = rcjax.nn.GPT(vocab=32, width=16, depth=1, heads=2, max_len=16, loss_chunks=2)
  x = jnp.zeros((2, 8), jnp.int32)
  with pytest.raises(ValueError, match=r"targets shape \(2, 7\) differs from tokens shape \(2, 8\)"):
    model.init(jax.random.key(0), x, x[:, 1:])


@pytest.mark.parametrize("style,tied", [("gpt2", True), ("llama", False)])
def test_gpt_fused_loss_equals_logits_loss(style, tied):
  model = rcjax.nn.GPT(vocab=40, width=32, depth=1, heads=4, max_len=16, style=style, tied=tied, param="mup",
                       base={"embed": 16})  # readout multiplier 1/2 under muP
  x = jax.random.randint(jax.random.key(1), (2, 12), 0, 40)
  rng = np.random.default_rng(0)  # random values at the init scale (XLA compiles threefry init slowly on CPU)
  fill = lambda b: b.replace(value=jnp.asarray(rng.standard_normal(b.shape), jnp.float32)
                             * (rcjax.init_scale(b) if b.fan_in else 0.3))
  p = jax.tree.map(fill, jax.eval_shape(lambda k: model.init(k, x)["params"], jax.random.key(2)), is_leaf=rcjax.is_rc)
  ref = lambda q: cross_entropy(model.apply({"params": q}, x[:, :-1]), x[:, 1:])
  want, g_want = jax.value_and_grad(ref)(p)
  np.testing.assert_allclose(model.apply({"params": p}, x[:, :-1], x[:, 1:]), want, rtol=1e-6)
  fused = model.clone(loss_chunks=4)
  got, g_got = jax.value_and_grad(lambda q: fused.apply({"params": q}, x[:, :-1], x[:, 1:]))(p)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(rcjax.unbox(g_got)), jax.tree.leaves(rcjax.unbox(g_want))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_fused_loss_does_not_store_the_logits():
  """Compiled temp memory of loss + gradients with a vocabulary-dominated shape: the plain form holds
  the (B, T, V) logits and their gradient, the fused form one chunk at a time."""
  model = rcjax.nn.GPT(vocab=4096, width=32, depth=1, heads=2, max_len=64)
  x = jnp.zeros((16, 65), jnp.int32)
  p = jax.eval_shape(lambda k: model.init(k, x[:, :-1])["params"], jax.random.key(0))

  def temp(m):
    f = jax.jit(jax.value_and_grad(lambda q: m.apply({"params": q}, x[:, :-1], x[:, 1:])))
    return f.lower(p).compile().memory_analysis().temp_size_in_bytes
  logits_bytes = 16 * 64 * 4096 * 4
  plain, by_chunks = temp(model), {c: temp(model.clone(loss_chunks=c)) for c in (4, 16)}
  assert plain > logits_bytes  # the plain form holds at least one float32 copy of the logits
  assert by_chunks[4] < plain - logits_bytes  # the fused form saves at least that
  assert by_chunks[16] < by_chunks[4]         # and holds a chunk's worth: less with smaller chunks


def test_sharded_train_step_with_fused_loss():
  """train.gpt's jitted step on a data x fsdp x tensor mesh (vocab sharded over tensor): the fused loss
  gives the plain loss and the same updated params. The step runs SGD: its update is linear in the
  gradient (Adam's first step, g / (|g| + eps), turns rounding-level differences of tiny gradients into
  differences of order lr)."""
  from train import gpt as train_gpt

  cfg = dataclasses.replace(train_gpt.Config(), vocab=64, width=32, seq_len=16, batch_size=4, dtype="float32",
                            mesh="data=2,fsdp=2,tensor=2")
  mesh = sharding.make_mesh(cfg.mesh)
  model, tx = train_gpt.build_model(cfg), rcjax.sgd(0.5)
  params = sharding.init(model.init, jax.random.key(0), jnp.ones((1, 16), jnp.int32), mesh=mesh)["params"]
  opt = jax.jit(tx.init)(params)
  out = []
  for chunks in (0, 3):
    trainer = train_gpt.Trainer(model.clone(loss_chunks=chunks), tx, mesh, params, opt)
    batch = jax.device_put(jax.random.randint(jax.random.key(1), (4, 17), 0, 64), trainer.b_sh)
    copy = lambda t, sh: jax.device_put(jax.tree.map(jnp.copy, t), sh)  # the step donates its inputs
    p, _, loss = trainer.step(copy(params, trainer.p_sh), copy(opt, trainer.o_sh), batch)
    out.append((float(loss), jax.tree.map(np.asarray, rcjax.unbox(p))))
  np.testing.assert_allclose(out[1][0], out[0][0], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(out[1][1]), jax.tree.leaves(out[0][1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
