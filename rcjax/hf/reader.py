"""`Checkpoint`: a HuggingFace safetensors checkpoint read as RC leaves, one transformer block at a time (what
`python -m rcjax.analyze` and `rcjax.diagnostics` read HF checkpoints with; `rcjax.hf.load` converts whole models).

Layouts. Every weight becomes an RC leaf in the (in, out) layout that `rcjax.diagnostics` reads (rows =
fan-in), by the family's table in `rcjax.hf.layout`: PyTorch `nn.Linear` weights (Llama, GPT-NeoX, BERT)
are stored (out, in) and are transposed; GPT-2's `Conv1D` weights are stored (in, out) and are kept.
Attention projections are split into heads: q/k/v `(embed, heads, head_dim)` (Llama k/v: `kv_heads`), the
output projection `(heads, head_dim, embed)`; fused projections (GPT-2 `c_attn`, GPT-NeoX
`query_key_value`) are split into q, k, v (`attn.c_attn.q.weight`, ...). MLP weights are `(embed, mlp)`
(up/gate/fc, fan-in embed) and `(mlp, embed)` (down). Norm scales and biases are vectors. All are views
of the tensor read from disk (transposes and splits copy nothing).

Memory. `block_leaves` reads one tensor at a time, with the shard files of one block open, so the memory
an analysis needs is about one block's mapped pages plus a copy of its largest tensor, not the model:
measured with Llama-3.1-8B block shapes (bf16), 0.56 GiB above the 0.17 GiB of the imports, the same for 1
or 2 blocks (`benchmarks/hf_memory.py`).

bfloat16. `safe_open(..., framework='numpy')` returns bf16 as `ml_dtypes.bfloat16` in recent safetensors;
if it cannot (older versions), the tensor is read from its raw bytes with the ml_dtypes dtype.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import struct
from typing import Any, Iterator

import numpy as np

from rcjax.hf.files import DTYPES, read_header, shard_files
from rcjax.hf.layout import _BLOCK_RE, _RULES, family
from rcjax.rc import RC


class Checkpoint:
  """A HuggingFace safetensors checkpoint directory, read block by block.

  Attributes:
    path, config (config.json), family ('llama' | 'gpt2' | 'gpt_neox' | 'bert'), model_type,
    num_blocks, dims (`{'embed', 'heads', 'kv_heads', 'head_dim', 'mlp'}`), skipped (tensor suffixes of
    block 0 that are not mapped, e.g. buffers).

  >>> import tempfile
  >>> from rcjax.hf.synthetic import write_synthetic
  >>> d = tempfile.mkdtemp(); _ = write_synthetic(d, 'llama', num_blocks=2, embed=8, heads=2, kv_heads=1)
  >>> ck = Checkpoint(d); ck.family, ck.num_blocks
  ('llama', 2)
  >>> ck.load_block(1)['self_attn.k_proj.weight'].axes   # stored (out, in) = (kv_heads * head_dim, embed)
  ('embed', 'kv_heads', 'head_dim')
  """

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    cfg_path = os.path.join(self.path, "config.json")
    if not os.path.isfile(cfg_path):
      raise FileNotFoundError(f"{self.path} has no config.json: not a HuggingFace checkpoint")
    with open(cfg_path) as f:
      self.config = json.load(f)
    self.family = family(self.config)
    self.model_type = self.config.get("model_type", self.family)
    files, weight_map = shard_files(self.path)
    self._tensors: dict[str, tuple[str, dict]] = {}
    for fname in files:
      for name, entry in read_header(fname).items():
        self._tensors[name] = (fname, entry)
    for name, fname in (weight_map or {}).items():
      if name not in self._tensors or self._tensors[name][0] != fname:
        raise ValueError(f"tensor {name} listed in model.safetensors.index.json is missing from {fname}")
    self.dims = self._dims()
    self._blocks: dict[int, dict[str, str]] = {}
    for name in self._tensors:
      if m := re.match(_BLOCK_RE[self.family], name):
        self._blocks.setdefault(int(m.group(1)), {})[m.group(2)] = name
    n = self.config.get("num_hidden_layers", self.config.get("n_layer"))
    self.num_blocks = int(n) if n is not None else len(self._blocks)
    if missing := sorted(set(range(self.num_blocks)) - set(self._blocks)):
      raise ValueError(f"checkpoint {self.path} has no tensors for block(s) {missing[:8]} of {self.num_blocks} "
                       "(config.json num_hidden_layers); a shard may be missing")
    self.skipped = sorted(s for s in self._blocks.get(0, {}) if _RULES[self.family](s) is None)

  def _dims(self) -> dict[str, int]:
    c = self.config
    embed = c.get("hidden_size", c.get("n_embd"))
    heads = c.get("num_attention_heads", c.get("n_head"))
    if embed is None or heads is None:
      raise ValueError(f"{self.path}/config.json lacks hidden_size/num_attention_heads")
    mlp = c.get("intermediate_size", c.get("n_inner")) or 4 * embed
    head_dim = c.get("head_dim") or embed // heads
    return {"embed": int(embed), "heads": int(heads), "kv_heads": int(c.get("num_key_value_heads") or heads),
            "head_dim": int(head_dim), "mlp": int(mlp)}

  # --- mapping --------------------------------------------------------------------------------
  def _map(self, suffix: str, x: np.ndarray) -> list[tuple[str, Any, tuple[str, ...], tuple[int, ...]]]:
    """`[(inner path, value view, axes, fan_in)]` for a block tensor."""
    try:
      return _RULES[self.family](suffix)(x, self.dims)
    except ValueError:
      raise ValueError(f"{self.path}: tensor {suffix} has shape {x.shape}, which does not fit config.json "
                       f"({self.dims})") from None

  def block_names(self, i: int) -> dict[str, str]:
    """`{suffix within the block: full tensor name}` of block i."""
    return dict(self._blocks.get(i, {}))

  def read(self, name: str, handles: dict | None = None) -> np.ndarray:
    """One tensor as a numpy array in its stored dtype (bf16 as ml_dtypes.bfloat16)."""
    fname, entry = self._tensors[name]
    try:
      if handles is not None:
        if fname not in handles:
          handles[fname] = _safe_open(fname)
        return handles[fname].get_tensor(name)
      with _safe_open(fname) as f:
        return f.get_tensor(name)
    except Exception as e:  # noqa: BLE001 - older safetensors cannot give bf16 to numpy: read raw bytes
      if entry["dtype"] not in DTYPES:
        raise ValueError(f"cannot read tensor {name} ({entry['dtype']}) from {fname}: {e}") from None
      return _read_raw(fname, entry)

  def block_leaves(self, i: int) -> Iterator[tuple[str, RC]]:
    """Stream the RC leaves of block i, one stored tensor at a time (a fused tensor yields several)."""
    if i not in range(self.num_blocks):
      raise IndexError(f"block {i} out of range: {self.path} has {self.num_blocks} blocks")
    with contextlib.ExitStack() as stack:
      handles: dict = {}
      stack.callback(lambda: [h.__exit__(None, None, None) for h in handles.values()])
      for suffix, name in sorted(self._blocks[i].items()):
        if _RULES[self.family](suffix) is None:
          continue
        x = self.read(name, handles)
        for path, v, axes, fan_in in self._map(suffix, x):
          yield path, RC(v, axes=axes, fan_in=fan_in, base=tuple(v.shape), param="sp")
        del x

  def load_block(self, i: int) -> dict[str, RC]:
    """Block i as `{inner path: RC}` (materialised; `block_leaves` streams)."""
    return dict(self.block_leaves(i))


def _safe_open(fname: str):
  from safetensors import safe_open

  return safe_open(fname, framework="numpy").__enter__()


def _read_raw(fname: str, entry: dict) -> np.ndarray:
  with open(fname, "rb") as f:
    header_len = struct.unpack("<Q", f.read(8))[0]
  start, end = entry["data_offsets"]
  dtype = np.dtype(DTYPES[entry["dtype"]])
  count = (end - start) // dtype.itemsize
  x = np.fromfile(fname, dtype=dtype, count=count, offset=8 + header_len + start)
  return x.reshape(entry["shape"])
