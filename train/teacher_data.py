"""A teacher-student classification task for train.mlp (`--dataset teacher`): offline, instant, and a task
where the student's width matters at a small budget (the mean-field test bed; benchmarks/growth_mlp.py).

The teacher is a fixed random ReLU network x -> h = relu(W1 x + b1) -> W2 (h - E h), with a wide hidden layer; an
input's label is the argmax of its 10 outputs. Inputs are standard normal. Everything is drawn from one
fixed numpy seed, so train and test sets are the same on every machine, and disjoint (independent draws).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

DIM = 32            # input dimension
TEACHER_WIDTH = 1024  # hidden width of the teacher
N_TRAIN, N_TEST = 16384, 4096
SEED = 20261207


class Splits(NamedTuple):
  """The arrays of the task (`train.data.load('teacher')` wraps them in a `train.data.Dataset`)."""
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int


def teacher(n_train: int = N_TRAIN, n_test: int = N_TEST, dim: int = DIM, width: int = TEACHER_WIDTH,
            classes: int = 10, seed: int = SEED):
  """The teacher-student dataset's splits (`train.data.load('teacher')` is the `Dataset` named 'teacher').

  Args:
    n_train, n_test: examples in each split.
    dim: input dimension.
    width: hidden width of the random teacher.
    classes: number of outputs of the teacher (labels in [0, classes)).
    seed: numpy seed of the teacher and of both splits.

  >>> d = teacher(n_train=64, n_test=16)
  >>> d.x_train.shape, d.y_test.shape, d.num_classes
  ((64, 32), (16,), 10)
  """
  if min(n_train, n_test, dim, width) < 1 or classes < 2:
    raise ValueError(f"teacher: sizes must be positive and classes >= 2, got n_train={n_train}, "
                     f"n_test={n_test}, dim={dim}, width={width}, classes={classes}")
  rng = np.random.default_rng(seed)
  w1 = rng.standard_normal((dim, width)) / np.sqrt(dim)
  b1 = 0.5 * rng.standard_normal(width)
  w2 = rng.standard_normal((width, classes)) / np.sqrt(width)

  hidden = lambda x: np.maximum(x @ w1 + b1, 0.0)
  mean = hidden(rng.standard_normal((8192, dim))).mean(0)  # centred features: balanced classes

  def draw(n):
    x = rng.standard_normal((n, dim))
    return x.astype(np.float32), np.argmax((hidden(x) - mean) @ w2, -1).astype(np.int32)

  (x_tr, y_tr), (x_te, y_te) = draw(n_train), draw(n_test)
  return Splits(x_tr, y_tr, x_te, y_te, classes)
