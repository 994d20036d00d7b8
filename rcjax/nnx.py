"""Flax NNX: RC structure as `nnx.Variable` metadata, and `grow` for NNX modules and their optimizers.

The RC structure of a parameter lives in its variable's metadata under the key `rc`: a dict of the
`rcjax.RC` fields but `value` (`axes`, `fan_in`, `base`, `param`, `init`, `blocks`). NNX keeps variable
metadata through `nnx.split`/`nnx.merge`/`nnx.jit`. Declare it when creating a parameter,
`nnx.Param(value, rc=dict(axes=('embed', 'mlp'), fan_in=(0,), base=(None, 64)))` (or `rc_param`), infer it
for a stock model from the same model at another width with `annotate(model, delta)`, or build the model
from this module's layers `Dense`, `Conv`, `MLP` (the NNX twins of `rcjax.nn`'s, see rcjax/nnx_layers.py).

>>> import jax, jax.numpy as jnp, rcjax.nnx
>>> from flax import nnx
>>> make = lambda width: nnx.Sequential(nnx.Linear(3, width, rngs=nnx.Rngs(0)), nnx.relu,
...                                     nnx.Linear(width, 2, rngs=nnx.Rngs(1)))
>>> model = rcjax.nnx.annotate(make(8), nnx.eval_shape(lambda: make(16)))
>>> big = rcjax.nnx.grow(model, jax.random.key(0), factor=2)
>>> big.layers[0].out_features, bool(jnp.allclose(big(jnp.ones((1, 3))), model(jnp.ones((1, 3))), atol=1e-5))
(16, True)
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
import optax
from flax import nnx

from rcjax import parametrization as pz

from rcjax.annotate import annotate as _annotate_tree
from rcjax.nnx_layers import MLP, Conv, Dense, box, rc_param  # noqa: F401 - rcjax.nnx's layers
from rcjax.rc import RC
from rcjax.transfer import MOMENT_FIELDS, UNSUPPORTED_FIELDS, _target_sizes, grow as grow_tree

_FIELDS = ("axes", "fan_in", "base", "param", "init", "blocks")
_KINDS = (nnx.Param, nnx.BatchStat)  # the variables that have a model's shapes


def _path(path: tuple) -> tuple:
  return tuple(getattr(k, "key", k) for k in path)


def _variables(node: Any, kinds=_KINDS) -> dict[tuple, nnx.Variable]:
  """`{path: variable}` for every variable of one of `kinds` in an NNX graph node."""
  return {tuple(p): v for p, v in nnx.iter_graph(node) if isinstance(v, kinds)}


def _check_module(model: Any, what: str) -> None:
  if not isinstance(model, nnx.Module):
    raise TypeError(f"rcjax.nnx.{what}: expected an nnx.Module, got {type(model).__name__} (for a plain "
                    "parameter pytree use rcjax.annotate / rcjax.grow)")


def annotate(model: nnx.Module, delta: nnx.Module, **kw) -> nnx.Module:
  """Set RC metadata on every `nnx.Param`/`nnx.BatchStat` of `model`, inferred from `delta`.

  Args:
    model: a stock NNX module (changed in place, and returned).
    delta: the same module at another width; an abstract one costs nothing:
      `nnx.eval_shape(lambda: Model(..., rngs=nnx.Rngs(0)))`.
    **kw: `param`, `fan_in`, `names`, `layout` as in `rcjax.annotate` (paths join the module's
      attribute names with '/', e.g. `'layers/0/kernel'`).

  Returns:
    `model`, its variables now carrying `rc` metadata.
  """
  _check_module(model, "annotate")
  _check_module(delta, "annotate")
  mine, theirs = _variables(model), _variables(delta)
  others = (_variables(model, nnx.Variable), _variables(delta, nnx.Variable))
  for p, v in others[0].items():
    if p not in mine and p in others[1] and tuple(np.shape(v.get_value())) != tuple(np.shape(others[1][p].get_value())):
      raise ValueError(f"rcjax.nnx.annotate: {'/'.join(map(str, p))!r} is a {type(v).__name__} whose shape changes "
                       f"with the width, but only nnx.Param and nnx.BatchStat are annotated: give it rc metadata "
                       "or make it a Param/BatchStat")
  if set(mine) != set(theirs):
    diff = sorted(set(mine) ^ set(theirs), key=str)[0]
    raise ValueError(f"rcjax.nnx.annotate: model and delta have different variables (e.g. at "
                     f"{'/'.join(map(str, diff))!r})")
  order = sorted(mine, key=lambda p: tuple(map(str, p)))
  as_tree = lambda vs: {"/".join(map(str, p)): jax.ShapeDtypeStruct(vs[p].shape, vs[p].get_value().dtype)
                        for p in order}
  boxed = _annotate_tree(as_tree(mine), as_tree(theirs), **kw)
  for p in order:
    rc = boxed["/".join(map(str, p))]
    mine[p].set_metadata("rc", {f: getattr(rc, f) for f in _FIELDS})
  return model


def boxes(model: nnx.Module) -> dict[tuple, RC]:
  """`{path: rcjax.RC}` for every variable of `model` with `rc` metadata (its value boxed)."""
  _check_module(model, "boxes")
  out = {}
  for p, v in _variables(model, nnx.Variable).items():
    if v.has_metadata("rc") if hasattr(v, "has_metadata") else "rc" in v.get_metadata():
      meta = v.get_metadata()["rc"]
      if not isinstance(meta, Mapping) or "axes" not in meta:
        raise ValueError(f"rcjax.nnx: the rc metadata of {'/'.join(map(str, p))!r} must be a dict with at least "
                         f"'axes' (and fan_in, base, param, init, blocks), got {meta!r}")
      out[p] = RC(v.get_value(), **{f: meta[f] for f in _FIELDS if f in meta})
  if not out:
    raise ValueError("rcjax.nnx: no variable of this module has rc metadata: call rcjax.nnx.annotate(model, "
                     "delta) first, or create parameters as nnx.Param(value, rc=dict(axes=..., base=...))")
  return out


_FEATURES = {  # stock modules' size attributes, read off their (grown) variables
    nnx.Linear: lambda m: dict(in_features=m.kernel.shape[0], out_features=m.kernel.shape[-1]),
    nnx.Conv: lambda m: dict(in_features=m.kernel.shape[-2], out_features=m.kernel.shape[-1]),
    nnx.Embed: lambda m: dict(num_embeddings=m.embedding.shape[0], features=m.embedding.shape[1]),
}
_NORMS = (nnx.LayerNorm, nnx.RMSNorm, nnx.BatchNorm, nnx.GroupNorm)


def _fix_sizes(model: nnx.Module) -> None:
  """Set the size attributes of stock NNX layers (`out_features`, `num_features`, ...) to the new shapes."""
  for _, m in nnx.iter_graph(model):
    for cls, read in _FEATURES.items():
      if isinstance(m, cls):
        for k, v in read(m).items():
          setattr(m, k, v)
    if isinstance(m, _NORMS):
      var = getattr(m, "scale", None)
      var = getattr(m, "bias", None) if var is None else var
      if var is not None and hasattr(m, "num_features"):
        m.num_features = var.shape[-1]


def _moment(path: tuple) -> tuple[int, int] | None:
  """(power, index after the field) of the first gradient-statistics field in an optimizer-state path."""
  for i, k in enumerate(path):
    if k in UNSUPPORTED_FIELDS:
      raise ValueError(f"rcjax.nnx.grow: cannot transfer optimizer state {'/'.join(map(str, path))!r}: {k!r} "
                       f"holds {UNSUPPORTED_FIELDS[k]}")
    if k in MOMENT_FIELDS:
      return MOMENT_FIELDS[k], i + 1
  return None


def _grow_optimizer(opt: nnx.Optimizer, new_model: nnx.Module, params: dict[tuple, RC], key, target, kw):
  groups: dict[int, dict[tuple, RC]] = {}
  for p, v in _variables(opt, nnx.Variable).items():
    hit = _moment(p)
    if hit is None or p[hit[1]:] not in params:
      continue
    leaf = params[p[hit[1]:]]
    if tuple(v.shape) != leaf.shape:
      raise ValueError(f"rcjax.nnx.grow: optimizer state {'/'.join(map(str, p))!r} has shape {tuple(v.shape)}, "
                       f"not its parameter's {leaf.shape}")
    groups.setdefault(hit[0], {})[p] = leaf.replace(value=v.get_value())
  grown = {}
  for power, tree in groups.items():
    grown.update(grow_tree(tree, key, sizes=target, moment=power, **kw))
  new = nnx.Optimizer(new_model, opt.tx, wrt=opt.wrt)
  for p, v in _variables(new, nnx.Variable).items():
    if p in grown:
      v.set_value(grown[p].value)
    elif p in (old := _variables(opt, nnx.Variable)) and tuple(old[p].shape) == tuple(v.shape):
      v.set_value(old[p].get_value())  # step counts, Adam's count, states of unannotated variables
  return new


def grow(model: nnx.Module, key: jax.Array, *, factor: float | None = None,
         sizes: Mapping[str, int] | None = None, optimizer: nnx.Optimizer | None = None, **kw) -> Any:
  """A wider copy of an NNX module whose variables carry RC metadata (and of its optimizer).

  Args:
    model: an NNX module annotated with `annotate` or built with `rc` metadata; it is not changed.
    key: a `jax.random` key (the same key gives the same model).
    factor, sizes: as in `rcjax.grow` (default: every width axis doubled).
    optimizer: an `nnx.Optimizer` of `model`: its state (Adam's moments, momentum) is grown with the same
      index maps, and a new optimizer of the grown model returned with it.
    **kw: `sampler`, `random_rate`, `norm_rate`, `exact` as in `rcjax.grow`.

  Returns:
    The grown module, of the same class (stock layers' size attributes updated), or
    `(model, optimizer)` when `optimizer` is given.
  """
  _check_module(model, "grow")
  if optimizer is not None and not isinstance(optimizer, nnx.Optimizer):
    raise TypeError(f"rcjax.nnx.grow: optimizer must be an nnx.Optimizer, got {type(optimizer).__name__}")
  allowed = {"sampler", "random_rate", "norm_rate", "exact"}
  if set(kw) - allowed:
    raise TypeError(f"rcjax.nnx.grow: unexpected arguments {sorted(set(kw) - allowed)}")
  params = boxes(model)
  target = _target_sizes(params, factor, sizes, "grow")
  grown = grow_tree(params, key, sizes=target, **kw)
  new = nnx.clone(model)  # the caller's model is left as it was
  variables = _variables(new, nnx.Variable)
  for p, leaf in grown.items():
    variables[p].set_value(leaf.value)
  _fix_sizes(new)
  if optimizer is None:
    return new
  return new, _grow_optimizer(optimizer, new, params, key, target, kw)


def scale_by_parametrization(model: nnx.Module, optimizer: str = "sgd",
                             wrt: Any = nnx.Param) -> optax.GradientTransformation:
  """An optax transformation multiplying each update by its parameter's learning-rate multiplier (NNX).

  `nnx.Optimizer` hands its transformation plain arrays, so the RC structure is read from `model` now
  (each parameter's `rc` metadata, by path), and the sizes from the updates at each step: the same
  transformation stays right for `model` grown by `grow` (same paths and metadata, new shapes).

  Args:
    model: the NNX module to be trained; every variable matching `wrt` needs `rc` metadata.
    optimizer: 'sgd' or 'adam', as in `rcjax.scale_by_parametrization`.
    wrt: the `nnx.Optimizer`'s `wrt` filter (default `nnx.Param`).
  """
  if optimizer not in pz.OPTIMIZERS:
    raise ValueError(f"optimizer must be one of {pz.OPTIMIZERS}, got {optimizer!r}")
  _check_module(model, "scale_by_parametrization")
  meta = {p: v.get_metadata().get("rc") for p, v in _variables(model, wrt).items()}
  missing = sorted((p for p, m in meta.items() if m is None), key=str)
  if missing:
    raise ValueError(f"rcjax.nnx: parameter {'/'.join(map(str, missing[0]))!r} has no rc metadata, so its "
                     "learning-rate multiplier is unknown: annotate the model (rcjax.nnx.annotate) or build "
                     "it from rcjax.nnx layers")

  def update_fn(updates, state, params=None):
    del params
    flat, treedef = jax.tree_util.tree_flatten_with_path(updates)
    out = []
    for path, u in flat:
      m = meta.get(_path(path))
      if m is None:
        raise ValueError(f"rcjax.nnx.scale_by_parametrization: update {'/'.join(map(str, _path(path)))!r} "
                         "is not a parameter of the model this transformation was built for")
      rc = RC(jax.ShapeDtypeStruct(np.shape(u), u.dtype), **{f: m[f] for f in _FIELDS if f in m})
      mult = pz.lr_multiplier(rc, optimizer)
      out.append(u if mult == 1.0 else (u * mult).astype(u.dtype))
    return jax.tree.unflatten(treedef, out), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def sgd(model: nnx.Module, learning_rate: optax.ScalarOrSchedule, momentum: float | None = None,
        nesterov: bool = False) -> optax.GradientTransformation:
  """`rcjax.sgd` for an NNX module: SGD with its parametrization's per-leaf learning rates."""
  return optax.chain(optax.trace(decay=momentum, nesterov=nesterov) if momentum else optax.identity(),
                     scale_by_parametrization(model, "sgd"), optax.scale_by_learning_rate(learning_rate))


def adamw(model: nnx.Module, learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, weight_decay: float = 0.0) -> optax.GradientTransformation:
  """`rcjax.adamw` for an NNX module: AdamW with its parametrization's per-leaf learning rates.

  >>> import jax.numpy as jnp, rcjax.nnx
  >>> from flax import nnx
  >>> model = rcjax.nnx.MLP(3, (4,), 2, param='mup', rngs=nnx.Rngs(0))
  >>> optimizer = nnx.Optimizer(model, rcjax.nnx.adamw(model, 1e-2), wrt=nnx.Param)
  """
  return optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                     optax.add_decayed_weights(weight_decay) if weight_decay else optax.identity(),
                     scale_by_parametrization(model, "adam"), optax.scale_by_learning_rate(learning_rate))
