"""train.gpt's run directory and state: resuming (the newest verified checkpoint, the architecture checked),
the initial params (fresh, transferred from a run or an HF checkpoint), growth mid-training and the metrics file."""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import optax

import rcjax
from rcjax import sharding
from rcjax.checkpoint import Checkpointer
from rcjax.maps import tree_blocks
from rcjax.rc import is_rc, leaves_with_paths
from train.common import check_run_dir, metrics_records, resume_step, truncate_metrics
from train.gpt_config import RESUMABLE, Config, hf_arch, hf_source
from train.gpt_model import Trainer, global_batch, scaled_sizes


# --- run directory ------------------------------------------------------------------------------

def _check_run_dir(cfg: Config) -> None:
  """Refuse an --out that holds something else than a run of this config (`train.common.check_run_dir`;
  `checkpoints/` may come before config.json)."""
  check_run_dir(cfg.out, cfg, prog="train.gpt", resumable=RESUMABLE, before_config=("checkpoints",))


def _check_arch(template: Any, abstract: Any, where: str, depths: tuple = ()) -> None:
  """Raise unless the checkpoint `template` has this model's leaves and fixed axes (its `layers` may
  also have a size in `depths`: a run resumed after its depth growth)."""
  saved = {p: b for p, b in leaves_with_paths(template)}
  ours = {p: b for p, b in leaves_with_paths(abstract)}
  for p in sorted(set(saved) ^ set(ours)):
    raise ValueError(f"{where} holds another architecture: leaf {p} is "
                     f"{'only in the checkpoint' if p in saved else 'missing from the checkpoint'}")
  for p, b in ours.items():
    s = saved[p]
    fixed = [(a, n, m) for a, n, m, w in zip(b.axes, s.shape, b.shape, b.base)
             if w is None and n != m and not (a == "layers" and n in depths)]
    if s.axes != b.axes or fixed:
      raise ValueError(f"{where} holds another architecture: leaf {p} has axes {s.axes} shape {s.shape}, "
                       f"this model {b.axes} shape {b.shape}")


def _check_source(template: Any, abstract: Any, cfg: Config) -> None:
  """Raise unless the run `cfg.transfer_from` (its checkpoint `template`) has this run's parametrization
  and init, and, if --base-width is given, its muP base: transfer keeps every leaf's RC metadata."""
  theirs, ours = rcjax.sizes(template).get("head_dim"), rcjax.sizes(abstract).get("head_dim")
  if theirs != ours:  # head_dim is fixed in train.gpt (growth and transfer keep it)
    hint = f"--heads {cfg.width // theirs}" if cfg.width % theirs == 0 and not cfg.head_dim else f"--head-dim {theirs}"
    raise ValueError(f"{cfg.transfer_from} has head_dim {theirs}, this run {ours} (width {cfg.width}, heads "
                     f"{cfg.heads}): train.gpt keeps head_dim fixed in a transfer; pass {hint}")
  saved = dict(leaves_with_paths(template))
  for p, b in leaves_with_paths(abstract):
    s = saved[p]
    for name, flag in (("param", "--param"), ("init", "--init")):
      if getattr(s, name) != getattr(b, name):
        raise ValueError(f"{cfg.transfer_from} was trained with {name} {getattr(s, name)!r} (leaf {p}), this "
                         f"run has {flag} {getattr(b, name)!r}: transfer keeps the source's parametrization "
                         f"and init; pass {flag} {getattr(s, name)}")
    if cfg.base_width and s.base != b.base:
      raise ValueError(f"{cfg.transfer_from} has the muP base {s.base} at leaf {p}, --base-width "
                       f"{cfg.base_width} gives {b.base}: transfer keeps the source's base; leave "
                       "--base-width out (0)")


def _changed(sizes: dict, params: Any) -> dict:
  """The entries of `sizes` that differ from the params' sizes: an axis kept at its size (head_dim) is
  left out of a transfer, so `--random-rate` draws no fresh neurons along it."""
  now = rcjax.sizes(params)
  return {k: v for k, v in sizes.items() if now[k] != v}


def load_params(run_dir: str, mesh, step: int | None = None) -> Any:
  """A run's params (latest or `step`), restored straight onto `mesh` sharded by `rcjax.sharding.RULES`."""
  ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), read_only=True)
  target = sharding.abstract(ckpt.params_template(step), mesh)
  return ckpt.restore(step, params=target)["params"]


def _resume_step(cfg: Config) -> int | None:
  """The newest checkpoint of --out that verifies (None: none saved). Every process verifies (one line
  per corrupt step, from process 0); then process 0 moves the corrupt steps after it to
  `checkpoints.corrupt/`. Raises `CorruptCheckpoint` if no step verifies."""
  if not cfg.out:
    return None
  return resume_step(os.path.join(cfg.out, "checkpoints"), "train.gpt", main=jax.process_index() == 0,
                     sync=lambda: sharding.sync("train.gpt:verified"))


def _preflight(cfg: Config, model) -> int | None:
  """Check the checkpoint this run would resume from (returned: its step, or None), or transfer from,
  against this architecture. Between two barriers, so every process sees the same files (orbax's
  managers synchronise processes)."""
  sharding.sync("train.gpt:preflight")
  abstract = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, cfg.seq_len), jnp.int32))["params"],
                            jax.random.key(0))
  own = os.path.join(cfg.out, "checkpoints") if cfg.out else None
  resume = _resume_step(cfg)
  if resume is not None:
    ckpt = Checkpointer(own, read_only=True)
    _check_arch(ckpt.params_template(resume), abstract, own, (cfg.grow_to_depth,))
  elif cfg.transfer_from and hf_source(cfg.transfer_from) is None:
    template = Checkpointer(os.path.join(cfg.transfer_from, "checkpoints"), read_only=True).params_template()
    _check_arch(template, abstract, cfg.transfer_from)
    _check_source(template, abstract, cfg)
  sharding.sync("train.gpt:preflight done")
  return resume


def _initial_state(cfg, model, tx, mesh, ckpt, log):
  key = jax.random.key(cfg.seed)
  x = jnp.zeros((1, cfg.seq_len), jnp.int32)
  init_fn = lambda k: model.init(k, x)["params"]
  abstract = jax.eval_shape(init_fn, key)
  latest = ckpt.latest_step() if ckpt else None
  if latest is not None:  # resume as saved (widths and RC metadata, e.g. a transferred muP base), onto this mesh
    template = ckpt.params_template(latest)
    _check_arch(template, abstract, ckpt.directory, (cfg.grow_to_depth,))
    r = ckpt.restore(latest, params=sharding.abstract(template, mesh),
                     opt_state=sharding.abstract(jax.eval_shape(tx.init, template), mesh))
    log({"event": "resume", "step": latest})
    return r["params"], r["opt_state"], latest, r["extra"].get("flops")
  if cfg.transfer_from and hf_source(cfg.transfer_from) is not None:
    params = _from_hf(cfg, model, abstract, mesh, jax.random.fold_in(key, 7))
    log({"event": "transfer", "step": 0, "from": cfg.transfer_from, "from_sizes": hf_arch(
        cfg.transfer_from, hf_source(cfg.transfer_from))})
  elif cfg.transfer_from:
    src = Checkpointer(os.path.join(cfg.transfer_from, "checkpoints"), read_only=True)
    template = src.params_template()
    _check_arch(template, abstract, cfg.transfer_from)
    params = src.restore(params=sharding.abstract(template, mesh))["params"]
    target = _changed(rcjax.width_axes(abstract), params)
    params = rcjax.transfer_model(model, params, jax.random.fold_in(key, 7), target,
                                  random_rate=cfg.random_rate, norm_rate=cfg.norm_rate,
                                  split_rate=cfg.split_rate, cancel_rate=cfg.cancel_rate,
                                  exact=cfg.grow_exact and all(
                                      n >= rcjax.sizes(params)[k] for k, n in target.items()))
    params = jax.device_put(params, sharding.shardings(params, mesh))
    log({"event": "transfer", "step": 0, "from": cfg.transfer_from, "from_sizes": rcjax.width_axes(template),
         "sizes": rcjax.width_axes(params)})
  else:
    params = sharding.init(init_fn, key, mesh=mesh)
  opt_state = jax.jit(tx.init, out_shardings=sharding.shardings(jax.eval_shape(tx.init, params), mesh))(params)
  return params, opt_state, 0, 0.0


def _from_hf(cfg: Config, model, abstract, mesh, key) -> Any:
  """An HF checkpoint's params (standard parametrization, read sharded) in this run's parametrization
  and at this run's sizes: values divided by this model's multipliers (at the HF sizes, the muP base), so
  the function is unchanged, then `rcjax.transfer_model` to this run's width."""
  from rcjax import hf

  _, sp = hf.load(cfg.transfer_from, dtype=jnp.float32, mesh=mesh)
  template = jax.tree.map(lambda t, v: t.replace(value=v.value), abstract, sp, is_leaf=is_rc)
  _, factors = hf.as_sp(model, template)
  params = jax.tree_util.tree_map_with_path(
      lambda kp, b: b.replace(value=b.value / factors.get(tuple(k.key for k in kp), 1.0)), template, is_leaf=is_rc)
  target = _changed(rcjax.width_axes(abstract), params)
  if target:
    params = rcjax.transfer_model(model, params, key, target, random_rate=cfg.random_rate,
                                  norm_rate=cfg.norm_rate, exact=cfg.grow_exact, split_rate=cfg.split_rate,
                                  cancel_rate=cfg.cancel_rate)
  return jax.device_put(params, sharding.shardings(params, mesh))


def _finished(cfg: Config, ckpt: Checkpointer) -> dict | None:
  """For a run directory that already holds step `cfg.steps`: its summary (the `end` record of
  metrics.jsonl, or the step alone), and nothing is written; None if there is training left to do."""
  latest = ckpt.latest_step()
  if latest is None or latest < cfg.steps:
    return None
  ckpt.close()
  if latest > cfg.steps:
    raise ValueError(f"{cfg.out} holds step {latest}, past --steps {cfg.steps}; use a new --out (or more steps)")
  ends = [rec for _, rec in metrics_records(os.path.join(cfg.out, "metrics.jsonl"))
          if isinstance(rec, dict) and rec.get("event") == "end"]
  summary = {k: v for k, v in ends[-1].items() if k != "event"} if ends else {"steps": latest, "loss": None}
  return {**summary, "finished_before": True}


def _growth_sizes(cfg, params) -> dict:
  """The sizes a growth at `grow_at` changes (empty: the params have them already, e.g. on resume): the
  width axes of `grow_to` and the depth `grow_to_depth` (`layers`)."""
  sizes = _changed(scaled_sizes(cfg, cfg.grow_to), params) if cfg.grow_to else {}
  if cfg.grow_to_depth and rcjax.sizes(params)["layers"] != cfg.grow_to_depth:
    sizes["layers"] = cfg.grow_to_depth
  return sizes


def _at_depth(model, cfg, params):
  """`model` with the depth of `params` (scanned blocks: the size of their `layers` axis)."""
  depth = rcjax.sizes(params).get("layers", model.depth)
  return model if depth == model.depth else model.clone(depth=depth, unroll=cfg.unroll or depth)


def _grow(cfg, params, opt_state, model, tx, mesh, data, step):
  """Grow params and AdamW state to `grow_to` / `grow_to_depth`; returns them, a new Trainer, a metrics
  record with the loss on one fixed batch right before and right after growth, and the model (at the new
  depth)."""
  trainer = Trainer(model, tx, mesh, params, opt_state)
  fixed = global_batch(data, 0, cfg.batch_size, trainer.b_sh, eval=True)
  before = float(trainer.loss(params, fixed))
  sizes = _growth_sizes(cfg, params)
  # rcjax.transfer_model: the leaf-wise rules plus the GPT's own (a tied readout in SP, RMSNorm at
  # non-integer ratios with exact=True; new blocks as identities), so the function is kept wherever the
  # math allows.
  params, opt_state = rcjax.transfer_model(model, params, jax.random.fold_in(jax.random.key(cfg.seed), step),
                                           sizes, opt_state=opt_state, random_rate=cfg.random_rate,
                                           norm_rate=cfg.norm_rate, exact=cfg.grow_exact,
                                           depth_mode=cfg.grow_depth_mode if "layers" in sizes else None,
                                           split_rate=cfg.split_rate, cancel_rate=cfg.cancel_rate)
  # grow keeps each leaf's mesh axes; put any leaf the rules shard differently at the new sizes on its rule.
  params = jax.device_put(params, sharding.shardings(params, mesh))
  opt_state = jax.device_put(reset_adam(opt_state, cfg.grow_opt), sharding.shardings(opt_state, mesh))
  model = _at_depth(model, cfg, params)
  trainer = Trainer(model, tx, mesh, params, opt_state)
  after = float(trainer.loss(params, fixed))
  return params, opt_state, trainer, {"event": "grow", "step": step, "loss_before": before, "loss_after": after,
                                      "sizes": rcjax.sizes(params)}, model


def _spread_maps(cfg: Config, params, step: int) -> dict | None:
  """The index maps of the growth (`--grow-at`, done by `step`) or transfer (`--transfer-from` a run
  directory) that made `params`, as `_grow` / `_initial_state` drew them (for `rcjax.copy_spread`);
  None without one, or if the source was an HF checkpoint."""
  key, blocks = jax.random.key(cfg.seed), tree_blocks(params)
  if cfg.grow_at and step >= cfg.grow_at and cfg.grow_to:  # (a depth growth alone copies no neuron)
    return rcjax.index_maps(jax.random.fold_in(key, cfg.grow_at), scaled_sizes(cfg, cfg.width),
                            scaled_sizes(cfg, cfg.grow_to), blocks=blocks)
  if cfg.transfer_from and hf_source(cfg.transfer_from) is None:
    old = rcjax.width_axes(Checkpointer(os.path.join(cfg.transfer_from, "checkpoints"),
                                        read_only=True).params_template())
    new = rcjax.width_axes(params)
    if all(new[k] >= n for k, n in old.items()):
      return rcjax.index_maps(jax.random.fold_in(key, 7), old, new, blocks=blocks)
  return None


def reset_adam(opt_state: Any, how: str) -> Any:
  """The optimizer state with Adam's moments reset (`--grow-opt`): `transfer` keeps it, `reset-nu` zeroes
  the second moments, `reset` both moments and Adam's bias-correction count (the lr schedule's count stays)."""
  if how == "transfer":
    return opt_state
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  zero = lambda t: jax.tree.map(jnp.zeros_like, t)

  def reset(x):
    if not is_adam(x):
      return x
    if how == "reset-nu":
      return x._replace(nu=zero(x.nu))
    return x._replace(count=jnp.zeros_like(x.count), mu=zero(x.mu), nu=zero(x.nu))
  return jax.tree.map(reset, opt_state, is_leaf=is_adam)


def _open_metrics(path: str, resume: int | None):
  """Open metrics.jsonl for appending, keeping only the records up to step `resume` (the checkpoint this
  run resumes from; None: a fresh start keeps none): a killed run's records after its last checkpoint,
  and a partial last line, are dropped, so no step is logged twice."""
  def keep(rec):
    at = rec.get("step", rec.get("steps")) if isinstance(rec, dict) else None
    return resume is not None and isinstance(at, int) and at <= resume

  truncate_metrics(path, keep)
  return open(path, "a")
