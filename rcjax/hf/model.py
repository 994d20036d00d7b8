"""HuggingFace causal LMs in and out of rcjax: `load(path) -> (GPT, params)` here, `save(model, params, path)`
in `rcjax.hf.write` (both are `rcjax.hf.load` / `rcjax.hf.save`).

Families: Llama (`llama`, `mistral`, `qwen2`; grouped-query attention, RoPE, SwiGLU, tied or untied,
optional biases), GPT-2 (`gpt2`) and GPT-NeoX/Pythia (`gpt_neox`; partial rotary, parallel residual);
BERT encoders (`bert`) load as `rcjax.nn.Bert` through the same functions (`rcjax.hf.bert`, docs/bert.md).
`load` returns an `rcjax.nn.GPT` configured like the checkpoint (param 'sp': HF models are standard
parametrization) and params of RC leaves in the checkpoint's dtype; `GPT.apply` gives the original
model's logits. `save` writes `config.json` and safetensors in the family's own names and layouts
(`model.safetensors`, or shards plus `model.safetensors.index.json` above `max_shard_size`), which
`transformers.AutoModelForCausalLM.from_pretrained` loads unchanged.

One table, two directions. For every HF tensor, `rcjax.hf.layout.entries` lists which rcjax leaf (and
which layer of a scanned leaf) each part of it is, as a numpy *view* of the HF array in the rcjax layout: PyTorch
`nn.Linear` (out, in) -> (in, out) by a transpose, fused projections (GPT-2 `c_attn` = [q | k | v] along
columns, GPT-NeoX `query_key_value` = per head [q | k | v]) by reshape + index, heads split out by a
reshape. `load` reads through the views of read-only memory maps; `save` writes through the same views
of writable memory maps of the output files, so a round trip is the identity by construction.

Sharded arrays are written shard by shard: each process writes the addressable shards it holds
(`replica_id == 0`, so each element once) straight into its place in the memory-mapped output file; no
tensor is gathered on one host or device (`save` returns the largest single write, `max_chunk_bytes`).
`load(..., mesh=...)` reads each device's shard only. Output goes to a temporary directory next to the
destination, renamed into place when complete, so a crash never leaves a half-written model behind.

Other parametrizations. `save` folds every leaf's forward multiplier into its values and the attention
logit scale into the query projection, so a muP or mean-field model is written as the SP model that
computes the same function (a tied muP/mf embedding whose readout multiplier is not 1 cannot be tied and
raises).

>>> import tempfile, jax, jax.numpy as jnp
>>> from rcjax.nn import GPT
>>> from rcjax.hf.write import save
>>> model = GPT(vocab=32, width=16, depth=2, heads=4, kv_heads=2, style='llama', param='sp')
>>> params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))['params']
>>> d = tempfile.mkdtemp() + '/tiny'
>>> _ = save(model, params, d)
>>> model2, params2 = load(d)
>>> tokens = jnp.arange(8).reshape(1, 8)
>>> bool(jnp.all(model.apply({'params': params}, tokens) == model2.apply({'params': params2}, tokens)))
True
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rcjax import sharding
from rcjax.hf import bert as hf_bert
from rcjax.hf.config import _arch, _is_bert, family_of, model_from_config
from rcjax.hf.files import DTYPES, TORCH_DTYPES, Files
from rcjax.hf.layout import _IGNORED, Entry, by_leaf, entries as layout_entries
from rcjax.hf.write import _progress
from rcjax.nn.gpt import GPT
from rcjax.rc import RC, boxes, is_rc


def abstract_params(model: GPT) -> Any:
  """`model`'s params as RC leaves of `jax.ShapeDtypeStruct` (shapes and metadata; nothing computed).
  Cached per model (tracing `init` takes ~0.5 s for a 12-block model; the result is immutable)."""
  try:
    return _abstract_cached(model)
  except TypeError:  # an unhashable field
    return _abstract(model)


def _abstract(model: GPT) -> Any:
  return jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 1), jnp.int32))["params"], jax.random.key(0))


_abstract_cached = functools.lru_cache(maxsize=16)(_abstract)


def _stored(files: Files) -> Any:
  """The one float dtype the tensors are stored in (None if they mix several)."""
  stored = {files.where[n][1]["dtype"] for n in files.names()} - {"I64", "I32", "BOOL", "U8"}
  return DTYPES[sorted(stored)[0]] if len(stored) == 1 else None


def stored_dtype(path: str | os.PathLike, config: Mapping[str, Any] | None = None) -> np.dtype:
  """The dtype an HF directory's weights are stored in, as `save` can write it: the tensors' one float dtype
  where it is float32, float16 or bfloat16 (config.json's torch_dtype may be missing or stale), else
  `config`'s torch_dtype / dtype, else float32. Reads only the safetensors headers."""
  stored = _stored(Files(os.fspath(path)))
  if stored is not None and np.dtype(stored) in {np.dtype(v) for v in TORCH_DTYPES.values()}:
    return np.dtype(stored)
  config = config or {}
  return np.dtype(TORCH_DTYPES.get(str(config.get("torch_dtype") or config.get("dtype")), np.float32))


def _resolve_names(entries: list[Entry], files: Files, path: str) -> dict[str, str]:
  """Our canonical HF names -> the names in the checkpoint (GPT-2 files often lack 'transformer.');
  ValueError for missing tensors or tensors that this model does not use."""
  have = files.names()
  out = {}
  for e in entries:
    for cand in (e.name, e.name.removeprefix("transformer."), "lm_head.weight" if e.name == "embed_out.weight" else "",
                 e.name.removeprefix("bert."), "bert." + e.name):  # BERT: BertModel's names lack 'bert.'

      if cand in have:
        out[e.name] = cand
        break
    else:
      raise ValueError(f"{path}: tensor {e.name} is missing (truncated or incomplete checkpoint, or a "
                       "config.json that does not match the weights)")
  extra = sorted(n for n in have - set(out.values()) if not _IGNORED.search(n)
                 and n != "lm_head.weight")  # a tied checkpoint may carry a copy of the embedding
  if extra:
    raise ValueError(f"{path}: tensors this architecture does not use: {extra[:6]}"
                     f"{' ...' if len(extra) > 6 else ''} (an unsupported variant?)")
  return out


def _read_values(abstract: Any, by_leaf: dict, files: Files, path: str, mesh, progress: bool) -> tuple[list, Any]:
  """The leaves of `abstract` read from `files` through the layout views (each device reads its shard of
  `mesh`), and the treedef."""

  def read(leaf_path: tuple, box: RC, index: tuple) -> np.ndarray:
    parts = by_leaf[leaf_path]
    if parts[0][1].layer is None:
      (name, part), = parts
      x = part.view(files.array(name))[index]
    else:
      layers = range(box.shape[0])[index[0]]
      by_layer = {p.layer: (n, p) for n, p in parts}
      x = np.stack([by_layer[i][1].view(files.array(by_layer[i][0]))[index[1:]] for i in layers])
    return np.asarray(x, dtype=box.value.dtype)

  sh = None if mesh is None else sharding.shardings(abstract, mesh)
  flat, treedef = jax.tree_util.tree_flatten_with_path(abstract, is_leaf=is_rc)
  sh_flat = jax.tree.leaves(sh, is_leaf=is_rc) if sh is not None else [None] * len(flat)
  values = []
  for (kp, box), s in _progress(list(zip(flat, sh_flat)), progress, f"reading {os.path.basename(path)}"):
    leaf_path = tuple(k.key for k in kp)
    if leaf_path not in by_leaf:
      raise ValueError(f"{path}: nothing in the checkpoint maps to param {'/'.join(leaf_path)}")
    s = s.value if s is not None else jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    values.append(jax.make_array_from_callback(box.shape, s, lambda idx, lp=leaf_path, b=box: read(lp, b, idx)))
  return values, treedef


def load(path: str | os.PathLike, *, dtype: Any = None, compute_dtype: Any = jnp.float32,
         mesh: jax.sharding.Mesh | None = None, progress: bool = False) -> tuple[GPT, Any]:
  """An HF checkpoint directory -> `(model, params)`: an `rcjax.nn.GPT` (param 'sp') and RC params.

  Args:
    path: a directory with config.json and safetensors (single file or sharded with an index).
    dtype: dtype of the params (default: the checkpoint's stored dtype, so a round trip is bit-exact).
    compute_dtype: the model's compute dtype.
    mesh: shard the params over this mesh by `rcjax.sharding.RULES`; each device reads its shard only.
    progress: a tqdm progress bar over the params.

  Raises:
    FileNotFoundError / ValueError with the path for a missing config, missing or truncated files,
    an unsupported family or variant, or shapes that do not match config.json.
  """
  path = os.fspath(path)
  cfg_path = os.path.join(path, "config.json")
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f"{path} has no config.json: not a HuggingFace checkpoint")
  with open(cfg_path) as f:
    config = json.load(f)
  files = Files(path)
  model = model_from_config(config, dtype=compute_dtype, param_dtype=dtype or _stored(files), where=cfg_path)
  if _is_bert(model):  # the pooler and MLM head are in the tensors, not in config.json

    model = hf_bert.fit_to_tensors(model, files.names())
  abstract = abstract_params(model)
  fam = family_of(model)
  a = _arch(model, abstract)
  entries = layout_entries(fam, a)
  names = _resolve_names(entries, files, path)
  for e in entries:
    arr_shape = tuple(files.where[names[e.name]][1]["shape"])
    if arr_shape != e.shape:
      raise ValueError(f"{path}: tensor {names[e.name]} has shape {arr_shape}, config.json implies {e.shape}")
  values, treedef = _read_values(abstract, by_leaf(entries, names), files, path, mesh, progress)
  params = boxes(jax.tree_util.tree_unflatten(treedef, values), abstract)
  return model, params
