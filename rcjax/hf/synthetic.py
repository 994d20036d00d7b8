"""Synthetic HuggingFace checkpoints in the exact tensor names and layouts of the families `rcjax.hf` reads,
optionally with a planted RC structure: for tests (nothing is downloaded) and benchmarks (memory, speed).

>>> import tempfile
>>> from rcjax import hf
>>> d = tempfile.mkdtemp()
>>> t = write_synthetic(d, 'gpt2', num_blocks=1, embed=8, heads=2)
>>> t['h.0.mlp.c_fc.weight'].shape, hf.Checkpoint(d).load_block(0)['mlp.c_fc.weight'].axes  # Conv1D: (in, out)
((8, 32), ('embed', 'mlp'))
"""

from __future__ import annotations

import json
import os

import numpy as np

from rcjax.hf.layout import _DTYPES, MODEL_TYPES, supported

_ARCH = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
         "gpt2": "GPT2LMHeadModel", "gpt_neox": "GPTNeoXForCausalLM", "bert": "BertForMaskedLM"}


def _synthetic_spec(model_type: str, L: int, E: int, H: int, KV: int, I: int, V: int, th: dict) -> list:
  """`[(name, theta_in, theta_out, layout)]` in HF naming; layout 'torch' (stored (out, in)), 'conv1d'
  (stored (in, out)) or 'vec'; thetas are per-neuron types (None: a fixed axis such as the vocabulary)."""
  D = E // H
  e, m, q, kv = th["embed"], th["mlp"], th["heads"], th["kv_heads"]
  zero = lambda n: np.zeros(n)
  fam = MODEL_TYPES[model_type]
  out: list = []
  if fam == "llama":
    out += [("model.embed_tokens.weight", zero(V), e, "conv1d"), ("model.norm.weight", None, e, "vec"),
            ("lm_head.weight", e, zero(V), "torch")]
    for i in range(L):
      p = f"model.layers.{i}."
      out += [(p + "self_attn.q_proj.weight", e, q, "torch"), (p + "self_attn.k_proj.weight", e, kv, "torch"),
              (p + "self_attn.v_proj.weight", e, kv, "torch"), (p + "self_attn.o_proj.weight", q, e, "torch"),
              (p + "mlp.gate_proj.weight", e, m, "torch"), (p + "mlp.up_proj.weight", e, m, "torch"),
              (p + "mlp.down_proj.weight", m, e, "torch"), (p + "input_layernorm.weight", None, e, "vec"),
              (p + "post_attention_layernorm.weight", None, e, "vec"),
              (p + "self_attn.rotary_emb.inv_freq", None, zero(D // 2), "vec")]
      if model_type == "qwen2":
        out += [(p + "self_attn.q_proj.bias", None, q, "vec"), (p + "self_attn.k_proj.bias", None, kv, "vec"),
                (p + "self_attn.v_proj.bias", None, kv, "vec")]
  elif fam == "gpt2":
    out += [("wte.weight", zero(V), e, "conv1d"), ("wpe.weight", zero(8), e, "conv1d"),
            ("ln_f.weight", None, e, "vec"), ("ln_f.bias", None, e, "vec")]
    for i in range(L):
      p = f"h.{i}."
      out += [(p + "ln_1.weight", None, e, "vec"), (p + "ln_1.bias", None, e, "vec"),
              (p + "attn.c_attn.weight", e, np.tile(q, 3), "conv1d"),
              (p + "attn.c_attn.bias", None, np.tile(q, 3), "vec"),
              (p + "attn.c_proj.weight", q, e, "conv1d"), (p + "attn.c_proj.bias", None, e, "vec"),
              (p + "ln_2.weight", None, e, "vec"), (p + "ln_2.bias", None, e, "vec"),
              (p + "mlp.c_fc.weight", e, m, "conv1d"), (p + "mlp.c_fc.bias", None, m, "vec"),
              (p + "mlp.c_proj.weight", m, e, "conv1d"), (p + "mlp.c_proj.bias", None, e, "vec"),
              (p + "attn.bias", zero(8), zero(8), "conv1d")]
  elif fam == "gpt_neox":
    qkv = np.repeat(q.reshape(H, 1, D), 3, axis=1).reshape(-1)  # rows ordered (head, [q|k|v], head_dim)
    out += [("gpt_neox.embed_in.weight", zero(V), e, "conv1d"), ("gpt_neox.final_layer_norm.weight", None, e, "vec"),
            ("gpt_neox.final_layer_norm.bias", None, e, "vec"), ("embed_out.weight", e, zero(V), "torch")]
    for i in range(L):
      p = f"gpt_neox.layers.{i}."
      out += [(p + "input_layernorm.weight", None, e, "vec"), (p + "input_layernorm.bias", None, e, "vec"),
              (p + "post_attention_layernorm.weight", None, e, "vec"),
              (p + "post_attention_layernorm.bias", None, e, "vec"),
              (p + "attention.query_key_value.weight", e, qkv, "torch"),
              (p + "attention.query_key_value.bias", None, qkv, "vec"),
              (p + "attention.dense.weight", q, e, "torch"), (p + "attention.dense.bias", None, e, "vec"),
              (p + "attention.rotary_emb.inv_freq", None, zero(D // 2), "vec"),
              (p + "mlp.dense_h_to_4h.weight", e, m, "torch"), (p + "mlp.dense_h_to_4h.bias", None, m, "vec"),
              (p + "mlp.dense_4h_to_h.weight", m, e, "torch"), (p + "mlp.dense_4h_to_h.bias", None, e, "vec")]
  else:  # bert
    out += [("bert.embeddings.word_embeddings.weight", zero(V), e, "conv1d"),
            ("bert.embeddings.LayerNorm.weight", None, e, "vec")]
    for i in range(L):
      p = f"bert.encoder.layer.{i}."
      for s in ("query", "key", "value"):
        out += [(p + f"attention.self.{s}.weight", e, q, "torch"), (p + f"attention.self.{s}.bias", None, q, "vec")]
      out += [(p + "attention.output.dense.weight", q, e, "torch"), (p + "attention.output.dense.bias", None, e, "vec"),
              (p + "attention.output.LayerNorm.weight", None, e, "vec"),
              (p + "attention.output.LayerNorm.bias", None, e, "vec"),
              (p + "intermediate.dense.weight", e, m, "torch"), (p + "intermediate.dense.bias", None, m, "vec"),
              (p + "output.dense.weight", m, e, "torch"), (p + "output.dense.bias", None, e, "vec"),
              (p + "output.LayerNorm.weight", None, e, "vec"), (p + "output.LayerNorm.bias", None, e, "vec")]
  return out


def write_synthetic(path: str | os.PathLike, model_type: str, *, num_blocks: int = 2, embed: int = 16,
                    heads: int = 4, kv_heads: int | None = None, mlp: int | None = None, vocab: int = 32,
                    dtype: str = "float32", shards: int = 1, planted: float = 0.0, seed: int = 0,
                    keep: bool = True) -> dict[str, np.ndarray]:
  """Write a synthetic HF checkpoint (config.json + safetensors, sharded with an index if `shards > 1`).

  Weights are N(0, 1) noise plus, if `planted > 0`, an RC structure `planted * (theta_in[i] + theta_out[j])`
  in the (in, out) layout (stored as PyTorch/Conv1D would), with one type theta per neuron of each axis
  (`embed` shared by all blocks, as the residual stream is). Used by tests and benchmarks.

  Returns:
    the stored tensors by name (in their stored dtype and layout) if `keep`, else an empty dict.
  """
  from safetensors.numpy import save_file

  if model_type not in MODEL_TYPES:
    raise ValueError(f"unsupported model type {model_type!r}; supported model types: {supported()}")
  kv_heads = heads if kv_heads is None or MODEL_TYPES[model_type] != "llama" else kv_heads
  mlp = mlp or 4 * embed
  rng = np.random.default_rng(seed)
  th = {"embed": rng.normal(size=embed), "mlp": rng.normal(size=mlp), "heads": rng.normal(size=embed),
        "kv_heads": rng.normal(size=kv_heads * (embed // heads))}
  spec = _synthetic_spec(model_type, num_blocks, embed, heads, kv_heads, mlp, vocab, th)
  os.makedirs(path, exist_ok=True)
  store = np.dtype(_DTYPES[{"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[dtype]])
  per = -(-len(spec) // shards)
  weight_map, kept = {}, {}
  for s in range(shards):
    fname = "model.safetensors" if shards == 1 else f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
    tensors = {}
    for name, ti, to, layout in spec[s * per:(s + 1) * per]:
      if layout == "vec":
        w = planted * to + rng.normal(size=to.shape)
      else:
        w = planted * (ti[:, None] + to[None, :]) + rng.normal(size=(ti.size, to.size))
        w = w.T if layout == "torch" else w
      tensors[name] = np.ascontiguousarray(w.astype(np.float32).astype(store))
      weight_map[name] = fname
    save_file(tensors, os.path.join(path, fname))
    if keep:
      kept.update(tensors)
  if shards > 1:
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
      json.dump({"metadata": {}, "weight_map": weight_map}, f)
  layers = "n_layer" if model_type == "gpt2" else "num_hidden_layers"
  config = {"model_type": model_type, "architectures": [_ARCH[model_type]], layers: num_blocks,
            "vocab_size": vocab, "torch_dtype": dtype}
  if model_type == "gpt2":
    config.update(n_embd=embed, n_head=heads, n_inner=mlp, n_positions=8)
  else:
    config.update(hidden_size=embed, num_attention_heads=heads, intermediate_size=mlp, num_key_value_heads=kv_heads)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f, indent=1)
  return kept


def main(argv=None) -> int:
  """`python -m rcjax.hf.synthetic DST --family llama`: a tiny random HF checkpoint, to try the CLIs on.

  >>> import os, tempfile
  >>> d = os.path.join(tempfile.mkdtemp(), 'tiny-llama')
  >>> main([d, '--family', 'llama'])
  wrote .../tiny-llama: llama, 2 blocks, embed 32, heads 4, vocab 64 (random weights); try: ...
  0
  >>> sorted(os.listdir(d))
  ['config.json', 'model.safetensors']
  """
  import argparse

  from rcjax import _cli

  def body(args) -> int:
    p = argparse.ArgumentParser(
        prog="python -m rcjax.hf.synthetic", description="Write a small random HuggingFace checkpoint "
        "(config.json + model.safetensors) to try python -m rcjax.grow / rcjax.shrink / rcjax.analyze on.")
    p.add_argument("dst", help="output directory (must not exist, or be empty)")
    p.add_argument("--family", default="llama", choices=sorted(_ARCH), help="model type (default: llama)")
    p.add_argument("--blocks", type=int, default=2, help="transformer blocks (default: 2)")
    p.add_argument("--embed", type=int, default=32, help="hidden size (default: 32)")
    p.add_argument("--heads", type=int, default=4, help="attention heads (default: 4)")
    p.add_argument("--kv-heads", type=int, default=None, help="key/value heads, Llama family (default: --heads)")
    p.add_argument("--mlp", type=int, default=None, help="MLP size (default: 4 * --embed)")
    p.add_argument("--vocab", type=int, default=64, help="vocabulary size (default: 64)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="stored dtype (default: float32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    a = p.parse_args(args)
    if os.path.exists(a.dst) and (not os.path.isdir(a.dst) or os.listdir(a.dst)):
      raise _cli.UsageError(f"{a.dst} exists and is not an empty directory")
    for name in ("blocks", "embed", "heads", "vocab"):
      if getattr(a, name) <= 0:
        raise _cli.UsageError(f"--{name} must be positive, got {getattr(a, name)}")
    if a.embed % a.heads or (a.kv_heads and a.heads % a.kv_heads):
      raise _cli.UsageError(f"--embed {a.embed} must be a multiple of --heads {a.heads}, and --heads of --kv-heads")
    write_synthetic(a.dst, a.family, num_blocks=a.blocks, embed=a.embed, heads=a.heads, kv_heads=a.kv_heads,
                    mlp=a.mlp, vocab=a.vocab, dtype=a.dtype, seed=a.seed, keep=False)
    print(f"wrote {a.dst}: {a.family}, {a.blocks} blocks, embed {a.embed}, heads {a.heads}, vocab {a.vocab} "
          f"(random weights); try: python -m rcjax.grow {a.dst} {a.dst.rstrip('/')}-x2 --factor 2")
    return 0

  return _cli.run("rcjax.hf.synthetic", body, argv)


if __name__ == "__main__":
  import sys

  sys.exit(main())
