"""rcjax: zero-shot weight transfer between networks of different widths (row-column mean-field ansatz).

>>> import jax, jax.numpy as jnp, rcjax
>>> model = rcjax.nn.MLP(features=(8, 8), out_features=3, param='mf')
>>> params = model.init(jax.random.key(0), jnp.ones((1, 4)))['params']
>>> big = rcjax.grow(params, jax.random.key(1), factor=4)
>>> rcjax.sizes(big)['hidden_0']
32
"""

from rcjax import nn
from rcjax.annotate import annotate, effective
from rcjax.parametrization import (
    adamw,
    init_scale,
    leaf_class,
    lr_multiplier,
    multiplier,
    sample,
    scale_by_parametrization,
    sgd,
)
from rcjax.rc import RC, boxes, is_rc, sizes, unbox, width_axes
from rcjax.symmetry import copy_spread
from rcjax.transfer import apply_maps, grow, index_maps, inverse_maps, shrink, transfer
from rcjax.model_rules import transfer_model

# Submodules that `import rcjax` does not load (orbax, safetensors, matplotlib behind them), imported on
# first use as attributes: `rcjax.checkpoint.Checkpointer(...)`, `rcjax.hf.load(...)`, as the README shows.
_LAZY = ("analyze", "checkpoint", "diagnostics", "hf", "importance", "nnx", "plots")


def __getattr__(name: str):
  if name in _LAZY:
    import importlib

    return importlib.import_module(f"rcjax.{name}")
  raise AttributeError(f"module 'rcjax' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "RC", "adamw", "annotate", "apply_maps", "boxes", "copy_spread", "effective", "grow", "index_maps",
    "init_scale", "inverse_maps", "is_rc",
    "leaf_class", "lr_multiplier", "multiplier", "nn", "sample", "scale_by_parametrization", "sgd",
    "shrink", "sizes", "transfer", "transfer_model", "unbox", "width_axes",
]
