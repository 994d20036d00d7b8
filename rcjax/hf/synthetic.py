"""Synthetic HuggingFace checkpoints in the exact tensor names and layouts of the families `rcjax.hf` reads
(the tables of `rcjax.hf.layout`),
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

from rcjax.hf import layout
from rcjax.hf.files import DTYPES
from rcjax.hf.layout import MODEL_TYPES, supported

_ARCH = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
         "gpt2": "GPT2LMHeadModel", "gpt_neox": "GPTNeoXForCausalLM", "bert": "BertForMaskedLM"}
# A synthetic BERT holds its blocks and these two of the tensors outside them (what the diagnostics read).
_BERT_OUTSIDE = ("bert.embeddings.word_embeddings.weight", "bert.embeddings.LayerNorm.weight")


def _synthetic_spec(model_type: str, L: int, E: int, H: int, KV: int, I: int, V: int, th: dict) -> list:
  """`[(name, theta_in, theta_out, layout)]` from the family's table in `rcjax.hf.layout` (the tensors
  outside the blocks first, then the blocks, with the buffers real files hold), in the hub's names (GPT-2
  without 'transformer.'); layout 'torch' (stored (out, in)), 'conv1d' (stored (in, out)) or 'vec'; thetas
  are per-neuron types of the stored rows and columns (zeros for the vocabulary, positions, buffers)."""
  fam = MODEL_TYPES[model_type]
  D = E // H
  dims = {"embed": E, "heads": H, "kv_heads": KV, "head_dim": D, "mlp": I, "vocab": V, "positions": 8,
          "token_types": 2, "rotary": D // 2}
  a = dict(dims, layers=L, qkv_bias=fam == "gpt_neox" or model_type == "qwen2", o_bias=fam == "gpt_neox",
           mlp_bias=False, tied=fam == "gpt2", pooler=False, mlm=True)
  out, blocks = [], {}
  for name, layer, t in layout.tensors(fam, a, buffers=True):
    if fam == "bert" and layer is None and name not in _BERT_OUTSIDE:
      continue
    ti = _theta(t, t.rows, dims, th) if t.rows else None
    to = _theta(t, t.cols, dims, th, fused=True)
    kind = "vec" if not t.rows else "torch" if t.stored == "linear" else "conv1d"
    row = (name.removeprefix("transformer."), ti, to, kind)
    if layer is None:
      out.append(row)
    else:
      blocks.setdefault(layer, []).append((fam == "llama" and t.when == "qkv_bias", row))
  for rows in blocks.values():  # Qwen2's q/k/v biases last in each block, where these checkpoints always had them
    out += [row for _, row in sorted(rows, key=lambda r: r[0])]
  return out


def _theta(t, axes: tuple, dims: dict, th: dict, fused: bool = False) -> np.ndarray:
  """The planted types of one side of `t`: one per neuron of the group `axes` (a fused tensor's parts share
  them), zeros for the axes that are no width (vocabulary, positions) and for buffers."""
  group = {("embed",): "embed", ("mlp",): "mlp", ("heads", "head_dim"): "heads", ("kv_heads", "head_dim"): "kv_heads"}
  size = int(np.prod([dims[x] for x in axes]))
  theta = th[group[axes]] if axes in group and t.when != "buffer" else np.zeros(size)
  if fused and not isinstance(t.leaf, str):
    shape = [dims[x] for x in axes]
    theta = np.repeat(np.expand_dims(theta.reshape(shape), t.split), len(t.leaf), axis=t.split).reshape(-1)
  return theta


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
  store = np.dtype(DTYPES[{"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[dtype]])
  per = -(-len(spec) // shards)
  weight_map, kept = {}, {}
  for s in range(shards):
    fname = "model.safetensors" if shards == 1 else f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
    tensors = {}
    for name, ti, to, kind in spec[s * per:(s + 1) * per]:
      if kind == "vec":
        w = planted * to + rng.normal(size=to.shape)
      else:
        w = planted * (ti[:, None] + to[None, :]) + rng.normal(size=(ti.size, to.size))
        w = w.T if kind == "torch" else w
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
