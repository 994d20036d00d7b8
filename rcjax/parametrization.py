"""Parametrizations as data: init scale, forward multiplier and learning-rate multiplier per leaf class.

Every leaf is in one of five classes, read off its RC box:

* `input`  - fixed fan-in, width fan-out (first layer, embeddings);
* `hidden` - width fan-in and width fan-out;
* `output` - width fan-in, fixed fan-out (readout);
* `vector` - no fan-in (biases, norm scales);
* `fixed`  - fan-in but no width axis at all (treated like `input` with fan-out multiplier 1).

With `n_in` the fan-in size (product of all contracted dims), `m_in`/`m_out` the width multipliers
(size / base, multiplied over the width axes on the fan-in / fan-out side) and `N_in`/`N_out` the raw
width sizes on each side, the table is

| param | class        | init std      | multiplier  | SGD lr        | Adam lr  |
|-------|--------------|---------------|-------------|---------------|----------|
| sp    | weights      | 1/sqrt(n_in)  | 1           | 1             | 1        |
| ntk   | weights      | 1             | 1/sqrt(n_in)| 1             | 1        |
| mup   | input, fixed | 1/sqrt(n_in)  | 1           | m_out         | 1        |
| mup   | hidden       | 1/sqrt(n_in)  | 1           | m_out / m_in  | 1/m_in   |
| mup   | output       | sqrt(m_in/n_in)| 1/m_in     | m_in          | 1        |
| mf    | input, fixed | 1             | 1/sqrt(n_in)| N_out         | 1        |
| mf    | hidden       | 1             | 1/n_in      | n_in * N_out  | 1        |
| mf    | output       | 1             | 1/n_in      | n_in          | 1        |
| all   | vector       | 1             | 1           | mup: m_out, mf: N_out, else 1 | 1 |

The init std multiplies a draw from the leaf's init distribution (`sample`). muP follows Yang & Hu
(Tensor Programs V, Table 3, moved to a 1/m_in readout multiplier as in the `mup` package's MuReadout
with its sqrt(m) init rescaling, MuSGD and MuAdam: the effective readout weight has std ~ 1/n_in and SGD
learning rate ~ 1/n_in, the input weights and biases SGD learning rate ~ n_out); at base width every muP
multiplier is 1, so muP equals SP exactly. Mean-field (Mei-Montanari-Nguyen, Nguyen-Pham) averages over
width fan-in, `h_out = (1/N) sum_i W[i, :] phi(h_in[i])`, and its SGD learning rates make every entry move
O(1) per unit of lr at any width, so training commutes with neuron duplication (see transfer.py).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rcjax.rc import RC, is_rc

CLASSES = ("input", "hidden", "output", "vector", "fixed")
OPTIMIZERS = ("sgd", "adam")


class Dims(NamedTuple):
  """Sizes of one leaf that the table's rules read."""
  n_in: int      # product of all fan-in dims
  m_in: float    # product of size/base over width fan-in dims
  m_out: float   # product of size/base over width non-fan-in dims
  N_in: int      # product of sizes of width fan-in dims
  N_out: int     # product of sizes of width non-fan-in dims


class Rule(NamedTuple):
  init: Callable[[Dims], float]
  mult: Callable[[Dims], float]
  sgd: Callable[[Dims], float]
  adam: Callable[[Dims], float]


_one = lambda d: 1.0
_inv_sqrt_n = lambda d: 1.0 / math.sqrt(d.n_in)
_inv_n = lambda d: 1.0 / d.n_in

_SP = Rule(init=_inv_sqrt_n, mult=_one, sgd=_one, adam=_one)
_NTK = Rule(init=_one, mult=_inv_sqrt_n, sgd=_one, adam=_one)
_MUP_IN = Rule(init=_inv_sqrt_n, mult=_one, sgd=lambda d: d.m_out, adam=_one)
_MF_IN = Rule(init=_one, mult=_inv_sqrt_n, sgd=lambda d: float(d.N_out), adam=_one)

# The table: TABLE[param][leaf class] -> Rule.
TABLE: dict[str, dict[str, Rule]] = {
    "sp": {"input": _SP, "hidden": _SP, "output": _SP, "fixed": _SP,
           "vector": Rule(init=_one, mult=_one, sgd=_one, adam=_one)},
    "ntk": {"input": _NTK, "hidden": _NTK, "output": _NTK, "fixed": _NTK,
            "vector": Rule(init=_one, mult=_one, sgd=_one, adam=_one)},
    "mup": {
        "input": _MUP_IN,
        "fixed": _MUP_IN,
        "hidden": Rule(init=_inv_sqrt_n, mult=_one, sgd=lambda d: d.m_out / d.m_in,
                       adam=lambda d: 1.0 / d.m_in),
        "output": Rule(init=lambda d: math.sqrt(d.m_in / d.n_in), mult=lambda d: 1.0 / d.m_in,
                       sgd=lambda d: d.m_in, adam=_one),
        "vector": Rule(init=_one, mult=_one, sgd=lambda d: d.m_out, adam=_one),
    },
    "mf": {
        "input": _MF_IN,
        "fixed": _MF_IN,
        "hidden": Rule(init=_one, mult=_inv_n, sgd=lambda d: float(d.n_in * d.N_out), adam=_one),
        "output": Rule(init=_one, mult=_inv_n, sgd=lambda d: float(d.n_in), adam=_one),
        "vector": Rule(init=_one, mult=_one, sgd=lambda d: float(d.N_out), adam=_one),
    },
}


def leaf_class(box: RC) -> str:
  """The leaf class of an RC box: 'input' | 'hidden' | 'output' | 'vector' | 'fixed'.

  >>> import jax.numpy as jnp
  >>> from rcjax import RC
  >>> h = RC(jnp.ones((4, 4)), axes=('hidden', 'hidden'), fan_in=(0,), base=(4, 4), param='mf')
  >>> leaf_class(h), leaf_class(RC(jnp.ones((3, 4)), axes=('input', 'hidden'), fan_in=(0,), base=(None, 4)))
  ('hidden', 'input')
  """
  if not box.fan_in:
    return "vector"
  width = set(box.width_dims)
  w_in = any(d in width for d in box.fan_in)
  w_out = any(d not in box.fan_in for d in width)
  return {(True, True): "hidden", (True, False): "output", (False, True): "input"}.get((w_in, w_out), "fixed")


def dims(box: RC, shape: tuple[int, ...] | None = None) -> Dims:
  """The `Dims` of a box, at its own shape or at `shape` (e.g. the target shape of a transfer)."""
  shape = box.shape if shape is None else tuple(shape)
  n_in, m_in, m_out, N_in, N_out = 1, 1.0, 1.0, 1, 1
  for d, (size, base) in enumerate(zip(shape, box.base)):
    if d in box.fan_in:
      n_in *= size
    if base is None:
      continue
    if d in box.fan_in:
      m_in, N_in = m_in * size / base, N_in * size
    else:
      m_out, N_out = m_out * size / base, N_out * size
  return Dims(n_in=n_in, m_in=m_in, m_out=m_out, N_in=N_in, N_out=N_out)


def _rule(box: RC) -> Rule:
  return TABLE[box.param][leaf_class(box)]


def init_scale(box: RC, shape: tuple[int, ...] | None = None) -> float:
  """Std multiplier applied to a draw of the leaf's init distribution.

  >>> import jax.numpy as jnp
  >>> from rcjax import RC
  >>> h = RC(jnp.ones((4, 4)), axes=('hidden', 'hidden'), fan_in=(0,), base=(4, 4), param='mf')
  >>> init_scale(h)  # mean-field: O(1) entries
  1.0
  """
  return _rule(box).init(dims(box, shape))


def multiplier(box: RC, shape: tuple[int, ...] | None = None) -> float:
  """Forward multiplier: the layer computes with `multiplier(box) * box.value`.

  >>> import jax.numpy as jnp
  >>> from rcjax import RC
  >>> h = RC(jnp.ones((4, 4)), axes=('hidden', 'hidden'), fan_in=(0,), base=(4, 4), param='mf')
  >>> multiplier(h), multiplier(h, (8, 8))  # mean-field hidden layer: 1/N, at N = 4 and at N = 8
  (0.25, 0.125)
  """
  return _rule(box).mult(dims(box, shape))


def lr_multiplier(box: RC, optimizer: str = "sgd") -> float:
  """Per-leaf learning-rate multiplier for `optimizer` ('sgd', or 'adam' for any adaptive optimizer).

  >>> import jax.numpy as jnp
  >>> from rcjax import RC
  >>> h = RC(jnp.ones((4, 4)), axes=('hidden', 'hidden'), fan_in=(0,), base=(4, 4), param='mf')
  >>> lr_multiplier(h, 'sgd'), lr_multiplier(h, 'adam')
  (16.0, 1.0)
  """
  if optimizer not in OPTIMIZERS:
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
  return getattr(_rule(box), optimizer)(dims(box))


# --- init distributions -------------------------------------------------------------------------

def parse_init(spec: str) -> tuple[str, tuple[float, ...]]:
  """Parse an init spec: 'normal' | 'gaussian' | 'normal:MEAN,VAR' | 'uniform' | 'uniform:LO,HI' |
  'zeros' | 'ones' | 'constant:C'. Raises ValueError for anything else."""
  if not isinstance(spec, str):
    raise TypeError(f"init spec must be a string such as 'normal:1,3', got {spec!r}")
  name, _, rest = spec.partition(":")
  name = {"gaussian": "normal"}.get(name.strip(), name.strip())
  try:
    args = tuple(float(a) for a in rest.split(",")) if rest.strip() else ()
  except ValueError:
    raise ValueError(f"bad init spec {spec!r}: arguments must be numbers") from None
  defaults = {"normal": (0.0, 1.0), "uniform": (-1.0, 1.0), "zeros": (), "ones": (), "constant": None}
  if name not in defaults:
    raise ValueError(f"unknown init {spec!r}; expected one of normal, gaussian, normal:MEAN,VAR, "
                     "uniform, uniform:LO,HI, zeros, ones, constant:C")
  expect = {"normal": 2, "uniform": 2, "zeros": 0, "ones": 0, "constant": 1}[name]
  if not args and defaults[name] is not None:
    args = defaults[name]
  if len(args) != expect:
    raise ValueError(f"bad init spec {spec!r}: {name} takes {expect} argument(s)")
  if name == "normal" and args[1] < 0:
    raise ValueError(f"bad init spec {spec!r}: variance must be >= 0")
  if name == "uniform" and args[1] < args[0]:
    raise ValueError(f"bad init spec {spec!r}: need LO <= HI")
  return name, args


def sample(spec: str, key: jax.Array, shape: tuple[int, ...], scale: float = 1.0,
           dtype: Any = jnp.float32) -> jax.Array:
  """Draw `scale * Z` with Z from the init distribution `spec` ('zeros'/'ones'/'constant' are unscaled).

  'normal:1,3' is N(mean=1, variance=3), the paper's GPT init; 'uniform' is U(-1, 1), so with the SP
  scale 1/sqrt(fan_in) it is PyTorch's default Linear weight init (not its bias init, U(+-1/sqrt(fan_in)):
  vector leaves such as biases have scale 1 here, so a bias drawn from 'uniform' is U(-1, 1)).

  >>> float(sample('constant:0.5', jax.random.key(0), (2,))[0])
  0.5
  """
  name, args = parse_init(spec)
  if name == "zeros":
    return jnp.zeros(shape, dtype)
  if name == "ones":
    return jnp.ones(shape, dtype)
  if name == "constant":
    return jnp.full(shape, args[0], dtype)
  if name == "normal":
    z = args[0] + math.sqrt(args[1]) * jax.random.normal(key, shape, jnp.float32)
  else:
    z = jax.random.uniform(key, shape, jnp.float32, args[0], args[1])
  return (scale * z).astype(dtype)


# --- optax ---------------------------------------------------------------------------------------

def _boxes_like(updates: Any, params: Any) -> list[RC]:
  for tree in (updates, params):
    leaves = jax.tree.leaves(tree, is_leaf=is_rc)
    if leaves and all(is_rc(x) for x in leaves):
      return leaves
  for tree in (updates, params):
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_rc)[0]
    plain = [jax.tree_util.keystr(p) for p, x in flat if not is_rc(x)]
    if len(plain) < len(flat):  # some leaves boxed, some not
      raise ValueError(f"scale_by_parametrization needs every param to be an RC leaf, but {len(plain)} of "
                       f"{len(flat)} are plain arrays, e.g. {plain[0]}: box it (rcjax.RC, rcjax.nn.rc_param) "
                       "so its learning-rate multiplier is known")
  raise ValueError("scale_by_parametrization needs RC leaves: keep params boxed (as rcjax.nn creates "
                   "them) or pass boxed params to update()")


def scale_by_parametrization(optimizer: str = "sgd") -> optax.GradientTransformation:
  """An optax transformation multiplying each update leaf by its parametrization's lr multiplier.

  Reads the RC boxes from the updates (gradients of boxed params are boxed) or else from `params`.
  Put it after the moment-accumulating transformations, e.g.
  `optax.chain(optax.scale_by_adam(), scale_by_parametrization('adam'), optax.scale(-lr))`, so optimizer
  states hold plain gradient statistics (that is what optimizer-state transfer assumes).

  Args:
    optimizer: 'sgd' (plain or momentum SGD) or 'adam' (Adam, AdamW, RMSProp, Lion: any optimizer whose
      update is invariant to the gradient's scale).

  >>> import jax.numpy as jnp
  >>> from rcjax import RC
  >>> h = RC(jnp.ones((4, 4)), axes=('hidden', 'hidden'), fan_in=(0,), base=(4, 4), param='mf')
  >>> tx = scale_by_parametrization('sgd')
  >>> updates, _ = tx.update({'w': h}, tx.init({'w': h}))  # a gradient of ones, boxed like the param
  >>> float(updates['w'].value[0, 0])  # times lr_multiplier(h, 'sgd')
  16.0
  """
  if optimizer not in OPTIMIZERS:
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    boxes = _boxes_like(updates, params)
    mults = [lr_multiplier(b, optimizer) for b in boxes]
    leaves, treedef = jax.tree.flatten(updates)
    if len(leaves) != len(mults):
      raise ValueError(f"updates have {len(leaves)} leaves but params have {len(mults)} RC leaves")
    leaves = [u if m == 1.0 else (u * m).astype(u.dtype) for u, m in zip(leaves, mults)]
    return jax.tree.unflatten(treedef, leaves), state

  return optax.GradientTransformation(init_fn, update_fn)


def sgd(learning_rate: optax.ScalarOrSchedule, momentum: float | None = None,
        nesterov: bool = False) -> optax.GradientTransformation:
  """SGD with the parametrization's per-leaf learning rates (momentum traces raw gradients).

  >>> import jax.numpy as jnp
  >>> from rcjax import RC
  >>> h = RC(jnp.ones((4, 4)), axes=('hidden', 'hidden'), fan_in=(0,), base=(4, 4), param='mf')
  >>> tx = sgd(0.1)
  >>> updates, _ = tx.update({'w': h}, tx.init({'w': h}))
  >>> round(float(updates['w'].value[0, 0]), 6)  # -lr * lr_multiplier * gradient
  -1.6
  """
  return optax.chain(
      optax.trace(decay=momentum, nesterov=nesterov) if momentum else optax.identity(),
      scale_by_parametrization("sgd"),
      optax.scale_by_learning_rate(learning_rate),
  )


def adamw(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 0.0, mask: Any = None) -> optax.GradientTransformation:
  """AdamW with the parametrization's per-leaf learning rates (also applied to the weight decay).

  >>> import jax.numpy as jnp
  >>> from rcjax import RC
  >>> h = RC(jnp.ones((4, 4)), axes=('hidden', 'hidden'), fan_in=(0,), base=(4, 4), param='mf')
  >>> tx = adamw(0.1)
  >>> updates, _ = tx.update({'w': h}, tx.init({'w': h}), {'w': h})
  >>> round(float(updates['w'].value[0, 0]), 4)  # Adam's first step is -lr * sign(g), times lr_multiplier 1
  -0.1
  """
  return optax.chain(
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
      optax.add_decayed_weights(weight_decay, mask) if weight_decay else optax.identity(),
      scale_by_parametrization("adam"),
      optax.scale_by_learning_rate(learning_rate),
  )


def has_rc(tree: Any) -> bool:
  return any(is_rc(x) for x in jax.tree.leaves(tree, is_leaf=is_rc))
