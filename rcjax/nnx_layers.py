"""Flax NNX twins of the `rcjax.nn` layers: `nnx.Param`s with RC metadata, multipliers from the actual shapes.

Each parameter is an `nnx.Param` whose metadata `rc` holds its RC structure (axes, fan-in, base,
parametrization, init), the form `rcjax.nnx.grow` reads. At call time a layer builds the RC box from
the parameter's current value and metadata and multiplies by `rcjax.multiplier(box)`, exactly as the
linen `rcjax.nn.Dense` does, so a grown module computes what its parametrization prescribes at its new
width. Size attributes (`in_features`, `out_features`, `features`) are read off the parameters, so
they are right after a grow too.

Re-exported as `rcjax.nnx.Dense`, `rcjax.nnx.Conv`, `rcjax.nnx.MLP`, `rcjax.nnx.rc_param`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from rcjax import parametrization as pz
from rcjax.nn.layers import _cast, _per_layer  # the linen layers' helpers: one copy
from rcjax.rc import RC

_FIELDS = ("axes", "fan_in", "base", "param", "init", "blocks")


def rc_param(key: jax.Array, shape: Sequence[int], *, axes: Sequence[str], fan_in: Sequence[int] = (),
             base: Sequence[int | None] | None = None, param: str = "sp", init: str = "normal",
             dtype: Any = jnp.float32, blocks: Sequence[tuple[str, str | int]] = ()) -> nnx.Param:
  """A new `nnx.Param` drawn as `init_scale * Z` (Z from `init`), its RC structure in the metadata `rc`.

  Args:
    key: a `jax.random` key for the draw.
    shape: the parameter's shape.
    axes, fan_in, base, param, init, blocks: the fields of `rcjax.RC` (base None: every axis fixed).
    dtype: storage dtype.

  Returns:
    `nnx.Param(value, rc={...})`, with the metadata normalised as `rcjax.RC` normalises it.

  >>> import jax, rcjax.nnx
  >>> w = rcjax.nnx.rc_param(jax.random.key(0), (3, 4), axes=('input', 'hidden'), fan_in=(0,), base=(None, 4))
  >>> w.shape, w.get_metadata()['rc']['axes']
  ((3, 4), ('input', 'hidden'))
  """
  box = RC(jax.ShapeDtypeStruct(tuple(shape), dtype), axes=tuple(axes), fan_in=tuple(fan_in),
           base=None if base is None else tuple(base), param=param, init=init, blocks=tuple(blocks))
  if len(box.shape) != len(box.axes):
    raise ValueError(f"rcjax.nnx.rc_param: shape {tuple(shape)} has {len(box.shape)} dimensions but axes "
                     f"{box.axes} name {len(box.axes)} (one logical name per dimension)")
  value = pz.sample(box.init, key, box.shape, pz.init_scale(box), dtype)
  return nnx.Param(value, rc={f: getattr(box, f) for f in _FIELDS})


def box(variable: nnx.Variable) -> RC:
  """The `rcjax.RC` box of a variable with `rc` metadata: its current value and structure."""
  meta = variable.get_metadata().get("rc")
  if meta is None:
    raise ValueError(f"rcjax.nnx: this {type(variable).__name__} of shape {tuple(variable.shape)} has no rc "
                     "metadata (create it with rcjax.nnx.rc_param)")
  return RC(variable.get_value(), **{f: meta[f] for f in _FIELDS if f in meta})


def _bias(b: RC | None, y: jax.Array, dtype) -> jax.Array:
  return y if b is None else y + _cast(b.value, dtype if dtype is not None else y.dtype)


class Dense(nnx.Module):
  """`y = multiplier * x @ W + b`, kernel (in, out) with fan-in 0 and bias (out), as `rcjax.nn.Dense`.

  Args:
    in_features, out_features: the sizes at init.
    axes: logical names of the (input, output) axes.
    base: base sizes of the (input, output) axes; None marks a fixed axis (features, classes).
    param: 'sp' | 'ntk' | 'mup' | 'mf'.
    use_bias: add a bias (an RC 'vector' leaf on the output axis).
    kernel_init / bias_init: init specs ('normal', 'uniform', 'normal:1,3', 'zeros', ...).
    dtype: computation dtype (None: that of the inputs and params); param_dtype: storage dtype.
    rngs: `nnx.Rngs` with a `params` stream.

  >>> import jax.numpy as jnp, rcjax.nnx
  >>> from flax import nnx
  >>> layer = rcjax.nnx.Dense(3, 4, axes=('input', 'hidden'), base=(None, 4), param='mf', rngs=nnx.Rngs(0))
  >>> layer(jnp.ones((2, 3))).shape, layer.out_features
  ((2, 4), 4)
  """

  def __init__(self, in_features: int, out_features: int, *, axes: tuple[str, str] = ("input", "hidden"),
               base: tuple[int | None, int | None] = (None, None), param: str = "sp", use_bias: bool = True,
               kernel_init: str = "normal", bias_init: str = "zeros", dtype: Any = None,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.kernel = rc_param(rngs.params(), (in_features, out_features), axes=axes, fan_in=(0,), base=base,
                           param=param, init=kernel_init, dtype=param_dtype)
    self.bias = rc_param(rngs.params(), (out_features,), axes=(axes[1],), base=(base[1],), param=param,
                         init=bias_init, dtype=param_dtype) if use_bias else None
    self.dtype = dtype

  in_features = property(lambda self: self.kernel.shape[0])
  out_features = property(lambda self: self.kernel.shape[1])

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = box(self.kernel)
    y = jnp.dot(_cast(x, self.dtype), _cast(kernel.value, self.dtype)) * pz.multiplier(kernel)
    return _bias(None if self.bias is None else box(self.bias), y, self.dtype)


class Conv(nnx.Module):
  """2-D convolution, NHWC, kernel (h, w, in, out) with fan-in (0, 1, 2), as `rcjax.nn.Conv`.

  Args are as in `Dense`, plus `kernel_size`, `strides` and `padding` (as `jax.lax.conv_general_dilated`).
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: tuple[int, int] = (3, 3), *,
               strides: tuple[int, int] = (1, 1), padding: str = "SAME",
               axes: tuple[str, str] = ("channels", "hidden"), base: tuple[int | None, int | None] = (None, None),
               param: str = "sp", use_bias: bool = True, kernel_init: str = "normal", bias_init: str = "zeros",
               dtype: Any = None, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    kh, kw = kernel_size
    self.kernel = rc_param(rngs.params(), (kh, kw, in_features, out_features),
                           axes=("kernel_h", "kernel_w") + tuple(axes), fan_in=(0, 1, 2),
                           base=(None, None) + tuple(base), param=param, init=kernel_init, dtype=param_dtype)
    self.bias = rc_param(rngs.params(), (out_features,), axes=(axes[1],), base=(base[1],), param=param,
                         init=bias_init, dtype=param_dtype) if use_bias else None
    self.strides, self.padding, self.dtype = tuple(strides), padding, dtype

  in_features = property(lambda self: self.kernel.shape[2])
  out_features = property(lambda self: self.kernel.shape[3])

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = box(self.kernel)
    y = jax.lax.conv_general_dilated(
        _cast(x, self.dtype), _cast(kernel.value, self.dtype), window_strides=self.strides,
        padding=self.padding, dimension_numbers=("NHWC", "HWIO", "NHWC")) * pz.multiplier(kernel)
    return _bias(None if self.bias is None else box(self.bias), y, self.dtype)


class MLP(nnx.Module):
  """`in_features -> h1 -> ... -> hL -> out_features`, every hidden layer a width axis, as `rcjax.nn.MLP`.

  Layer l is `self.layers[l]`, a `Dense` (the linen MLP's `Dense_l`); hidden layer l's axis is named
  f'{axis_prefix}{l}'.

  Args:
    in_features: input size (a fixed axis named `in_axis`).
    features: hidden widths (h1, ..., hL) at init.
    out_features: output size (a fixed axis named `out_axis`).
    param: parametrization for every layer.
    bias: biases on every layer.
    activation: nonlinearity between layers.
    base: base width(s) of the hidden axes (None: the widths at init, so muP equals SP there).
    kernel_init / bias_init: init specs for all kernels / biases (a sequence gives one per layer).
    dtype: computation dtype.
    rngs: `nnx.Rngs` with a `params` stream.

  >>> import rcjax.nnx
  >>> from flax import nnx
  >>> model = rcjax.nnx.MLP(4, (8, 8), 3, param='mup', rngs=nnx.Rngs(0))  # grow it with rcjax.nnx.grow
  >>> model.features, model.layers[2].kernel.get_metadata()['rc']['axes']
  ((8, 8), ('hidden_1', 'classes'))
  """

  def __init__(self, in_features: int, features: Sequence[int], out_features: int, *, param: str = "mf",
               bias: bool = True, activation: Callable[[jax.Array], jax.Array] = nnx.relu,
               base: int | Sequence[int] | None = None, kernel_init: str | Sequence[str] = "normal",
               bias_init: str | Sequence[str] = "zeros", in_axis: str = "input", out_axis: str = "classes",
               axis_prefix: str = "hidden_", dtype: Any = None, rngs: nnx.Rngs):
    n = len(features)
    base = tuple(features) if base is None else _per_layer(base, n, "rcjax.nnx.MLP: base")
    names = [in_axis] + [f"{axis_prefix}{l}" for l in range(n)] + [out_axis]
    bases = [None] + list(base) + [None]
    widths = [in_features] + list(features) + [out_features]
    kinits = _per_layer(kernel_init, n + 1, "rcjax.nnx.MLP: kernel_init")
    binits = _per_layer(bias_init, n + 1, "rcjax.nnx.MLP: bias_init")
    self.layers = nnx.List([
        Dense(widths[l], widths[l + 1], axes=(names[l], names[l + 1]), base=(bases[l], bases[l + 1]),
              param=param, use_bias=bias, kernel_init=kinits[l], bias_init=binits[l], dtype=dtype, rngs=rngs)
        for l in range(n + 1)])
    self.activation = activation

  features = property(lambda self: tuple(layer.out_features for layer in self.layers[:-1]))
  out_features = property(lambda self: self.layers[-1].out_features)

  def __call__(self, x: jax.Array, *, return_hidden: bool = False):
    hidden = []
    for l, layer in enumerate(self.layers):
      x = layer(x)
      if l < len(self.layers) - 1:
        x = self.activation(x)
        hidden.append(x)
    return (x, hidden) if return_hidden else x
