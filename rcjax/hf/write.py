"""Writing HF checkpoints: `save(model, params, path)` writes config.json and safetensors in the family's own
names and layouts, through writable memory maps of the output files and the views of `rcjax.hf.layout`'s
tables (the views `rcjax.hf.load` reads through). Sharded arrays are written shard by shard by the
processes that hold them; output goes to a temporary directory renamed into place when complete.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import struct
from typing import Any, Callable, Mapping

import jax
import numpy as np

from rcjax import parametrization as pz, sharding
from rcjax._progress import bar
from rcjax.hf.config import _arch, config_for, family_of
from rcjax.hf.files import DTYPES, Files
from rcjax.hf.layout import Entry, by_leaf, entries as layout_entries
from rcjax.nn.gpt import GPT, logit_scale
from rcjax.rc import is_rc

_ST_DTYPE = {np.dtype(v): k for k, v in DTYPES.items()}
DEFAULT_MAX_SHARD_SIZE = 5 * 2**30


def as_sp(model: GPT, params: Any) -> tuple[GPT, dict]:
  """The SP model computing what `model` computes with `params`, and the per-leaf factors that turn the
  values into its SP values.

  Every leaf's value times its forward multiplier becomes its SP value; the attention-logit scale
  ratio (ours over 1/sqrt(head_dim)) is folded into the query projection and bias. `factors` maps leaf
  paths to the scalar each value must be multiplied by (applied while writing, shard by shard; 1 is
  left out)."""
  a = _arch(model, params)
  factors: dict[tuple, float] = {}
  if model.param != "sp":
    flat, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_rc)
    for kp, box in flat:
      factors[tuple(k.key for k in kp)] = pz.multiplier(box)
    q = params["blocks"]["q"]
    base_d = q.base[3]
    ratio = logit_scale(model.param, a["head_dim"], base_d) * math.sqrt(a["head_dim"])
    for leaf in (("blocks", "q"), ("blocks", "q_bias")):
      if leaf in factors:
        factors[leaf] *= ratio
    if a["tied"]:
      readout = pz.multiplier(params["embed"].replace(fan_in=(1,)))
      if not math.isclose(readout, factors[("embed",)], rel_tol=1e-12):
        raise ValueError(f"a tied {model.param} embedding has multiplier {factors[('embed',)]} as input and "
                         f"{readout} as readout: it has no SP equivalent with tied embeddings")
    factors = {k: v for k, v in factors.items() if v != 1.0}
  return model.clone(param="sp", base=None), factors


def _plan_files(entries: list[Entry], dtypes: dict[str, np.dtype], max_shard_size: int) -> list[list[Entry]]:
  files: list[list[Entry]] = [[]]
  size = 0
  for e in entries:
    n = math.prod(e.shape) * dtypes[e.name].itemsize
    if files[-1] and size + n > max_shard_size:
      files.append([])
      size = 0
    files[-1].append(e)
    size += n
  return files


def _create(fname: str, entries: list[Entry], dtypes: dict[str, np.dtype]) -> int:
  """A safetensors file with the header of `entries` and its space reserved; the data's offset."""
  header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
  off = 0
  for e in entries:
    n = math.prod(e.shape) * dtypes[e.name].itemsize
    header[e.name] = {"dtype": _ST_DTYPE[dtypes[e.name]], "shape": list(e.shape), "data_offsets": [off, off + n]}
    off += n
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)
  with open(fname, "wb") as f:
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    f.truncate(8 + len(raw) + off)
    _reserve(f.fileno(), 8 + len(raw) + off, fname)
  return 8 + len(raw)


def _reserve(fd: int, size: int, fname: str) -> None:
  """Reserve the file's blocks now, so that a full disk is an OSError (ENOSPC) here and never a SIGBUS
  in a later write through a memory map (a sparse file's pages are allocated on first touch)."""
  if size == 0 or not hasattr(os, "posix_fallocate"):
    return
  try:
    os.posix_fallocate(fd, 0, size)
  except OSError as e:
    if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)):
      return  # a file system without fallocate (glibc emulates it where it can)
    raise OSError(e.errno, os.strerror(e.errno), fname) from None


def _chunks(x: Any) -> list[tuple[tuple, np.ndarray]]:
  """`(index, data)` of the parts of `x` this process must write: each addressable shard with
  replica_id 0 (every element exactly once across processes), or the whole array for host arrays."""
  if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
    return [(s.index, s.data) for s in x.addressable_shards if s.replica_id == 0]
  return [(tuple(slice(None) for _ in np.shape(x)), x)]


def _progress(items: list, on: bool, desc: str):
  if not on:
    return items

  return bar(items, desc=desc, unit="param", leave=False)


def save(model: GPT, params: Any, path: str | os.PathLike, *, config: Mapping[str, Any] | None = None,
         dtype: Any = None, max_shard_size: int = DEFAULT_MAX_SHARD_SIZE, overwrite: bool = False,
         extra_files: Mapping[str, str] | None = None, progress: bool = False, consume: bool = False) -> dict:
  """Write `(model, params)` as an HF checkpoint directory that `transformers` loads unchanged.

  Args:
    model, params: an `rcjax.nn.GPT` of a supported family and its params (any parametrization, any
      sharding, scanned blocks), e.g. from `load` and `rcjax.grow`.
    path: the output directory; it must not exist unless `overwrite`.
    config: a base config.json dict whose other fields (token ids, ...) are kept, e.g. the source's.
    dtype: output dtype (default: the params' dtype).
    max_shard_size: bytes per safetensors file before the checkpoint is split and indexed.
    extra_files: `{name: source path}` copied into the output (tokenizer files; a name may hold a
      subdirectory, e.g. 'additional_chat_templates/tool_use.jinja').
    progress: a tqdm progress bar over the params (process 0).
    consume: the caller gives `params` up: each leaf's array is deleted once it is written, so the
      params' memory drains as the files fill (`python -m rcjax.grow` writes this way).

  Returns:
    `{'path', 'files', 'tensors', 'bytes', 'max_chunk_bytes'}` (max_chunk_bytes: the largest single
    write, one shard of one leaf: how much of any tensor was ever on this host at once).
  """
  path = os.path.abspath(os.fspath(path))
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{path} exists (pass overwrite=True / --overwrite to replace it)")
  sp_model, factors = as_sp(model, params)
  cfg = config_for(sp_model, params, config, dtype)
  entries, leaves, dtypes = _save_plan(sp_model, params, dtype)
  plan = _plan_files(entries, dtypes, max_shard_size)
  names = _file_names(plan)
  tmp = path + ".rcjax-tmp"
  main = jax.process_index() == 0
  try:
    if main:
      shutil.rmtree(tmp, ignore_errors=True)
      os.makedirs(tmp)
      for fname, es in zip(names, plan):
        _create(os.path.join(tmp, fname), es, dtypes)
    sharding.sync("rcjax.hf.save:created")
    files = Files(tmp, mode="r+")
    max_chunk = 0
    for leaf_path, parts in _progress(list(by_leaf(entries).items()), progress and main,
                                      f"writing {os.path.basename(path)}"):
      box = leaves[leaf_path]
      max_chunk = max(max_chunk, _write_leaf(box, factors.get(leaf_path, 1.0), _leaf_views(files, parts)))
      if consume and isinstance(box.value, jax.Array) and not box.value.is_deleted():
        box.value.delete()
    for m in files._maps.values():
      m.flush()
    del files
    sharding.sync("rcjax.hf.save:written")
    total = sum(math.prod(e.shape) * dtypes[e.name].itemsize for e in entries)
    if main:
      _finish(tmp, path, plan, names, total, cfg, extra_files)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written is left, under either name
    raise
  sharding.sync("rcjax.hf.save:renamed")
  return {"path": path, "files": names, "tensors": len(entries), "bytes": total, "max_chunk_bytes": max_chunk}


def _save_plan(sp_model: GPT, params: Any, dtype: Any) -> tuple[list[Entry], dict, dict]:
  """The HF tensors of `sp_model`'s family, the leaves by path and each tensor's output dtype; ValueError
  for params with no place in the checkpoint."""
  fam = family_of(sp_model)
  entries = layout_entries(fam, _arch(sp_model, params))
  leaves = {tuple(k.key for k in kp): box for kp, box in
            jax.tree_util.tree_flatten_with_path(params, is_leaf=is_rc)[0]}
  used = {p.leaf for e in entries for p in e.parts}
  if unused := sorted("/".join(k) for k in set(leaves) - used):
    raise ValueError(f"params {unused} have no place in a {fam} checkpoint")
  dtypes = {e.name: np.dtype(dtype or leaves[e.parts[0].leaf].value.dtype) for e in entries}
  return entries, leaves, dtypes


def _file_names(plan: list) -> list[str]:
  return (["model.safetensors"] if len(plan) == 1 else
          [f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))])


def _leaf_views(files: Files, parts: list) -> list[tuple[int | None, np.ndarray]]:
  """`(layer, view of the output file in the leaf's layout)` per part, checked once to be views."""
  views = []
  for name, part in parts:
    out_all = files.array(name)
    view = part.view(out_all)
    if not np.may_share_memory(view, out_all):
      raise AssertionError(f"internal: the layout view of {name} is a copy")
    views.append((part.layer, view))
  return views


def _write_leaf(box: Any, f: float, views: list) -> int:
  """Write this process's shards of `box` (times `f`) through `views`; the largest chunk's bytes."""
  max_chunk = 0
  for index, data in _chunks(box.value):
    x = np.asarray(data)
    max_chunk = max(max_chunk, x.nbytes)
    x = x.astype(np.float32) * np.float32(f) if f != 1.0 else x
    for layer, dst in views:
      if layer is None:
        dst[index] = x.astype(dst.dtype)
        continue
      lo, hi, _ = index[0].indices(box.shape[0])
      if lo <= layer < hi:
        dst[index[1:]] = x[layer - lo].astype(dst.dtype)
  return max_chunk


def _finish(tmp: str, path: str, plan: list, names: list, total: int, cfg: dict, extra_files) -> None:
  """The index, the extra files and config.json (last) into `tmp`, then `tmp` renamed to `path`
  (replacing it)."""
  if len(plan) > 1:
    with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as fh:
      json.dump({"metadata": {"total_size": total},
                 "weight_map": {e.name: n for n, es in zip(names, plan) for e in es}}, fh, indent=2)
  for name, src in (extra_files or {}).items():
    os.makedirs(os.path.dirname(os.path.join(tmp, name)), exist_ok=True)
    shutil.copyfile(src, os.path.join(tmp, name))
  with open(os.path.join(tmp, "config.json"), "w") as fh:
    json.dump(cfg, fh, indent=2, sort_keys=True)
  if os.path.exists(path):
    old = path + ".rcjax-old"
    shutil.rmtree(old, ignore_errors=True)
    os.rename(path, old)
    os.rename(tmp, path)
    shutil.rmtree(old)
  else:
    os.rename(tmp, path)


def _write_dir(path: str, entries: list[Entry], dtypes: dict, max_shard_size: int, cfg: dict, overwrite: bool,
               extra_files, body: Callable[[str, list, list], None]) -> dict:
  """One process writes a checkpoint directory: `body(tmp, plan, file names)` fills the safetensors files
  (it creates them with `_create`), then `_finish`; on any error `tmp` is removed and nothing is left."""
  path = os.path.abspath(os.fspath(path))
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{path} exists (pass overwrite=True / --overwrite to replace it)")
  plan = _plan_files(entries, dtypes, max_shard_size)
  names = _file_names(plan)
  tmp = path + ".rcjax-tmp"
  total = sum(math.prod(e.shape) * dtypes[e.name].itemsize for e in entries)
  try:
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    body(tmp, plan, names)
    _finish(tmp, path, plan, names, total, cfg, extra_files)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return {"path": path, "files": names, "tensors": len(entries), "bytes": total, "max_chunk_bytes": 0}


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "vocab.txt",
                   "merges.txt", "tokenizer.model", "generation_config.json", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json")
TOKENIZER_DIRS = ("additional_chat_templates",)  # transformers >= 4.47: named chat templates, one .jinja each


def tokenizer_files(src: str) -> dict[str, str]:
  """The tokenizer, chat template and generation files of an HF directory, `{name: path}` (names relative to
  `src`, e.g. 'additional_chat_templates/tool_use.jinja'; for `save(extra_files=)`)."""
  out = {n: os.path.join(src, n) for n in TOKENIZER_FILES if os.path.isfile(os.path.join(src, n))}
  for d in TOKENIZER_DIRS:
    for root, _, names in sorted(os.walk(os.path.join(src, d))):
      for n in sorted(names):
        out[os.path.relpath(os.path.join(root, n), src)] = os.path.join(root, n)
  return out
