"""BERT checkpoints (`BertModel`, `BertForMaskedLM`, sentence-transformers models on a BERT) in and out of
rcjax: the `bert` family of `rcjax.hf.load/save` and `python -m rcjax.grow/shrink` (`rcjax.nn.Bert`):
config.json <-> `rcjax.nn.Bert`, the pooler and MLM head a checkpoint has, the sentence-transformers files.
The tensors (blocks, embeddings, pooler, MLM head) are the BERT table of `rcjax.hf.layout`, which the
diagnostics (`rcjax.hf.Checkpoint`) and the conversion both read.

Supported: absolute position embeddings (`position_embedding_type` 'absolute'; 'relative_key' and
'relative_key_query' are refused), encoders only (`is_decoder` and cross-attention refused), hidden_act
'gelu' (erf), 'gelu_new' / 'gelu_pytorch_tanh' (tanh) and 'relu'. RoBERTa and DistilBERT are refused by
name: RoBERTa counts positions from its padding index and DistilBERT has no token types and other tensor
names, so the table does not cover them.

Sentence-transformers. `sentence_files` copies `modules.json`, `sentence_bert_config.json`,
`config_sentence_transformers.json` and the files of the Pooling and Normalize modules, with the Pooling
config's `word_embedding_dimension` (sentence-transformers < 6; `embedding_dimension` from 6) set to the
new width. A module with weights of its own (Dense, ...) is refused: its input width would change.
README.md (the model card, which quotes the old width) is not copied.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from rcjax.hf.files import TORCH_DTYPES
from rcjax.nn.bert import Bert

REFUSED = {"roberta": "RoBERTa", "xlm-roberta": "XLM-RoBERTa", "camembert": "CamemBERT",
           "distilbert": "DistilBERT"}
ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu"}
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def is_bert_config(c: Mapping[str, Any]) -> bool:
  """Whether a config.json dict is a BERT (by model_type, else architectures); ValueError for RoBERTa/DistilBERT."""
  mt = c.get("model_type")
  archs = c.get("architectures") or []
  for t, name in REFUSED.items():
    if mt == t or any(a.lower().startswith(name.lower().replace("-", "")) for a in archs):
      raise ValueError(f"{name} (model_type {mt!r}) is not supported: only BERT encoders are (model_type 'bert'); "
                       f"{name} " + ("counts positions from its padding index" if t != "distilbert" else
                                     "has no token types and other tensor names"))
  return mt == "bert" or (mt is None and any(a.startswith("Bert") for a in archs))


def model_from_config(c: Mapping[str, Any], *, dtype: Any = jnp.float32, param_dtype: Any = None,
                      where: str = "config.json") -> Bert:
  """An `rcjax.nn.Bert` (param 'sp') computing what the HF BERT of this config.json dict computes;
  ValueError for variants it does not (relative positions, decoders, other activations)."""
  pos = c.get("position_embedding_type") or "absolute"
  if pos != "absolute":
    raise ValueError(f"{where}: position_embedding_type {pos!r} is not supported (only 'absolute')")
  if c.get("is_decoder") or c.get("add_cross_attention"):
    raise ValueError(f"{where}: a BERT decoder (is_decoder / add_cross_attention) is not supported (encoders only)")
  act = ACTIVATIONS.get(c.get("hidden_act", "gelu"))
  if act is None:
    raise ValueError(f"{where}: hidden_act {c.get('hidden_act')!r} is not supported ({', '.join(ACTIVATIONS)})")
  E, H = int(c["hidden_size"]), int(c["num_attention_heads"])
  if E % H:
    raise ValueError(f"{where}: hidden_size {E} is not a multiple of num_attention_heads {H}")
  mlm = "BertForMaskedLM" in (c.get("architectures") or [])
  pd = param_dtype or TORCH_DTYPES.get(str(c.get("torch_dtype") or c.get("dtype") or "float32"), np.float32)
  return Bert(vocab=int(c["vocab_size"]), width=E, depth=int(c["num_hidden_layers"]), heads=H,
              mlp=int(c["intermediate_size"]), max_len=int(c.get("max_position_embeddings", 512)),
              type_vocab=int(c.get("type_vocab_size", 2)), activation=act,
              norm_eps=float(c.get("layer_norm_eps", 1e-12)), pooler=not mlm, mlm=mlm, param="sp", dtype=dtype,
              param_dtype=pd)


def fit_to_tensors(model: Bert, names: set[str]) -> Bert:
  """`model` with the pooler and MLM head that the checkpoint's tensors have (config.json does not say)."""
  pooler = any(n.endswith("pooler.dense.weight") for n in names)
  mlm = "cls.predictions.bias" in names or "cls.predictions.transform.dense.weight" in names
  return model.clone(pooler=pooler, mlm=mlm)


def arch(model: Bert, params: Any) -> dict:
  """Resolved architecture of `model` at the sizes of `params` (the keys `rcjax.hf.config._arch` gives)."""
  a = model.arch()
  L, E, H, D = params["blocks"]["q"].shape
  a.update(layers=L, embed=E, heads=H, head_dim=D, kv_heads=params["blocks"]["k"].shape[2],
           mlp=params["blocks"]["up"].shape[-1], vocab=params["embed"].shape[0],
           max_len=params["positions"].shape[0], type_vocab=params["token_types"].shape[0],
           pooler="pooler" in params, mlm="mlm" in params)
  return a


def config_for(model: Bert, params: Any, base: Mapping[str, Any] | None, torch_dtype: str) -> dict:
  """The config.json dict of `model` at the sizes of `params`, updating `base` (the source's) where it is a BERT's."""
  a = arch(model, params)
  if a["heads"] * a["head_dim"] != a["embed"]:
    raise ValueError(f"BERT needs heads * head_dim == embed (HF derives head_dim = hidden_size / "
                     f"num_attention_heads), got {a['heads']} * {a['head_dim']} != {a['embed']}")
  if a["kv_heads"] != a["heads"]:
    raise ValueError(f"BERT has no grouped-query attention: kv_heads {a['kv_heads']} must equal heads {a['heads']}")
  c = dict(base) if base and base.get("model_type") == "bert" else {}
  act = {v: k for k, v in ACTIVATIONS.items() if k != "gelu_pytorch_tanh"}[a["activation"]]
  c.update(model_type="bert", architectures=["BertForMaskedLM" if a["mlm"] else "BertModel"],
           vocab_size=a["vocab"], hidden_size=a["embed"], num_hidden_layers=a["layers"],
           num_attention_heads=a["heads"], intermediate_size=a["mlp"], hidden_act=act,
           max_position_embeddings=a["max_len"], type_vocab_size=a["type_vocab"], layer_norm_eps=model.norm_eps,
           tie_word_embeddings=True, torch_dtype=torch_dtype)
  c.setdefault("position_embedding_type", "absolute")
  c.pop("dtype", None)
  return c


def sentence_files(src: str, width: int, tmp: str) -> dict[str, str]:
  """The sentence-transformers files of `src` for `save(extra_files=)`, `{name: path}`, with the Pooling
  module's `word_embedding_dimension` / `embedding_dimension` set to `width` (written under `tmp`); `{}` if
  `src` has no `modules.json`. ValueError for modules whose weights read the embedding (Dense, ...)."""
  if not os.path.isfile(os.path.join(src, "modules.json")):
    return {}
  with open(os.path.join(src, "modules.json")) as f:
    modules = json.load(f)
  out = {n: os.path.join(src, n) for n in ST_FILES if os.path.isfile(os.path.join(src, n))}
  for m in modules:
    kind, path = m.get("type", "").rsplit(".", 1)[-1], m.get("path", "")
    if kind == "Transformer" and path in ("", "."):
      continue
    if kind not in ("Pooling", "Normalize"):
      raise ValueError(f"{src}/modules.json: sentence-transformers module {kind} at {path!r} is not supported "
                       "(Transformer at the top level, Pooling and Normalize are; a module with weights of its "
                       "own would read the changed width)")
    for name in sorted(os.listdir(os.path.join(src, path))) if os.path.isdir(os.path.join(src, path)) else []:
      out[f"{path}/{name}"] = os.path.join(src, path, name)
    if kind == "Pooling":
      with open(os.path.join(src, path, "config.json")) as f:
        pooling = json.load(f)
      for k in ("word_embedding_dimension", "embedding_dimension"):  # sentence-transformers < 6 / >= 6
        if k in pooling:
          pooling[k] = width
      os.makedirs(os.path.join(tmp, path), exist_ok=True)
      with open(os.path.join(tmp, path, "config.json"), "w") as f:
        json.dump(pooling, f, indent=2)
      out[f"{path}/config.json"] = os.path.join(tmp, path, "config.json")
  return out
