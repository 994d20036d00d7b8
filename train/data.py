"""Datasets for train.mlp: CIFAR-10 through TFDS, and scikit-learn's embedded 8x8 digits (offline).

    python -c "from train import data; print(data.load('digits'))"            # offline, instant
    python -c "from train import data; print(data.load('cifar10'))"           # downloads once via TFDS

Both come as flattened float32 inputs, standardised with statistics of the training split, and int32
labels in [0, 10): CIFAR-10 as the paper's 3072-dim vectors (32x32x3, per-channel standardisation,
HWC order), digits as 64-dim vectors (8x8, one global mean and std). Offline, `load('cifar10')` fails in
seconds with `DataUnavailable` (TFDS alone would retry for minutes) unless the prepared data is already in
`data_dir` or the TFDS default directory.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import urllib.parse

import numpy as np

from train import teacher_data

DATASETS = ("cifar10", "digits", "teacher")  # teacher: train/teacher_data.py (offline, synthetic)
AUTO = "auto"  # train.mlp's default: CIFAR-10 when prepared locally, else digits (see `load_auto`)
# Where TFDS downloads CIFAR-10 from (checked for reachability before TFDS tries; tests patch it).
CIFAR10_HOST = ("www.cs.toronto.edu", 443)
NET_TIMEOUT_S = 3.0


class DataUnavailable(RuntimeError):
  """The dataset is neither prepared locally nor downloadable from here."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A classification dataset held in memory as numpy arrays.

  Attributes:
    name: 'cifar10' | 'digits' | 'teacher'.
    x_train, x_test: float32 [n, input_dim], standardised with the training split's statistics.
    y_train, y_test: int32 [n] labels in [0, num_classes).
    num_classes: number of classes (10 for both).
  """
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int = 10

  @property
  def input_dim(self) -> int:
    return int(self.x_train.shape[1])

  def __repr__(self) -> str:
    return (f"Dataset({self.name!r}, train={self.x_train.shape[0]}, test={self.x_test.shape[0]}, "
            f"input_dim={self.input_dim}, classes={self.num_classes})")


def load(name: str, data_dir: str | None = None) -> Dataset:
  """Load a dataset by name.

  Args:
    name: 'cifar10' (TFDS, downloaded on first use), 'digits' (scikit-learn, embedded, offline) or
      'teacher' (a random wide teacher's labels, offline: train/teacher_data.py).
    data_dir: TFDS data directory for 'cifar10' (None: TFDS's default, ~/tensorflow_datasets).

  Returns:
    A `Dataset`.

  Raises:
    ValueError: unknown name.
    DataUnavailable: CIFAR-10 is not prepared locally and its download host is unreachable.

  >>> load('digits')
  Dataset('digits', train=1437, test=360, input_dim=64, classes=10)
  """
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
  if name == "teacher":
    t = teacher_data.teacher()
    return Dataset("teacher", t.x_train, t.y_train, t.x_test, t.y_test, num_classes=t.num_classes)
  return _digits() if name == "digits" else _cifar10(data_dir)


def _digits() -> Dataset:
  try:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
  except ImportError:
    raise DataUnavailable("--dataset digits needs scikit-learn (it ships the images): "
                          "pip install -e '.[train]' (or '.[data]', '.[test]')") from None

  x, y = load_digits(return_X_y=True)
  # A fixed split: 80% / 20%, stratified by class, random_state=0 (1437 / 360 images).
  x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
  mean, std = x_tr.mean(), x_tr.std()
  norm = lambda a: ((a - mean) / std).astype(np.float32)
  return Dataset("digits", norm(x_tr), y_tr.astype(np.int32), norm(x_te), y_te.astype(np.int32))


def _reachable(host: str, port: int, timeout: float = NET_TIMEOUT_S) -> bool:
  """Whether a TCP connection to host:port (or to the HTTPS proxy, if one is set) opens within `timeout`
  seconds, DNS included (the lookup runs in a daemon thread, so a hanging resolver cannot block us)."""
  proxy = os.environ.get("https_proxy") or os.environ.get("HTTPS_PROXY")
  if proxy:
    parsed = urllib.parse.urlparse(proxy if "://" in proxy else "http://" + proxy)
    host, port = parsed.hostname or host, parsed.port or 80
  ok = []

  def connect():
    try:
      socket.create_connection((host, port), timeout=timeout).close()
      ok.append(True)
    except OSError:
      pass

  thread = threading.Thread(target=connect, daemon=True)
  thread.start()
  thread.join(timeout + 0.5)
  return bool(ok)


def _offline_message(data_dir: str | None) -> str:
  where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  return (f"CIFAR-10 is not prepared in {where} and {CIFAR10_HOST[0]} is unreachable (offline?). "
          "Either run once on a machine with internet: python -c \"import tensorflow_datasets as tfds; "
          f"tfds.builder('cifar10', data_dir='{where}').download_and_prepare()\" and copy that folder here "
          "(pass it with --data-dir), or train offline on the embedded digits: --dataset digits")


def load_auto(data_dir: str | None = None) -> tuple[Dataset, str | None]:
  """CIFAR-10 if it is prepared locally (nothing is downloaded), else the embedded digits and a notice.

  Returns:
    `(dataset, notice)`: `notice` is None for CIFAR-10, else one line saying digits stand in and how to
    get CIFAR-10.
  """
  try:
    return _cifar10(data_dir, download=False), None
  except (DataUnavailable, ImportError):  # not prepared here, or tensorflow-datasets not installed
    where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    notice = (f"--dataset auto: CIFAR-10 is not prepared in {where}, so this trains on scikit-learn's embedded "
              "8x8 digits (64-dim; mean-field learns them at --lr 1); for CIFAR-10: pip install -e '.[data]', "
              "then --dataset cifar10 (downloads it once, ~170 MB)")
    return _digits(), notice


def _cifar10(data_dir: str | None, download: bool = True) -> Dataset:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise DataUnavailable(f"--dataset cifar10 needs tensorflow-datasets and tensorflow-cpu "
                          f"(pip install -e '.[data]'): {e}; or use --dataset digits") from None

  def split(name: str, download: bool):
    ds = tfds.load("cifar10", split=name, as_supervised=True, data_dir=data_dir, download=download)
    xs, ys = [], []
    for x, y in tfds.as_numpy(ds.batch(5000)):  # batch_size=-1 crashes under tfds.testing.mock_data
      xs.append(x)
      ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)

  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)  # TFDS warns about missing folders while probing
  try:  # prepared data (or tfds.testing.mock_data) needs no network
    train, test = split("train", False), split("test", False)
  except AssertionError:  # TFDS: "could not find data in ..."
    if not download:
      raise DataUnavailable(f"CIFAR-10 is not prepared in {data_dir or '(the TFDS default)'}") from None
    if not _reachable(*CIFAR10_HOST):
      raise DataUnavailable(_offline_message(data_dir)) from None
    train, test = split("train", True), split("test", True)
  finally:
    absl_logger.setLevel(level)
  (x_tr, y_tr), (x_te, y_te) = train, test
  x_tr, x_te = x_tr.astype(np.float32) / 255.0, x_te.astype(np.float32) / 255.0
  mean = x_tr.mean(axis=(0, 1, 2))  # per channel (HWC images)
  std = x_tr.std(axis=(0, 1, 2)) + 1e-8
  flat = lambda a: ((a - mean) / std).reshape(len(a), -1).astype(np.float32)
  return Dataset("cifar10", flat(x_tr), y_tr.astype(np.int32), flat(x_te), y_te.astype(np.int32))
