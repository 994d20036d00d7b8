"""Importance scores per width axis, for `rcjax.shrink(..., sampler='importance', scores=...)`.

    scores = rcjax.importance.weights(params)                          # no data: weight norms
    scores = rcjax.importance.activations(model, params, batches)      # calibration data (Minitron)
    small = rcjax.shrink(params, key, factor=0.5, sampler='importance', scores=scores)

Both return `{axis: float[N]}`, one score >= 0 per neuron of every width axis they can score (for the GPT:
`embed`, `mlp`, `heads`, `kv_heads`, `head_dim`). The transfer core (`rcjax.transfer`) only accepts scores;
`activations` (`rcjax.nn.importance`) runs the model.
"""

from __future__ import annotations

import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rcjax.maps import tree_blocks
from rcjax.nn.importance import AGGREGATIONS, activations
from rcjax.rc import leaves_with_paths, width_axes


def _slice_rms(x: jax.Array, dim: int) -> jax.Array:
  """RMS of each slice of `x` along `dim`, relative to the RMS of `x` (float32[x.shape[dim]])."""
  x = x.astype(jnp.float32)
  others = tuple(d for d in range(x.ndim) if d != dim)
  per = jnp.sqrt(jnp.mean(jnp.square(x), others))
  return per / jnp.maximum(jnp.sqrt(jnp.mean(jnp.square(x))), jnp.finfo(jnp.float32).tiny)


def _all_slice_rms(values: list, dims: tuple) -> list:
  """`_slice_rms` of every (value, dim) pair: one compiled program per tree."""
  return [_slice_rms(v, d) for v, d in zip(values, dims)]


_rms_jit = jax.jit(_all_slice_rms, static_argnums=1)


def weights(params: Any) -> dict[str, np.ndarray]:
  """Weight scores `{axis: float64[N]}` of every width axis of an RC pytree, without data.

  A neuron's score is the geometric mean, over the weight matrices holding its axis (leaves with a
  fan-in: norm scales and biases are left out), of the RMS of its slice (its incoming row or outgoing
  column) relative to the RMS of the whole leaf, so every matrix counts alike whatever its
  parametrization's scale; a neuron with a zero slice anywhere scores 0. A kv head also counts the mean
  score of its query heads (axes in blocks per another axis pass their scores to it). Copies of a
  duplicated neuron score the same. Sharded leaves are reduced where they lie.

  >>> import jax, jax.numpy as jnp, rcjax
  >>> m = rcjax.nn.MLP(features=(8,), out_features=2)
  >>> s = weights(m.init(jax.random.key(0), jnp.ones((1, 3)))['params'])
  >>> sorted(s), s['hidden_0'].shape
  (['hidden_0'], (8,))
  """
  widths = width_axes(params)
  logs: dict[str, list] = {a: [] for a in widths}
  pairs = [(box.value, d, box.axes[d]) for _, box in leaves_with_paths(params) if box.fan_in for d in box.width_dims]
  rms = _rms_jit([v for v, _, _ in pairs], tuple(d for _, d, _ in pairs))
  for (_, _, name), r in zip(pairs, rms):
    with np.errstate(divide="ignore"):
      logs[name].append(np.log(np.asarray(r, np.float64)))
  blocks = tree_blocks(params)
  out = {a: np.exp(np.mean(v, 0)) for a, v in logs.items() if v}
  for name, outer in blocks.items():
    if isinstance(outer, str) and name in out and outer in logs and logs[outer]:
      group = np.log(out[name].reshape(widths[outer], -1).mean(1))
      out[outer] = np.exp(np.mean(logs[outer] + [group], 0))
  return out


def calibration_tokens(path: str, src: str | None, vocab: int) -> np.ndarray:
  """The tokens (int32[n]) of the text file `path`: SRC's tokenizer (transformers' AutoTokenizer from the
  local folder, offline) where SRC has one, else the UTF-8 bytes. ValueError for a missing, empty or
  unreadable file, or byte tokens a vocabulary under 256 cannot hold."""
  import os

  if not os.path.isfile(path):
    raise FileNotFoundError(f"calibration file {path}: no such file")
  with open(path, encoding="utf-8", errors="replace") as f:
    text = f.read()
  if not text.strip():
    raise ValueError(f"calibration file {path} is empty")
  has_tokenizer = src is not None and any(os.path.isfile(os.path.join(src, n)) for n in (
      "tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json"))
  if has_tokenizer:
    try:
      from transformers import AutoTokenizer

      ids = AutoTokenizer.from_pretrained(src, local_files_only=True)(text)["input_ids"]
    except Exception as e:  # a broken or unsupported tokenizer: one line, not a traceback
      raise ValueError(f"cannot tokenize {path} with the tokenizer of {src}: {type(e).__name__}: {e}") from None
    tokens = np.asarray(ids, np.int64)
  else:
    tokens = np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int64)
    if vocab < 256:
      raise ValueError(f"{src or 'the model'} has no tokenizer and a vocabulary of {vocab} < 256: cannot read "
                       f"{path} as bytes")
  if tokens.size == 0 or tokens.max() >= vocab or tokens.min() < 0:
    raise ValueError(f"calibration file {path}: tokens outside the vocabulary of {vocab}" if tokens.size else
                     f"calibration file {path} gives no tokens")
  return tokens.astype(np.int32)


def token_batches(tokens: np.ndarray, batch: int, length: int) -> list[np.ndarray]:
  """`tokens` cut into windows of `length` (one shorter window if fewer tokens), grouped `batch` per array
  (the last group may be smaller)."""
  length = min(length, len(tokens))
  n = len(tokens) // length
  windows = tokens[: n * length].reshape(n, length)
  return [windows[i:i + batch] for i in range(0, n, batch)]


def cli_calibration(args, model) -> list | None:
  """`python -m rcjax.shrink`: the calibration token batches of `--sampler importance* --scores activations`
  (None otherwise); ValueError for bad flags or a bad file, before SRC is read."""
  if not args.sampler.startswith("importance"):
    if getattr(args, "calibration", None):
      raise ValueError("--calibration is for --sampler importance or importance-sample")
    return None
  if args.scores == "weights":
    if args.calibration:
      raise ValueError("--scores weights reads no --calibration file (use --scores activations)")
    return None
  if not args.calibration:
    raise ValueError(f"--sampler {args.sampler} with --scores activations needs --calibration FILE (a text file), "
                     "or --scores weights")
  if args.calibration_batch < 1 or args.calibration_len < 1:
    raise ValueError("--calibration-batch and --calibration-len must be at least 1")
  length = args.calibration_len
  if model.arch().get("positions", "learned") == "learned":
    length = min(length, model.max_len)
  tokens = calibration_tokens(args.calibration, args.src, model.vocab)
  return token_batches(tokens, args.calibration_batch, length)


def cli_scores(args, model, params, calibration, say) -> dict | None:
  """`python -m rcjax.shrink`: `{axis: scores}` for the importance samplers (None for the others)."""
  if not args.sampler.startswith("importance"):
    return None
  if args.scores == "weights":
    say("scoring neurons by weight norms")
    return weights(params)
  n = sum(len(b) * b.shape[1] for b in calibration)
  say(f"scoring neurons on {n} calibration tokens ({len(calibration)} batch(es), aggregation {args.aggregation})")
  return activations(model, params, (jnp.asarray(b) for b in calibration), aggregation=args.aggregation,
                     progress=sys.stderr.isatty() and jax.process_index() == 0)


__all__ = ["AGGREGATIONS", "activations", "calibration_tokens", "cli_calibration", "cli_scores", "token_batches",
           "weights"]
