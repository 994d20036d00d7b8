"""The HuggingFace layouts rcjax reads and writes, in one place below the readers and writers: the
supported families and how a config names them, the safetensors file format (header, shard files, dtypes),
the per-family tensor rules that `rcjax.hf` reads blocks through (`_RULES`), and the entries (`Entry`,
`Part`, views) that `rcjax.hf.model` and `rcjax.hf.bert` list every tensor with. numpy only.

>>> family({"model_type": "qwen2"}), family({"architectures": ["GPT2LMHeadModel"]})
('llama', 'gpt2')
"""

from __future__ import annotations

import glob
import json
import os
import re
import struct
from typing import Callable, NamedTuple

import ml_dtypes
import numpy as np

MODEL_TYPES = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "gpt2": "gpt2", "gpt_neox": "gpt_neox",
               "bert": "bert"}
_ARCH_PREFIX = {"Llama": "llama", "Mistral": "llama", "Qwen2": "llama", "GPT2": "gpt2", "GPTNeoX": "gpt_neox",
                "Bert": "bert"}
_BLOCK_RE = {"llama": r"^(?:model\.)?layers\.(\d+)\.(.+)$", "gpt2": r"^(?:transformer\.)?h\.(\d+)\.(.+)$",
             "gpt_neox": r"^(?:gpt_neox\.)?layers\.(\d+)\.(.+)$",
             "bert": r"^(?:bert\.)?encoder\.layer\.(\d+)\.(.+)$"}
# Buffers (not weights), matched in block suffixes and in full tensor names alike.
_IGNORED = re.compile(r"(?:^|\.)(?:rotary_emb\.inv_freq|(?:attn|attention)\.(?:bias|masked_bias))$")
_DTYPES = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32, "F64": np.float64,
           "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2, "I8": np.int8,
           "U8": np.uint8, "I16": np.int16, "I32": np.int32, "I64": np.int64, "BOOL": np.bool_}

_TORCH_DTYPE = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def supported() -> str:
  return ", ".join(sorted(MODEL_TYPES))


def is_hf_checkpoint(path: str | os.PathLike) -> bool:
  """A directory with a config.json holding `model_type` or `architectures`, and safetensors files."""
  cfg = os.path.join(path, "config.json")
  if not os.path.isfile(cfg):
    return False
  try:
    with open(cfg) as f:
      c = json.load(f)
  except (OSError, ValueError):
    return False
  return isinstance(c, dict) and ("model_type" in c or "architectures" in c)


def family(config: dict) -> str:
  """'llama' | 'gpt2' | 'gpt_neox' | 'bert' from a config.json dict; ValueError listing the supported ones."""
  mt = config.get("model_type")
  if mt in MODEL_TYPES:
    return MODEL_TYPES[mt]
  for arch in config.get("architectures") or []:
    for prefix, fam in _ARCH_PREFIX.items():
      if re.match(prefix + r"(For|Model|LMHead)", arch):
        return fam
  raise ValueError(f"unsupported architecture (model_type {mt!r}, architectures {config.get('architectures')}); "
                   f"supported model types: {supported()}")


def read_header(path: str) -> dict[str, dict]:
  """The safetensors header of `path` (`{name: {dtype, shape, data_offsets}}`), checked against the file size."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) < 8:
      raise ValueError(f"truncated safetensors file {path}: {size} bytes, no header")
    n = struct.unpack("<Q", raw)[0]
    if n > size - 8:
      raise ValueError(f"truncated safetensors file {path}: header of {n} bytes, file has {size} bytes")
    try:
      header = json.loads(f.read(n))
    except ValueError:
      raise ValueError(f"corrupt safetensors file {path}: header is not JSON") from None
  header.pop("__metadata__", None)
  for name, t in header.items():
    ok = isinstance(t, dict) and {"dtype", "shape", "data_offsets"} <= set(t) and len(t["data_offsets"]) == 2
    if not ok:
      raise ValueError(f"corrupt safetensors file {path}: bad header entry for {name!r}")
  end = max((t["data_offsets"][1] for t in header.values()), default=0)
  if size < 8 + n + end:
    raise ValueError(f"truncated safetensors file {path}: tensors need {8 + n + end} bytes, file has {size}")
  return header


def shard_files(path: str) -> tuple[list[str], dict[str, str] | None]:
  """The safetensors files of a checkpoint directory as transformers picks them, and the index's weight
  map (None without an index): `model.safetensors` if present, else the shards listed in
  `model.safetensors.index.json` (each checked to exist), else every `*.safetensors` (shards without an
  index). Other files beside them, such as Mistral's `consolidated.safetensors`, are not read."""
  single = os.path.join(path, "model.safetensors")
  if os.path.isfile(single):
    return [single], None
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.isfile(index):
    with open(index) as f:
      weight_map = json.load(f).get("weight_map", {})
    weight_map = {k: os.path.join(path, v) for k, v in weight_map.items()}
    files = sorted(set(weight_map.values()))
    for fname in files:
      if not os.path.isfile(fname):
        raise FileNotFoundError(f"missing shard {os.path.basename(fname)} (listed in {index})")
    return files, weight_map
  found = sorted(glob.glob(os.path.join(path, "*.safetensors")))
  if not found:
    raise FileNotFoundError(f"no *.safetensors files in {path} (PyTorch .bin checkpoints are not "
                            "supported: convert them with safetensors first)")
  return found, None



# --- per-family tensor rules: suffix -> fn(x, dims) -> [(path, view, axes, fan_in)] ---------------

Rule = Callable[[np.ndarray, dict], list]
_E, _M = ("embed",), ("mlp",)


def _heads_out(name, kind, torch):  # q/k/v: (embed, heads, head_dim), fan-in embed
  def f(x, d):
    w = x.T if torch else x
    return [(name, w.reshape(d["embed"], d[kind], d["head_dim"]), ("embed", kind, "head_dim"), (0,))]
  return f


def _heads_in(name, torch):  # output projection: (heads, head_dim, embed), fan-in (heads, head_dim)
  def f(x, d):
    w = x.T if torch else x
    return [(name, w.reshape(d["heads"], d["head_dim"], d["embed"]), ("heads", "head_dim", "embed"), (0, 1))]
  return f


def _head_vec(name, kind):
  return lambda x, d: [(name, x.reshape(d[kind], d["head_dim"]), (kind, "head_dim"), ())]


def _mat(name, axes, torch):
  return lambda x, d: [(name, x.T if torch else x, axes, (0,))]


def _vec(name, axes):
  return lambda x, d: [(name, x.reshape(-1), axes, ())]


def _gpt2_c_attn(x, d):  # Conv1D (embed, 3 * embed) = [q | k | v] along columns
  e, h, hd = d["embed"], d["heads"], d["head_dim"]
  if x.ndim == 1:
    return [(f"attn.c_attn.{s}.bias", x[k * e:(k + 1) * e].reshape(h, hd), ("heads", "head_dim"), ())
            for k, s in enumerate("qkv")]
  return [(f"attn.c_attn.{s}.weight", x[:, k * e:(k + 1) * e].reshape(e, h, hd), ("embed", "heads", "head_dim"),
           (0,)) for k, s in enumerate("qkv")]


def _neox_qkv(x, d):  # Linear (3 * embed, embed); rows ordered (head, [q|k|v], head_dim)
  e, h, hd = d["embed"], d["heads"], d["head_dim"]
  if x.ndim == 1:
    b = x.reshape(h, 3, hd)
    return [(f"attention.query_key_value.{s}.bias", b[:, k], ("heads", "head_dim"), ()) for k, s in enumerate("qkv")]
  w = x.T.reshape(e, h, 3, hd)
  return [(f"attention.query_key_value.{s}.weight", w[:, :, k], ("embed", "heads", "head_dim"), (0,))
          for k, s in enumerate("qkv")]


def _table(entries: dict[str, Rule]) -> Callable[[str], Rule | None]:
  def lookup(suffix: str) -> Rule | None:
    if _IGNORED.search(suffix):
      return None
    return entries.get(suffix)
  return lookup


def _llama() -> dict[str, Rule]:
  t: dict[str, Rule] = {}
  for s, kind in (("q", "heads"), ("k", "kv_heads"), ("v", "kv_heads")):
    t[f"self_attn.{s}_proj.weight"] = _heads_out(f"self_attn.{s}_proj.weight", kind, True)
    t[f"self_attn.{s}_proj.bias"] = _head_vec(f"self_attn.{s}_proj.bias", kind)  # Qwen2, Llama attention_bias
  t["self_attn.o_proj.weight"] = _heads_in("self_attn.o_proj.weight", True)
  t["self_attn.o_proj.bias"] = _vec("self_attn.o_proj.bias", _E)  # Llama attention_bias
  for s in ("gate", "up"):
    t[f"mlp.{s}_proj.weight"] = _mat(f"mlp.{s}_proj.weight", ("embed", "mlp"), True)
    t[f"mlp.{s}_proj.bias"] = _vec(f"mlp.{s}_proj.bias", _M)  # Llama mlp_bias
  t["mlp.down_proj.weight"] = _mat("mlp.down_proj.weight", ("mlp", "embed"), True)
  t["mlp.down_proj.bias"] = _vec("mlp.down_proj.bias", _E)
  for s in ("input_layernorm", "post_attention_layernorm"):
    t[f"{s}.weight"] = _vec(f"{s}.weight", _E)
  return t


def _gpt2() -> dict[str, Rule]:
  t: dict[str, Rule] = {"attn.c_attn.weight": _gpt2_c_attn, "attn.c_attn.bias": _gpt2_c_attn,
                        "attn.c_proj.weight": _heads_in("attn.c_proj.weight", False),
                        "attn.c_proj.bias": _vec("attn.c_proj.bias", _E),
                        "mlp.c_fc.weight": _mat("mlp.c_fc.weight", ("embed", "mlp"), False),
                        "mlp.c_fc.bias": _vec("mlp.c_fc.bias", _M),
                        "mlp.c_proj.weight": _mat("mlp.c_proj.weight", ("mlp", "embed"), False),
                        "mlp.c_proj.bias": _vec("mlp.c_proj.bias", _E)}
  for s in ("ln_1", "ln_2"):
    t[f"{s}.weight"], t[f"{s}.bias"] = _vec(f"{s}.weight", _E), _vec(f"{s}.bias", _E)
  return t


def _neox() -> dict[str, Rule]:
  t: dict[str, Rule] = {"attention.query_key_value.weight": _neox_qkv, "attention.query_key_value.bias": _neox_qkv,
                        "attention.dense.weight": _heads_in("attention.dense.weight", True),
                        "attention.dense.bias": _vec("attention.dense.bias", _E),
                        "mlp.dense_h_to_4h.weight": _mat("mlp.dense_h_to_4h.weight", ("embed", "mlp"), True),
                        "mlp.dense_h_to_4h.bias": _vec("mlp.dense_h_to_4h.bias", _M),
                        "mlp.dense_4h_to_h.weight": _mat("mlp.dense_4h_to_h.weight", ("mlp", "embed"), True),
                        "mlp.dense_4h_to_h.bias": _vec("mlp.dense_4h_to_h.bias", _E)}
  for s in ("input_layernorm", "post_attention_layernorm"):
    t[f"{s}.weight"], t[f"{s}.bias"] = _vec(f"{s}.weight", _E), _vec(f"{s}.bias", _E)
  return t


def _bert() -> dict[str, Rule]:
  t: dict[str, Rule] = {}
  for s in ("query", "key", "value"):
    t[f"attention.self.{s}.weight"] = _heads_out(f"attention.self.{s}.weight", "heads", True)
    t[f"attention.self.{s}.bias"] = _head_vec(f"attention.self.{s}.bias", "heads")
  t["attention.output.dense.weight"] = _heads_in("attention.output.dense.weight", True)
  t["attention.output.dense.bias"] = _vec("attention.output.dense.bias", _E)
  t["intermediate.dense.weight"] = _mat("intermediate.dense.weight", ("embed", "mlp"), True)
  t["intermediate.dense.bias"] = _vec("intermediate.dense.bias", _M)
  t["output.dense.weight"] = _mat("output.dense.weight", ("mlp", "embed"), True)
  t["output.dense.bias"] = _vec("output.dense.bias", _E)
  for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
    for new, old in (("weight", "gamma"), ("bias", "beta")):
      t[f"{ln}.{new}"] = t[f"{ln}.{old}"] = _vec(f"{ln}.{new}", _E)
  return t


_RULES = {"llama": _table(_llama()), "gpt2": _table(_gpt2()), "gpt_neox": _table(_neox()), "bert": _table(_bert())}


# --- entries: every HF tensor as parts of rcjax leaves (rcjax.hf.model, rcjax.hf.bert) ---------------
View = Callable[[np.ndarray], np.ndarray]


class Part(NamedTuple):
  leaf: tuple[str, ...]    # path of the rcjax leaf, e.g. ('blocks', 'q')
  layer: int | None        # index into the leading 'layers' axis of a scanned leaf (None: not scanned)
  view: View               # HF array -> view of it in the leaf's layout (without the layers axis)


class Entry(NamedTuple):
  name: str                # HF tensor name
  shape: tuple[int, ...]   # HF shape
  parts: tuple[Part, ...]


_same: View = lambda a: a
_t: View = lambda a: a.T


class _Files:
  """The tensors of a safetensors checkpoint directory as memory maps (read-only, or 'r+'), opened lazily."""

  def __init__(self, path: str, mode: str = "r"):
    self.path, self.mode = path, mode
    self.where: dict[str, tuple[str, dict, int]] = {}
    for full in shard_files(path)[0]:
      header = read_header(full)  # checks the file is long enough for every tensor
      with open(full, "rb") as f:
        start = 8 + struct.unpack("<Q", f.read(8))[0]
      for name, entry in header.items():
        self.where[name] = (full, entry, start)
    self._maps: dict[str, np.memmap] = {}

  def names(self) -> set[str]:
    return set(self.where)

  def array(self, name: str) -> np.ndarray:
    fname, entry, start = self.where[name]
    if entry["dtype"] not in _DTYPES:
      raise ValueError(f"tensor {name} in {fname} has unsupported dtype {entry['dtype']}")
    if fname not in self._maps:
      self._maps[fname] = np.memmap(fname, dtype=np.uint8, mode=self.mode)
    b, e = entry["data_offsets"]
    return self._maps[fname][start + b:start + e].view(_DTYPES[entry["dtype"]]).reshape(entry["shape"])
