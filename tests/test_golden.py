"""Golden digests: fixed keys give bitwise the same transfer outputs as on main of 2026-12-07 (before the
redesign of issue #21 split transfer.py, hf_model.py and sharding.py).

Each case is a pytree out of `rcjax.grow` / `shrink` / `transfer` / `index_maps` on tiny models whose
values come from numpy (not from the models' init, which other work may change); its digest is the
SHA-256 of every leaf's path, dtype, shape and bytes. A refactor that changes any output bit fails here.
A change of behaviour that is meant must say so and update the digest (print them with
`PYTHONPATH=. python tests/test_golden.py`).
"""

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rcjax
from conftest import fast_compiles

GOLDEN = {
    "mlp-grow-2x-exact": "bffd83dcea021831d9332aefcb9d4f8651c256e0befe27a5d354c9822f1846d5",
    "mlp-grow-1.5x-exact": "15c51f52d1a11a44c90367d8540d3b4e0041955b9209ef3e2d656bdc5ac45580",
    "mlp-grow-noise-adam": "c473b0584a704fc7283e3d244193c1512110eb7f65315fd1fe8759950ef9468a",
    "mlp-shrink-stride": "e4812dad441468731eec50824e7be32c9b3566c936f0849b5fb7135a92583105",
    "gpt-grow-2x-exact": "4f169d426008fea43e401b65f55ca221f585ea7588248b64bd593b16a01f6df6",
    "gpt-grow-1.5x-exact": "3b7f589cdae951d7a057240c53d8b53265d629b705374b7a7a0591ba78a6d31e",
    "gpt-depth-stack-exact": "dfeab6a360ec83205390f4e6b1af36bd04253f6923f2dc2f5300125925fec1be",
    "index-maps": "e9d03d8321443e64eb0a993606abddfc0de8b619993f51b355ad3e67096771d2",
}


def _filled(model, x, seed):
  """The model's RC params with values from numpy (init scale for kernels, random norms and biases)."""
  abstract = jax.eval_shape(lambda k: model.init(k, x)["params"], jax.random.key(0))
  rng = np.random.default_rng(seed)

  def fill(b):
    z = rng.standard_normal(b.shape)
    v = z * rcjax.init_scale(b) if b.fan_in else (1.0 + 0.3 * z if b.init == "ones" else 0.3 * z)
    return b.replace(value=jnp.asarray(v, jnp.float32))
  return jax.tree.map(fill, abstract, is_leaf=rcjax.is_rc)


def digest(tree) -> str:
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = np.asarray(jax.random.key_data(leaf) if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key) else leaf)
    h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def cases() -> dict:
  """{name: output pytree} for every golden case."""
  k = jax.random.key
  mlp = rcjax.nn.MLP(features=(6, 4), out_features=3, param="mup")
  p = _filled(mlp, jnp.ones((1, 5)), 0)
  s = optax.adam(1e-2).init(p)
  rng = np.random.default_rng(1)
  s = (s[0]._replace(mu=jax.tree.map(lambda b: b.replace(value=jnp.asarray(rng.standard_normal(b.shape),
                                                                            jnp.float32)), s[0].mu,
                                     is_leaf=rcjax.is_rc)),) + tuple(s[1:])
  gpt = rcjax.nn.GPT(style="llama", param="mup", vocab=16, width=16, depth=2, heads=4, kv_heads=2, max_len=8)
  g = _filled(gpt, jnp.zeros((1, 4), jnp.int32), 2)
  out = {
      "mlp-grow-2x-exact": rcjax.grow(p, k(10), factor=2, exact=True),
      "mlp-grow-1.5x-exact": rcjax.grow(p, k(11), factor=1.5, exact=True),
      "mlp-grow-noise-adam": rcjax.grow((p, s), k(12), factor=1.5, random_rate=0.3, norm_rate=0.1),
      "mlp-shrink-stride": rcjax.shrink(p, k(13), factor=0.5, sampler="stride"),
      "gpt-grow-2x-exact": rcjax.grow(g, k(14), factor=2, exact=True),
      "gpt-grow-1.5x-exact": rcjax.grow(g, k(15), sizes={"mlp": 72, "heads": 6, "embed": 24}, exact=True),
      "gpt-depth-stack-exact": rcjax.transfer_model(gpt, g, k(17), {"layers": 3}, exact=True,
                                                    depth_mode="stack"),
      "index-maps": {sampler: rcjax.index_maps(k(18), {"a": 5, "b": 4}, {"a": 12, "b": 2}, sampler=sampler)
                     for sampler in ("stratified", "iid", "stride")},
  }
  return out


@pytest.fixture(scope="module")
def outputs():
  with fast_compiles():  # one compile setting for the digests (they were made with it)
    return cases()


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_same_keys_give_bitwise_the_same_outputs_as_before_the_redesign(outputs, name):
  assert digest(outputs[name]) == GOLDEN[name], f"{name}: transfer output changed bitwise"


if __name__ == "__main__":
  with fast_compiles():
    for name, tree in cases().items():
      print(f'    "{name}": "{digest(tree)}",')
