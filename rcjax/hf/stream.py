"""Streaming grow/shrink of an HF checkpoint, one block at a time (the fast path of `python -m rcjax.grow`).

`stream_transfer(src, dst, model, new_model, ...)` reads SRC's tensors of one block (plus, with the first
block, the embedding, the final norm and the readout) straight from the safetensors files, and runs one
jitted function per block that converts them to the transfer dtype, lays them out as rcjax leaves (the
same `rcjax.hf.layout.entries` views `load` reads through), transfers them with `rcjax.transfer_model` (the
same maps, rescaling and corrections as the whole-model call: every leaf's result is elementwise in its
layers, so a one-block slice gives the same bytes), and lays the result back out in the HF layout in
the output dtype (the exact inverse of the views, by `jax.linear_transpose`: reshapes and transposes,
no arithmetic). The HF tensors of that block are then written with `os.pwrite` at their offsets in the
output files, whose space was reserved beforehand (`posix_fallocate`, in `rcjax.hf.write._create`), so a full
disk is an `OSError` before anything is written, never a SIGBUS. Memory: one block of SRC and of DST
(and the embedding and readout), not the model; the bytes are byte-identical to `rcjax.hf.load` +
`rcjax.transfer_model` + `rcjax.hf.save` (pinned by tests/test_hf_speed.py).

Used only where that path is equivalent: one process, no mesh, no fresh neurons or noise
(`random_rate = norm_rate = 0`, whose draws depend on whole leaves) and a model in the standard
parametrization (HF models are); `python -m rcjax.grow` takes the general path otherwise.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from rcjax.hf import config as hf_config, files as hf_files, layout as hf_layout, model as hf_model, write as hf_write
from rcjax.model_rules import transfer_model
from rcjax.rc import RC, is_rc


def supported(args: Any, mesh: Any, *, family: str, same_depth: bool) -> bool:
  """Whether `python -m rcjax.grow` with these flags can take the streaming path: one process, no mesh, a
  decoder at unchanged depth, a uniform sampler, and no draws that depend on whole leaves (fresh neurons,
  noise, splits, cancelling noise)."""
  if os.environ.get("RCJAX_STREAM", "1") == "0":  # the whole-model path, for comparisons
    return False
  return (mesh is None and jax.process_count() == 1 and family != "bert" and same_depth
          and args.sampler in ("stratified", "iid", "stride")
          and args.random_rate == 0 and args.norm_rate == 0 and args.split_rate == 0 and args.cancel_rate == 0)


def _inverse(view: Callable, shape: tuple, dtype: Any) -> Callable:
  """rcjax layout -> HF layout: the transpose of the (linear: reshape/transpose) view."""
  inv = jax.linear_transpose(view, jax.ShapeDtypeStruct(shape, dtype))
  return lambda x: inv(x)[0]


def _permutation(view: Callable, shape: tuple) -> tuple[int, ...] | None:
  """`perm` such that `view(a).transpose(perm) == a.reshape(...)` for an HF array `a` of `shape` (the
  view is a reshape + transpose of it), or None where it is not (a fused tensor's part)."""
  a = np.arange(math.prod(shape), dtype=np.int64).reshape(shape)
  v = view(a)
  if not np.may_share_memory(v, a) or v.size != a.size:
    return None
  perm = tuple(int(d) for d in np.argsort([-s for s in v.strides], kind="stable"))
  ok = np.array_equal(v.transpose(perm).reshape(-1), a.reshape(-1))
  return perm if ok else None


def _permuted(box, perm: tuple, scanned: bool):
  """`box` (an abstract RC leaf) with its dims (after the layers axis, if scanned) in the order `perm`.

  Used without --exact only: every rescaling is then one scalar per leaf, so the transfer's values are
  the same in any dim order (the gathers copy, the scale multiplies each entry once)."""
  full = (0,) + tuple(scanned + d for d in perm) if scanned else tuple(perm)
  where = {old: new for new, old in enumerate(full)}
  return RC(value=jax.ShapeDtypeStruct(tuple(box.shape[d] for d in full), box.value.dtype),
                  axes=tuple(box.axes[d] for d in full), fan_in=tuple(sorted(where[d] for d in box.fan_in)),
            base=None if box.base is None else tuple(box.base[d] for d in full), param=box.param,
            init=box.init, blocks=box.blocks)


def _pieces(entries: list, depth: int) -> list[list]:
  """The HF entries written with each block: block 0 carries the entries of no block (embedding, ...)."""
  out: list[list] = [[] for _ in range(depth)]
  for e in entries:
    layers = {p.layer for p in e.parts}
    (layer,) = layers
    out[0 if layer is None else layer].append(e)
  return out


def _flat(tree: Any) -> dict[tuple, Any]:
  return {tuple(k.key for k in kp): v for kp, v in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_rc)[0]}


def _unflat(flat: dict[tuple, Any]) -> dict:
  out: dict = {}
  for path, v in flat.items():
    d = out
    for k in path[:-1]:
      d = d.setdefault(k, {})
    d[path[-1]] = v
  return out


def _builder(model, new_model, src_entries, dst_entries, names, transfer_kw: dict, out_dtype, first: bool,
             tdtype) -> Callable:
  """The jitted function of one block: SRC's HF arrays of it -> DST's HF arrays (single-part entries) and
  DST's leaves in the output dtype (the parts of fused entries, which numpy assembles through the views)."""
  abstract = _flat(hf_model.abstract_params(model))
  src_parts, hf_order = {}, {}
  exact = transfer_kw["exact"]
  for e in src_entries:
    for p in e.parts:
      src_parts[p.leaf] = (names[e.name], p.view, p.layer is not None)
      perm = None if exact or len(e.parts) > 1 else _permutation(p.view, e.shape)
      if perm is not None:
        hf_order[p.leaf] = perm
  target = transfer_kw.pop("target")

  def fn(arrays: dict, key):
    leaves, boxes = {}, dict(abstract)
    for leaf, (name, view, scanned) in src_parts.items():
      if leaf in hf_order:  # the leaf's dims in the HF tensor's order: a reshape, no transpose
        box, perm = abstract[leaf], hf_order[leaf]
        boxes[leaf] = _permuted(box, perm, scanned)
        x = arrays[name].reshape(tuple(box.shape[scanned + d] for d in perm)).astype(tdtype)
      else:
        x = view(arrays[name]).astype(tdtype)
      leaves[leaf] = x[None] if scanned else x
    if not first:  # the transfer's corrections read the embedding and the final norm: a one-row stand-in
      leaves[("embed",)] = arrays["__embed_row__"].astype(tdtype)
    tree = _unflat({k: boxes[k].replace(value=v) for k, v in leaves.items()})
    if target:
      tree = transfer_model(model, tree, key, target, **transfer_kw)
    flat = _flat(tree)
    out = {}
    for e in dst_entries:
      if len(e.parts) == 1:
        (p,) = e.parts
        x = flat[p.leaf].value
        x = x[0] if p.layer is not None else x
        if p.leaf in hf_order:
          out[e.name] = x.reshape(e.shape).astype(out_dtype)
        else:
          out[e.name] = _inverse(p.view, e.shape, x.dtype)(x).astype(out_dtype)
      else:
        for p in e.parts:
          x = flat[p.leaf].value
          out[_part_key(e.name, p.leaf)] = (x[0] if p.layer is not None else x).astype(out_dtype)
    return out

  return jax.jit(fn)


def stream_transfer(src: str, dst: str, model, new_model, key, target: dict, *, src_config: dict, out_dtype,
                    transfer_dtype, sampler: str, exact: bool, max_shard_size: int, overwrite: bool,
                    extra_files: dict, progress: bool = False) -> dict:
  """Write DST = the transfer of SRC to `new_model`'s sizes, block by block (see the module docstring).

  Returns `rcjax.hf.save`'s summary dict plus 'bytes_read' and 'seconds' (compile, compute, write: the
  wall time of each; they overlap: the two functions compile in parallel, and a writer thread writes
  block i while block i + 1 is computed, so at most two blocks are in memory)."""
  files, src_entries, names, cfg, dst_entries = _tables(src, model, new_model, src_config, out_dtype)
  run = _Blocks(files, names, src_entries, dst_entries, model.depth, np.dtype(out_dtype))
  tdtype = jnp.float32 if transfer_dtype == "float32" else hf_model._stored(files) or jnp.float32
  kw = dict(sampler=sampler, random_rate=0.0, norm_rate=0.0, exact=exact, target=dict(target))
  run.compile(model, new_model, key, kw, tdtype)
  label = f"writing {os.path.basename(dst)}"
  summary = hf_write._write_dir(dst, dst_entries, run.dtypes, max_shard_size, cfg, overwrite, extra_files,
                                lambda tmp, plan, fnames: run.write_all(tmp, plan, fnames, key, progress, label))
  summary.update(bytes_read=run.read, seconds=run.seconds)
  return summary


class _Blocks:
  """One streaming run's blocks: SRC's arrays of block i (`inputs`), the two compiled block functions (block 0,
  which carries the embedding, and block 1's, run on every block i > 0 renamed to block 1's names), and the
  writer that overlaps block i's write with block i + 1's compute."""

  def __init__(self, files, names: dict, src_entries: list, dst_entries: list, depth: int, out_dtype):
    self.files, self.names, self.depth, self.out_dtype = files, names, depth, out_dtype
    self.dtypes = {e.name: out_dtype for e in dst_entries}
    self.src_pieces, self.dst_pieces = _pieces(src_entries, depth), _pieces(dst_entries, depth)
    self.final_src = [e for e in src_entries if e.parts[0].leaf[0] == "final"]
    self.embed_src = next(e for e in src_entries if e.parts[0].leaf == ("embed",))
    layer = lambda es: [e for e in es if e.parts[0].layer is not None]
    self.specs = {True: (self.src_pieces[0], self.dst_pieces[0])}
    if depth > 1:
      self.specs[False] = (layer(self.src_pieces[1]) + self.final_src, layer(self.dst_pieces[1]))
    self.seconds = {"compile": 0.0, "read": 0.0, "compute": 0.0, "write": 0.0}
    self.read = 0
    self.where: dict[str, tuple[str, int]] = {}

  def inputs(self, i: int) -> dict:
    files, names = self.files, self.names
    es = self.src_pieces[0] if i == 0 else [e for e in self.src_pieces[i] if e.parts[0].layer is not None] + self.final_src
    arrays = {names[e.name]: _read(files, names[e.name]) for e in es}
    if i > 0:
      row = _read(files, names[self.embed_src.name], 1)
      arrays["__embed_row__"] = np.ascontiguousarray(self.embed_src.parts[0].view(row))
    return arrays if i <= 1 else {_rename(n, i, 1): a for n, a in arrays.items()}

  def compile(self, model, new_model, key, kw: dict, tdtype) -> None:
    def one(first: bool):
      t = time.perf_counter()
      fn = _builder(model, new_model, *self.specs[first], self.names, dict(kw), self.out_dtype, first, tdtype)
      shapes = {n: jax.ShapeDtypeStruct(a.shape, a.dtype) for n, a in self.inputs(0 if first else 1).items()}
      out = fn.lower(shapes, key).compile()
      self.seconds["compile"] = max(self.seconds["compile"], time.perf_counter() - t)
      return out

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      fns = {first: pool.submit(one, first) for first in self.specs}
    self.fns = {first: f.result() for first, f in fns.items()}

  def block(self, i: int, key) -> dict:
    t = time.perf_counter()
    arrays = self.inputs(i)
    self.read += sum(a.nbytes for a in arrays.values())
    t1 = time.perf_counter()
    out = self.fns[i == 0](arrays, key)
    out = {n if i <= 1 else _rename(n, 1, i): np.asarray(a) for n, a in out.items()}
    self.seconds["read"] += t1 - t
    self.seconds["compute"] += time.perf_counter() - t1
    return out

  def _write(self, fds: dict, out: dict, entries: list) -> None:
    t = time.perf_counter()
    _write_block(fds, out, entries, self.where, self.dtypes)
    self.seconds["write"] += time.perf_counter() - t

  def write_all(self, tmp: str, plan: list, fnames: list, key, progress: bool, label: str) -> None:
    """Create DST's files in `tmp` and fill them block by block (`rcjax.hf.write._write_dir`'s body)."""
    self.where.update(_create_files(tmp, plan, fnames, self.dtypes))
    fds = {f: os.open(os.path.join(tmp, f), os.O_WRONLY) for f in fnames}
    try:
      with concurrent.futures.ThreadPoolExecutor(1) as writer:
        pending = None
        for i in hf_write._progress(list(range(self.depth)), progress, label):
          out = self.block(i, key)
          if pending is not None:
            pending.result()  # raises the writer's error (a full disk) here
          pending = writer.submit(self._write, fds, out, self.dst_pieces[i])
          del out
        pending.result()
    finally:
      for fd in fds.values():
        os.close(fd)


def _tables(src: str, model, new_model, src_config: dict, out_dtype) -> tuple:
  """SRC's files, its tensors' entries and stored names; DST's config.json and entries."""
  files = hf_files.Files(src)
  src_entries = hf_layout.entries(hf_config.family_of(model), hf_config._arch(model, hf_model.abstract_params(model)))
  names = hf_model._resolve_names(src_entries, files, src)
  new_abstract = hf_model.abstract_params(new_model)
  cfg = hf_config.config_for(new_model, new_abstract, src_config, out_dtype)
  dst_entries = hf_layout.entries(hf_config.FAMILIES[cfg["model_type"]], hf_config._arch(new_model, new_abstract))
  return files, src_entries, names, cfg, dst_entries


def _create_files(tmp: str, plan: list, fnames: list, dtypes: dict) -> dict[str, tuple[str, int]]:
  """The output safetensors files created (their space reserved: a full disk is ENOSPC here);
  `{tensor name: (file name, byte offset of its data)}`."""
  where = {}
  for fname, es in zip(fnames, plan):
    start = hf_write._create(os.path.join(tmp, fname), es, dtypes)
    off = 0
    for e in es:
      where[e.name] = (fname, start + off)
      off += math.prod(e.shape) * dtypes[e.name].itemsize
  return where


def _write_block(fds: dict, out: dict, entries: list, where: dict, dtypes: dict) -> None:
  """Write one block's tensors (`out`: by tensor name, or by part for tensors of several leaves, popped
  as they are written) at their offsets `where` in the open files `fds`."""
  for e in entries:
    fname, offset = where[e.name]
    if e.name in out:
      buf = out.pop(e.name)
    else:
      buf = np.empty(e.shape, dtypes[e.name])
      for p in e.parts:
        view = p.view(buf)
        if not np.may_share_memory(view, buf):
          raise AssertionError(f"internal: the layout view of {e.name} is a copy")
        view[...] = out.pop(_part_key(e.name, p.leaf))
    data = memoryview(np.ascontiguousarray(buf).reshape(-1).view(np.uint8))
    done = 0
    while done < len(data):
      done += os.pwrite(fds[fname], data[done:], offset + done)


def _read(files, name: str, rows: int | None = None) -> np.ndarray:
  """A tensor (or its first `rows` rows) read into fresh memory with `readinto`: not through a memory map,
  whose pages would stay resident (and count) until the map is closed, growing with the blocks read."""
  fname, entry, start = files.where[name]
  dtype = np.dtype(hf_files.DTYPES[entry["dtype"]])
  shape = list(entry["shape"])
  if rows is not None:
    shape[0] = min(rows, shape[0])
  out = np.empty(shape, dtype)
  lo = entry["data_offsets"][0]
  with open(fname, "rb", buffering=0) as f:
    f.seek(start + lo)
    view = memoryview(out.reshape(-1).view(np.uint8))
    done = 0
    while done < len(view):
      n = f.readinto(view[done:])
      if not n:
        raise ValueError(f"{fname}: truncated in tensor {name}")
      done += n
  return out


def _rename(name: str, i: int, j: int) -> str:
  """The HF name of block i's tensor `name` in block j (names hold '.{i}.' once: 'model.layers.3.mlp...')."""
  return name.replace(f".{i}.", f".{j}.", 1) if name != "__embed_row__" else name


def _part_key(name: str, leaf: tuple) -> str:
  """The output key of one part of a fused HF tensor (the tensor's name first, so `_rename` applies)."""
  return name + "::" + "/".join(leaf)
