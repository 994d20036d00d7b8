"""Flax building blocks whose params are RC leaves and whose multipliers come from the actual shape.

At apply time a layer reads its param's shape (and metadata) from the stored value, not from its
attributes, so the same module applies to a grown or pruned pytree: `model.apply({'params': grow(p, key)})`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from rcjax import parametrization as pz
from rcjax.rc import RC, is_rc


def rc_param(module: nn.Module, name: str, shape: Sequence[int], *, axes: Sequence[str],
             fan_in: Sequence[int], base: Sequence[int | None], param: str, init: str,
             dtype: Any = jnp.float32, blocks: Sequence[tuple[str, str | int]] = ()) -> RC:
  """Declare (at init) or fetch (at apply) a param stored as an RC box, and return the box.

  At init the value is `init_scale * Z` with Z drawn from `init` (see `rcjax.parametrization.sample`).
  At apply the stored shape wins over `shape`, and stored RC metadata wins over the arguments.
  """
  if len(shape) != len(axes):
    raise ValueError(f"rc_param {name!r} of {module.__class__.__name__}: shape {tuple(shape)} has {len(shape)} "
                     f"dimensions but axes {tuple(axes)} name {len(axes)} (one logical name per dimension)")
  template = RC(jax.ShapeDtypeStruct(tuple(shape), dtype), axes=tuple(axes), fan_in=tuple(fan_in),
                base=tuple(base), param=param, init=init, blocks=tuple(blocks))
  if module.has_variable("params", name):
    stored = module.get_variable("params", name)
    if is_rc(stored):
      template = stored.replace(value=jax.ShapeDtypeStruct(stored.shape, stored.value.dtype))
    else:
      template = template.replace(value=jax.ShapeDtypeStruct(jnp.shape(stored), jnp.result_type(stored)))

  def init_fn(key):
    shape_ = template.shape
    return template.replace(value=pz.sample(template.init, key, shape_, pz.init_scale(template),
                                            template.value.dtype))

  # nn.Module.param, not module.param: rcjax layers name their parametrization attribute `param`.
  value = nn.Module.param(module, name, init_fn)  # flax unboxes the RC box
  return template.replace(value=value)


def _cast(x, dtype):
  return x if dtype is None else x.astype(dtype)


class Dense(nn.Module):
  """`y = multiplier * x @ W + b` with RC leaves `kernel` (axes (in, out), fan-in 0) and `bias` (out).

  Attributes:
    features: output width at init.
    axes: logical names of the (input, output) axes.
    base: base sizes of the (input, output) axes; None marks a fixed axis (features, classes).
    param: 'sp' | 'ntk' | 'mup' | 'mf'.
    use_bias: add a bias (an RC 'vector' leaf on the output axis).
    kernel_init / bias_init: init distribution specs ('normal', 'uniform', 'normal:1,3', 'zeros', ...).
    dtype: computation dtype (None: that of the inputs and params); param_dtype: storage dtype.
  """
  features: int
  axes: tuple[str, str] = ("input", "hidden")
  base: tuple[int | None, int | None] = (None, None)
  param: str = "sp"
  use_bias: bool = True
  kernel_init: str = "normal"
  bias_init: str = "zeros"
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = rc_param(self, "kernel", (x.shape[-1], self.features), axes=self.axes, fan_in=(0,),
                      base=self.base, param=self.param, init=self.kernel_init, dtype=self.param_dtype)
    y = jnp.dot(_cast(x, self.dtype), _cast(kernel.value, self.dtype)) * pz.multiplier(kernel)
    if self.use_bias:
      bias = rc_param(self, "bias", (kernel.shape[1],), axes=(self.axes[1],), fan_in=(),
                      base=(self.base[1],), param=self.param, init=self.bias_init, dtype=self.param_dtype)
      y = y + _cast(bias.value, self.dtype if self.dtype is not None else y.dtype)
    return y


class Conv(nn.Module):
  """2-D convolution, NHWC, kernel (h, w, in, out) with fan-in (0, 1, 2); multiplier from the actual shape.

  Attributes are as in `Dense`, plus `kernel_size`, `strides` and `padding` (as `jax.lax.conv_general_dilated`).
  """
  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: tuple[int, int] = (1, 1)
  padding: str = "SAME"
  axes: tuple[str, str] = ("channels", "hidden")
  base: tuple[int | None, int | None] = (None, None)
  param: str = "sp"
  use_bias: bool = True
  kernel_init: str = "normal"
  bias_init: str = "zeros"
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw = self.kernel_size
    kernel = rc_param(self, "kernel", (kh, kw, x.shape[-1], self.features),
                      axes=("kernel_h", "kernel_w") + tuple(self.axes), fan_in=(0, 1, 2),
                      base=(None, None) + tuple(self.base), param=self.param, init=self.kernel_init,
                      dtype=self.param_dtype)
    y = jax.lax.conv_general_dilated(
        _cast(x, self.dtype), _cast(kernel.value, self.dtype), window_strides=self.strides,
        padding=self.padding, dimension_numbers=("NHWC", "HWIO", "NHWC")) * pz.multiplier(kernel)
    if self.use_bias:
      bias = rc_param(self, "bias", (kernel.shape[3],), axes=(self.axes[1],), fan_in=(),
                      base=(self.base[1],), param=self.param, init=self.bias_init, dtype=self.param_dtype)
      y = y + _cast(bias.value, self.dtype if self.dtype is not None else y.dtype)
    return y


def _per_layer(value, n: int, name: str) -> tuple:
  if isinstance(value, (list, tuple)):
    if len(value) != n:
      raise ValueError(f"{name} has {len(value)} entries for {n} layers")
    return tuple(value)
  return (value,) * n


class MLP(nn.Module):
  """Fully connected network `input -> h1 -> ... -> hL -> out_features`, every hidden layer a width axis.

  The paper's Example 1.1 (3-layer NN with biases) is `MLP(features=(N, N), out_features=10)`; its
  Example 1.2 (2-layer mean-field NN, f(x) = (1/N) sum_i a_i phi(<w_i, x> / sqrt(d))) is
  `MLP(features=(N,), out_features=1, param='mf', bias=False)`.

  Attributes:
    features: hidden widths (h1, ..., hL); hidden layer l has axis name f'{axis_prefix}{l}'.
    out_features: output size (a fixed axis named `out_axis`).
    param: parametrization for every layer.
    bias: biases on every layer.
    activation: nonlinearity between layers.
    base: base width(s) of the hidden axes (None: the widths at init, so muP equals SP there).
    kernel_init / bias_init: init specs for all kernels / biases (a sequence gives one per layer).
  """
  features: Sequence[int]
  out_features: int
  param: str = "mf"
  bias: bool = True
  activation: Callable[[jax.Array], jax.Array] = nn.relu
  base: int | Sequence[int] | None = None
  kernel_init: str | Sequence[str] = "normal"
  bias_init: str | Sequence[str] = "zeros"
  in_axis: str = "input"
  out_axis: str = "classes"
  axis_prefix: str = "hidden_"
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, *, return_hidden: bool = False):
    n = len(self.features)
    base = tuple(self.features) if self.base is None else _per_layer(self.base, n, "base")
    names = [self.in_axis] + [f"{self.axis_prefix}{l}" for l in range(n)] + [self.out_axis]
    bases = [None] + list(base) + [None]
    widths = list(self.features) + [self.out_features]
    kinits = _per_layer(self.kernel_init, n + 1, "kernel_init")
    binits = _per_layer(self.bias_init, n + 1, "bias_init")
    hidden = []
    for l in range(n + 1):
      x = Dense(widths[l], axes=(names[l], names[l + 1]), base=(bases[l], bases[l + 1]), param=self.param,
                use_bias=self.bias, kernel_init=kinits[l], bias_init=binits[l], dtype=self.dtype,
                name=f"Dense_{l}")(x)
      if l < n:
        x = self.activation(x)
        hidden.append(x)
    return (x, hidden) if return_hidden else x
