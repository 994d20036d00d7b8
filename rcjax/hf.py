"""Read HuggingFace safetensors checkpoints as RC leaves, one transformer block at a time; `load`/`save`
convert causal LMs to and from `rcjax.nn.GPT` and BERT encoders to and from `rcjax.nn.Bert` (implemented
in `rcjax.hf_model`; BERT's blocks through this module's BERT table, `rcjax.hf_bert`).

Supported families (read from config.json `model_type`, else `architectures`): Llama (`llama`, `mistral`,
`qwen2`), GPT-2 (`gpt2`), GPT-NeoX/Pythia (`gpt_neox`), BERT (`bert`). Single-file (`model.safetensors`)
and sharded (`model.safetensors.index.json`) checkpoints, the files picked as transformers does (`shard_files`);
every shard is checked for presence and size when the checkpoint is opened, so a missing shard or a
truncated file fails at once with a one-line error.

Layouts. Every weight becomes an RC leaf in the (in, out) layout that `rcjax.diagnostics` reads (rows =
fan-in): PyTorch `nn.Linear` weights (Llama, GPT-NeoX, BERT) are stored (out, in) and are transposed;
GPT-2's `Conv1D` weights are stored (in, out) and are kept. Attention projections are split into heads:
q/k/v `(embed, heads, head_dim)` (Llama k/v: `kv_heads`), the output projection `(heads, head_dim, embed)`;
fused projections (GPT-2 `c_attn` = [q | k | v] along columns, GPT-NeoX `query_key_value` = per head
[q | k | v] along rows) are split. MLP weights are `(embed, mlp)` (up/gate/fc, fan-in embed) and
`(mlp, embed)` (down). Norm scales and biases are vectors. All are views of the tensor read from disk
(transposes and splits copy nothing).

Memory. `block_leaves` reads one tensor at a time, with the shard files of one block open, so the memory
an analysis needs is about one block's mapped pages plus a copy of its largest tensor, not the model:
measured with Llama-3.1-8B block shapes (bf16), 0.56 GiB above the 0.17 GiB of the imports, the same for 1
or 2 blocks (`benchmarks/hf_memory.py`).

bfloat16. `safe_open(..., framework='numpy')` returns bf16 as `ml_dtypes.bfloat16` in recent safetensors;
if it cannot (older versions), the tensor is read from its raw bytes with the ml_dtypes dtype.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import struct
from typing import Any, Callable, Iterator

import ml_dtypes
import numpy as np

from rcjax.rc import RC

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


class Checkpoint:
  """A HuggingFace safetensors checkpoint directory, read block by block.

  Attributes:
    path, config (config.json), family ('llama' | 'gpt2' | 'gpt_neox' | 'bert'), model_type,
    num_blocks, dims (`{'embed', 'heads', 'kv_heads', 'head_dim', 'mlp'}`), skipped (tensor suffixes of
    block 0 that are not mapped, e.g. buffers).

  >>> import tempfile
  >>> from rcjax.hf_synthetic import write_synthetic
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
      if entry["dtype"] not in _DTYPES:
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
  dtype = np.dtype(_DTYPES[entry["dtype"]])
  count = (end - start) // dtype.itemsize
  x = np.fromfile(fname, dtype=dtype, count=count, offset=8 + header_len + start)
  return x.reshape(entry["shape"])


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


# --- causal LMs in and out (rcjax.hf_model; imported lazily: it needs the GPT module) ------------------
def load(path: str | os.PathLike, **kwargs) -> tuple[Any, Any]:
  """An HF causal LM (Llama/Mistral/Qwen2, GPT-2, GPT-NeoX) as `(rcjax.nn.GPT, params)`, or a BERT
  (`BertModel`, `BertForMaskedLM`) as `(rcjax.nn.Bert, params)`; see
  `rcjax.hf_model.load` for the keyword arguments (dtype, compute_dtype, mesh)."""
  from rcjax import hf_model

  return hf_model.load(path, **kwargs)


def save(model: Any, params: Any, path: str | os.PathLike, **kwargs) -> dict:
  """Write `(model, params)` as an HF checkpoint directory `transformers` loads unchanged; see
  `rcjax.hf_model.save` for the keyword arguments (config, dtype, max_shard_size, overwrite, extra_files)."""
  from rcjax import hf_model

  return hf_model.save(model, params, path, **kwargs)
