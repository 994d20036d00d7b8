"""The safetensors files of a HuggingFace checkpoint directory: which files transformers reads
(`shard_files`), their headers (`read_header`, checked against the file sizes), the dtypes, and `Files`,
the tensors of a directory as memory maps (read by `rcjax.hf.model.load`, written by `rcjax.hf.write`).
numpy only; what the tensors mean is `rcjax.hf.layout`'s.

>>> import tempfile, numpy as np
>>> from safetensors.numpy import save_file
>>> d = tempfile.mkdtemp(); save_file({"w": np.ones((2, 3), np.float32)}, d + "/model.safetensors")
>>> read_header(d + "/model.safetensors")["w"]["shape"], Files(d).array("w").dtype
([2, 3], dtype('float32'))
"""

from __future__ import annotations

import glob
import json
import os
import struct

import ml_dtypes
import numpy as np

# safetensors' dtype names -> numpy; config.json's torch_dtype names -> numpy (the dtypes rcjax writes)
DTYPES = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32, "F64": np.float64,
          "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2, "I8": np.int8,
          "U8": np.uint8, "I16": np.int16, "I32": np.int32, "I64": np.int64, "BOOL": np.bool_}

TORCH_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


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


class Files:
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
    if entry["dtype"] not in DTYPES:
      raise ValueError(f"tensor {name} in {fname} has unsupported dtype {entry['dtype']}")
    if fname not in self._maps:
      self._maps[fname] = np.memmap(fname, dtype=np.uint8, mode=self.mode)
    b, e = entry["data_offsets"]
    return self._maps[fname][start + b:start + e].view(DTYPES[entry["dtype"]]).reshape(entry["shape"])
