"""Ground truth for HuggingFace-checkpoint tests: tiny random checkpoints and a float64 numpy forward pass.

`write_tiny` writes a complete HF checkpoint directory (config.json + safetensors, sharded with an index if
asked) in the tensor names and layouts HF itself stores for Llama, Mistral, Qwen2, GPT-2 and GPT-NeoX, with
random weights in which every tensor matters (norm weights near 1 but not 1, nonzero biases). The names and
stored shapes of the tensors (only they) come from rcjax's table, `rcjax.hf.layout` (one table per family);
transformers loading them unchanged (below) is what makes a wrong name or shape in that table fail.
`reference_logits` reads such a directory (or a real one of these families) and runs a plain float64 forward
pass written from the architectures: numpy only, nothing from rcjax, jax or torch (the tensors are read by
their HF names, the layouts written out here), so that library code can be tested against it.
`tests/test_hf_reference.py` checks both against `transformers` (no missing, unexpected or mismatched
tensors); the BERT section at the end (`write_tiny_bert`, `reference_bert`) is checked against it in
`tests/test_bert.py`.

>>> import tempfile
>>> d = tempfile.mkdtemp()
>>> cfg = write_tiny(d, 'llama', kv_heads=2)
>>> reference_logits(d, np.zeros((1, 3), np.int64)).shape
(1, 3, 64)
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

MODEL_TYPES = ("llama", "mistral", "qwen2", "gpt2", "gpt_neox")
_LLAMA = ("llama", "mistral", "qwen2")  # RMSNorm + RoPE + GQA + SwiGLU
_ARCH = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
         "gpt2": "GPT2LMHeadModel", "gpt_neox": "GPTNeoXForCausalLM"}
MODEL_FAMILY = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "gpt2": "gpt2", "gpt_neox": "gpt_neox"}
_TIED_DEFAULT = {"llama": False, "mistral": False, "qwen2": False, "gpt2": True, "gpt_neox": False}


# ----------------------------------------------------------------------------------------------------------
# Writing


def _config(model_type, *, vocab, layers, embed, heads, kv_heads, head_dim, mlp, max_len, dtype, tied):
  """The config.json of a tiny checkpoint: the classic keys (rope_theta, rotary_pct, ...) and the
  `rope_parameters` that transformers 5.x reads first, kept in agreement."""
  cfg = {"model_type": model_type, "architectures": [_ARCH[model_type]], "vocab_size": vocab,
         "torch_dtype": dtype, "dtype": dtype, "tie_word_embeddings": tied, "use_cache": True}
  if model_type in _LLAMA:
    cfg.update(hidden_size=embed, intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=heads,
               num_key_value_heads=kv_heads, max_position_embeddings=max_len, hidden_act="silu",
               rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=None)  # eps, theta: not HF's defaults
    if head_dim is not None:
      cfg["head_dim"] = head_dim
    if model_type == "llama":
      cfg.update(attention_bias=False, mlp_bias=False)
    elif model_type == "mistral":
      cfg.update(sliding_window=None)
    else:  # qwen2
      cfg.update(use_sliding_window=False, sliding_window=None)
  elif model_type == "gpt2":
    cfg.update(n_embd=embed, n_head=heads, n_layer=layers, n_positions=max_len, n_inner=mlp, n_ctx=max_len,
               layer_norm_epsilon=1e-4, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
               attn_pdrop=0.0, scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
               reorder_and_upcast_attn=False, bos_token_id=vocab - 1, eos_token_id=vocab - 1)
  else:  # gpt_neox
    cfg.update(hidden_size=embed, intermediate_size=mlp, num_attention_heads=heads, num_hidden_layers=layers,
               max_position_embeddings=max_len, rotary_pct=0.25, rotary_emb_base=20000.0, rope_scaling=None,
               use_parallel_residual=True, hidden_act="gelu", layer_norm_eps=1e-4, attention_bias=True,
               attention_dropout=0.0, hidden_dropout=0.0)
  return cfg


def _sync_rope(cfg: dict, overrides: dict) -> None:
  """Write `rope_parameters` (transformers >= 5 reads it before the classic keys) from the classic keys,
  unless the caller passed `rope_parameters` themselves."""
  if "rope_parameters" in overrides or cfg["model_type"] == "gpt2":
    return
  if cfg["model_type"] == "gpt_neox":
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg["rotary_emb_base"],
                              "partial_rotary_factor": cfg["rotary_pct"]}
  else:
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg["rope_theta"]}


def _spec(cfg: dict) -> list[tuple[str, tuple, str]]:
  """`[(name, stored shape, kind)]` for the checkpoint `cfg` describes, in HF's own names and layouts (GPT-2's
  as the hub has them, without 'transformer.'), from the family's table in `rcjax.hf.layout`.
  kind: 'w' (a matrix, std 1/sqrt(fan in)), 'w_t' (Conv1D (in, out) matrix), 'emb', 'norm' or 'bias'."""
  mt, V = cfg["model_type"], cfg["vocab_size"]
  if mt in _LLAMA:
    E, H, L, I = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    attn_bias = mt == "llama" and cfg.get("attention_bias", False)
    a = dict(embed=E, heads=H, layers=L, mlp=I, kv_heads=cfg.get("num_key_value_heads") or H,
             head_dim=cfg.get("head_dim") or E // H, qkv_bias=attn_bias or mt == "qwen2", o_bias=attn_bias,
             mlp_bias=mt == "llama" and cfg.get("mlp_bias", False))
  elif mt == "gpt2":
    E, H = cfg["n_embd"], cfg["n_head"]
    a = dict(embed=E, heads=H, kv_heads=H, head_dim=E // H, layers=cfg["n_layer"], mlp=cfg.get("n_inner") or 4 * E,
             max_len=cfg["n_positions"])
  else:  # gpt_neox
    E, H, bias = cfg["hidden_size"], cfg["num_attention_heads"], cfg.get("attention_bias", True)
    a = dict(embed=E, heads=H, kv_heads=H, head_dim=E // H, layers=cfg["num_hidden_layers"],
             mlp=cfg["intermediate_size"], qkv_bias=bias, o_bias=bias)
  a.update(vocab=V, tied=cfg["tie_word_embeddings"])
  return _from_table(MODEL_FAMILY[mt], a, lambda name: name.removeprefix("transformer."))


def _from_table(fam: str, a: dict, rename=lambda name: name) -> list[tuple[str, tuple, str]]:
  """The names and stored shapes of family `fam`'s tensors at architecture `a`, from rcjax's table (the one
  thing this reference takes from rcjax), with the kind of values each gets."""
  from rcjax.hf.layout import dims_of, stored_shape, tensors

  dims = dims_of(a)
  kind = lambda t: ({"linear": "w", "conv1d": "w_t", "embedding": "emb"}.get(t.stored)
                    or ("norm" if str(t.leaf).endswith("norm_scale") else "bias"))
  return [(rename(name), stored_shape(t, dims), kind(t)) for name, _, t in tensors(fam, a)]


def _random(rng, shape, kind):
  if kind == "norm":
    return 1.0 + 0.1 * rng.standard_normal(shape)
  if kind == "bias":
    return 0.1 * rng.standard_normal(shape)
  fan_in = shape[1] if kind in ("w", "emb") else shape[0]  # embeddings: as a readout over `embed`
  return rng.standard_normal(shape) / math.sqrt(fan_in)


def _np_dtype(dtype: str):
  if dtype == "bfloat16":
    import ml_dtypes
    return np.dtype(ml_dtypes.bfloat16)
  if dtype not in ("float32", "float16"):
    raise ValueError(f"dtype must be float32, bfloat16 or float16, not {dtype!r}")
  return np.dtype(dtype)


def write_tiny(path: str | os.PathLike, model_type: str, *, vocab: int = 64, layers: int = 2, embed: int = 32,
               heads: int = 4, kv_heads: int | None = None, head_dim: int | None = None, mlp: int | None = None,
               max_len: int = 64, dtype: str = "float32", tied: bool | None = None, seed: int = 0,
               shards: int = 1, **config_overrides) -> dict:
  """Write a tiny random HF checkpoint that `AutoModelForCausalLM.from_pretrained(path)` loads unchanged.

  Args:
    model_type: 'llama', 'mistral', 'qwen2', 'gpt2' or 'gpt_neox'.
    kv_heads: key/value heads (Llama family only; default `heads`).
    head_dim: an explicit head dimension (Llama family only; default `embed // heads`).
    mlp: MLP width (default 4 * embed; for GPT-2 written as `n_inner`).
    max_len: max_position_embeddings / n_positions.
    dtype: stored dtype, 'float32', 'bfloat16' or 'float16'.
    tied: tie the readout to the input embedding (default: the family's usual choice, True only for GPT-2);
      a tied readout is not stored.
    shards: > 1 writes model-0000k-of-0000n.safetensors and model.safetensors.index.json.
    config_overrides: config.json keys to set or add (e.g. attention_bias=True, mlp_bias=True for Llama,
      use_parallel_residual=False, rotary_pct=0.5 for GPT-NeoX, rms_norm_eps, rope_theta); the tensors written
      follow the final config, and `rope_parameters` is rewritten from the classic keys unless passed too.

  Returns:
    the config dict written to config.json.
  """
  from safetensors.numpy import save_file

  if model_type not in MODEL_TYPES:
    raise ValueError(f"unsupported model type {model_type!r}; supported: {MODEL_TYPES}")
  if model_type not in _LLAMA and (kv_heads not in (None, heads) or head_dim not in (None, embed // heads)):
    raise ValueError(f"{model_type} has no separate kv_heads / head_dim")
  store = _np_dtype(dtype)
  cfg = _config(model_type, vocab=vocab, layers=layers, embed=embed, heads=heads, kv_heads=kv_heads or heads,
                head_dim=head_dim, mlp=mlp or 4 * embed, max_len=max_len, dtype=dtype,
                tied=_TIED_DEFAULT[model_type] if tied is None else tied)
  cfg.update(config_overrides)
  _sync_rope(cfg, config_overrides)

  rng = np.random.default_rng(seed)
  spec = _spec(cfg)
  os.makedirs(path, exist_ok=True)
  per = -(-len(spec) // shards)
  weight_map, total = {}, 0
  for s in range(shards):
    fname = "model.safetensors" if shards == 1 else f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
    tensors = {}
    for name, shape, kind in spec[s * per:(s + 1) * per]:
      tensors[name] = np.ascontiguousarray(_random(rng, shape, kind).astype(np.float32).astype(store))
      weight_map[name] = fname
      total += tensors[name].nbytes
    save_file(tensors, os.path.join(path, fname), metadata={"format": "pt"})
  if shards > 1:
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(cfg, f, indent=1)
  return cfg


# ----------------------------------------------------------------------------------------------------------
# Reading and the float64 forward pass


def _load(path) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file

  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
  else:
    files = ["model.safetensors"]
  out = {}
  for fname in files:
    for name, t in load_file(os.path.join(path, fname)).items():
      out[name] = np.asarray(t).astype(np.float64)  # bf16 arrives as ml_dtypes.bfloat16
  return out


_SCALED = ("linear", "llama3")


def _rope(cfg: dict, theta_key: str, default_theta: float, pct_key: str | None) -> tuple[float, float, dict]:
  """(theta, partial rotary fraction, scaling) from the classic keys and/or `rope_parameters`, which must
  agree. Scaling: {} for plain RoPE, or the 'linear' / 'llama3' parameters; other types are not
  implemented. A non-null `rope_scaling` is what transformers 5 reads in place of `rope_parameters`."""
  rp = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
  kind = rp.get("rope_type", rp.get("type", "default"))
  if kind not in ("default",) + _SCALED:
    raise NotImplementedError(f"RoPE type {kind!r} ({rp}) is not implemented")
  scaling = dict(rp, rope_type=kind) if kind in _SCALED else {}
  theta = rp.get("rope_theta", cfg.get(theta_key, default_theta))
  if pct_key is None:  # the Llama family rotates whole heads (its default RoPE ignores partial_rotary_factor)
    pct = 1.0
    if rp.get("partial_rotary_factor", 1.0) != 1.0:
      raise NotImplementedError(f"partial rotary in {cfg['model_type']} is not implemented")
  else:
    pct = rp.get("partial_rotary_factor", cfg.get(pct_key, 0.25))
  if theta_key in cfg and not math.isclose(cfg[theta_key], theta):
    raise ValueError(f"{theta_key}={cfg[theta_key]} disagrees with rope_parameters {rp}")
  if pct_key and pct_key in cfg and not math.isclose(cfg[pct_key], pct):
    raise ValueError(f"{pct_key}={cfg[pct_key]} disagrees with rope_parameters {rp}")
  return float(theta), float(pct), scaling


def _rms_norm(x, w, eps):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _layer_norm(x, w, b, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * w + b


_erf = np.vectorize(math.erf, otypes=[np.float64])

_ACT = {
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),  # exact
    "gelu_new": lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3))),
    "relu": lambda x: np.maximum(x, 0.0),
}
_ACT["gelu_pytorch_tanh"] = _ACT["gelu_new"]


def _act(name):
  if name not in _ACT:
    raise NotImplementedError(f"activation {name!r} is not implemented")
  return _ACT[name]


def _linear(x, w, b=None):
  """nn.Linear: w stored (out, in)."""
  y = x @ w.T
  return y if b is None else y + b


def _scale_frequencies(inv_freq, scaling):
  """Scaled RoPE. 'linear' (position interpolation): every frequency / factor. 'llama3' (Llama 3.1): with
  L = original_max_position_embeddings and wavelength w = 2 pi / f, frequencies with w > L / low_freq_factor
  are divided by factor, those with w < L / high_freq_factor kept, and in between interpolated with weight
  s = (L / w - low_freq_factor) / (high_freq_factor - low_freq_factor) on the kept one."""
  if not scaling:
    return inv_freq
  factor = scaling["factor"]
  if scaling["rope_type"] == "linear":
    return inv_freq / factor
  L, lo, hi = scaling["original_max_position_embeddings"], scaling["low_freq_factor"], scaling["high_freq_factor"]
  out = []
  for f in inv_freq:
    w = 2 * math.pi / f
    if w < L / hi:
      out.append(f)
    elif w > L / lo:
      out.append(f / factor)
    else:
      s = (L / w - lo) / (hi - lo)
      out.append((1 - s) * f / factor + s * f)
  return np.array(out)


def _rotate(x, T, theta, ndims, scaling=None):
  """RoPE in the 'rotate_half' layout on the first `ndims` dims of x [B, heads, T, D]: pairs (j, j + ndims/2)
  rotate by angle pos * theta^(-2j/ndims) (scaled, see `_scale_frequencies`); the remaining dims pass
  through."""
  if ndims == 0:
    return x
  inv_freq = _scale_frequencies(theta ** (-np.arange(0, ndims, 2, dtype=np.float64) / ndims), scaling)
  ang = np.arange(T, dtype=np.float64)[:, None] * inv_freq[None, :]  # [T, ndims/2]
  cos, sin = np.cos(ang), np.sin(ang)
  half = ndims // 2
  x1, x2, rest = x[..., :half], x[..., half:ndims], x[..., ndims:]
  return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)


def _attention(q, k, v, window=None):
  """Causal softmax attention. q [B, H, T, D]; k, v [B, KV, T, D] with H a multiple of KV (query head h uses
  key/value head h // (H // KV)); scale 1/sqrt(D). Returns [B, T, H * D]."""
  B, H, T, D = q.shape
  rep = H // k.shape[1]
  k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
  s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(D)
  i, j = np.arange(T)[:, None], np.arange(T)[None, :]
  allowed = j <= i
  if window is not None:
    allowed &= j > i - window
  s = np.where(allowed, s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return (p @ v).transpose(0, 2, 1, 3).reshape(B, T, H * D)


def _heads(x, n):
  """[B, T, n * D] -> [B, n, T, D]."""
  B, T, _ = x.shape
  return x.reshape(B, T, n, -1).transpose(0, 2, 1, 3)


def _llama(cfg, t, tokens):
  mt = cfg["model_type"]
  E, H, L = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
  KV, D = cfg.get("num_key_value_heads") or H, cfg.get("head_dim") or E // H
  eps = cfg.get("rms_norm_eps", 1e-6)
  theta, _, scaling = _rope(cfg, "rope_theta", 10000.0, None)
  act = _act(cfg.get("hidden_act", "silu"))
  attn_bias = mt == "llama" and cfg.get("attention_bias", False)
  qkv_bias = attn_bias or mt == "qwen2"
  mlp_bias = mt == "llama" and cfg.get("mlp_bias", False)
  window = cfg.get("sliding_window") if mt == "mistral" else None
  if mt == "qwen2" and cfg.get("use_sliding_window"):
    raise NotImplementedError("qwen2 use_sliding_window is not implemented")
  T = tokens.shape[1]
  x = t["model.embed_tokens.weight"][tokens]
  for i in range(L):
    p = f"model.layers.{i}."
    b = lambda n, on: t[p + n + ".bias"] if on else None
    h = _rms_norm(x, t[p + "input_layernorm.weight"], eps)
    q = _heads(_linear(h, t[p + "self_attn.q_proj.weight"], b("self_attn.q_proj", qkv_bias)), H)
    k = _heads(_linear(h, t[p + "self_attn.k_proj.weight"], b("self_attn.k_proj", qkv_bias)), KV)
    v = _heads(_linear(h, t[p + "self_attn.v_proj.weight"], b("self_attn.v_proj", qkv_bias)), KV)
    a = _attention(_rotate(q, T, theta, D, scaling), _rotate(k, T, theta, D, scaling), v, window)
    x = x + _linear(a, t[p + "self_attn.o_proj.weight"], b("self_attn.o_proj", attn_bias))
    h = _rms_norm(x, t[p + "post_attention_layernorm.weight"], eps)
    g = act(_linear(h, t[p + "mlp.gate_proj.weight"], b("mlp.gate_proj", mlp_bias)))
    u = _linear(h, t[p + "mlp.up_proj.weight"], b("mlp.up_proj", mlp_bias))
    x = x + _linear(g * u, t[p + "mlp.down_proj.weight"], b("mlp.down_proj", mlp_bias))
  x = _rms_norm(x, t["model.norm.weight"], eps)
  tied = cfg.get("tie_word_embeddings", _TIED_DEFAULT[mt])
  return x @ (t["model.embed_tokens.weight"] if tied else t["lm_head.weight"]).T


def _gpt2(cfg, t, tokens):
  t = {n.removeprefix("transformer."): w for n, w in t.items()}  # both the hub's and save_pretrained's names
  H, L = cfg["n_head"], cfg["n_layer"]
  eps = cfg.get("layer_norm_epsilon", 1e-5)
  act = _act(cfg.get("activation_function", "gelu_new"))
  if (not cfg.get("scale_attn_weights", True) or cfg.get("scale_attn_by_inverse_layer_idx")
      or cfg.get("add_cross_attention")):
    raise NotImplementedError("only GPT-2 attention scaled by 1/sqrt(head_dim) is implemented")
  T = tokens.shape[1]
  x = t["wte.weight"][tokens] + t["wpe.weight"][:T]
  for i in range(L):
    p = f"h.{i}."
    h = _layer_norm(x, t[p + "ln_1.weight"], t[p + "ln_1.bias"], eps)
    qkv = h @ t[p + "attn.c_attn.weight"] + t[p + "attn.c_attn.bias"]  # Conv1D: (in, out), columns [q|k|v]
    q, k, v = (_heads(y, H) for y in np.split(qkv, 3, axis=-1))
    x = x + _attention(q, k, v) @ t[p + "attn.c_proj.weight"] + t[p + "attn.c_proj.bias"]
    h = _layer_norm(x, t[p + "ln_2.weight"], t[p + "ln_2.bias"], eps)
    h = act(h @ t[p + "mlp.c_fc.weight"] + t[p + "mlp.c_fc.bias"])
    x = x + h @ t[p + "mlp.c_proj.weight"] + t[p + "mlp.c_proj.bias"]
  x = _layer_norm(x, t["ln_f.weight"], t["ln_f.bias"], eps)
  tied = cfg.get("tie_word_embeddings", True)
  return x @ (t["wte.weight"] if tied else t["lm_head.weight"]).T


def _gpt_neox(cfg, t, tokens):
  E, H, L = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
  D = E // H
  eps = cfg.get("layer_norm_eps", 1e-5)
  theta, pct, scaling = _rope(cfg, "rotary_emb_base", 10000.0, "rotary_pct")
  ndims = int(D * pct)
  act = _act(cfg.get("hidden_act", "gelu"))
  bias = cfg.get("attention_bias", True)
  parallel = cfg.get("use_parallel_residual", True)
  B, T = tokens.shape

  def attn(h, p):
    qkv = _linear(h, t[p + "attention.query_key_value.weight"],
                  t[p + "attention.query_key_value.bias"] if bias else None)
    qkv = qkv.reshape(B, T, H, 3 * D).transpose(0, 2, 1, 3)  # rows ordered (head, [q|k|v], head_dim)
    q, k, v = qkv[..., :D], qkv[..., D:2 * D], qkv[..., 2 * D:]
    a = _attention(_rotate(q, T, theta, ndims, scaling), _rotate(k, T, theta, ndims, scaling), v)
    return _linear(a, t[p + "attention.dense.weight"], t[p + "attention.dense.bias"] if bias else None)

  def mlp(h, p):
    h = act(_linear(h, t[p + "mlp.dense_h_to_4h.weight"], t[p + "mlp.dense_h_to_4h.bias"]))
    return _linear(h, t[p + "mlp.dense_4h_to_h.weight"], t[p + "mlp.dense_4h_to_h.bias"])

  x = t["gpt_neox.embed_in.weight"][tokens]
  for i in range(L):
    p = f"gpt_neox.layers.{i}."
    ln1 = lambda y: _layer_norm(y, t[p + "input_layernorm.weight"], t[p + "input_layernorm.bias"], eps)
    ln2 = lambda y: _layer_norm(y, t[p + "post_attention_layernorm.weight"],
                                t[p + "post_attention_layernorm.bias"], eps)
    if parallel:
      x = x + attn(ln1(x), p) + mlp(ln2(x), p)
    else:
      x = x + attn(ln1(x), p)
      x = x + mlp(ln2(x), p)
  x = _layer_norm(x, t["gpt_neox.final_layer_norm.weight"], t["gpt_neox.final_layer_norm.bias"], eps)
  tied = cfg.get("tie_word_embeddings", False)
  readout = t["gpt_neox.embed_in.weight"] if tied else t.get("embed_out.weight", t.get("lm_head.weight"))
  return x @ readout.T


def reference_logits(path: str | os.PathLike, tokens) -> np.ndarray:
  """Float64 logits [B, T, vocab] of the HF checkpoint at `path` on int tokens [B, T] (positions 0..T-1, no
  padding, causal), computed in numpy from config.json and the safetensors files."""
  with open(os.path.join(path, "config.json")) as f:
    cfg = json.load(f)
  tokens = np.asarray(tokens)
  if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f"tokens must be an int array [B, T], got {tokens.dtype} {tokens.shape}")
  mt = cfg.get("model_type")
  t = _load(path)
  if mt in _LLAMA:
    return _llama(cfg, t, tokens)
  if mt == "gpt2":
    return _gpt2(cfg, t, tokens)
  if mt == "gpt_neox":
    return _gpt_neox(cfg, t, tokens)
  raise NotImplementedError(f"model type {mt!r} is not implemented; supported: {MODEL_TYPES}")


# ----------------------------------------------------------------------------------------------------------
# BERT encoders (BertModel, BertForMaskedLM; sentence-transformers files on top)

BERT_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + ("the a cat dog sat on mat ran far away big small red "
                                                                "blue one two three four").split()


def _bert_spec(cfg: dict, pooler: bool, mlm: bool) -> list[tuple[str, tuple, str]]:
  E, H = cfg["hidden_size"], cfg["num_attention_heads"]
  return _from_table("bert", dict(embed=E, heads=H, kv_heads=H, head_dim=E // H, mlp=cfg["intermediate_size"],
                                  vocab=cfg["vocab_size"], layers=cfg["num_hidden_layers"],
                                  max_len=cfg["max_position_embeddings"], type_vocab=cfg["type_vocab_size"],
                                  pooler=pooler, mlm=mlm))


def write_tiny_bert(path: str | os.PathLike, *, mlm: bool = False, layers: int = 2, embed: int = 32, heads: int = 4,
                    mlp: int = 64, max_len: int = 16, seed: int = 0, shards: int = 1,
                    sentence_transformers: bool = False,
                    **config_overrides) -> dict:
  """A tiny random BERT checkpoint (BertModel with its pooler, or BertForMaskedLM) with a 24-word BERT
  tokenizer (vocab.txt); `sentence_transformers` adds modules.json, sentence_bert_config.json,
  1_Pooling/config.json (mean pooling, `word_embedding_dimension`) and a Normalize module. Returns the config."""
  from safetensors.numpy import save_file

  cfg = {"model_type": "bert", "architectures": ["BertForMaskedLM" if mlm else "BertModel"],
         "vocab_size": len(BERT_WORDS), "hidden_size": embed, "num_hidden_layers": layers, "num_attention_heads": heads,
         "intermediate_size": mlp, "hidden_act": "gelu", "max_position_embeddings": max_len, "type_vocab_size": 2,
         "layer_norm_eps": 1e-12, "pad_token_id": 0, "torch_dtype": "float32", "tie_word_embeddings": True,
         "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, **config_overrides}
  rng = np.random.default_rng(seed)
  spec = _bert_spec(cfg, pooler=not mlm, mlm=mlm)
  os.makedirs(path, exist_ok=True)
  per = -(-len(spec) // shards)
  weight_map = {}
  for s in range(shards):
    fname = "model.safetensors" if shards == 1 else f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
    tensors = {n: _random(rng, shape, kind).astype(np.float32) for n, shape, kind in spec[s * per:(s + 1) * per]}
    weight_map.update({n: fname for n in tensors})
    save_file(tensors, os.path.join(path, fname), metadata={"format": "pt"})
  if shards > 1:
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {}, "weight_map": weight_map}, f)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(cfg, f, indent=1)
  with open(os.path.join(path, "vocab.txt"), "w") as f:
    f.write("\n".join(BERT_WORDS) + "\n")
  with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": max_len}, f)
  if sentence_transformers:
    modules = [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
    files = {"modules.json": [{"idx": i, "name": str(i), "path": p, "type": f"sentence_transformers.models.{t}"}
                              for i, (p, t) in enumerate(modules)],
             "sentence_bert_config.json": {"max_seq_length": max_len, "do_lower_case": False},
             "1_Pooling/config.json": {"word_embedding_dimension": embed, "pooling_mode_mean_tokens": True,
                                       "pooling_mode_cls_token": False, "pooling_mode_max_tokens": False},
             "2_Normalize/config.json": {}}
    for name, content in files.items():
      os.makedirs(os.path.dirname(os.path.join(path, name)), exist_ok=True)
      with open(os.path.join(path, name), "w") as f:
        json.dump(content, f, indent=1)
  return cfg


def reference_bert(path: str | os.PathLike, tokens, mask=None, token_types=None) -> dict[str, np.ndarray]:
  """Float64 outputs of the BERT checkpoint at `path` on int tokens [B, T]: `last_hidden_state` [B, T, E],
  `pooler_output` [B, E] (if it has a pooler), `logits` [B, T, V] (if it has an MLM head), and `sentence`
  [B, E], the mean over unmasked tokens L2-normalised (sentence-transformers' mean pooling + Normalize).
  mask: [B, T] with 1 for tokens to attend to (None: all); token_types: [B, T] (None: zeros)."""
  with open(os.path.join(path, "config.json")) as f:
    cfg = json.load(f)
  if cfg.get("model_type") != "bert" or (cfg.get("position_embedding_type") or "absolute") != "absolute":
    raise NotImplementedError("only BERT with absolute position embeddings is implemented")
  t = {k.removeprefix("bert."): v for k, v in _load(path).items()}
  tokens = np.asarray(tokens)
  B, T = tokens.shape
  mask = np.ones((B, T)) if mask is None else np.asarray(mask, np.float64)
  types = np.zeros((B, T), np.int64) if token_types is None else np.asarray(token_types)
  eps, H, act = cfg["layer_norm_eps"], cfg["num_attention_heads"], _act(cfg["hidden_act"])
  ln = lambda x, n: _layer_norm(x, t[n + ".weight"], t[n + ".bias"], eps)
  lin = lambda x, n: _linear(x, t[n + ".weight"], t[n + ".bias"])
  x = (t["embeddings.word_embeddings.weight"][tokens] + t["embeddings.token_type_embeddings.weight"][types]
       + t["embeddings.position_embeddings.weight"][:T])
  x = ln(x, "embeddings.LayerNorm")
  for i in range(cfg["num_hidden_layers"]):
    p = f"encoder.layer.{i}."
    q, k, v = (_heads(lin(x, p + f"attention.self.{s}"), H) for s in ("query", "key", "value"))
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])
    s = np.where(mask[:, None, None, :] > 0, s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    ctx = (w @ v).transpose(0, 2, 1, 3).reshape(B, T, -1)
    x = ln(x + lin(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
    x = ln(x + lin(act(lin(x, p + "intermediate.dense")), p + "output.dense"), p + "output.LayerNorm")
  e = (x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  out = {"last_hidden_state": x, "sentence": e / np.linalg.norm(e, axis=-1, keepdims=True)}
  if "pooler.dense.weight" in t:
    out["pooler_output"] = np.tanh(lin(x[:, 0], "pooler.dense"))
  if "cls.predictions.bias" in t:
    h = ln(act(lin(x, "cls.predictions.transform.dense")), "cls.predictions.transform.LayerNorm")
    out["logits"] = h @ t["embeddings.word_embeddings.weight"].T + t["cls.predictions.bias"]
  return out
