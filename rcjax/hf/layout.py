"""The HuggingFace tensor layouts: ONE table per family, from which everything that reads or writes HF tensors
derives. numpy only.

A family's `Table` lists every tensor its checkpoints hold, in the order rcjax writes them: the ones before
the blocks (embeddings), one block's (by suffix after the block's prefix) and the ones after (final norm,
readout, heads). Each `Tensor` row says which rcjax leaf it is, the leaf's axes in the (in, out) layout that
`rcjax.diagnostics` reads (`rows`: the fan-in axes, first; `cols`: the others) and how HF stores it:

- 'linear': PyTorch `nn.Linear`, stored (out, in) = (prod(cols), prod(rows)): transposed on reading;
- 'conv1d': GPT-2's `Conv1D`, stored (in, out) = (prod(rows), prod(cols)): kept;
- 'embedding': a lookup table, stored (rows, cols) = (vocab, embed): kept;
- 'vector': norm scales and biases, stored (prod(cols),).

A fused tensor (GPT-2 `c_attn` = [q | k | v] along its columns, GPT-NeoX `query_key_value` = per head
[q | k | v] along its rows) has one leaf per part, its part index at position `split` among the stored
cols. Every part's `view` is a reshape + transpose + index of the stored array: a numpy view, no copy.

Derived from the tables: `entries` (every HF tensor of an architecture and where each part lives in the
rcjax params: `rcjax.hf.model.load` reads through the views, `rcjax.hf.write.save` writes through them,
`rcjax.hf.stream` inverts them), `block_rule` (how `rcjax.hf.Checkpoint` reads one block's tensors as RC
leaves for the diagnostics), `tensors` (names, stored shapes and rows, for the synthetic checkpoints of
`rcjax.hf.synthetic` and the tests' reference checkpoints, tests/hf_reference.py).

>>> family({"model_type": "qwen2"}), family({"architectures": ["GPT2LMHeadModel"]})
('llama', 'gpt2')
>>> t = TABLES["gpt2"].block[2]; t.name, t.leaf, stored_shape(t, {"embed": 8, "heads": 2, "head_dim": 4})
('attn.c_attn.weight', ('q', 'k', 'v'), (8, 24))
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Iterator, Mapping, NamedTuple

import numpy as np

MODEL_TYPES = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "gpt2": "gpt2", "gpt_neox": "gpt_neox",
               "bert": "bert"}
_ARCH_PREFIX = {"Llama": "llama", "Mistral": "llama", "Qwen2": "llama", "GPT2": "gpt2", "GPTNeoX": "gpt_neox",
                "Bert": "bert"}
# Buffers (not weights), matched in block suffixes and in full tensor names alike.
_IGNORED = re.compile(r"(?:^|\.)(?:rotary_emb\.inv_freq|(?:attn|attention)\.(?:bias|masked_bias))$")


def supported() -> str:
  return ", ".join(sorted(MODEL_TYPES))


def family(config: dict) -> str:
  """'llama' | 'gpt2' | 'gpt_neox' | 'bert' from a config.json dict; ValueError listing the supported ones."""
  mt = config.get("model_type")
  if mt in MODEL_TYPES:
    return MODEL_TYPES[mt]
  for arch in config.get("architectures") or []:
    for prefix, fam in _ARCH_PREFIX.items():
      if re.match(prefix + r"(For|Model|LMHead)", arch):
        return fam
  raise ValueError(f"unsupported architecture (model_type {mt!r}, architectures {config.get('architectures')}); "
                   f"supported model types: {supported()}")


# --- the tables ----------------------------------------------------------------------------------------
class Tensor(NamedTuple):
  """One HF tensor of a family (see the module docstring)."""
  name: str                     # HF name; in `Table.block`, the suffix after the block's prefix
  leaf: str | tuple[str, ...]   # rcjax leaf path ('final/norm_scale'; in a block: under 'blocks'); fused: one per part
  rows: tuple[str, ...]         # the leaf's fan-in axes (empty for vectors)
  cols: tuple[str, ...]         # the leaf's other axes
  stored: str                   # 'linear' | 'conv1d' | 'embedding' | 'vector'
  when: str | None = None       # the architecture flag the tensor exists under (None: always; 'buffer': no weight)
  split: int = 0                # fused: position of the part index among the stored cols
  aliases: tuple[str, ...] = ()  # older names read as this one (BERT's LayerNorm gamma / beta)


class Table(NamedTuple):
  block_prefix: str             # '{i}' is the block's index
  block_re: str                 # a block tensor's full name -> (index, suffix), the prefix's head optional
  before: tuple[Tensor, ...]
  block: tuple[Tensor, ...]
  after: tuple[Tensor, ...]
  prefix: str = ""              # BERT: before every name but the MLM head's ('cls.'), in a BertForMaskedLM


T = Tensor
E, M, V = ("embed",), ("mlp",), ("vocab",)
Q, KV, O = ("heads", "head_dim"), ("kv_heads", "head_dim"), ("heads", "head_dim")


def _llama() -> Table:
  block: list[Tensor] = []
  for s, cols in (("q", Q), ("k", KV), ("v", KV)):
    block += [T(f"self_attn.{s}_proj.weight", s, E, cols, "linear"),
              T(f"self_attn.{s}_proj.bias", f"{s}_bias", (), cols, "vector", "qkv_bias")]  # Qwen2; Llama attention_bias
  block += [T("self_attn.o_proj.weight", "o", O, E, "linear"), T("self_attn.o_proj.bias", "o_bias", (), E, "vector", "o_bias"),
            T("mlp.gate_proj.weight", "gate", E, M, "linear"), T("mlp.up_proj.weight", "up", E, M, "linear"),
            T("mlp.down_proj.weight", "down", M, E, "linear"),
            T("mlp.gate_proj.bias", "gate_bias", (), M, "vector", "mlp_bias"),  # Llama mlp_bias
            T("mlp.up_proj.bias", "up_bias", (), M, "vector", "mlp_bias"),
            T("mlp.down_proj.bias", "down_bias", (), E, "vector", "mlp_bias"),
            T("input_layernorm.weight", "attn_norm_scale", (), E, "vector"),
            T("post_attention_layernorm.weight", "mlp_norm_scale", (), E, "vector"),
            T("self_attn.rotary_emb.inv_freq", "", (), ("rotary",), "vector", "buffer")]
  return Table("model.layers.{i}.", r"^(?:model\.)?layers\.(\d+)\.(.+)$",
               (T("model.embed_tokens.weight", "embed", V, E, "embedding"),), tuple(block),
               (T("model.norm.weight", "final/norm_scale", (), E, "vector"),
                T("lm_head.weight", "readout", E, V, "linear", "untied")))


def _gpt2() -> Table:  # Conv1D: weights stored (in, out)
  block = (T("ln_1.weight", "attn_norm_scale", (), E, "vector"), T("ln_1.bias", "attn_norm_bias", (), E, "vector"),
           T("attn.c_attn.weight", ("q", "k", "v"), E, Q, "conv1d"),
           T("attn.c_attn.bias", ("q_bias", "k_bias", "v_bias"), (), Q, "vector"),
           T("attn.c_proj.weight", "o", O, E, "conv1d"), T("attn.c_proj.bias", "o_bias", (), E, "vector"),
           T("ln_2.weight", "mlp_norm_scale", (), E, "vector"), T("ln_2.bias", "mlp_norm_bias", (), E, "vector"),
           T("mlp.c_fc.weight", "up", E, M, "conv1d"), T("mlp.c_fc.bias", "up_bias", (), M, "vector"),
           T("mlp.c_proj.weight", "down", M, E, "conv1d"), T("mlp.c_proj.bias", "down_bias", (), E, "vector"),
           T("attn.bias", "", ("positions",), ("positions",), "conv1d", "buffer"))  # the causal mask
  return Table("transformer.h.{i}.", r"^(?:transformer\.)?h\.(\d+)\.(.+)$",
               (T("transformer.wte.weight", "embed", V, E, "embedding"),
                T("transformer.wpe.weight", "positions", ("positions",), E, "embedding")), block,
               (T("transformer.ln_f.weight", "final/norm_scale", (), E, "vector"),
                T("transformer.ln_f.bias", "final/norm_bias", (), E, "vector"),
                T("lm_head.weight", "readout", E, V, "linear", "untied")))


def _neox() -> Table:  # query_key_value: rows ordered (head, [q|k|v], head_dim)
  block = (T("input_layernorm.weight", "attn_norm_scale", (), E, "vector"),
           T("input_layernorm.bias", "attn_norm_bias", (), E, "vector"),
           T("post_attention_layernorm.weight", "mlp_norm_scale", (), E, "vector"),
           T("post_attention_layernorm.bias", "mlp_norm_bias", (), E, "vector"),
           T("attention.query_key_value.weight", ("q", "k", "v"), E, Q, "linear", split=1),
           T("attention.query_key_value.bias", ("q_bias", "k_bias", "v_bias"), (), Q, "vector", "qkv_bias", split=1),
           T("attention.dense.weight", "o", O, E, "linear"), T("attention.dense.bias", "o_bias", (), E, "vector", "o_bias"),
           T("attention.rotary_emb.inv_freq", "", (), ("rotary",), "vector", "buffer"),
           T("mlp.dense_h_to_4h.weight", "up", E, M, "linear"), T("mlp.dense_h_to_4h.bias", "up_bias", (), M, "vector"),
           T("mlp.dense_4h_to_h.weight", "down", M, E, "linear"), T("mlp.dense_4h_to_h.bias", "down_bias", (), E, "vector"))
  return Table("gpt_neox.layers.{i}.", r"^(?:gpt_neox\.)?layers\.(\d+)\.(.+)$",
               (T("gpt_neox.embed_in.weight", "embed", V, E, "embedding"),), block,
               (T("gpt_neox.final_layer_norm.weight", "final/norm_scale", (), E, "vector"),
                T("gpt_neox.final_layer_norm.bias", "final/norm_bias", (), E, "vector"),
                T("embed_out.weight", "readout", E, V, "linear", "untied")))


def _bert() -> Table:  # BertModel's names; BertForMaskedLM's carry 'bert.' (its MLM head's, 'cls.', do not)
  block: list[Tensor] = []
  for s, leaf in (("query", "q"), ("key", "k"), ("value", "v")):  # k/v: 'heads' (BERT has no kv_heads)
    block += [T(f"attention.self.{s}.weight", leaf, E, Q, "linear"),
              T(f"attention.self.{s}.bias", f"{leaf}_bias", (), Q, "vector")]
  block += [T("attention.output.dense.weight", "o", O, E, "linear"),
            T("attention.output.dense.bias", "o_bias", (), E, "vector")]
  block += _bert_norm("attention.output.LayerNorm", "attn_norm")
  block += [T("intermediate.dense.weight", "up", E, M, "linear"), T("intermediate.dense.bias", "up_bias", (), M, "vector"),
            T("output.dense.weight", "down", M, E, "linear"), T("output.dense.bias", "down_bias", (), E, "vector")]
  block += _bert_norm("output.LayerNorm", "mlp_norm")
  before = (T("embeddings.word_embeddings.weight", "embed", V, E, "embedding"),
            T("embeddings.position_embeddings.weight", "positions", ("positions",), E, "embedding"),
            T("embeddings.token_type_embeddings.weight", "token_types", ("token_types",), E, "embedding"),
            *_bert_norm("embeddings.LayerNorm", "embed_norm/norm", aliases=False))
  after = (T("pooler.dense.weight", "pooler/dense", E, E, "linear", "pooler"),
           T("pooler.dense.bias", "pooler/dense_bias", (), E, "vector", "pooler"),
           T("cls.predictions.transform.dense.weight", "mlm/dense", E, E, "linear", "mlm"),
           T("cls.predictions.transform.dense.bias", "mlm/dense_bias", (), E, "vector", "mlm"),
           T("cls.predictions.transform.LayerNorm.weight", "mlm/norm_scale", (), E, "vector", "mlm"),
           T("cls.predictions.transform.LayerNorm.bias", "mlm/norm_bias", (), E, "vector", "mlm"),
           T("cls.predictions.bias", "mlm_bias", (), V, "vector", "mlm"))
  return Table("encoder.layer.{i}.", r"^(?:bert\.)?encoder\.layer\.(\d+)\.(.+)$", before, tuple(block), after,
               prefix="bert.")


def _bert_norm(name: str, leaf: str, aliases: bool = True) -> list[Tensor]:
  return [T(f"{name}.weight", f"{leaf}_scale", (), E, "vector", aliases=(f"{name}.gamma",) if aliases else ()),
          T(f"{name}.bias", f"{leaf}_bias", (), E, "vector", aliases=(f"{name}.beta",) if aliases else ())]


TABLES = {"llama": _llama(), "gpt2": _gpt2(), "gpt_neox": _neox(), "bert": _bert()}
_BLOCK_RE = {fam: t.block_re for fam, t in TABLES.items()}


# --- shapes and views ----------------------------------------------------------------------------------
View = Callable[[np.ndarray], np.ndarray]


def parts(t: Tensor) -> tuple[str, ...]:
  """The leaves of `t`'s parts (one unless fused)."""
  return (t.leaf,) if isinstance(t.leaf, str) else t.leaf


def _sizes(axes: tuple[str, ...], dims: Mapping[str, int]) -> tuple[int, ...]:
  return tuple(int(dims[a]) for a in axes)


def _stored_cols(t: Tensor, dims: Mapping[str, int]) -> tuple[int, ...]:
  """The sizes of the stored cols, with the part index of a fused tensor at `t.split`."""
  c = _sizes(t.cols, dims)
  return c[:t.split] + (len(t.leaf),) + c[t.split:] if not isinstance(t.leaf, str) else c


def stored_shape(t: Tensor, dims: Mapping[str, int]) -> tuple[int, ...]:
  """The shape HF stores `t` in, for the axis sizes `dims`."""
  rows, cols = math.prod(_sizes(t.rows, dims)), math.prod(_stored_cols(t, dims))
  if t.stored == "linear":
    return (cols, rows)
  return (rows, cols) if t.rows else (cols,)


def view(t: Tensor, k: int, dims: Mapping[str, int]) -> View:
  """Stored array -> part `k` of `t` in the rcjax layout (rows, then cols): a view (reshape, transpose, index)."""
  r, c = _sizes(t.rows, dims), _stored_cols(t, dims)
  fused = not isinstance(t.leaf, str)
  if t.stored == "linear":  # stored (cols, rows)
    at, n = t.split, len(c) - fused
    order = tuple(range(n, n + len(r))) + tuple(range(n))
    return lambda a: _part(a.reshape(c + r), at, k, fused).transpose(order)
  if fused:
    return lambda a: _part(a.reshape(r + c), len(r) + t.split, k, fused)
  # an embedding: a view of its first rows too (the row `rcjax.hf.stream` reads); all else checks its size
  shape = (-1,) + c if t.stored == "embedding" else r + c
  return lambda a: a.reshape(shape)


def _part(x: np.ndarray, axis: int, k: int, fused: bool) -> np.ndarray:
  return x[(slice(None),) * axis + (k,)] if fused else x


# --- derived: entries (load, save, stream), block rules (Checkpoint), tensors (synthetic, tests) ----------
class Part(NamedTuple):
  leaf: tuple[str, ...]    # path of the rcjax leaf, e.g. ('blocks', 'q')
  layer: int | None        # index into the leading 'layers' axis of a scanned leaf (None: not scanned)
  view: View               # HF array -> view of it in the leaf's layout (without the layers axis)


class Entry(NamedTuple):
  name: str                # HF tensor name
  shape: tuple[int, ...]   # HF shape
  parts: tuple[Part, ...]


def dims_of(a: Mapping[str, Any]) -> dict[str, int]:
  """The axis sizes of a resolved architecture (`rcjax.hf.config._arch`)."""
  d = {k: int(a[k]) for k in ("embed", "heads", "kv_heads", "head_dim", "mlp", "vocab") if k in a}
  d.update(positions=int(a.get("max_len", 0)), token_types=int(a.get("type_vocab", 0)), rotary=d["head_dim"] // 2)
  return d


def tensors(fam: str, a: Mapping[str, Any], *, buffers: bool = False) -> Iterator[tuple[str, int | None, Tensor]]:
  """`(name, layer, row)` of every HF tensor of family `fam` with resolved architecture `a` (sizes and the
  flags of `Tensor.when`: qkv_bias, o_bias, mlp_bias, tied, pooler, mlm), in the order rcjax writes them
  (layer None: outside the blocks); `buffers`: with the non-weight tensors files may hold."""
  if fam not in TABLES:
    raise ValueError(f"unsupported family {fam!r}; supported: {sorted(TABLES)}")
  table = TABLES[fam]
  flags = dict(a, untied=not a.get("tied", True), buffer=buffers)
  name = lambda n: table.prefix + n if table.prefix and a.get("mlm") and not n.startswith("cls.") else n
  on = lambda t: t.when is None or bool(flags.get(t.when))
  yield from ((name(t.name), None, t) for t in table.before if on(t))
  for i in range(int(a["layers"])):
    p = table.block_prefix.format(i=i)
    yield from ((name(p + t.name), i, t) for t in table.block if on(t))
  yield from ((name(t.name), None, t) for t in table.after if on(t))


def entries(fam: str, a: Mapping[str, Any]) -> list[Entry]:
  """The HF tensors of a model of family `fam` with resolved architecture `a`, and where each part lives."""
  dims = dims_of(a)
  out = []
  for name, layer, t in tensors(fam, a):
    path = lambda leaf: ("blocks", leaf) if layer is not None else tuple(leaf.split("/"))
    out.append(Entry(name, stored_shape(t, dims),
                     tuple(Part(path(leaf), layer, view(t, k, dims)) for k, leaf in enumerate(parts(t)))))
  return out


Rule = Callable[[np.ndarray, dict], list]


def _rule(t: Tensor) -> Rule:
  """How `rcjax.hf.Checkpoint` reads a block tensor: `fn(x, dims) -> [(inner path, view, axes, fan_in)]`
  (inner path: the name, a fused tensor's parts named 'attn.c_attn.q.weight')."""
  fan_in = tuple(range(len(t.rows)))
  head, _, tail = t.name.rpartition(".")
  names = [t.name] if isinstance(t.leaf, str) else [f"{head}.{leaf.split('_')[0]}.{tail}" for leaf in t.leaf]
  return lambda x, dims: [(n, view(t, k, dims)(x), t.rows + t.cols, fan_in) for k, n in enumerate(names)]


def _lookup(fam: str) -> Callable[[str], Rule | None]:
  rules = {n: _rule(t) for t in TABLES[fam].block if t.when != "buffer" for n in (t.name,) + t.aliases}

  def lookup(suffix: str) -> Rule | None:
    return None if _IGNORED.search(suffix) else rules.get(suffix)
  return lookup


_RULES = {fam: _lookup(fam) for fam in TABLES}


def by_leaf(entries: list[Entry], names: Mapping[str, str] | None = None) -> dict[tuple, list[tuple[str, Part]]]:
  """`{leaf path: [(tensor name in the files, part)]}` (names: canonical -> stored, where they differ)."""
  out: dict[tuple, list[tuple[str, Part]]] = {}
  for e in entries:
    for part in e.parts:
      out.setdefault(part.leaf, []).append(((names or {}).get(e.name, e.name), part))
  return out
