"""python -m train.gpt: GPT / Llama training on a device mesh, with growth mid-training.

    python -m train.gpt --preset tiny --steps 300 --out runs/tiny                  # CPU, ~1 min
    python -m train.gpt --preset tiny --mesh data=2,fsdp=2,tensor=2 --out runs/t8  # 8 devices
    python -m train.gpt --preset tiny --grow-at 150 --grow-to 128 --out runs/grow  # 64 -> 128 mid-run
    python -m train.gpt --preset tiny --grow-at 150 --grow-to-depth 4 --grow-exact true --out runs/deep  # 2 -> 4 blocks
    python -m train.gpt --preset tiny --width 128 --transfer-from runs/tiny --out runs/from_tiny
    python -m train.gpt --transfer-from gpt2-x2 --steps 100 --out runs/gpt2-x2   # an HF directory
    python -m train.gpt --preset gpt-small --steps 50 --log-every 10               # GPU: tokens/s, MFU
    python -m train.gpt --preset tiny --dataset markov --out runs/markov   # synthetic: an exact loss floor
    python -m train.gpt --preset tiny --dataset tiny_shakespeare --out runs/shakespeare   # TFDS, bytes
    # two hosts (or two local processes; each sees its own devices):
    python -m train.gpt --preset tiny --coordinator HOST:1234 --num-processes 2 --process-id 0 --out D
    python -m train.gpt --preset tiny --coordinator HOST:1234 --num-processes 2 --process-id 1 --out D

A run directory holds config.json, metrics.jsonl, checkpoints/ and loss.png. Restarting the same command
resumes from the last complete checkpoint, on any mesh.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from rcjax._progress import bar as progress_bar

import rcjax
from rcjax import sharding
from rcjax import _cli
from rcjax.checkpoint import Checkpointer
from rcjax.integrity import UnverifiedCheckpointWarning, check_writable, kill_point
from train.common import quiet_logs, read_metrics, write_config
from train.text_data import TextData

# train.gpt's pieces (config < model < state < this loop); their public names are train.gpt's API too
from train.gpt_config import (PEAK_FLOPS, PRESETS, RESUMABLE, Config, hf_arch, hf_source,  # noqa: F401
                              parse, peak_flops, peak_for)
from train.gpt_model import (Trainer, build_model, build_optimizer, flops_per_token, global_batch,  # noqa: F401
                             lr_schedule, scaled_sizes, validate)
from train.gpt_state import (_at_depth, _changed, _check_run_dir, _finished, _grow, _growth_sizes,  # noqa: F401
                             _initial_state, _open_metrics, _preflight, _spread_maps, load_params, reset_adam)


def _save_steps(cfg: Config) -> set[int]:
  """The steps saved whatever --ckpt-every says, and kept whatever --keep says: --save-steps and the last."""
  return {int(s) for s in filter(None, cfg.save_steps.split(","))} | {cfg.steps}


def run(cfg: Config) -> dict:
  """Train; returns a summary (final loss, loss floor, tokens/s, MFU, sizes)."""
  setup = _setup(cfg)
  if isinstance(setup, dict):  # the run directory already holds the last step
    return setup
  mesh, data, model, tx, ckpt, metrics_file = setup
  main = jax.process_index() == 0

  def log(rec):
    if metrics_file:
      metrics_file.write(_cli.json_line(rec) + "\n")  # strict JSON: NaN/inf as null
      metrics_file.flush()

  params, opt_state, start, flops_done = _initial_state(cfg, model, tx, mesh, ckpt, log)
  model = _at_depth(model, cfg, params)  # a run resumed after a depth growth
  s = _Loop(model=model, params=params, opt_state=opt_state, trainer=Trainer(model, tx, mesh, params, opt_state),
            fpt=flops_per_token(params, cfg.seq_len), spread_maps=_spread_maps(cfg, params, start),
            # 4 * (the first step with a non-finite loss or gradient norm) + which: on the mesh, like the loss
            bad=jax.device_put(jnp.zeros((), jnp.int32),
                               jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())),
            save_steps=_save_steps(cfg))
  s.flops_done = start * cfg.batch_size * cfg.seq_len * s.fpt if flops_done is None else flops_done  # (old checkpoints)
  eval_batches = [global_batch(data, i, cfg.batch_size, s.trainer.b_sh, eval=True)
                  for i in range(cfg.eval_batches if cfg.eval_every else 0)]
  bar = progress_bar(total=cfg.steps, initial=start, disable=not (main and cfg.progress), desc="train.gpt")
  for step in range(start + 1, cfg.steps + 1):
    _train_step(cfg, s, tx, mesh, global_batch(data, step, cfg.batch_size, s.trainer.b_sh), step)
    bar.update(1)
    if step % cfg.log_every == 0 or step == cfg.steps:
      _stop_if_diverged(s.bad, ckpt, cfg)
      log(_step_record(cfg, s, step))
      bar.set_postfix(loss=f"{float(s.loss):.3f}")
    if cfg.grow_at and step == cfg.grow_at and _growth_sizes(cfg, s.params):
      s.params, s.opt_state, s.trainer, rec, s.model = _grow(cfg, s.params, s.opt_state, s.model, tx, mesh, data,
                                                             step)
      s.spread_maps, s.fpt, s.t_last = _spread_maps(cfg, s.params, step), flops_per_token(s.params, cfg.seq_len), None
      log(rec)  # (before saving: the checkpoint of this step holds the grown state)
    _eval_and_save(cfg, s, ckpt, eval_batches, log, step)
  bar.close()
  _stop_if_diverged(s.bad, ckpt, cfg)
  if ckpt:
    ckpt.wait()
    ckpt.close()
  summary = _summary(cfg, s, data)
  if metrics_file:
    log({"event": "end", **summary})
    metrics_file.close()
    if cfg.plot:
      _plot(cfg.out, data.loss_floor())
  return summary


def _setup(cfg: Config):
  """Checks (flags the same on every process, the config, the run directory, --out writable, the
  checkpoints verified) before anything is written; then config.json and the metrics file. Returns
  (mesh, data, model, tx, ckpt, metrics file), or the summary of a run that already holds the last step."""
  # Processes with other flags would mix two runs or wait in collectives that never match: refuse first.
  flags = {k: os.path.abspath(v) if k in ("out", "transfer_from") and v else v
           for k, v in dataclasses.asdict(cfg).items() if k not in ("progress", "data_dir")}
  sharding.check_same_on_every_process(flags, "train.gpt flags")
  validate(cfg)
  if cfg.out:
    _check_run_dir(cfg)
    check_writable(cfg.out)
  mesh = sharding.make_mesh(cfg.mesh)
  data = TextData(cfg.dataset, cfg.seq_len, cfg.seed, data_dir=cfg.data_dir or None,
                  markov=dict(order=cfg.markov_order, symbols=cfg.markov_symbols, alpha=cfg.markov_alpha))
  model, tx = build_model(cfg), build_optimizer(cfg)
  resume = _preflight(cfg, model)  # verifies checkpoints, reads metadata: a bad source fails before writing
  ckpt = Checkpointer(os.path.join(cfg.out, "checkpoints"), max_to_keep=cfg.keep or None,
                      keep_steps=_save_steps(cfg)) if cfg.out else None
  if ckpt and (done := _finished(cfg, ckpt)) is not None:
    return done
  metrics_file = None
  if cfg.out and jax.process_index() == 0:
    write_config(cfg.out, cfg)  # atomic: other processes read it
    metrics_file = _open_metrics(os.path.join(cfg.out, "metrics.jsonl"), resume)
  return mesh, data, model, tx, ckpt, metrics_file


@dataclasses.dataclass
class _Loop:
  """The training loop's state between steps."""
  model: Any
  params: Any
  opt_state: Any
  trainer: Any
  fpt: float
  spread_maps: Any
  bad: Any
  save_steps: set = dataclasses.field(default_factory=set)  # `_save_steps(cfg)`, computed once
  flops_done: float = 0.0
  loss: Any = None
  t_last: float | None = None  # end of the last timed interval (None: the next step compiles)
  steps_since: int = 0
  paused: float = 0.0  # seconds of evals and saves in the current interval
  speeds: list = dataclasses.field(default_factory=list)


def _train_step(cfg: Config, s: _Loop, tx, mesh, batch, step: int) -> None:
  if s.t_last is None and s.model.attention == "cudnn" and cfg.attention == "auto":
    try:  # compile ahead of the first call: a rejected shape fails here, before params are donated
      s.trainer.train.lower(s.params, s.opt_state, batch).compile()
    except Exception as e:  # noqa: BLE001 - cuDNN attention may reject a shape: use XLA's
      print(f"train.gpt: cuDNN attention did not compile ({type(e).__name__}: {str(e)[:200]}); using XLA "
            "attention", file=sys.stderr)
      s.model = s.model.clone(attention=None)
      s.trainer = Trainer(s.model, tx, mesh, s.params, s.opt_state)
  s.params, s.opt_state, s.loss, gnorm = s.trainer.train(s.params, s.opt_state, batch)
  s.bad = _first_bad(s.bad, step, s.loss, gnorm)  # on the device: no sync per step
  kill_point("train", step)
  s.flops_done += cfg.batch_size * cfg.seq_len * s.fpt
  s.steps_since += 1
  if s.t_last is None:  # the first step compiles: time from its end
    s.loss.block_until_ready()
    s.t_last, s.steps_since, s.paused = time.perf_counter(), 0, 0.0


def _step_record(cfg: Config, s: _Loop, step: int) -> dict:
  """The metrics line of a logged step: loss, tokens, FLOPs, width, speed since the last line."""
  tokens_per_step, peak = cfg.batch_size * cfg.seq_len, peak_flops(cfg)
  loss = float(s.loss)  # waits for the step: the interval's time includes it
  now = time.perf_counter()
  rec = {"step": step, "loss": loss, "tokens": step * tokens_per_step, "flops": s.flops_done,
         "width": rcjax.sizes(s.params)["embed"]}
  if s.steps_since:  # time spent in steps only (evals and checkpoint saves are paused out)
    tps = s.steps_since * tokens_per_step / (now - s.t_last - s.paused)
    rec.update(tokens_per_s=tps, mfu=(tps * s.fpt / (peak * jax.device_count())) if peak else None)
    s.speeds.append(rec)
  s.t_last, s.steps_since, s.paused = now, 0, 0.0
  if s.spread_maps:
    rec["copy_spread"] = rcjax.copy_spread(s.params, s.spread_maps)
  return rec


def _eval_and_save(cfg: Config, s: _Loop, ckpt, eval_batches, log, step: int) -> None:
  do_eval = cfg.eval_every and step % cfg.eval_every == 0
  do_save = ckpt and (step in s.save_steps or (cfg.ckpt_every and step % cfg.ckpt_every == 0))
  if not (do_eval or do_save):
    return
  _stop_if_diverged(s.bad, ckpt, cfg)  # never save a non-finite state
  s.loss.block_until_ready()
  t0 = time.perf_counter()
  if do_eval:
    log({"step": step, "eval_loss": float(np.mean([float(s.trainer.loss(s.params, b)) for b in eval_batches]))})
  if do_save:
    ckpt.save(step, params=s.params, opt_state=s.opt_state, config=dataclasses.asdict(cfg),
              extra={"tokens": step * cfg.batch_size * cfg.seq_len, "sizes": rcjax.sizes(s.params),
                     "flops": s.flops_done})
  s.paused += time.perf_counter() - t0


def _summary(cfg: Config, s: _Loop, data) -> dict:
  peak, n_dev = peak_flops(cfg), jax.device_count()
  summary = {"steps": cfg.steps, "loss": None if s.loss is None else float(s.loss), "loss_floor": data.loss_floor(),
             "sizes": rcjax.sizes(s.params), "flops_per_token": s.fpt, "device": jax.devices()[0].device_kind,
             "devices": n_dev, "peak_flops_per_device": peak}
  if s.speeds:
    tail = s.speeds[len(s.speeds) // 2:] or s.speeds  # steady state: the second half of the intervals
    summary["tokens_per_s"] = float(np.mean([r["tokens_per_s"] for r in tail]))
    summary["mfu"] = (summary["tokens_per_s"] * s.fpt / (peak * n_dev)) if peak else None
  return summary


class TrainingDiverged(_cli.RuntimeFailure):
  """The loss or the gradient norm became NaN or infinite (the last good checkpoint is kept)."""


@jax.jit
def _first_bad(bad, step, loss, gnorm):
  """`bad` if already set, else 4 * step + (1: loss, 2: gradient norm, 3: both) when one is not finite."""
  which = jnp.where(jnp.isfinite(loss), 0, 1) + jnp.where(jnp.isfinite(gnorm), 0, 2)
  return jnp.where((bad == 0) & (which > 0), 4 * step + which, bad).astype(jnp.int32)


def _stop_if_diverged(bad, ckpt: Checkpointer | None, cfg: Config) -> None:
  """Raise `TrainingDiverged` naming the first non-finite step, after the pending save is written."""
  b = int(bad)
  if not b:
    return
  step, which = divmod(b, 4)
  what = {1: "the loss", 2: "the gradient norm", 3: "the loss and the gradient norm"}[which]
  last = None
  if ckpt:
    ckpt.wait()
    last = ckpt.latest_step()
  kept = (f"the last good checkpoint is step {last} in {ckpt.directory}" if last is not None else
          "no checkpoint had been saved yet")
  raise TrainingDiverged(f"{what} became non-finite at step {step}; stopped without saving it ({kept}); try a "
                         f"smaller --lr (now {cfg.lr}) or --clip, with another --out")


def _plot(out: str, floor: float | None) -> None:
  try:
    from rcjax import plots
    recs = read_metrics(os.path.join(out, "metrics.jsonl"))
    plots.save(plots.lm_loss_curve(recs, floor=floor), os.path.join(out, "loss.png"))
  except Exception as e:  # noqa: BLE001 - a plot must never fail a run
    print(f"train.gpt: could not draw loss.png ({e})", file=sys.stderr)


init_distributed = sharding.init_distributed


def main(argv: list[str] | None = None) -> int:
  """The command line (rcjax._cli's convention): bad input exits 2, runtime failures (a non-finite loss,
  a corrupt checkpoint, a full or read-only disk) exit 1, with one line `train.gpt: error: ...` (a
  traceback with --debug or RCJAX_DEBUG=1)."""
  return _cli.run("train.gpt", _main, argv)


def _main(argv: list[str]) -> int:
  cfg, args = parse(argv)
  quiet_logs()  # a failed save is reported in one line, without orbax's tracebacks
  init_distributed(args.coordinator, args.num_processes, args.process_id)
  with warnings.catch_warnings():  # _resume_step reported unverified steps in one line
    warnings.simplefilter("ignore", UnverifiedCheckpointWarning)
    summary = run(cfg)
  if summary.get("finished_before"):
    print(f"train.gpt: {cfg.out} already holds the last step ({cfg.steps}); nothing to train", file=sys.stderr)
  if summary.get("loss") is None:
    return 0
  tps, mfu = summary.get("tokens_per_s"), summary.get("mfu")
  print(f"process {jax.process_index()}: step {summary['steps']} loss {summary['loss']:.6f}"
        + (f" floor {summary['loss_floor']:.4f}" if summary["loss_floor"] is not None else "")
        + (f" | {tps:,.0f} tokens/s" if tps else "")
        + (f" | MFU {100 * mfu:.1f}% of {summary['peak_flops_per_device']:.3g} FLOP/s x {summary['devices']}"
           if mfu else "") + f" | {summary['device']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
