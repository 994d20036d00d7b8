"""The HF side of an `rcjax.nn.GPT` / `rcjax.nn.Bert`: config.json <-> model (`model_from_config`,
`config_for`, `config_at_depth`), the family of a model (`family_of`) and its resolved architecture
(`_arch`: the sizes and flags `rcjax.hf.layout.entries` lists the tensors of). Above `rcjax.hf.layout`
(the tensor tables) and `rcjax.hf.files`, below the readers and writers.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rcjax.hf import bert as hf_bert
from rcjax.hf.files import TORCH_DTYPES
from rcjax.hf.layout import family as _family
from rcjax.nn.bert import Bert
from rcjax.nn.gpt import ROPE_SCALINGS, GPT
from rcjax.rc import is_rc

# config.json fields with one entry per block (remapped by `config_at_depth` when the depth changes)
PER_LAYER_FIELDS = ("layer_types",)
FAMILIES = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "gpt2": "gpt2", "gpt_neox": "gpt_neox"}
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "gpt2": "GPT2LMHeadModel", "gpt_neox": "GPTNeoXForCausalLM"}
# model types whose transformers config refuses hidden_size % num_attention_heads != 0 even with an explicit
# head_dim (LlamaConfig.validate_architecture in transformers 5; Mistral's and Qwen2's accept it; GPT-2 and
# GPT-NeoX derive head_dim = hidden_size / heads, checked apart)
HEADS_DIVIDE_HIDDEN = ("llama",)


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
  if hf_bert.is_bert_config(c):  # BERT encoders: rcjax.nn.Bert (rcjax.hf.bert)
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
  pd = param_dtype or TORCH_DTYPES.get(str(c.get("torch_dtype") or c.get("dtype") or "float32"), np.float32)
  common = dict(vocab=int(c["vocab_size"]), param="sp", dtype=dtype, param_dtype=pd)
  build = {"llama": _llama_model, "gpt2": _gpt2_model, "gpt_neox": _neox_model}[fam]
  return build(c, mt, common, where)


def _llama_model(c: dict, mt: str | None, common: dict, where: str) -> GPT:
  scaling = _rope_scaling(c, where)
  act = c.get("hidden_act", "silu")
  if act != "silu":
    raise ValueError(f"{where}: hidden_act {act!r} is not supported for {mt} (only 'silu')")
  window = int(c["sliding_window"]) if mt == "mistral" and c.get("sliding_window") else None
  if mt == "qwen2" and c.get("use_sliding_window") and c.get("sliding_window"):
    warnings.warn(f"{where}: Qwen2's use_sliding_window (on some layers only) is ignored: rcjax attends to "
                  "the whole prefix, which agrees with the HF model on sequences up to the window", stacklevel=3)
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


_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": None, "gelu": "gelu_exact",
                "relu": "relu"}


def _gpt2_model(c: dict, mt: str | None, common: dict, where: str) -> GPT:
  act = _ACTIVATIONS.get(c.get("activation_function", "gelu_new"))
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


def _neox_model(c: dict, mt: str | None, common: dict, where: str) -> GPT:
  scaling = _rope_scaling(c, where)
  act = _ACTIVATIONS.get(c.get("hidden_act", "gelu"))
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
    if dt not in {np.dtype(v) for v in TORCH_DTYPES.values()}:
      raise ValueError(f"cannot save dtype {dt} (float32, float16 or bfloat16)")
    return hf_bert.config_for(model, params, base, {np.dtype(v): k for k, v in TORCH_DTYPES.items()}[dt])
  fam = family_of(model)
  a = _arch(model, params)
  c = dict(base) if base and FAMILIES.get(base.get("model_type")) == fam else {}
  mt = _model_type(fam, a, c.get("model_type", fam))
  dt = np.dtype(dtype or _leaf_dtype(params))
  torch_dtype = {np.dtype(v): k for k, v in TORCH_DTYPES.items()}.get(dt)
  if torch_dtype is None:
    raise ValueError(f"cannot save dtype {dt} (float32, float16 or bfloat16)")
  c.update(model_type=mt, architectures=[_ARCHITECTURES[mt]], vocab_size=a["vocab"], torch_dtype=torch_dtype,
           tie_word_embeddings=bool(a["tied"]))
  c.pop("dtype", None)
  _family_fields(c, fam, mt, a, model)
  return c


def _model_type(fam: str, a: dict, mt: str) -> str:
  """The HF model_type that holds the architecture `a` of family `fam` (`mt`: the base config's, or the
  family's); ValueError for an architecture no HF model of the family has."""
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
  return mt


def _family_fields(c: dict, fam: str, mt: str, a: dict, model: GPT) -> None:
  """config.json's family-specific fields of `model` (architecture `a`) written into `c`."""
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
