"""RC structure for a model rcjax did not build: inferred from its params at two widths (the "delta" model).

The dimensions whose size differs between the two parameter pytrees are the width axes (the idea of
microsoft/mup's `set_base_shapes(model, base, delta=...)`). Width dimensions of equal sizes in both
pytrees get one logical axis name, so the output of a layer and the input of the next one (and every
leaf on a residual stream) share one index map; fan-in follows the standard kernel layouts:

| leaf name                          | layout                              | fan-in           |
|------------------------------------|-------------------------------------|------------------|
| `kernel` (flax Dense, Conv, NNX)   | `(..., in, out)`                    | all but the last |
| `query`/`key`/`value` 3-D `kernel` | `(embed, heads, head_dim)` (attention) | `(0,)`        |
| `weight` (Equinox, PyTorch)        | `(out, in, ...)`                    | all but the first|
| `embedding` (flax/NNX Embed)       | `(vocab, features)`                 | `(0,)`           |
| `bias`, `scale`, 1-D leaves        | a vector                            | none             |

Any other leaf of two or more dimensions needs `layout=` or a `fan_in=` hint (a ValueError names it).
Two width dimensions of equal sizes that are different axes (two hidden layers of one width) share a
name by default: they share one index map, still a function-preserving transfer; `names=` tells them
apart (e.g. to grow one layer only).
"""

from __future__ import annotations

import fnmatch
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from rcjax import parametrization as pz
from rcjax.rc import PARAMS, RC, is_rc

LAYOUTS = ("in_out", "out_in")
_PROJECTIONS = ("query", "key", "value")  # flax MultiHeadDotProductAttention's input projections
_VECTORS = {"bias": "zeros", "beta": "zeros", "mean": "zeros", "b": "zeros",
            "scale": "ones", "gamma": "ones", "var": "ones", "g": "ones"}


def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _slash(path: tuple) -> str:
  return "/".join(_key_name(k) for k in path)


def _match(hints: Mapping[str, Any] | None, path: str):
  """The value of the first hint whose pattern matches `path` (exactly, as a glob, or as its last part)."""
  for pattern, value in (hints or {}).items():
    if path == pattern or fnmatch.fnmatchcase(path, pattern) or path.endswith("/" + pattern):
      return value
  return None


def _fan_in(path: str, name: str, ndim: int, width: list[int], fan_in, layout: str | None) -> tuple[int, ...]:
  hint = _match(fan_in, path)
  if hint is not None:
    if isinstance(hint, (int, np.integer)):
      hint = (hint,)
    return tuple(int(d) % max(ndim, 1) for d in hint)
  if ndim <= 1 or name in _VECTORS:
    return ()
  kind = {"kernel": "in_out", "weight": "out_in"}.get(name, layout)
  if name == "embedding":
    return (0,)
  parent = path.rsplit("/", 2)[-2] if path.count("/") else ""
  if name == "kernel" and ndim == 3 and parent in _PROJECTIONS:  # flax attention: (embed, heads, head_dim)
    return (0,)
  if kind == "in_out":
    return tuple(range(ndim - 1))
  if kind == "out_in":
    return tuple(range(1, ndim))
  what = ("both of its dimensions change size, so neither the sizes nor a layout tell its fan-in"
          if ndim == 2 and len(width) == 2 else "its name is not a standard kernel name (kernel, weight, "
          "embedding, bias, scale)")
  raise ValueError(f"annotate: cannot infer the fan-in of leaf {path!r} (shape of {ndim} dims): {what}; pass "
                   f"fan_in={{{path!r}: (0,)}} (the contracted dims) or layout='in_out' (x @ w, flax) / "
                   f"'out_in' (w @ x, PyTorch, Equinox) for all such leaves")


def _flat(tree: Any, what: str) -> tuple[list[tuple[str, Any]], Any]:
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_rc)
  out = []
  for path, x in flat:
    if is_rc(x):
      raise TypeError(f"annotate: {what} at {_slash(path)!r} is already an RC box; pass plain arrays "
                      "(rcjax.unbox(params))")
    out.append((_slash(path), x))
  return out, treedef


def _check_names(names: Mapping[str, Sequence[str | None]] | None, path: str, ndim: int):
  given = _match(names, path)
  if given is None:
    return (None,) * ndim
  if isinstance(given, str) or len(given) != ndim:
    raise ValueError(f"annotate: names for leaf {path!r} must be a tuple of {ndim} axis names (None to infer), "
                     f"got {given!r}")
  return tuple(given)


def _axis_names(leaves, shapes, widths, names) -> list[tuple[str, ...]]:
  """One logical name per dimension: width dims named per (size, delta size) pair, unless hinted."""
  given = [_check_names(names, path, len(shapes[i][0])) for i, (path, _) in enumerate(leaves)]
  by_pair: dict[tuple[int, int], set[str]] = {}
  for i in range(len(leaves)):
    for d in widths[i]:
      if given[i][d] is not None:
        by_pair.setdefault((shapes[i][0][d], shapes[i][1][d]), set()).add(given[i][d])
  auto: dict[tuple[int, int], str] = {}
  out = []
  for i, (path, _) in enumerate(leaves):
    s, t = shapes[i]
    axes = []
    for d in range(len(s)):
      if given[i][d] is not None:
        axes.append(given[i][d])
      elif d not in widths[i]:
        axes.append(f"fixed_{s[d]}")
      else:
        pair = (s[d], t[d])
        hinted = by_pair.get(pair, set())
        if len(hinted) > 1:
          raise ValueError(f"annotate: dim {d} of leaf {path!r} (size {s[d]} -> {t[d]}) could be axis "
                           f"{' or '.join(sorted(hinted))}: name it with names={{{path!r}: ...}}")
        if pair not in auto:
          auto[pair] = next(iter(hinted)) if hinted else f"width_{len(auto)}"
        axes.append(auto[pair])
    out.append(tuple(axes))
  return out


def annotate(params: Any, delta: Any, *, param: str = "sp", fan_in: Mapping[str, Any] | None = None,
             names: Mapping[str, Sequence[str | None]] | None = None, layout: str | None = None) -> Any:
  """Box a plain parameter pytree with RC structure inferred from the same model at another width.

  Args:
    params: the model's parameters (arrays, or `jax.ShapeDtypeStruct`s), e.g. `model.init(...)['params']`.
    delta: the same pytree at another width, e.g. `jax.eval_shape(wider.init, key, x)['params']`: the
      dimensions whose size differs are the width axes. Their base (for muP/mean-field) is their size
      in `params`.
    param: the parametrization, 'sp' (default: stock models compute with the raw weights), or 'mup',
      'mf', 'ntk': then the model must compute with `rcjax.effective(params)` (the multiplied weights)
      and train with `rcjax.adamw`/`rcjax.sgd` (the per-leaf learning rates).
    fan_in: hints `{path: dims}` for leaves whose fan-in the layout tables do not give; a path is the
      leaf's keys joined by '/', e.g. `'Dense_0/kernel'`, a glob (`'*/w'`) or its last part (`'w'`).
    names: hints `{path: (name or None, ...)}`: logical axis names per dimension (None infers); every
      width dimension of the same sizes takes the hinted name.
    layout: 'in_out' (`x @ w`) or 'out_in' (`w @ x`): the layout of 2-D and larger leaves whose name is
      not a standard one (see the module docstring).

  Returns:
    `params` with every leaf an `rcjax.RC` box, for `rcjax.grow`/`shrink`/`transfer` (and optimizer
    states built on it); `rcjax.unbox` gives the plain pytree back.

  >>> import jax, jax.numpy as jnp, rcjax
  >>> p = {'Dense_0': {'kernel': jnp.ones((3, 4)), 'bias': jnp.zeros(4)},
  ...      'Dense_1': {'kernel': jnp.ones((4, 2)), 'bias': jnp.zeros(2)}}
  >>> wide = jax.tree.map(lambda x: jax.ShapeDtypeStruct(tuple(8 if n == 4 else n for n in x.shape), x.dtype), p)
  >>> boxed = rcjax.annotate(p, wide)
  >>> boxed['Dense_1']['kernel']
  RC(float32[4, 2], axes=('width_0*', 'fixed_2'), fan_in=(0,), base=(4, None), param='sp', init='normal')
  >>> rcjax.unbox(rcjax.grow(boxed, jax.random.key(0)))['Dense_0']['kernel'].shape
  (3, 8)
  """
  if param not in PARAMS:
    raise ValueError(f"annotate: unknown parametrization {param!r}; expected one of {PARAMS}")
  if layout not in (None,) + LAYOUTS:
    raise ValueError(f"annotate: layout must be one of {LAYOUTS} or None, got {layout!r}")
  leaves, treedef = _flat(params, "params")
  other, other_def = _flat(delta, "delta")
  shapes, widths = _widths(leaves, treedef, other, other_def)
  axes = _axis_names(leaves, shapes, widths, names)
  out = [_box(path, x, shapes[i][0], widths[i], axes[i], param, fan_in, layout) for i, (path, x) in enumerate(leaves)]
  return jax.tree.unflatten(treedef, out)


def _widths(leaves, treedef, other, other_def) -> tuple[list, list]:
  """The (params, delta) shapes of each leaf and its width dimensions (those whose sizes differ); a
  ValueError if the two pytrees differ in structure or number of dimensions, or nowhere in size."""
  if other_def != treedef:
    mine, theirs = {p for p, _ in leaves}, {p for p, _ in other}
    diff = sorted(mine ^ theirs)
    raise ValueError(f"annotate: params and delta differ in structure (e.g. at {diff[0]!r})" if diff else
                     "annotate: params and delta differ in structure (containers of different types)")
  shapes, widths = [], []
  for (path, x), (_, y) in zip(leaves, other):
    s, t = tuple(np.shape(x)), tuple(np.shape(y))
    if len(s) != len(t):
      raise ValueError(f"annotate: leaf {path!r} has shape {s} in params but {t} in delta (a width changes "
                       "sizes, not the number of dimensions)")
    shapes.append((s, t))
    widths.append([d for d in range(len(s)) if s[d] != t[d]])
  if not any(widths):
    raise ValueError("annotate: params and delta have the same shapes everywhere; build delta at another width")
  return shapes, widths


def _box(path: str, x, s: tuple, width: list[int], axes: tuple, param: str, fan_in, layout) -> Any:
  """One leaf as an RC box (shape `s`, width dimensions `width`); Python scalars and strings are not
  parameters and stay as they are."""
  if not hasattr(x, "shape"):
    return x
  name = path.rsplit("/", 1)[-1]
  fi = _fan_in(path, name, len(s), width, fan_in, layout)
  init = _VECTORS.get(name, "normal") if not fi else "normal"
  base = tuple(s[d] if d in width else None for d in range(len(s)))
  return RC(x, axes=axes, fan_in=fi, base=base, param=param, init=init)


def effective(params: Any) -> Any:
  """The weights the model must compute with: every RC leaf's value times its forward multiplier.

  Plain arrays come back (non-RC leaves unchanged). Under SP the multipliers are 1 and this is
  `rcjax.unbox`; under muP, mean-field and NTK a stock model applied to `effective(params)` computes
  what the parametrization prescribes, and gradients flow back to the boxed `params`.

  >>> import jax.numpy as jnp, rcjax
  >>> w = rcjax.RC(jnp.ones((4, 2)), axes=('hidden', 'out'), fan_in=(0,), base=(4, None), param='mf')
  >>> float(rcjax.effective({'w': w})['w'][0, 0])
  0.25
  """
  def scale(x):
    if not is_rc(x):
      return x
    m = pz.multiplier(x)
    return x.value if m == 1.0 else (x.value * m).astype(x.value.dtype)

  return jax.tree.map(scale, params, is_leaf=is_rc)
