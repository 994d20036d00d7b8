"""Per-neuron statistics of RC leaves (numpy reductions): what `rcjax.diagnostics` correlates and compares.

Per-neuron statistics. Fix a logical axis (a neuron index set, e.g. `'embed'` or `'hidden_2'`). Every leaf
that has this axis gives vectors over its neurons: biases and norm scales are such vectors already, and a
weight gives its mean (and RMS) over all its other dimensions. Rows and columns are those of the
**(in, out) layout** (Flax kernels, GPT-2 Conv1D, the paper's N x 4N MLP weight, DESIGN.md): rows are the
fan-in side, columns the fan-out side. As in the caption of the paper's Figure 4.4 (".C denotes the mean
value on rows, .R the mean value on columns"):

* `W.R` (row statistic, one value per row = per fan-in neuron) is the mean over the columns,
  `W.R[i] = mean_j W[i, j]`: the statistic a weight contributes to its **input** axis;
* `W.C` (column statistic, one value per column = per fan-out neuron) is the mean over the rows,
  `W.C[j] = mean_i W[i, j]`: the statistic a weight contributes to its **output** axis.

rcjax reads the side from the leaf's `fan_in` (neuron dims inside `fan_in` -> `.R`), so the layout on disk
never matters: a PyTorch/HF `nn.Linear` weight stored (out, in) is read as its transpose (`rcjax.hf` maps
it), a GPT-2 `Conv1D` weight is stored (in, out) already. For a block with axis `'embed'` this gives the
`.R` of up/gate/q/k/v (fan-in embed), the `.C` of o_proj/down (fan-out embed) and the norm scales; for
`'mlp'` the `.C` of up/gate and the `.R` of down.

Attention. A `head_dim` neuron is shared by q and k (the q.k contraction, within each head) and, separately,
by v and o (v's output is o's input); q and o, or k and v, share only the head index (permuting head_dim
of v and o jointly keeps the function and scrambles any q-o pairing). So the attention neurons form two
sets per block, `QK` ('heads,head_dim (q·k)': q and k statistics) and `VO` ('heads,head_dim (v·o)': v and
o), never paired with each other. Both live on the query-head grid ('heads', 'head_dim'): a statistic of
k or v over ('kv_heads', 'head_dim') is an array (kv_heads, head_dim) that `correlate` broadcasts to the
query heads of its group (query head h reads kv head h // (heads // kv_heads), as in `rcjax.nn.GPT`,
`jax.nn.dot_product_attention` and transformers' `repeat_kv`), and its null permutes the kv values.
The role of a leaf is read from its name (`ROLES`) and checked against its axes; a leaf carrying
'head_dim' that fits no role is left out of the attention sets with a warning.

>>> import jax, jax.numpy as jnp, rcjax
>>> p = rcjax.nn.MLP((16, 16), 3).init(jax.random.key(0), jnp.ones((1, 4)))['params']
>>> sorted(neuron_stats(p, 'hidden_0'))
['Dense_0/bias', 'Dense_0/kernel.C', 'Dense_0/kernel.C_rms', 'Dense_1/kernel.R', 'Dense_1/kernel.R_rms']
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any, Iterable, Sequence

import jax
import numpy as np

from rcjax.rc import RC, is_rc

KINDS = ("mean", "rms", "vector")
SUFFIXES = (".R_rms", ".C_rms", ".R", ".C")
QK, VO = "heads,head_dim (q·k)", "heads,head_dim (v·o)"  # the attention neuron sets (labels in results)
ATTENTION = {QK: ("q", "k"), VO: ("v", "o")}
# The attention role of a leaf carrying 'head_dim', by its module's name (the path's last component, a
# trailing weight/bias/kernel dropped): rcjax.nn.GPT (blocks/q, blocks/q_bias, ...) and rcjax.hf's names
# of Llama/Mistral/Qwen2 (self_attn.q_proj), GPT-2 (attn.c_attn.q, attn.c_proj), GPT-NeoX
# (attention.query_key_value.q, attention.dense) and BERT (attention.self.query, attention.output.dense).
ROLES = {"q": "q", "q_bias": "q", "q_proj": "q", "query": "q",
         "k": "k", "k_bias": "k", "k_proj": "k", "key": "k",
         "v": "v", "v_bias": "v", "v_proj": "v", "value": "v",
         "o": "o", "o_proj": "o", "c_proj": "o", "dense": "o"}
_BLOCK = re.compile(r"^(?:layers?|blocks?|h)[_.]?(\d+)$", re.IGNORECASE)
_CHUNK = 1 << 22  # elements converted to float32 at a time: bounds the memory of a reduction


def flat_leaves(params: Any) -> dict[str, RC]:
  """`{'Dense_0/kernel': box, ...}`: every RC leaf under a slash path (a leading 'params' dropped)."""
  out = {}
  for path, box in jax.tree_util.tree_flatten_with_path(params, is_leaf=is_rc)[0]:
    if is_rc(box):
      keys = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
      out["/".join(keys[1:] if keys[:1] == ["params"] and len(keys) > 1 else keys)] = box
  if not out:
    raise ValueError("no RC leaves: pass params made by rcjax.nn, restored by rcjax.checkpoint or read by rcjax.hf")
  return out


def axis_label(axis: str | Sequence[str]) -> str:
  """'embed' -> 'embed'; ('a', 'b') -> 'a,b'; `QK`/`VO` as they are (the key used in results)."""
  return axis if isinstance(axis, str) else ",".join(axis)


def leaf_of(name: str) -> str:
  """The leaf a statistic comes from: 'mlp/up.R' -> 'mlp/up'; a vector's name is its leaf path."""
  for s in SUFFIXES:
    if name.endswith(s):
      return name[: -len(s)]
  return name


def _reduce(x: Any, dims: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
  """Mean and RMS over every dim not in `dims`, one value per neuron (C order over `dims`), as float64.

  Works in chunks of at most `_CHUNK` elements converted to float32 (sums accumulated in float64 across
  chunks), read in the tensor's memory order, so a large bf16 tensor is never copied whole and a
  transposed view (a PyTorch (out, in) weight read as (in, out)) streams as fast as a contiguous one."""
  x = x if isinstance(x, np.ndarray) else np.asarray(x)
  k = len(dims)
  front = np.moveaxis(x, dims, tuple(range(k)))
  back = np.moveaxis(x, dims, tuple(range(x.ndim - k, x.ndim)))
  n = math.prod(front.shape[:k])
  rest = max(1, x.size // max(n, 1))
  if back.flags.c_contiguous and not front.flags.c_contiguous:  # neurons are the fast axis: chunk over rows
    y = back.reshape(rest, n)
    s1, s2 = np.zeros(n), np.zeros(n)
    for i in range(0, rest, max(1, _CHUNK // n)):
      c = y[i:i + max(1, _CHUNK // n)].astype(np.float32)
      s1 += c.sum(axis=0, dtype=np.float64)
      s2 += np.square(c).sum(axis=0, dtype=np.float64)
    return s1 / rest, np.sqrt(s2 / rest)
  step = max(1, _CHUNK // max(1, math.prod(front.shape[1:])))  # chunk over neurons (the slow axis)
  means, sqs = [], []
  for i in range(0, front.shape[0], step):
    c = np.asarray(front[i:i + step], dtype=np.float32).reshape(-1, rest)
    means.append(c.sum(axis=1) / rest)
    sqs.append(np.einsum("ij,ij->i", c, c) / rest)
  return np.concatenate(means).astype(np.float64), np.sqrt(np.concatenate(sqs).astype(np.float64))


def _finite(path: str, x: Any, mean: np.ndarray, rms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """`(mean, rms)` if finite; else ValueError counting the leaf's non-finite values (a diverged run)."""
  if np.isfinite(mean).all() and np.isfinite(rms).all():
    return mean, rms
  x = x if isinstance(x, np.ndarray) else np.asarray(x)
  bad = sum(int(np.count_nonzero(~np.isfinite(np.asarray(c, np.float32)))) for c in np.array_split(x.ravel(), 64))
  if bad:
    raise ValueError(f"leaf {path} has {bad} non-finite (NaN/inf) of its {x.size} values")
  raise ValueError(f"leaf {path}: values too large for its statistics (the mean square overflows float32)")


def leaf_stats(path: str, box: RC, axis: str | Sequence[str], kinds: Iterable[str] = KINDS) -> dict[str, np.ndarray]:
  """The per-neuron statistics one leaf gives for `axis` (empty if the leaf lacks the axis).

  Returns `{path: v}` for a vector leaf (bias, norm scale; kind 'vector'), else `{path + '.R': mean,
  path + '.R_rms': rms}` (kinds 'mean', 'rms') with `.R` if the axis is on the fan-in side, `.C` if not.
  A leaf holding NaN or inf is refused (ValueError with the count), rather than giving NaN statistics.
  """
  names = (axis,) if isinstance(axis, str) else tuple(axis)
  if any(n not in box.axes for n in names):
    return {}
  dims = tuple(box.axes.index(n) for n in names)
  kinds = set(kinds)
  if not box.fan_in:  # bias / norm scale: a vector over the axis (averaged over any other dims)
    if "vector" not in kinds:
      return {}
    return {path: _finite(path, box.value, *_reduce(box.value, dims))[0]}
  inside = [d in box.fan_in for d in dims]
  if not kinds & {"mean", "rms"} or (any(inside) and not all(inside)):
    return {}  # a compound axis split across fan-in and fan-out has no row/column statistic
  side = "R" if all(inside) else "C"
  mean, rms = _finite(path, box.value, *_reduce(box.value, dims))
  out = {}
  if "mean" in kinds:
    out[f"{path}.{side}"] = mean
  if "rms" in kinds:
    out[f"{path}.{side}_rms"] = rms
  return out


def neuron_stats(params: Any, axis: str | Sequence[str], *, kinds: Iterable[str] = KINDS) -> dict[str, np.ndarray]:
  """Every per-neuron statistic of every leaf having `axis`, as float64 vectors over its neurons.

  Args:
    params: a pytree of RC leaves (or a flat `{path: RC}` dict).
    axis: a logical axis name, a tuple of names forming one compound neuron axis, or an attention set
      `QK` / `VO` ('head_dim' elsewhere is refused: its neurons are shared only within these sets).
    kinds: which statistics: 'mean' (`.R`/`.C`), 'rms' (`.R_rms`/`.C_rms`), 'vector' (biases, scales).

  Returns:
    `{'Dense_1/kernel.R': v, 'Dense_0/bias': b, ...}`, every vector of the axis's size; for `QK`/`VO`
    arrays (heads, head_dim) for q and o, (kv_heads, head_dim) for k and v (see `correlate`).
  """
  kinds = tuple(kinds)
  if unknown := set(kinds) - set(KINDS):
    raise ValueError(f"unknown statistic kinds {sorted(unknown)}; expected a subset of {KINDS}")
  leaves = flat_leaves(params)
  if axis in ATTENTION:
    return _block_pass(leaves.items(), kinds, (axis,), plain=False).get(axis, {})
  if "head_dim" in ((axis,) if isinstance(axis, str) else tuple(axis)):
    raise ValueError(f"axis {axis!r}: head_dim neurons are shared within q·k and within v·o only; use "
                     "diagnostics.QK or diagnostics.VO (leaf_stats gives one leaf's statistics)")
  out = {}
  for path, box in leaves.items():
    out.update(leaf_stats(path, box, axis, kinds))
  return out


def attention_role(path: str, box: RC) -> str | None:
  """'q' | 'k' | 'v' | 'o' for a leaf carrying 'head_dim', from its name (`ROLES`) checked against its
  axes (q on 'heads', k/v on 'kv_heads' or 'heads', head_dim on the fan-out side; o on 'heads', head_dim
  on the fan-in side); None for a leaf that fits no role (left out of the attention sets)."""
  parts = re.split(r"[/.]", path)
  if len(parts) > 1 and parts[-1] in ("weight", "bias", "kernel"):
    parts = parts[:-1]
  role = ROLES.get(parts[-1])
  heads = [a for a in ("heads", "kv_heads") if a in box.axes]
  if role is None or len(heads) != 1 or "head_dim" not in box.axes:
    return None
  inside = [box.axes.index(a) in box.fan_in for a in (heads[0], "head_dim")]
  if role == "o":
    return role if heads == ["heads"] and all(inside) else None
  return role if not any(inside) and (role != "q" or heads == ["heads"]) else None


def _attention_leaf(path: str, box: RC, kinds: Iterable[str]) -> dict[str, np.ndarray]:
  """One attention leaf's statistics as arrays (its heads, head_dim)."""
  heads = "heads" if "heads" in box.axes else "kv_heads"
  shape = (box.shape[box.axes.index(heads)], box.shape[box.axes.index("head_dim")])
  return {n: v.reshape(shape) for n, v in leaf_stats(path, box, (heads, "head_dim"), kinds).items()}


_HEAD_AXES = ("heads", "kv_heads", "head_dim")


def _own_axes(path: str, box: RC) -> tuple[list[str], str | None, bool]:
  """A leaf's neuron axes: `(plain width axes, its attention set or None, left out of the attention sets)`.
  Plain axes are the width axes (base not None) except 'layers', and except the head axes of a leaf
  carrying 'head_dim' (those go to its attention set)."""
  width = [a for a, b in zip(box.axes, box.base) if b is not None and a != "layers"]
  if "head_dim" not in box.axes:
    return width, None, False
  role = attention_role(path, box)
  label = next((a for a, roles in ATTENTION.items() if role in roles), None)
  return [a for a in width if a not in _HEAD_AXES], label, label is None


def _block_pass(items: Iterable[tuple[str, RC]], kinds: Iterable[str], sets: Sequence[str] = tuple(ATTENTION),
                plain: bool = True, left_out: list | None = None) -> dict[str, dict[str, np.ndarray]]:
  """One pass over a block's leaves: `{label: statistics}` for each leaf's own plain axes (if `plain`) and
  the attention `sets`; leaves left out of the attention sets go to `left_out`, or to a warning."""
  out: dict[str, dict[str, np.ndarray]] = {}
  left: list[str] = []
  for path, box in items:
    axes, label, dropped = _own_axes(path, box)
    if dropped:
      left.append(path)
    if label in sets:
      out.setdefault(label, {}).update(_attention_leaf(path, box, kinds))
    for axis in axes if plain else ():
      out.setdefault(axis, {}).update(leaf_stats(path, box, axis, kinds))
  if left_out is not None:
    left_out += left
  elif left:
    warnings.warn(f"left out of the attention statistics (no q/k/v/o role from the name and axes): {left}",
                  stacklevel=3)
  return out


def neuron_axes(leaves: Any) -> list[str]:
  """The neuron axes worth analysing, in order of appearance: width axes (base not None) except 'layers'
  and the head axes, and the attention sets `QK` / `VO` that the leaves carrying 'head_dim' fill."""
  found: dict[str, None] = {}
  for path, box in flat_leaves(leaves).items():
    axes, label, _ = _own_axes(path, box)
    found.update({a: None for a in axes + ([label] if label else [])})
  return list(found)


def blocks(params: Any) -> list[tuple[int, dict[str, RC]]]:
  """Split leaves into transformer blocks: `[(i, {inner_path: box}), ...]`, sorted by block index.

  Block i holds index i of every leaf with a leading fixed 'layers' axis (scanned blocks; the axis is
  removed), and every leaf whose path has a component like 'layers_3', 'block3', 'h.3' (that component
  removed from the path). Leaves outside blocks (embeddings, final norm, readout) are left out. A model
  without blocks (an MLP) is one block, 0, holding every leaf.
  """
  leaves = flat_leaves(params)
  out: dict[int, dict[str, RC]] = {}
  for path, box in leaves.items():
    if box.axes and box.axes[0] == "layers":
      value = box.value if isinstance(box.value, np.ndarray) else np.asarray(box.value)
      for i in range(box.shape[0]):
        out.setdefault(i, {})[path] = RC(value[i], axes=box.axes[1:], base=box.base[1:], param=box.param,
                                         fan_in=tuple(d - 1 for d in box.fan_in if d > 0), init=box.init)
      continue
    parts = path.split("/")
    for k, part in enumerate(parts):
      if m := _BLOCK.match(part):
        out.setdefault(int(m.group(1)), {})["/".join(parts[:k] + parts[k + 1:])] = box
        break
  if not out:
    return [(0, leaves)]
  return sorted(out.items())


def block_stats(leaves: dict[str, RC] | Iterable[tuple[str, RC]], axes: Sequence | None = None,
                kinds: Iterable[str] = ("mean",), left_out: list | None = None) -> dict[str, dict[str, np.ndarray]]:
  """`{axis_label: neuron_stats(leaves, axis)}` for the given (default: `neuron_axes`) axes of one block.

  Without `axes`, one pass over the leaves, which may be an iterator of `(path, RC)` pairs (streamed:
  each leaf is reduced and dropped), and axes without statistics are omitted. Leaves carrying 'head_dim'
  without an attention role (`attention_role`) are left out of the attention sets: their paths are
  appended to `left_out` if given, else reported in a warning."""
  kinds = tuple(kinds)
  if axes is not None:
    return {axis_label(a): neuron_stats(leaves, a, kinds=kinds) for a in axes}
  items = flat_leaves(leaves).items() if isinstance(leaves, dict) else leaves
  return {a: st for a, st in _block_pass(items, kinds, left_out=left_out).items() if st}
