"""HuggingFace causal LMs in and out of rcjax: `load(path) -> (GPT, params)`, `save(model, params, path)`.

Families: Llama (`llama`, `mistral`, `qwen2`; grouped-query attention, RoPE, SwiGLU, tied or untied,
optional biases), GPT-2 (`gpt2`) and GPT-NeoX/Pythia (`gpt_neox`; partial rotary, parallel residual);
BERT encoders (`bert`) load as `rcjax.nn.Bert` through the same functions (`rcjax.hf_bert`, docs/bert.md).
`load` returns an `rcjax.nn.GPT` configured like the checkpoint (param 'sp': HF models are standard
parametrization) and params of RC leaves in the checkpoint's dtype; `GPT.apply` gives the original
model's logits. `save` writes `config.json` and safetensors in the family's own names and layouts
(`model.safetensors`, or shards plus `model.safetensors.index.json` above `max_shard_size`), which
`transformers.AutoModelForCausalLM.from_pretrained` loads unchanged.

One table, two directions. For every HF tensor, `_entries` lists which rcjax leaf (and which layer of a
scanned leaf) each part of it is, as a numpy *view* of the HF array in the rcjax layout: PyTorch
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

import errno
import functools
import json
import math
import os
import shutil
import struct
import warnings
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rcjax import hf_bert, parametrization as pz, sharding
from rcjax._progress import bar
from rcjax.hf_layout import (_DTYPES, _IGNORED, _TORCH_DTYPE, Entry, Part, View, _same, _t, family as _family,
                             read_header, shard_files)
from rcjax.nn.bert import Bert
from rcjax.nn.gpt import ROPE_SCALINGS, GPT, logit_scale
from rcjax.rc import RC, boxes, is_rc

# config.json fields with one entry per block (remapped by `config_at_depth` when the depth changes)
PER_LAYER_FIELDS = ("layer_types",)
FAMILIES = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "gpt2": "gpt2", "gpt_neox": "gpt_neox"}
_ST_DTYPE = {np.dtype(v): k for k, v in _DTYPES.items()}
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "gpt2": "GPT2LMHeadModel", "gpt_neox": "GPTNeoXForCausalLM"}
# model types whose transformers config refuses hidden_size % num_attention_heads != 0 even with an explicit
# head_dim (LlamaConfig.validate_architecture in transformers 5; Mistral's and Qwen2's accept it; GPT-2 and
# GPT-NeoX derive head_dim = hidden_size / heads, checked apart)
HEADS_DIVIDE_HIDDEN = ("llama",)
DEFAULT_MAX_SHARD_SIZE = 5 * 2**30
# --- views: HF layout -> rcjax layout -------------------------------------------------------------


def _heads_out(h: int, d: int) -> View:   # nn.Linear (heads*head_dim, embed) -> (embed, heads, head_dim)
  return lambda a: a.reshape(h, d, -1).transpose(2, 0, 1)


def _heads_in(h: int, d: int) -> View:    # nn.Linear (embed, heads*head_dim) -> (heads, head_dim, embed)
  return lambda a: a.reshape(-1, h, d).transpose(1, 2, 0)


def _split(h: int, d: int) -> View:       # (heads*head_dim,) -> (heads, head_dim)
  return lambda a: a.reshape(h, d)


def _entries(family: str, a: Mapping[str, Any]) -> list[Entry]:
  """The HF tensors of a model with resolved architecture `a` (see `_arch`), and where each part lives."""
  E, H, K, D, F, V, L = (a[k] for k in ("embed", "heads", "kv_heads", "head_dim", "mlp", "vocab", "layers"))
  out: list[Entry] = []
  one = lambda name, shape, leaf, view=_same, layer=None: out.append(
      Entry(name, tuple(shape), (Part(leaf, layer, view),)))
  blk = lambda n: ("blocks", n)
  if family == "llama":
    one("model.embed_tokens.weight", (V, E), ("embed",))
    for i in range(L):
      p = f"model.layers.{i}."
      for s, n, kind in (("q", H, "q"), ("k", K, "k"), ("v", K, "v")):
        one(p + f"self_attn.{s}_proj.weight", (n * D, E), blk(kind), _heads_out(n, D), i)
        if a["qkv_bias"]:
          one(p + f"self_attn.{s}_proj.bias", (n * D,), blk(f"{kind}_bias"), _split(n, D), i)
      one(p + "self_attn.o_proj.weight", (E, H * D), blk("o"), _heads_in(H, D), i)
      if a["o_bias"]:
        one(p + "self_attn.o_proj.bias", (E,), blk("o_bias"), _same, i)
      one(p + "mlp.gate_proj.weight", (F, E), blk("gate"), _t, i)
      one(p + "mlp.up_proj.weight", (F, E), blk("up"), _t, i)
      one(p + "mlp.down_proj.weight", (E, F), blk("down"), _t, i)
      if a["mlp_bias"]:
        for s, n in (("gate", F), ("up", F), ("down", E)):
          one(p + f"mlp.{s}_proj.bias", (n,), blk(f"{s}_bias"), _same, i)
      one(p + "input_layernorm.weight", (E,), blk("attn_norm_scale"), _same, i)
      one(p + "post_attention_layernorm.weight", (E,), blk("mlp_norm_scale"), _same, i)
    one("model.norm.weight", (E,), ("final", "norm_scale"))
    if not a["tied"]:
      one("lm_head.weight", (V, E), ("readout",), _t)
  elif family == "gpt2":
    one("transformer.wte.weight", (V, E), ("embed",))
    one("transformer.wpe.weight", (a["max_len"], E), ("positions",))
    for i in range(L):
      p = f"transformer.h.{i}."
      one(p + "ln_1.weight", (E,), blk("attn_norm_scale"), _same, i)
      one(p + "ln_1.bias", (E,), blk("attn_norm_bias"), _same, i)
      qkv = lambda k: (lambda a_: a_.reshape(E, 3, H, D)[:, k])
      qkv_b = lambda k: (lambda a_: a_.reshape(3, H, D)[k])
      out.append(Entry(p + "attn.c_attn.weight", (E, 3 * E),
                       tuple(Part(blk(s), i, qkv(k)) for k, s in enumerate("qkv"))))
      out.append(Entry(p + "attn.c_attn.bias", (3 * E,),
                       tuple(Part(blk(f"{s}_bias"), i, qkv_b(k)) for k, s in enumerate("qkv"))))
      one(p + "attn.c_proj.weight", (E, E), blk("o"), lambda a_: a_.reshape(H, D, E), i)  # Conv1D: (in, out)
      one(p + "attn.c_proj.bias", (E,), blk("o_bias"), _same, i)
      one(p + "ln_2.weight", (E,), blk("mlp_norm_scale"), _same, i)
      one(p + "ln_2.bias", (E,), blk("mlp_norm_bias"), _same, i)
      one(p + "mlp.c_fc.weight", (E, F), blk("up"), _same, i)
      one(p + "mlp.c_fc.bias", (F,), blk("up_bias"), _same, i)
      one(p + "mlp.c_proj.weight", (F, E), blk("down"), _same, i)
      one(p + "mlp.c_proj.bias", (E,), blk("down_bias"), _same, i)
    one("transformer.ln_f.weight", (E,), ("final", "norm_scale"))
    one("transformer.ln_f.bias", (E,), ("final", "norm_bias"))
    if not a["tied"]:
      one("lm_head.weight", (V, E), ("readout",), _t)
  elif family == "gpt_neox":
    one("gpt_neox.embed_in.weight", (V, E), ("embed",))
    for i in range(L):
      p = f"gpt_neox.layers.{i}."
      for s, n in (("input_layernorm", "attn_norm"), ("post_attention_layernorm", "mlp_norm")):
        one(p + f"{s}.weight", (E,), blk(f"{n}_scale"), _same, i)
        one(p + f"{s}.bias", (E,), blk(f"{n}_bias"), _same, i)
      qkv = lambda k: (lambda a_: a_.reshape(H, 3, D, E)[:, k].transpose(2, 0, 1))
      qkv_b = lambda k: (lambda a_: a_.reshape(H, 3, D)[:, k])
      out.append(Entry(p + "attention.query_key_value.weight", (3 * H * D, E),
                       tuple(Part(blk(s), i, qkv(k)) for k, s in enumerate("qkv"))))
      if a["qkv_bias"]:
        out.append(Entry(p + "attention.query_key_value.bias", (3 * H * D,),
                         tuple(Part(blk(f"{s}_bias"), i, qkv_b(k)) for k, s in enumerate("qkv"))))
      one(p + "attention.dense.weight", (E, H * D), blk("o"), _heads_in(H, D), i)
      if a["o_bias"]:
        one(p + "attention.dense.bias", (E,), blk("o_bias"), _same, i)
      one(p + "mlp.dense_h_to_4h.weight", (F, E), blk("up"), _t, i)
      one(p + "mlp.dense_h_to_4h.bias", (F,), blk("up_bias"), _same, i)
      one(p + "mlp.dense_4h_to_h.weight", (E, F), blk("down"), _t, i)
      one(p + "mlp.dense_4h_to_h.bias", (E,), blk("down_bias"), _same, i)
    one("gpt_neox.final_layer_norm.weight", (E,), ("final", "norm_scale"))
    one("gpt_neox.final_layer_norm.bias", (E,), ("final", "norm_bias"))
    if not a["tied"]:
      one("embed_out.weight", (V, E), ("readout",), _t)
  elif family == "bert":

    out = hf_bert.entries(a)
  else:
    raise ValueError(f"unsupported family {family!r}; supported: {sorted(set(FAMILIES.values()))}")
  return out


# --- config.json <-> GPT ----------------------------------------------------------------------------
def _rope_dict(c: dict) -> dict:
  """The RoPE parameters transformers 5 uses: a non-null `rope_scaling` in place of `rope_parameters`."""
  return c.get("rope_scaling") or c.get("rope_parameters") or {}


def _rope_theta(c: dict, default: float) -> float:
  return float(_rope_dict(c).get("rope_theta") or c.get("rope_theta") or c.get("rotary_emb_base") or default)


def _rope_scaling(c: dict, where: str) -> tuple | None:
  """`GPT.rope_scaling` from the RoPE parameters (`_rope_dict`): None for plain RoPE, 'linear' and 'llama3' as `(('rope_type', t), (key, value), ...)`; ValueError otherwise."""

  rs = _rope_dict(c)
  kind = rs.get("rope_type", rs.get("type", "default"))
  if kind in ("default", None):
    return None
  if kind not in ROPE_SCALINGS or set(ROPE_SCALINGS[kind]) - set(rs):
    raise ValueError(f"{where}: RoPE parameters {rs} are not supported (plain RoPE, 'linear' and 'llama3' "
                     "scaling are)")
  return (("rope_type", kind),) + tuple((k, float(rs[k])) for k in ROPE_SCALINGS[kind])


def model_from_config(config: Mapping[str, Any], *, dtype: Any = jnp.float32, param_dtype: Any = None,
                      where: str = "config.json") -> GPT:
  """An `rcjax.nn.GPT` (param 'sp') that computes what the HF model of this config.json dict computes."""

  c = dict(config)
  if hf_bert.is_bert_config(c):  # BERT encoders: rcjax.nn.Bert (rcjax.hf_bert)
    return hf_bert.model_from_config(c, dtype=dtype, param_dtype=param_dtype, where=where)
  mt = c.get("model_type")
  fam = FAMILIES.get(mt) if mt else None
  if fam is None:
    try:
      fam = _family(c)
    except ValueError:
      fam = None
    if fam not in ("llama", "gpt2", "gpt_neox"):
      raise ValueError(f"{where}: unsupported model type {mt!r} (architectures {c.get('architectures')}); "
                       f"supported: {', '.join(sorted(FAMILIES) + ['bert'])}")
  pd = param_dtype or _TORCH_DTYPE.get(str(c.get("torch_dtype") or c.get("dtype") or "float32"), np.float32)
  common = dict(vocab=int(c["vocab_size"]), param="sp", dtype=dtype, param_dtype=pd)
  if fam == "llama":
    scaling = _rope_scaling(c, where)
    act = c.get("hidden_act", "silu")
    if act != "silu":
      raise ValueError(f"{where}: hidden_act {act!r} is not supported for {mt} (only 'silu')")
    window = int(c["sliding_window"]) if mt == "mistral" and c.get("sliding_window") else None
    if mt == "qwen2" and c.get("use_sliding_window") and c.get("sliding_window"):
      warnings.warn(f"{where}: Qwen2's use_sliding_window (on some layers only) is ignored: rcjax attends to "
                    "the whole prefix, which agrees with the HF model on sequences up to the window", stacklevel=2)
    qwen = mt == "qwen2"
    heads = int(c["num_attention_heads"])
    return GPT(**common, width=int(c["hidden_size"]), depth=int(c["num_hidden_layers"]), heads=heads,
               kv_heads=int(c.get("num_key_value_heads") or heads),
               head_dim=int(c.get("head_dim") or int(c["hidden_size"]) // heads), mlp=int(c["intermediate_size"]),
               max_len=int(c.get("max_position_embeddings", 2048)), style="llama",
               tied=bool(c.get("tie_word_embeddings", False)),
               qkv_bias=True if qwen else bool(c.get("attention_bias", False)),
               o_bias=False if qwen else bool(c.get("attention_bias", False)),
               mlp_bias=False if qwen else bool(c.get("mlp_bias", False)),
               norm_eps=float(c.get("rms_norm_eps", 1e-6)), rope_base=_rope_theta(c, 10000.0),
               rope_scaling=scaling, sliding_window=window)
  acts = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": None, "gelu": "gelu_exact",
          "relu": "relu"}
  if fam == "gpt2":
    act = acts.get(c.get("activation_function", "gelu_new"))
    if act is None:
      raise ValueError(f"{where}: activation_function {c.get('activation_function')!r} is not supported")
    if not c.get("scale_attn_weights", True) or c.get("scale_attn_by_inverse_layer_idx", False):
      raise ValueError(f"{where}: GPT-2 attention without 1/sqrt(head_dim) scaling (scale_attn_weights / "
                       "scale_attn_by_inverse_layer_idx) is not supported")
    E = int(c.get("n_embd", c.get("hidden_size", 768)))
    return GPT(**common, width=E, depth=int(c.get("n_layer", c.get("num_hidden_layers", 12))),
               heads=int(c.get("n_head", c.get("num_attention_heads", 12))), mlp=int(c.get("n_inner") or 4 * E),
               max_len=int(c.get("n_positions", c.get("max_position_embeddings", 1024))), style="gpt2",
               activation=act, tied=bool(c.get("tie_word_embeddings", True)),
               norm_eps=float(c.get("layer_norm_epsilon", 1e-5)))
  # gpt_neox
  scaling = _rope_scaling(c, where)
  act = acts.get(c.get("hidden_act", "gelu"))
  if act is None:
    raise ValueError(f"{where}: hidden_act {c.get('hidden_act')!r} is not supported")
  E, H = int(c["hidden_size"]), int(c["num_attention_heads"])
  D = E // H
  pct = float(_rope_dict(c).get("partial_rotary_factor", c.get("rotary_pct", 0.25)))  # GPTNeoXConfig's default
  bias = bool(c.get("attention_bias", True))
  return GPT(**common, width=E, depth=int(c["num_hidden_layers"]), heads=H, mlp=int(c["intermediate_size"]),
             max_len=int(c.get("max_position_embeddings", 2048)), style="neox", activation=act,
             tied=bool(c.get("tie_word_embeddings", False)),
             parallel_residual=bool(c.get("use_parallel_residual", True)), qkv_bias=bias, o_bias=bias,
             mlp_bias=True, norm_eps=float(c.get("layer_norm_eps", 1e-5)), rope_base=_rope_theta(c, 10000.0),
             rope_scaling=scaling, rotary_dim=int(D * pct) if int(D * pct) != D else None)


def _arch(model: GPT, params: Any) -> dict:
  """Resolved architecture of `model` at the sizes of `params`."""
  if "blocks" not in params:
    raise ValueError("HF conversion needs scanned blocks (params['blocks'] with a leading layers axis: "
                     "rcjax.nn.GPT(scan=True), the default)")
  if _is_bert(model):

    return hf_bert.arch(model, params)
  a = model.arch()
  q = params["blocks"]["q"]
  L, E, H, D = q.shape
  a.update(layers=L, embed=E, heads=H, head_dim=D, kv_heads=params["blocks"]["k"].shape[2],
           mlp=params["blocks"]["up"].shape[-1], vocab=params["embed"].shape[0], max_len=model.max_len)
  if "positions" in params:
    a["max_len"] = params["positions"].shape[0]
  return a


def _is_bert(model: Any) -> bool:

  return isinstance(model, Bert)


def family_of(model: GPT) -> str:
  """The HF family ('llama' | 'gpt2' | 'gpt_neox' | 'bert') whose architecture `model` has; ValueError if none."""
  if _is_bert(model):
    return "bert"
  a = model.arch()
  ln, swiglu, par = a["norm"] == "layernorm", a["activation"] == "swiglu", a["parallel_residual"]
  if a["norm"] == "rmsnorm" and a["positions"] == "rope" and swiglu and not par:
    return "llama"
  if ln and not swiglu and a["bias"] and a["mlp_bias"]:
    if a["positions"] == "learned" and not par and a["qkv_bias"] and a["o_bias"]:
      return "gpt2"
    if a["positions"] == "rope" and a["qkv_bias"] == a["o_bias"]:
      return "gpt_neox"
  raise ValueError(f"this GPT (style {model.style!r}: " + ", ".join(
      f"{k}={a[k]}" for k in ("norm", "positions", "activation", "parallel_residual", "bias", "qkv_bias",
                              "o_bias", "mlp_bias")) + ") matches no HuggingFace family (llama, gpt2, gpt_neox)")


def config_for(model: GPT, params: Any, base: Mapping[str, Any] | None = None, dtype: Any = None) -> dict:
  """The HF config.json dict of `model` at the sizes of `params`, updating `base` (e.g. the source's
  config, to keep its token ids and other fields) where given."""
  if _is_bert(model):

    dt = np.dtype(dtype or _leaf_dtype(params))
    if dt not in {np.dtype(v) for v in _TORCH_DTYPE.values()}:
      raise ValueError(f"cannot save dtype {dt} (float32, float16 or bfloat16)")
    return hf_bert.config_for(model, params, base, {np.dtype(v): k for k, v in _TORCH_DTYPE.items()}[dt])
  fam = family_of(model)
  a = _arch(model, params)
  c = dict(base) if base and FAMILIES.get(base.get("model_type")) == fam else {}
  mt = c.get("model_type", fam)
  if fam == "llama":  # which of llama / mistral / qwen2 can hold these biases
    qwen_like = a["qkv_bias"] and not a["o_bias"] and not a["mlp_bias"]
    llama_like = a["qkv_bias"] == a["o_bias"]
    if not (mt == "qwen2" and qwen_like or mt == "llama" and llama_like or mt == "mistral" and not (
        a["qkv_bias"] or a["o_bias"] or a["mlp_bias"])):
      if not (qwen_like or llama_like):
        raise ValueError("no HF Llama-family model has these biases: Llama has q/k/v/o biases together "
                         "(attention_bias), Qwen2 q/k/v only")
      mt = "qwen2" if qwen_like else "llama"
  if mt in HEADS_DIVIDE_HIDDEN and a["embed"] % a["heads"]:
    E, H = a["embed"], a["heads"]
    near = " or ".join(str(e) for e in (E // H * H, E // H * H + H) if e > 0)
    raise ValueError(f"transformers refuses a {mt} config whose hidden_size {E} is not a multiple of "
                     f"num_attention_heads {H}, even with an explicit head_dim: choose embed {near} for {H} "
                     f"heads, or heads dividing {E}")
  if fam == "gpt2" and a["heads"] * a["head_dim"] != a["embed"]:
    raise ValueError(f"GPT-2 needs heads * head_dim == embed (HF derives head_dim = n_embd / n_head), got "
                     f"{a['heads']} * {a['head_dim']} != {a['embed']}")
  if fam == "gpt_neox" and a["heads"] * a["head_dim"] != a["embed"]:
    raise ValueError(f"GPT-NeoX needs heads * head_dim == embed (HF derives head_dim = hidden_size / "
                     f"num_attention_heads), got {a['heads']} * {a['head_dim']} != {a['embed']}")
  dt = np.dtype(dtype or _leaf_dtype(params))
  torch_dtype = {np.dtype(v): k for k, v in _TORCH_DTYPE.items()}.get(dt)
  if torch_dtype is None:
    raise ValueError(f"cannot save dtype {dt} (float32, float16 or bfloat16)")
  c.update(model_type=mt, architectures=[_ARCHITECTURES[mt]], vocab_size=a["vocab"], torch_dtype=torch_dtype,
           tie_word_embeddings=bool(a["tied"]))
  c.pop("dtype", None)
  if fam == "llama":
    c.update(hidden_size=a["embed"], intermediate_size=a["mlp"], num_hidden_layers=a["layers"],
             num_attention_heads=a["heads"], num_key_value_heads=a["kv_heads"], head_dim=a["head_dim"],
             hidden_act="silu", rms_norm_eps=model.norm_eps, rope_theta=model.rope_base,
             max_position_embeddings=c.get("max_position_embeddings", model.max_len))
    _write_rope(c, model)
    if mt == "llama":
      c.update(attention_bias=bool(a["qkv_bias"]), mlp_bias=bool(a["mlp_bias"]))
    if model.sliding_window is not None:
      if mt != "mistral":
        raise ValueError(f"a sliding attention window has no place in a {mt} config.json (Mistral's has)")
      c["sliding_window"] = model.sliding_window
    elif mt == "mistral":
      c["sliding_window"] = None
  elif fam == "gpt2":
    act = {"gelu": "gelu_new", "gelu_exact": "gelu", "relu": "relu"}[a["activation"]]
    c.update(n_embd=a["embed"], n_head=a["heads"], n_layer=a["layers"], n_inner=a["mlp"],
             n_positions=a["max_len"], activation_function=act, layer_norm_epsilon=model.norm_eps)
    c.setdefault("scale_attn_weights", True)
  else:
    act = {"gelu": "gelu_new", "gelu_exact": "gelu", "relu": "relu"}[a["activation"]]
    pct = _rotary_pct(a["head_dim"], model.rotary_dim or a["head_dim"],
                      _rope_dict(c).get("partial_rotary_factor", c.get("rotary_pct")))
    c.update(hidden_size=a["embed"], intermediate_size=a["mlp"], num_hidden_layers=a["layers"],
             num_attention_heads=a["heads"], hidden_act=act, rotary_pct=pct, rotary_emb_base=model.rope_base,
             use_parallel_residual=bool(a["parallel_residual"]), layer_norm_eps=model.norm_eps,
             attention_bias=bool(a["qkv_bias"]), max_position_embeddings=c.get("max_position_embeddings",
                                                                                 model.max_len))
    _write_rope(c, model, pct)
  return c


def config_at_depth(config: Mapping[str, Any], depth_map: Any) -> dict:
  """`config` (a config.json dict) for the blocks of `depth_map` (new block i copies old block
  `depth_map[i]`, see `rcjax.depth`): its per-layer fields follow the blocks, so they stay consistent
  with the new `num_hidden_layers` / `n_layer` (which `config_for` writes from the params). Lists with
  one entry per layer (`layer_types`) are remapped; Qwen2's `max_window_layers` (layers from it on use
  the sliding window) becomes the new depth when it covers every old layer, else the first new layer
  that copies a sliding one, with `layer_types` written out when the remapped pattern is not a prefix.

  >>> c = config_at_depth({"num_hidden_layers": 2, "layer_types": ["full_attention", "sliding_attention"]}, [0, 1, 0, 1])
  >>> c["layer_types"]
  ['full_attention', 'sliding_attention', 'full_attention', 'sliding_attention']
  """
  c, m = dict(config), [int(i) for i in depth_map]
  old = int(c.get("num_hidden_layers", c.get("n_layer", 0)) or 0) or max(m) + 1
  for key in PER_LAYER_FIELDS:
    value = c.get(key)
    if isinstance(value, list):
      if len(value) != old:
        raise ValueError(f"config.json: {key} has {len(value)} entries for {old} layers")
      c[key] = [value[i] for i in m]
  mwl = c.get("max_window_layers")
  if isinstance(mwl, int) and not isinstance(mwl, bool):
    if mwl >= old:
      c["max_window_layers"] = len(m)
    else:
      sliding = [i >= mwl for i in m]
      first = sliding.index(True) if True in sliding else len(m)
      c["max_window_layers"] = first
      if any(sliding[first:]) and not all(sliding[first:]) and "layer_types" not in c:
        c["layer_types"] = ["sliding_attention" if s else "full_attention" for s in sliding]
  for key in ("num_hidden_layers", "n_layer"):
    if key in c:
      c[key] = len(m)
  return c


def _rotary_pct(head_dim: int, rotary_dim: int, keep: float | None = None) -> float:
  """A rotary_pct from which transformers' `int(head_dim * pct)` gives `rotary_dim` back: `keep` (the
  source's) or rotary_dim / head_dim where they do, else (rotary_dim + 0.5) / head_dim (30 / 44 gives 29)."""
  for pct in (keep, rotary_dim / head_dim, (rotary_dim + 0.5) / head_dim):
    if pct is not None and int(head_dim * float(pct)) == rotary_dim:
      return float(pct)
  raise AssertionError(f"internal: no rotary_pct for {rotary_dim} of {head_dim} dims")


def _write_rope(c: dict, model: GPT, pct: float | None = None) -> None:
  """The RoPE keys of config.json, classic (`rope_theta`/`rope_scaling`) and transformers 5's
  `rope_parameters` (read first), in agreement."""
  scaling = dict(model.rope_scaling or ())
  rp = {**scaling} if scaling else {"rope_type": "default"}
  rp["rope_theta"] = model.rope_base
  if pct is not None:
    rp["partial_rotary_factor"] = pct
  c["rope_parameters"] = rp
  c["rope_scaling"] = rp if scaling else None  # transformers 5 lets a non-null rope_scaling replace rope_parameters


def _leaf_dtype(params: Any) -> np.dtype:
  return np.dtype(jax.tree.leaves(params, is_leaf=is_rc)[0].value.dtype)


# --- reading ----------------------------------------------------------------------------------------
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


def _stored(files: _Files) -> Any:
  """The one float dtype the tensors are stored in (None if they mix several)."""
  stored = {files.where[n][1]["dtype"] for n in files.names()} - {"I64", "I32", "BOOL", "U8"}
  return _DTYPES[sorted(stored)[0]] if len(stored) == 1 else None


def stored_dtype(path: str | os.PathLike, config: Mapping[str, Any] | None = None) -> np.dtype:
  """The dtype an HF directory's weights are stored in, as `save` can write it: the tensors' one float dtype
  where it is float32, float16 or bfloat16 (config.json's torch_dtype may be missing or stale), else
  `config`'s torch_dtype / dtype, else float32. Reads only the safetensors headers."""
  stored = _stored(_Files(os.fspath(path)))
  if stored is not None and np.dtype(stored) in {np.dtype(v) for v in _TORCH_DTYPE.values()}:
    return np.dtype(stored)
  config = config or {}
  return np.dtype(_TORCH_DTYPE.get(str(config.get("torch_dtype") or config.get("dtype")), np.float32))


def _by_leaf(entries: list[Entry], names: Mapping[str, str] | None = None) -> dict[tuple, list[tuple[str, Part]]]:
  """`{leaf path: [(tensor name in the files, part)]}` (names: canonical -> stored, where they differ)."""
  out: dict[tuple, list[tuple[str, Part]]] = {}
  for e in entries:
    for part in e.parts:
      out.setdefault(part.leaf, []).append(((names or {}).get(e.name, e.name), part))
  return out


def _resolve_names(entries: list[Entry], files: _Files, path: str) -> dict[str, str]:
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
  files = _Files(path)
  model = model_from_config(config, dtype=compute_dtype, param_dtype=dtype or _stored(files), where=cfg_path)
  if _is_bert(model):  # the pooler and MLM head are in the tensors, not in config.json

    model = hf_bert.fit_to_tensors(model, files.names())
  abstract = abstract_params(model)
  fam = family_of(model)
  a = _arch(model, abstract)
  entries = _entries(fam, a)
  names = _resolve_names(entries, files, path)
  for e in entries:
    arr_shape = tuple(files.where[names[e.name]][1]["shape"])
    if arr_shape != e.shape:
      raise ValueError(f"{path}: tensor {names[e.name]} has shape {arr_shape}, config.json implies {e.shape}")
  by_leaf = _by_leaf(entries, names)

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
  params = boxes(jax.tree_util.tree_unflatten(treedef, values), abstract)
  return model, params


# --- writing ----------------------------------------------------------------------------------------
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


def _create(fname: str, entries: list[Entry], dtypes: dict[str, np.dtype]) -> None:
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
  fam = family_of(sp_model)
  entries = _entries(fam, _arch(sp_model, params))
  leaves = {tuple(k.key for k in kp): box for kp, box in
            jax.tree_util.tree_flatten_with_path(params, is_leaf=is_rc)[0]}
  used = {p.leaf for e in entries for p in e.parts}
  if unused := sorted("/".join(k) for k in set(leaves) - used):
    raise ValueError(f"params {unused} have no place in a {fam} checkpoint")
  dtypes = {e.name: np.dtype(dtype or leaves[e.parts[0].leaf].value.dtype) for e in entries}
  plan = _plan_files(entries, dtypes, max_shard_size)
  names = (["model.safetensors"] if len(plan) == 1 else
           [f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))])
  tmp = path + ".rcjax-tmp"
  main = jax.process_index() == 0
  try:
    if main:
      shutil.rmtree(tmp, ignore_errors=True)
      os.makedirs(tmp)
      for fname, es in zip(names, plan):
        _create(os.path.join(tmp, fname), es, dtypes)
    sharding.sync("rcjax.hf.save:created")
    files = _Files(tmp, mode="r+")
    max_chunk = 0
    for leaf_path, parts in _progress(list(_by_leaf(entries).items()), progress and main,
                                      f"writing {os.path.basename(path)}"):
      box, f = leaves[leaf_path], factors.get(leaf_path, 1.0)
      views = []  # (layer, view of the output file in the leaf's layout), checked once to be views
      for name, part in parts:
        out_all = files.array(name)
        view = part.view(out_all)
        if not np.may_share_memory(view, out_all):
          raise AssertionError(f"internal: the layout view of {name} is a copy")
        views.append((part.layer, view))
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
  names = (["model.safetensors"] if len(plan) == 1 else
           [f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))])
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
