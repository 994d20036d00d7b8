"""A mean-field-aware init for deep mean-field MLPs (train.mlp `--hidden-init lowrank:K`).

With i.i.d. zero-mean hidden weights, a mean-field layer `h_j = (1/N) sum_i W[i, j] relu(h_i)` averages
its input away: every neuron of the second and later hidden layers sees ~0 (O(1/sqrt N)), the signal
and its gradients vanish with depth, and the 7-layer MFNN of the paper's Figure 4.2 stays at chance
(ln 10 = 2.3026). Nguyen & Pham (2020, "A rigorous framework for the mean field limit of multilayer
neural networks") show that deep mean-field nets need initial weights that are *not* i.i.d. across
layers to carry signal in the limit. This module builds one such init, which is itself an RC measure
(each entry a function of its row and column neurons' latents plus noise):

* every hidden neuron j of layer l gets a latent `v_j ~ N(0, I_K / K)`;
* the first hidden layer's neurons take as latent `u_i = A^T w_i` (their input weights w_i projected
  on K fixed Gaussian directions A);
* a hidden kernel is `W[i, j] = g * <latent_i, v_j> + Z[i, j]`, with Z the `--init` draw, g chosen by
  Stein's lemma (E[v relu(v . s)] = Cov(v) s / 2) so that the pre-activations `h_j ~ <v_j, s(x)>` keep
  unit scale in the infinite-width limit: the K features s(x) (a random projection of the input at
  init) reach every layer, and their gradients flow back.

Input, output kernels and biases keep their `--init` draws.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp

from rcjax.rc import is_rc

SPECS = ("iid", "lowrank:K")


def parse(spec: str) -> int:
  """The rank K of a `--hidden-init` spec: 0 for 'iid', K for 'lowrank:K' (K >= 1)."""
  if spec == "iid":
    return 0
  m = re.fullmatch(r"lowrank:(\d+)", spec)
  if not m or int(m.group(1)) < 1:
    raise ValueError(f"unknown --hidden-init {spec!r}; expected 'iid' or 'lowrank:K' with K >= 1 (e.g. lowrank:16)")
  return int(m.group(1))


def lowrank_init(params: dict, key: jax.Array, rank: int) -> dict:
  """Params of an `rcjax.nn.MLP` (Dense_0 .. Dense_L) with every hidden kernel replaced by
  `g * latent_in @ latent_out^T + (its own draw)` as described in the module docstring.

  Args:
    params: the MLP's params (RC boxes), e.g. `model.init(key, x)['params']`.
    key: PRNG key (split per layer with `fold_in`).
    rank: K, the number of latent features.

  Returns:
    The params with the same structure, boxes and shapes.

  >>> import jax, jax.numpy as jnp, rcjax
  >>> p = rcjax.nn.MLP((32, 32, 32), 10, param="mf", kernel_init="uniform").init(
  ...     jax.random.key(0), jnp.ones((1, 8)))["params"]
  >>> q = lowrank_init(p, jax.random.key(1), 4)
  >>> q["Dense_1"]["kernel"].shape == p["Dense_1"]["kernel"].shape
  True
  """
  names = sorted((k for k in params if k.startswith("Dense_")), key=lambda k: int(k.split("_")[1]))
  if len(names) < 3:
    return params
  out = dict(params)
  w0 = _value(params[names[0]]["kernel"])
  d = w0.shape[0]
  sigma2 = float(jnp.var(w0))  # E[u relu(w.x/sqrt d)] = A^T Cov(w) x / (2 sqrt d), Cov(w) = sigma2 I
  a = jax.random.normal(jax.random.fold_in(key, 0), (d, rank))
  latent = w0.T @ a  # (N, K): u_i = A^T w_i
  gain = 2.0 / sigma2 if sigma2 > 0 else 1.0
  for l, name in enumerate(names[1:-1], start=1):
    box = params[name]["kernel"]
    w = _value(box)
    v = jax.random.normal(jax.random.fold_in(key, l), (w.shape[1], rank)) / jnp.sqrt(rank)
    structured = gain * latent @ v.T
    out[name] = {**params[name], "kernel": _replace(box, (structured + w).astype(w.dtype))}
    latent, gain = v, 2.0 * rank  # the next layer: E[v relu(v . s)] = s / (2K) for v ~ N(0, I/K)
  return out


def _value(leaf):
  return leaf.value if is_rc(leaf) else leaf


def _replace(leaf, value):
  return leaf.replace(value=value) if is_rc(leaf) else value
