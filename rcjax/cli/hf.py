"""The body of `python -m rcjax.grow SRC DST` (a wider HuggingFace model that starts where SRC is) and
`python -m rcjax.shrink` (narrower): flags, sizes, refusals, the transfer and the check. The entry points
are `rcjax.cli.grow` and `rcjax.cli.shrink` (`python -m rcjax.grow` runs `rcjax.cli.grow.main`).

    python -m rcjax.grow gpt2 gpt2-x2 --factor 2                  # embed, mlp, heads x2; head_dim fixed
    python -m rcjax.grow llama-1b llama-wide --embed 3072 --mlp 12288 --heads 48 --kv-heads 12 --exact
    python -m rcjax.grow pythia-160m big --factor 2 --mesh fsdp=-1     # sharded: no tensor on one host
    python -m rcjax.shrink llama-1b llama-half --factor 0.5
    python -m rcjax.grow llama-1b llama-deep --depth 32 --depth-mode stack --exact   # 16 -> 32 blocks

SRC is an HF checkpoint directory (Llama/Mistral/Qwen2, GPT-2, GPT-NeoX, BERT: docs/bert.md); DST is written in
the same family's format (config.json, safetensors, the tokenizer files of SRC), so `transformers` loads it
unchanged and `python -m train.gpt --transfer-from DST` continues training it. The transfer is
`rcjax.transfer` in the standard parametrization HF models use: sampled neurons with fan-in rescaling,
function-preserving for integer factors and, with `--exact`, for any ratio of mlp, heads and kv_heads,
and of embed in RMSNorm models (Llama family; see `rcjax.transfer_model`). Not exact: a non-integer
embed ratio under LayerNorm (GPT-2, GPT-NeoX: the mean averages unequal copy counts), a new head_dim (the
attention scale and RoPE frequencies depend on it), `--random-rate/--norm-rate` > 0, and shrinking.
A growth with fewer query heads per kv head (e.g. `--kv-heads` alone) would drop query heads: refused.
`--depth` changes the number of blocks (docs/depth.md): copies (`--depth-mode` stack, interleave, middle;
exact with `--exact`, whose new blocks start as identities) or a subset (stride, first, last).
The command prints what changed and, at the end, the max |logit difference| between SRC and DST (as read
back from disk) on a fixed batch of random prompts.

Without --mesh, in one process, for a decoder and without --random-rate/--norm-rate/--split-rate/
--cancel-rate, --depth or importance scores, SRC is streamed block by block (`rcjax.hf.stream`: bounded
memory, the same bytes). Exit status (`rcjax._cli`): 2 for bad input, 1 for runtime failures (a full disk:
one line, DST.rcjax-tmp removed), one line each; --debug for a traceback. See docs/hf-speed.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rcjax import hf, importance, sharding
from rcjax._cli import run
from rcjax.depth import DEPTH_MODES, depth_map
from rcjax.hf import stream as hf_stream
from rcjax.hf.bert import sentence_files
from rcjax.hf.files import TORCH_DTYPES
from rcjax.model_rules import transfer_model  # the tied readouts' corrections
from rcjax.nn.bert import Bert
from rcjax.rc import is_rc

AXES = ("embed", "mlp", "heads", "kv_heads", "head_dim")


def parse(argv: Sequence[str] | None, direction: str) -> argparse.Namespace:
  doc = "python -m rcjax.grow SRC DST: a wider HuggingFace model that starts where SRC is." if direction == "grow" else \
      "python -m rcjax.shrink SRC DST: a narrower HuggingFace model sampled from SRC's neurons."
  ap = argparse.ArgumentParser(prog=f"python -m rcjax.{direction}", description=doc)
  ap.add_argument("src", help="HuggingFace checkpoint directory (config.json + safetensors)")
  ap.add_argument("dst", help="output directory (must not exist unless --overwrite)")
  ap.add_argument("--factor", type=float, help="ratio new/old of embed, mlp, heads and kv_heads (head_dim "
                  "fixed); > 1 for grow, < 1 for shrink")
  for name in AXES:
    ap.add_argument("--" + name.replace("_", "-"), type=int, help=f"new {name} size (overrides --factor)")
  ap.add_argument("--depth", type=int, help="new number of blocks (num_hidden_layers / n_layer)")
  ap.add_argument("--depth-mode", choices=DEPTH_MODES, help="blocks copied (grow: stack (default), interleave, "
                  "middle) or kept (shrink: stride (default), first, last); see docs/depth.md")
  ap.add_argument("--random-rate", type=float, default=0.0, help="r1: fraction of fresh neurons")
  ap.add_argument("--norm-rate", type=float, default=0.0, help="r2: noise relative to each leaf's RMS")
  ap.add_argument("--split-rate", type=float, default=0.0,
                  help="unequal fan-out split of copied neurons (keeps the function; docs/symmetry.md)")
  ap.add_argument("--cancel-rate", type=float, default=0.0,
                  help="cancelling noise on copied neurons' fan-out, relative to each leaf's RMS (keeps the function)")
  ap.add_argument("--exact", action="store_true", help="count-corrected sampling (exact for any ratio of "
                  "mlp, heads, kv_heads)")
  ap.add_argument("--sampler", default="stratified", choices=("stratified", "iid", "stride") + (
      ("importance", "importance-sample") if direction == "shrink" else ()),
                  help="importance: keep the neurons of highest --scores (importance-sample: a sample proportional "
                  "to them); shrink only" if direction == "shrink" else None)
  if direction == "shrink":
    ap.add_argument("--scores", choices=("activations", "weights"), default="activations",
                    help="importance scores: activations on --calibration (Minitron-style) or weight norms (no data)")
    ap.add_argument("--calibration", help="text file for --scores activations (SRC's tokenizer, else bytes)")
    ap.add_argument("--calibration-batch", type=int, default=8, help="sequences per calibration batch")
    ap.add_argument("--calibration-len", type=int, default=256, help="tokens per calibration sequence")
    ap.add_argument("--aggregation", choices=("mean", "l2"), default="mean",
                    help="activation scores: mean |a| or root mean square over the calibration tokens")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                  help="output dtype (default: the one SRC's tensors are stored in)")
  ap.add_argument("--transfer-dtype", default="float32", choices=("float32", "source"),
                  help="dtype the params are loaded and transferred in: float32 (default; exact rescaling) or "
                  "the source's (half the memory for 16-bit checkpoints; 2x/4x growth stays bit-identical)")
  ap.add_argument("--mesh", help="shard over a device mesh, e.g. fsdp=-1 or fsdp=4,tensor=2")
  ap.add_argument("--max-shard-size", type=float, default=5.0, help="GiB per safetensors file (default 5)")
  ap.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
  ap.add_argument("--no-check", action="store_true", help="skip the logit comparison (saves memory)")
  ap.add_argument("--check-batch", type=int, default=4, help="prompts in the logit check")
  ap.add_argument("--check-len", type=int, default=32, help="tokens per prompt in the logit check")
  ap.add_argument("--coordinator", help="HOST:PORT of process 0 (multi-process runs; each writes its shards)")
  ap.add_argument("--num-processes", type=int)
  ap.add_argument("--process-id", type=int)
  return ap.parse_args(argv)


def target_sizes(old: dict[str, int], family: str, args: argparse.Namespace, direction: str) -> dict[str, int]:
  """New sizes of the width axes from --factor and the per-axis flags; ValueError for impossible ones."""
  explicit = {a: getattr(args, a) for a in AXES if getattr(args, a) is not None}
  new = dict(old)
  if args.factor is None and not explicit:
    if getattr(args, "depth", None) is not None:
      return new  # depth alone
    raise ValueError("give --factor, --depth or at least one of --embed --mlp --heads --kv-heads --head-dim")
  if args.factor is not None:
    f = args.factor
    if not math.isfinite(f) or f <= 0:
      raise ValueError(f"--factor must be positive, got {f:g}")
    if direction == "grow" and f <= 1 or direction == "shrink" and f >= 1:
      raise ValueError(f"--factor is new/old: {direction} needs a factor {'>' if direction == 'grow' else '<'} 1, "
                       f"got {f:g}" + (f" (to halve, --factor {1 / f:g})" if direction == "shrink" else ""))
    for a in ("embed", "mlp", "heads", "kv_heads"):
      x = old[a] * f
      if a in ("heads", "kv_heads") and abs(x - round(x)) > 1e-9:
        raise ValueError(f"--factor {f:g} gives {a} {old[a]} -> {x:g}, not an integer; give --{a.replace('_', '-')}")
      new[a] = max(1, int(round(x))) if a not in ("heads", "kv_heads") else int(round(x))
  new.update(explicit)
  for a, n in new.items():
    if n < 1:
      raise ValueError(f"{a} must be at least 1, got {n}" + (" (cannot shrink below 1 head)" if "heads" in a else ""))
    if direction == "grow" and n < old[a]:
      raise ValueError(f"grow would shrink {a} from {old[a]} to {n} (use python -m rcjax.shrink)")
    if direction == "shrink" and n > old[a]:
      raise ValueError(f"shrink would grow {a} from {old[a]} to {n} (use python -m rcjax.grow)")
  if "kv_heads" not in explicit and new["heads"] != old["heads"] and old["kv_heads"] == old["heads"]:
    new["kv_heads"] = new["heads"]  # multi-head attention stays multi-head
  if new["heads"] % new["kv_heads"]:
    raise ValueError(f"heads {new['heads']} is not divisible by kv_heads {new['kv_heads']}")
  g_old, g_new = old["heads"] // old["kv_heads"], new["heads"] // new["kv_heads"]
  if direction == "grow" and g_new < g_old:  # rcjax.transfer would remap heads within groups: drop query heads
    raise ValueError(f"grow would shrink the query heads per kv head from {g_old} to {g_new} (heads "
                     f"{new['heads']}, kv_heads {new['kv_heads']}), dropping query heads; grow --heads to "
                     f"{g_old * new['kv_heads']} too")
  if family in ("gpt2", "gpt_neox", "bert") and new["heads"] * new["head_dim"] != new["embed"]:
    raise ValueError(f"{family} derives head_dim from embed / heads: embed {new['embed']} != heads {new['heads']} "
                     f"x head_dim {new['head_dim']}; change --embed and --heads together")
  if family in ("gpt2", "gpt_neox", "bert") and new["kv_heads"] != new["heads"]:
    raise ValueError(f"{family} has no grouped-query attention: kv_heads must equal heads")
  return new


def inexact(old: dict, new: dict, args, rope: bool, rmsnorm: bool) -> list[str]:
  """Reasons this transfer is not function-preserving (empty: it is, up to float rounding)."""
  why = []
  if new["head_dim"] != old["head_dim"]:
    why.append("head_dim changes (attention scale 1/sqrt(head_dim)" + (" and RoPE frequencies)" if rope else ")"))
  if new["embed"] % old["embed"] and new["embed"] > old["embed"] and not (rmsnorm and args.exact):
    why.append(f"non-integer embed ratio {new['embed']}/{old['embed']} (" + (
        "exact for RMSNorm models only with --exact)" if rmsnorm else "LayerNorm averages unequal copy counts)"))
  for a in ("mlp", "heads", "kv_heads"):
    if new[a] > old[a] and new[a] % old[a] and not args.exact:
      why.append(f"non-integer {a} ratio {new[a]}/{old[a]} without --exact")
  g_old, g_new = old["heads"] // old["kv_heads"], new["heads"] // new["kv_heads"]
  if g_new < g_old:
    why.append(f"query heads per kv head drop from {g_old} to {g_new} (query heads are dropped)")
  elif g_new % g_old and not args.exact:
    why.append(f"non-integer ratio of query heads per kv head {g_new}/{g_old} without --exact")
  if args.sampler == "iid" and not args.exact and any(new[a] > old[a] for a in new):
    why.append("iid sampling without --exact (exact only in expectation)")
  if args.random_rate > 0 or args.norm_rate > 0:
    why.append("--random-rate/--norm-rate > 0")
  if any(new[a] < old[a] for a in new):
    why.append("shrinking drops neurons")
  return why


def _check_fn(model):
  """`fn(variables, tokens)` -> what the check compares: GPT's logits; a BERT's `Bert.comparable` (MLM
  logits, else the hidden states' Gram matrix over the width: both width-independent)."""

  if isinstance(model, Bert):
    return lambda variables, tokens: model.apply(variables, tokens, method="comparable")
  return model.apply


def _sentence_files(src: str, width: int, tmp: str) -> dict:

  return sentence_files(src, width, tmp)


def target_depth(old: int, args: argparse.Namespace, direction: str) -> tuple[int, list[str]]:
  """The new depth (`--depth`, checked against `--depth-mode` and `--exact`) and the reasons it is not
  function-preserving."""
  if args.depth is None:
    if args.depth_mode is not None:
      raise ValueError("--depth-mode needs --depth (the new number of blocks)")
    return old, []
  if args.depth < 1:
    raise ValueError(f"--depth must be at least 1, got {args.depth}")
  if direction == "grow" and args.depth < old or direction == "shrink" and args.depth > old:
    raise ValueError(f"{direction} would {'shrink' if direction == 'grow' else 'grow'} the depth from {old} to "
                     f"{args.depth} (use python -m rcjax.{'shrink' if direction == 'grow' else 'grow'})")
  if args.exact and args.depth < old:
    raise ValueError(f"--exact needs the depth to grow, but it shrinks from {old} to {args.depth} (dropping "
                     "blocks changes the function)")
  depth_map(old, args.depth, args.depth_mode)  # a mode for the other direction, 'middle' past 2x: ValueError
  if args.depth < old:
    return args.depth, [f"depth {old} -> {args.depth} drops blocks"]
  if args.depth > old and not args.exact:
    return args.depth, [f"depth {old} -> {args.depth} without --exact (new blocks are plain copies)"]
  return args.depth, []


def _count(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params, is_leaf=is_rc))


def main(argv: Sequence[str] | None = None, direction: str = "grow") -> int:
  """`python -m rcjax.grow/shrink` (see the module docstring); returns the exit status (`rcjax._cli`:
  2 for bad input, 1 for runtime failures such as a full disk, one line; a traceback with --debug)."""

  return run(f"rcjax.{direction}", lambda av: _main(av, direction), argv)


def _check_paths(args: argparse.Namespace) -> str:
  """DST's absolute path; ValueError/FileExistsError for a SRC that is not a checkpoint directory, a DST
  that exists without --overwrite, or one that --overwrite must not replace (not an HF checkpoint)."""
  dst = os.path.abspath(args.dst)
  if os.path.exists(args.src) and not os.path.isdir(args.src):
    raise NotADirectoryError(f"SRC {args.src} is a file, not a directory: give the HuggingFace checkpoint "
                             "directory (config.json + safetensors)")
  if os.path.abspath(args.src) == dst:
    raise ValueError("SRC and DST are the same directory")
  if os.path.lexists(dst):
    if not args.overwrite:
      raise FileExistsError(f"{dst} exists (pass --overwrite to replace it)")
    if not _is_hf_checkpoint(dst):
      raise FileExistsError(f"{dst} exists and is not a HuggingFace checkpoint (config.json + safetensors "
                            "weights): --overwrite replaces only a checkpoint; remove it yourself or choose "
                            "another DST")
  if not 0 <= args.random_rate <= 1 or args.norm_rate < 0:
    raise ValueError("--random-rate must be in [0, 1] and --norm-rate >= 0")
  if not (0 <= args.split_rate < float("inf") and 0 <= args.cancel_rate < float("inf")):
    raise ValueError("--split-rate and --cancel-rate must be finite and >= 0")
  return dst


def _is_hf_checkpoint(path: str) -> bool:
  if os.path.islink(path) or not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
    return False
  return any(n.endswith(".safetensors") or n == "model.safetensors.index.json" for n in os.listdir(path))


def _plan(args: argparse.Namespace, direction: str) -> argparse.Namespace:
  """Everything decided (and refused) before SRC's tensors are read: the source model and config, the new
  sizes and depth, the calibration data, the stored dtype."""
  import rcjax

  cfg_path = os.path.join(args.src, "config.json")
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f"{args.src}: no such directory" if not os.path.isdir(args.src) else
                            f"{args.src} has no config.json: not a HuggingFace checkpoint")
  with open(cfg_path) as f:
    src_config = json.load(f)
  model = hf.model_from_config(src_config, where=cfg_path,  # sizes and refusals before reading SRC
                                     param_dtype=np.float32 if args.transfer_dtype == "float32" else None)
  family = hf.family_of(model)
  old = dict(rcjax.width_axes(hf.abstract_params(model)))
  new = target_sizes(old, family, args, direction)
  depth, depth_why = target_depth(model.depth, args, direction)
  if family == "bert" and depth > model.depth and args.exact:
    raise ValueError("--exact depth growth is not available for BERT: a post-LayerNorm block with zero output "
                     "projections is not the identity (grow without --exact for plain copies)")
  if model.rotary_dim is not None and new["head_dim"] != old["head_dim"]:
    raise ValueError(f"partial rotary embedding (rotary_dim {model.rotary_dim} of head_dim {old['head_dim']}): "
                     "head_dim cannot change")
  calibration = importance.cli_calibration(args, model)  # bad --calibration fails before SRC is read
  src_dtype = hf.stored_dtype(args.src, src_config)  # the tensors' (config.json may not say)
  resized = _resized(model, new, depth)
  if depth != model.depth:  # per-layer config fields follow the blocks (Qwen2's layer_types, ...)
    src_config = hf.config_at_depth(src_config, depth_map(model.depth, depth, args.depth_mode))
  # what save would refuse, before reading SRC
  hf.config_for(resized, hf.abstract_params(resized), src_config, args.dtype or src_dtype)
  if family == "bert":
    with tempfile.TemporaryDirectory() as tmp:
      _sentence_files(args.src, new["embed"], tmp)  # refuses sentence-transformers modules it cannot update
  return argparse.Namespace(src_config=src_config, cfg_path=cfg_path, model=model, family=family, old=old,
                            new=new, depth=depth, depth_why=depth_why, calibration=calibration,
                            src_dtype=src_dtype)


def _resized(model, new: dict, depth: int):
  return model.clone(width=new["embed"], heads=new["heads"], kv_heads=new["kv_heads"], head_dim=new["head_dim"],
                     mlp=new["mlp"], depth=depth)


def _check_tokens(args, model, mesh):
  """The check's random prompts (the same on every process; replicated over the mesh) and their length."""
  a = model.arch()
  T = min(args.check_len, model.max_len) if a["positions"] == "learned" else args.check_len
  host = np.random.default_rng(1234).integers(0, model.vocab, (args.check_batch, T)).astype(np.int32)
  if mesh is None:
    return jnp.asarray(host), T
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.make_array_from_callback(host.shape, rep, lambda idx: host[idx]), T


def _print_sizes(out_, p: argparse.Namespace, args) -> dict:
  """Print the old and new sizes; the transfer's target (changed axes, and 'layers' for depth)."""
  for ax in AXES:
    mark = "" if p.new[ax] == p.old[ax] else f"  (x{p.new[ax] / p.old[ax]:.4g})"
    out_(f"    {ax:9s} {p.old[ax]:>7d} -> {p.new[ax]:<7d}{mark}")
  target = {k: v for k, v in p.new.items() if v != p.old[k]}
  if p.depth != p.model.depth:
    out_(f"    {'layers':9s} {p.model.depth:>7d} -> {p.depth:<7d}  (x{p.depth / p.model.depth:.4g}, "
         f"{args.depth_mode or ('stack' if p.depth > p.model.depth else 'stride')})")
    target["layers"] = p.depth
  return target


def _transfer(args, p, model, params, key, target, direction, say):
  """The whole-model transfer (params in memory): `rcjax.transfer_model`, with the model's corrections."""

  if not target:
    return params
  say(f"{direction}ing: sampler {args.sampler}, exact {args.exact}, r1 {args.random_rate}, r2 {args.norm_rate}")
  # donate: tensors no changed axis touches (all attention tensors when only mlp changes, ...) are
  # kept, not copied, and SRC's other tensors are freed once DST's exist (memory: DST, not SRC + DST).
  scores = importance.cli_scores(args, model, params, p.calibration, say)
  return transfer_model(model, params, key, target, sampler=args.sampler, random_rate=args.random_rate,
                  norm_rate=args.norm_rate, exact=args.exact, donate=True,
                  depth_mode=args.depth_mode if "layers" in target else None,
                  split_rate=args.split_rate, cancel_rate=args.cancel_rate,
                  **({} if scores is None else {"scores": scores}))


def _write(args, p, model, new_model, grown, dst, key, target, stream, direction, say) -> dict:
  """DST written: streamed block by block from SRC, or `hf.save` of the transferred params."""

  if stream:
    say(f"{direction}ing and writing {dst} block by block: sampler {args.sampler}, exact {args.exact}")
    return hf_stream.stream_transfer(
        args.src, dst, model, new_model, key, target, src_config=p.src_config,
        out_dtype=np.dtype(TORCH_DTYPES[args.dtype]) if args.dtype else p.src_dtype,
        transfer_dtype=args.transfer_dtype, sampler=args.sampler, exact=args.exact,
        max_shard_size=int(args.max_shard_size * 2**30), overwrite=args.overwrite,
        extra_files=hf.tokenizer_files(args.src), progress=True)
  say(f"writing {dst}")
  with tempfile.TemporaryDirectory() as tmp:  # BERT: the sentence-transformers files, 1_Pooling's width updated
    extra = {**hf.tokenizer_files(args.src),
             **(_sentence_files(args.src, p.new["embed"], tmp) if p.family == "bert" else {})}
    return hf.save(new_model, grown, dst, config=p.src_config, dtype=args.dtype or p.src_dtype,
                         max_shard_size=int(args.max_shard_size * 2**30), overwrite=args.overwrite,
                         extra_files=extra, progress=True, consume=True)


def _report_check(args, p, dst, mesh, tokens, T, src_logits, why, out_, say) -> None:
  """DST read back from disk, its outputs on the check's prompts against SRC's, and whether the transfer
  is function-preserving by construction."""

  # DST's params in the dtype SRC's were checked in (float32, or SRC's with --transfer-dtype source), so
  # the two forward passes differ only by what the transfer and the output dtype did
  dst_model, dst_params = hf.load(dst, dtype=jnp.float32 if args.transfer_dtype == "float32" else p.src_dtype,
                                        mesh=mesh)
  dst_logits = jax.jit(_check_fn(dst_model))({"params": dst_params}, tokens)
  diff = float(jnp.max(jnp.abs(src_logits - dst_logits)))
  scale = float(jnp.max(jnp.abs(src_logits)))
  what = "hidden-state Gram" if p.family == "bert" and not p.model.mlm else "logit"
  say(f"check on {args.check_batch}x{T} random tokens: max |{what} difference| {diff:.3g} "
      f"(max |{what}| {scale:.3g}, relative {diff / max(scale, 1e-30):.2g})")
  out_dtype = np.dtype(args.dtype or p.src_dtype)
  if why:
    out_("    not function-preserving by construction: " + "; ".join(why))
  else:
    out_("    function-preserving by construction (differences are float rounding"
         + (f" and the {out_dtype.name} output)" if out_dtype != np.float32 else ")"))


def _main(argv: Sequence[str] | None, direction: str) -> int:

  t0 = time.perf_counter()
  out_ = lambda msg: print(msg, flush=True) if jax.process_index() == 0 else None
  say = lambda msg: out_(f"[{time.perf_counter() - t0:6.1f}s] {msg}")
  args = parse(argv, direction)
  sharding.init_distributed(args.coordinator, args.num_processes, args.process_id)
  sharding.check_same_on_every_process({k: v for k, v in vars(args).items() if k != "process_id"},
                                       f"python -m rcjax.{direction} flags")
  dst = _check_paths(args)
  p = _plan(args, direction)
  mesh = sharding.make_mesh(args.mesh) if args.mesh else None
  say(f"loading {args.src}" + (f" sharded over {dict(mesh.shape)}" if mesh else ""))
  # streaming: one block in memory at a time; SRC is loaded whole only for the check
  stream = hf_stream.supported(args, mesh, family=p.family, same_depth=p.depth == p.model.depth)
  model, params = p.model, None
  if not (stream and args.no_check):
    model, params = hf.load(args.src, dtype=jnp.float32 if args.transfer_dtype == "float32" else None,
                                  mesh=mesh, progress=jax.process_index() == 0 and not stream)
  elif args.transfer_dtype != "float32":  # the model as `load` makes it (its param dtype: the transfer dtype)
    model = hf.model_from_config(p.src_config, param_dtype=p.src_dtype, where=p.cfg_path)
  a = model.arch()
  why = inexact(p.old, p.new, args, a["positions"] == "rope", a["norm"] == "rmsnorm") + p.depth_why
  n_old = _count(hf.abstract_params(model) if params is None else params)
  say(f"{p.family} ({p.src_config.get('model_type')}), {model.depth} blocks, vocab {model.vocab}")
  target = _print_sizes(out_, p, args)
  key = jax.random.key(args.seed)
  if not args.no_check:  # SRC's outputs first, so SRC's params can go before DST is written
    tokens, T = _check_tokens(args, model, mesh)
    src_logits = jax.jit(_check_fn(model))({"params": params}, tokens)
  grown = None if stream else _transfer(args, p, model, params, key, target, direction, say)
  del params
  new_model = _resized(model, p.new, p.depth)
  n_new = _count(hf.abstract_params(new_model) if stream else grown)
  out_(f"    params    {n_old / 1e6:.2f}M -> {n_new / 1e6:.2f}M  (x{n_new / n_old:.3f})")
  out = _write(args, p, model, new_model, grown, dst, key, target, stream, direction, say)
  del grown
  say(f"wrote {len(out['files'])} file(s), {out['tensors']} tensors, {out['bytes'] / 2**20:.1f} MiB")
  if "seconds" in out:  # the streaming path's phases (they overlap)
    out_("    " + ", ".join(f"{k} {v:.2f}s" for k, v in out["seconds"].items())
         + f"; read {out['bytes_read'] / 2**20:.1f} MiB")
  if not args.no_check:
    _report_check(args, p, dst, mesh, tokens, T, src_logits, why, out_, say)
  return 0
