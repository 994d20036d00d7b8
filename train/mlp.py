"""Train the paper's CIFAR-10 MLPs (Example 1.1: input -> N -> N -> 10 with biases), with transfer mid-training.

    python -m train.mlp --width 1000                # CIFAR-10 if prepared, else digits at mf lr 1 (says so)
    python -m train.mlp --dataset digits --width 64 --epochs 10 --out runs/digits64   # offline, seconds
    python -m train.mlp --dataset cifar10 --width 1000 --epochs 10 --out runs/n1000  # CIFAR-10 via TFDS
    python -m train.mlp --width 100 --epochs 10 --out runs/n100
    python -m train.mlp --width 1000 --epochs 10 --out runs/n100to1000 \\
        --transfer-from runs/n100 --transfer-epoch 4 --random-rate 0.1 --norm-rate 0.01
    python -m train.mlp --depth 7 --width 1000 --bias constant --out runs/mfnn7      # the 7-layer MFNN
    python -m train.mlp --dataset digits --depth 7 --width 1000 --bias constant --hidden-init lowrank:16 \
        --lr 0.05 --out runs/mfnn7_lowrank                                            # ... that learns

RUN_DIR (--out) gets `config.json`, `metrics.jsonl`, `checkpoints/` (step = epoch, 0 = init; extra =
{epoch, step, flops}) and `curves.png`. A metrics line per epoch: `epoch`, `step` (SGD steps), `width`,
`train_loss`/`train_acc` and `test_loss`/`test_acc` (full passes over each split at the end of the
epoch), `train_loss_running` (mean minibatch loss during the epoch), `flops` (cumulative training FLOPs),
and, on the line right after a transfer, `event: "transfer"` with its settings. Running the same command
again resumes from the last complete checkpoint and ends with the same metrics as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
import time
import typing
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rcjax
from rcjax import _cli
from rcjax.checkpoint import Checkpointer
from rcjax.integrity import UnverifiedCheckpointWarning, check_writable, kill_point
from train import data as data_lib
from train import mlp_deep, mlp_transfer
from train.common import (HelpFormatter, add_flags, check_run_dir, quiet_logs, restore_opt_state, resume_step,
                          truncate_metrics, write_config, write_metrics)
from train.common import field as _f
from train.common import read_metrics  # noqa: F401 - train.mlp's API

PARAMS = ("sp", "ntk", "mup", "mf")
BIASES = ("trainable", "constant", "none")
SAMPLERS = rcjax.maps.SAMPLERS
# Config fields that may change between a run and its resumption.
RESUMABLE = ("epochs", "progress", "plot", "out", "data_dir")


@dataclasses.dataclass(frozen=True)
class Config:
  """One train.mlp run. Every field is a flag (`width` -> `--width`, `transfer_from` -> `--transfer-from`)."""
  width: int = _f(1000, "hidden width N of every hidden layer")
  depth: int = _f(3, "number of weight layers: 3 = input -> N -> N -> 10 (Example 1.1), 7 = the 7-layer MFNN")
  param: str = _f("mf", "parametrization (mf: mean-field, the paper's; sp, ntk, mup)", PARAMS)
  init: str = _f("uniform", "kernel init distribution: uniform (U(-1,1)), gaussian, normal:MEAN,VAR, ... "
                 "times the parametrization's init scale")
  bias: str = _f("trainable", "trainable: biases start non-constant (drawn i.i.d. per neuron from --init) and "
                 "train; constant: biases start at the same value --bias-value for every neuron and train; "
                 "none: no biases", BIASES)
  bias_value: float = _f(0.0, "start value of every bias with --bias constant")
  hidden_init: str = _f("iid", "hidden kernels: iid (the --init draw, the paper's) or lowrank:K (mean-field-"
                        "aware: K latent features per neuron plus the --init draw, so deep mean-field nets "
                        "learn; train/mlp_deep.py)")
  base: int = _f(0, "base width of the hidden axes for muP (0: --width, so muP equals SP at that width; "
                 "with --transfer-from, the source's)")
  dataset: str = _f(data_lib.AUTO, "auto: cifar10 if prepared locally, else digits (config.json records which; "
                    "a resumed run keeps its own); cifar10 (TFDS, 3072-dim, downloads once); digits "
                    "(scikit-learn 8x8, 64-dim, offline)", (data_lib.AUTO,) + data_lib.DATASETS)
  data_dir: typing.Optional[str] = _f(None, "TFDS data directory (default: TFDS's, ~/tensorflow_datasets)")
  epochs: int = _f(10, "total number of epochs (a transferred run counts the source's epochs too)")
  lr: float = _f(0.1, "SGD learning rate eta (the paper's 0.1), times the parametrization's per-leaf "
                 "multipliers (mf: mean-field time)")
  momentum: float = _f(0.0, "SGD momentum (0: plain SGD as in the paper)")
  batch_size: int = _f(64, "minibatch size (the last incomplete batch of an epoch is dropped)")
  seed: int = _f(0, "seed of init, shuffling (per epoch) and transfer")
  out: str = _f("runs/mlp", "run directory RUN_DIR")
  transfer_from: typing.Optional[str] = _f(None, "RUN_DIR of a trained run to transfer from (grow or shrink "
                                           "to --width)")
  transfer_epoch: int = _f(4, "epoch of the --transfer-from checkpoint to transfer (training continues "
                           "from there)")
  random_rate: float = _f(0.0, "r1: fraction of fresh neurons drawn from the init distribution")
  norm_rate: float = _f(0.0, "r2: symmetry-breaking noise, std r2 * RMS(leaf), on transferred entries")
  split_rate: float = _f(0.0, "unequal fan-out split of copied neurons (function-preserving; docs/symmetry.md)")
  cancel_rate: float = _f(0.0, "cancelling noise on copied neurons' fan-out (function-preserving)")
  sampler: str = _f("stratified", "how target neurons sample source neurons", SAMPLERS)
  exact: bool = _f(False, "count-corrected transfer, function-preserving for any growth ratio")
  progress: bool = _f(True, "show a progress bar per epoch (on a terminal only)")
  plot: bool = _f(True, "draw RUN_DIR/curves.png at the end")


class TrainingDiverged(_cli.RuntimeFailure):
  """The loss became NaN or infinite."""


def validate(config: Config) -> None:
  """Raise ValueError with a one-line message if the config cannot run."""
  c = config
  checks = [
      (c.width > 0, f"--width must be positive, got {c.width}"),
      (c.depth >= 2, f"--depth (number of weight layers) must be >= 2, got {c.depth}"),
      (c.param in PARAMS, f"unknown --param {c.param!r}; expected one of {PARAMS}"),
      (c.bias in BIASES, f"unknown --bias {c.bias!r}; expected one of {BIASES}"),
      (c.dataset in (data_lib.AUTO,) + data_lib.DATASETS,
       f"unknown --dataset {c.dataset!r}; expected one of {(data_lib.AUTO,) + data_lib.DATASETS}"),
      (c.epochs >= 0, f"--epochs must be >= 0, got {c.epochs}"),
      (c.batch_size > 0, f"--batch-size must be positive, got {c.batch_size}"),
      (c.lr > 0 and math.isfinite(c.lr), f"--lr must be a positive number, got {c.lr}"),
      (0 <= c.momentum < 1, f"--momentum must be in [0, 1), got {c.momentum}"),
      (c.base >= 0, f"--base must be >= 0, got {c.base}"),
      (c.sampler in SAMPLERS, f"unknown --sampler {c.sampler!r}; expected one of {SAMPLERS}"),
      (0 <= c.random_rate <= 1, f"--random-rate must be in [0, 1], got {c.random_rate}"),
      (0 <= c.norm_rate < math.inf, f"--norm-rate must be >= 0, got {c.norm_rate}"),
      (0 <= c.split_rate < math.inf, f"--split-rate must be >= 0, got {c.split_rate}"),
      (0 <= c.cancel_rate < math.inf, f"--cancel-rate must be >= 0, got {c.cancel_rate}"),
  ]
  for ok, message in checks:
    if not ok:
      raise ValueError(message)
  if c.transfer_from is not None and not 0 <= c.transfer_epoch < c.epochs:
    raise ValueError(f"--transfer-epoch must be in [0, --epochs={c.epochs}), got {c.transfer_epoch}")
  rcjax.parametrization.parse_init(c.init)  # ValueError naming the spec
  mlp_deep.parse(c.hidden_init)


def build_model(config: Config) -> rcjax.nn.MLP:
  """The MLP of the config: depth - 1 hidden layers of `width` (axes hidden_0 .. hidden_{depth-2})."""
  bias_init = {"trainable": config.init, "constant": f"constant:{config.bias_value}", "none": "zeros"}
  return rcjax.nn.MLP(features=(config.width,) * (config.depth - 1), out_features=10, param=config.param,
                      bias=config.bias != "none", kernel_init=config.init, bias_init=bias_init[config.bias],
                      base=config.base or None)


def optimizer(config: Config) -> optax.GradientTransformation:
  """SGD with the parametrization's per-leaf learning-rate multipliers (`rcjax.sgd`)."""
  return rcjax.sgd(config.lr, momentum=config.momentum or None)


@functools.lru_cache(maxsize=16)
def _init_fn(model: rcjax.nn.MLP):
  return jax.jit(model.init)


def train_flops_per_example(params) -> int:
  """Training FLOPs per example: 3 x forward matmul FLOPs (2 * n_in * n_out per kernel), i.e. forward +
  backward (input and weight gradients); biases, activations and the softmax are not counted."""
  return sum(6 * int(np.prod(b.shape)) for path, b in rcjax.rc.leaves_with_paths(params)
             if path.endswith("['kernel']"))


@functools.lru_cache(maxsize=16)
def make_fns(model: rcjax.nn.MLP, lr: float, momentum: float):
  """Jitted `train_step(params, opt_state, x_all, y_all, idx)` and `eval_batch(params, x, y)` (cached, so
  runs of one process, e.g. a sweep, share compilations)."""
  tx = rcjax.sgd(lr, momentum=momentum or None)

  def loss_fn(params, x, y):
    logits = model.apply({"params": params}, x)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return losses, jnp.argmax(logits, -1) == y

  def mean_loss(params, x, y):
    losses, correct = loss_fn(params, x, y)
    return jnp.mean(losses), jnp.mean(correct)

  @jax.jit
  def train_step(params, opt_state, x_all, y_all, idx):
    (loss, acc), grads = jax.value_and_grad(mean_loss, has_aux=True)(params, x_all[idx], y_all[idx])
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, acc

  @jax.jit
  def eval_batch(params, x, y):
    losses, correct = loss_fn(params, x, y)
    return jnp.sum(losses), jnp.sum(correct)

  return train_step, eval_batch


def evaluate(eval_batch, params, x, y, chunk: int = 2000) -> tuple[float, float]:
  """(mean loss, accuracy) over all of (x, y), in chunks of `chunk` examples."""
  loss, correct = 0.0, 0.0
  for i in range(0, len(x), chunk):
    l, c = eval_batch(params, x[i:i + chunk], y[i:i + chunk])
    loss, correct = loss + float(l), correct + float(c)
  return loss / len(x), correct / len(x)


@functools.partial(jax.jit, static_argnums=2)
def _permutation(key, epoch, n: int):
  """The shuffling of epoch `epoch`: a permutation of range(n) from fold_in(key, epoch)."""
  return jax.random.permutation(jax.random.fold_in(key, epoch), n)


def _to_device(a: np.ndarray):
  """The array on the default device if it takes under half its memory, else kept on the host."""
  stats = jax.devices()[0].memory_stats() or {}
  limit = stats.get("bytes_limit")
  return jnp.asarray(a) if limit is None or a.nbytes < 0.5 * limit else a


# --- run directory ---------------------------------------------------------------------------------

def _recorded_dataset(run_dir: str | None) -> str | None:
  """The dataset a run directory's config.json names (None if there is none to read)."""
  try:
    name = json.loads((Path(run_dir) / "config.json").read_text()).get("dataset")
  except (TypeError, OSError, ValueError, AttributeError):
    return None
  return name if name in data_lib.DATASETS else None


# --lr when `--dataset auto` falls back to digits with mean-field and --lr is not given: digits has 22
# SGD steps per epoch (CIFAR-10: 781), and at the paper's 0.1 mean-field sits on its initial plateau for
# ~15 digits epochs (docs/train-mlp.md, "Learning rates"; N=1000: test accuracy 0.283 after 10 epochs).
DIGITS_MF_LR = 1.0


def load_data(config: Config, *, default_lr: bool = False) -> tuple[Config, data_lib.Dataset]:
  """The dataset, and the config with `--dataset auto` resolved to the one used: the dataset of the run
  being resumed (or transferred from), else CIFAR-10 if prepared locally, else digits (saying so).
  With `default_lr` (the command line had no --lr), auto resolved to digits and mean-field, the lr
  becomes `DIGITS_MF_LR` (said in the notice; config.json records it)."""
  name, auto = config.dataset, config.dataset == data_lib.AUTO
  if name == data_lib.AUTO:
    name = _recorded_dataset(config.out) or _recorded_dataset(config.transfer_from) or name
  if name != data_lib.AUTO:
    data, notice = data_lib.load(name, config.data_dir), None
  else:
    data, notice = data_lib.load_auto(config.data_dir)
  config = dataclasses.replace(config, dataset=data.name)
  if default_lr and auto and data.name == "digits" and config.param == "mf":
    config = dataclasses.replace(config, lr=DIGITS_MF_LR)
    if notice:
      notice = notice.replace("mean-field learns them at --lr 1", f"--lr not given, so mean-field uses "
                              f"--lr {DIGITS_MF_LR:g}: at the paper's 0.1 it plateaus on digits")
  if notice:
    print(f"train.mlp: {notice}", file=sys.stderr)
  return config, data


def check_out_dir(out: Path, config: Config) -> None:
  """Refuse an --out that holds something else than a run of this config (nothing is overwritten;
  `train.common.check_run_dir`: --epochs may grow, not shrink)."""
  check_run_dir(out, config, prog="train.mlp", resumable=RESUMABLE, counts_up="epochs")


def _line(epoch, step, width, flops, train, test, **extra) -> dict:
  return {"epoch": epoch, "step": step, "width": width, "train_loss": train[0], "train_acc": train[1],
          "test_loss": test[0], "test_acc": test[1], "flops": flops, **extra}


def _summary(m: dict, epochs: int, seconds: float) -> str:
  event = f"  [{m['event']} from width {m.get('from_width')}]" if m.get("event") else ""
  return (f"epoch {m['epoch']:>3}/{epochs}  step {m['step']:>6}  width {m['width']}  train_loss "
          f"{m['train_loss']:.4f}  test_loss {m['test_loss']:.4f}  test_acc {m['test_acc']:.4f}  "
          f"flops {m['flops']:.3e}  ({seconds:.1f}s){event}")


# --- training --------------------------------------------------------------------------------------

def run(config: Config, *, default_lr: bool = False) -> list[dict]:
  """Train (or resume, or transfer then train) as the config says; returns the metrics lines.
  `default_lr`: --lr was not given (see `load_data`).

  Raises:
    ValueError / FileNotFoundError: bad input (nothing is written).
    data_lib.DataUnavailable: the dataset cannot be loaded.
    TrainingDiverged: NaN/inf loss (the last good checkpoint is kept).
  """
  validate(config)
  out = Path(config.out)
  config, data = load_data(config, default_lr=default_lr)
  check_out_dir(out, config)
  check_writable(out)
  n = len(data.y_train)
  steps = n // config.batch_size
  if steps == 0:
    raise ValueError(f"--batch-size {config.batch_size} is larger than the training set ({n} examples)")
  model, tx = build_model(config), optimizer(config)
  resume = resume_step(out / "checkpoints", "train.mlp")
  root = jax.random.key(config.seed)
  init_key, transfer_key, data_key = (jax.random.fold_in(root, i) for i in range(3))
  source = None
  if resume is None and config.transfer_from is not None:  # validates the source before writing anything
    source = mlp_transfer.load_source(config, data, optimizer, transfer_key)

  write_config(out, config)
  r = _Run(config, out, Checkpointer(out / "checkpoints"), *make_fns(model, config.lr, config.momentum),
           *(_to_device(a) for a in (data.x_train, data.y_train, data.x_test, data.y_test)), time.time())
  if resume is not None:
    params, opt_state, epoch, step, flops, lines = r.resume(resume, tx)
  else:
    params, opt_state, epoch, step, flops, lines = r.begin(model, tx, source, init_key, data.x_train[:1])
  flops_per_step = train_flops_per_example(params) * config.batch_size
  for epoch in range(epoch + 1, config.epochs + 1):
    perm = np.asarray(_permutation(data_key, epoch, n))
    idx = perm[:steps * config.batch_size].reshape(steps, config.batch_size)
    params, opt_state, step, flops = r.train_epoch(epoch, idx, params, opt_state, step,
                                                   flops + steps * flops_per_step, lines)
  r.ckpt.wait()
  r.ckpt.close()
  if config.plot:
    _plot_run(out, lines)
  return lines


@dataclasses.dataclass
class _Run:
  """What the epochs of one run share: its config and directory, the jitted steps and the data."""
  config: Config
  out: Path
  ckpt: Checkpointer
  train_step: typing.Any
  eval_batch: typing.Any
  x_tr: typing.Any
  y_tr: typing.Any
  x_te: typing.Any
  y_te: typing.Any
  t0: float

  def save(self, epoch, params, opt_state, step, flops) -> None:
    self.ckpt.wait()
    self.ckpt.save(epoch, params=params, opt_state=opt_state if jax.tree.leaves(opt_state) else None,
                   config=dataclasses.asdict(self.config), extra={"epoch": epoch, "step": step, "flops": flops})

  def resume(self, resume: int, tx):
    """The state of checkpoint `resume`; metrics.jsonl loses the lines of epochs with no complete checkpoint."""
    restored = self.ckpt.restore(resume)
    params = restored["params"]
    opt_state = restore_opt_state(self.ckpt, resume, params, tx)
    lines = truncate_metrics(self.out / "metrics.jsonl", lambda m: m["epoch"] <= resume)
    print(f"{self.out}: complete ({resume} epochs)" if resume >= self.config.epochs else
          f"resuming {self.out} from epoch {resume}", file=sys.stderr)
    return params, opt_state, resume, restored["extra"]["step"], restored["extra"]["flops"], lines

  def begin(self, model, tx, source, init_key, x1):
    """The state at epoch 0 (or the transfer epoch), its metrics line written and checkpoint saved."""
    c = self.config
    if source is None:
      params = _init_fn(model)(init_key, jnp.asarray(x1))["params"]
      if rank := mlp_deep.parse(c.hidden_init):
        params = mlp_deep.lowrank_init(params, jax.random.fold_in(init_key, 1), rank)
      opt_state = tx.init(params)
      epoch, step, flops, lines, extra = 0, 0, 0, [], {}
    else:
      params, opt_state = source.params, source.opt_state
      epoch, step, flops, lines, extra = c.transfer_epoch, source.step, source.flops, source.lines, source.event
    m = _line(epoch, step, c.width, flops, self.evaluate(params, train=True), self.evaluate(params, train=False),
              **extra)
    lines = lines + [m]
    write_metrics(self.out / "metrics.jsonl", lines)
    self.save(epoch, params, opt_state, step, flops)
    print(_summary(m, c.epochs, time.time() - self.t0), file=sys.stderr)
    return params, opt_state, epoch, step, flops, lines

  def evaluate(self, params, *, train: bool):
    return evaluate(self.eval_batch, params, *((self.x_tr, self.y_tr) if train else (self.x_te, self.y_te)))

  def train_epoch(self, epoch: int, idx, params, opt_state, step: int, flops_after: int, lines: list):
    """Train one epoch over the minibatches `idx` (steps x batch); appends its metrics line to `lines`,
    writes them and saves the checkpoint. Returns (params, opt_state, step, flops) after it."""
    from rcjax._progress import bar as progress_bar

    c, steps, on_device = self.config, len(idx), isinstance(self.x_tr, jax.Array)
    losses = []
    bar = progress_bar(range(steps), desc=f"epoch {epoch}/{c.epochs}", leave=False, disable=not c.progress)
    for i in bar:
      if on_device:
        params, opt_state, loss, acc = self.train_step(params, opt_state, self.x_tr, self.y_tr, idx[i])
      else:  # dataset on the host: gather the batch there
        b = np.arange(c.batch_size)
        params, opt_state, loss, acc = self.train_step(params, opt_state, self.x_tr[idx[i]], self.y_tr[idx[i]], b)
      losses.append(loss)
      kill_point("train", epoch)
      if i % 25 == 0 or i == steps - 1:
        bar.set_postfix(loss=f"{float(loss):.4f}", acc=f"{float(acc):.3f}")
    running = float(np.mean(jax.device_get(losses)))
    train, test = self.evaluate(params, train=True), self.evaluate(params, train=False)
    bad = [v for v in (running, train[0], test[0]) if not math.isfinite(v)]
    if bad:
      self.ckpt.wait()
      raise TrainingDiverged(
          f"loss became {bad[0]} in epoch {epoch} (SGD steps {step + 1}..{step + steps}); stopped. The last "
          f"good checkpoint is epoch {epoch - 1} in {self.out / 'checkpoints'}; try a smaller --lr with another --out "
          f"(or --transfer-from {self.out} --transfer-epoch {epoch - 1} at the same width)")
    step += steps
    m = _line(epoch, step, c.width, flops_after, train, test, train_loss_running=running)
    lines.append(m)
    write_metrics(self.out / "metrics.jsonl", lines)
    self.save(epoch, params, opt_state, step, flops_after)
    bar.write(_summary(m, c.epochs, time.time() - self.t0), file=sys.stderr)
    return params, opt_state, step, flops_after


def _plot_run(out: Path, lines: list[dict]) -> None:
  from rcjax import plots

  fig = plots.training_curves({out.name: lines}, panels=("train_loss", "test_loss", "test_acc"),
                              title=str(out))
  plots.save(fig, out / "curves.png")


# --- command line ----------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
  """Flags generated from the Config fields (bools: `--exact`, `--no-progress`)."""
  p = argparse.ArgumentParser(prog="python -m train.mlp", description=__doc__.split("\n")[0],
                              formatter_class=HelpFormatter)
  return add_flags(p, Config)


def lr_given(argv) -> bool:
  """Whether the command line sets --lr (also as --lr=X or an abbreviation argparse accepts)."""
  probe = parser()
  probe.set_defaults(lr=None)
  return probe.parse_args(argv).lr is not None


def _main(argv) -> int:
  config = Config(**vars(parser().parse_args(argv)))
  default_lr = not lr_given(argv)
  quiet_logs()
  with warnings.catch_warnings():  # resume_step reported unverified steps in one line
    warnings.simplefilter("ignore", UnverifiedCheckpointWarning)
    run(config, default_lr=default_lr)
  return 0


def main(argv=None) -> int:
  """The command line (rcjax._cli's convention): bad input exits 2, runtime failures (a diverged run, a
  corrupt checkpoint, a full or read-only disk, data that cannot be loaded) exit 1, with one line
  `train.mlp: error: ...` (a traceback with --debug or RCJAX_DEBUG=1)."""
  return _cli.run("train.mlp", _main, argv)


if __name__ == "__main__":
  sys.exit(main())
