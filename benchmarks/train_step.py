"""Train-step throughput with the trainers' own step functions, measured side by side in one run.

    python benchmarks/train_step.py                   # MLP (N=1000, CIFAR-10 shapes) + GPT presets
    python benchmarks/train_step.py --smoke           # tiny shapes, seconds (the test suite runs this)
    python benchmarks/train_step.py --only mlp --json out.json

MLP: `train.mlp.make_fns` (the jitted SGD step train.mlp runs), examples/s and achieved FLOP/s; on the
CPU, next to a plain PyTorch implementation of the same network and step in the same run (if torch is
installed; skipped with a message otherwise). GPT: the jitted, sharded step of train.gpt at the ~125M and
~350M presets in bf16, tokens/s and MFU (model FLOPs / (step time * peak FLOP/s of the device)).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def _median_time(fn, reps: int) -> float:
  fn()  # warm-up / compile
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def bench_mlp(width: int, batch: int, d_in: int, reps: int, param: str = "mf") -> dict:
  from train import mlp as train_mlp

  config = train_mlp.Config(width=width, param=param, batch_size=batch, dataset="digits")
  model = train_mlp.build_model(config)
  x_all = jax.random.normal(jax.random.key(0), (batch * 8, d_in))
  y_all = jax.random.randint(jax.random.key(1), (batch * 8,), 0, 10)
  params = model.init(jax.random.key(2), x_all[:1])["params"]
  tx = train_mlp.optimizer(config)
  opt_state = tx.init(params)
  train_step, _ = train_mlp.make_fns(model, config.lr, config.momentum)
  idx = jnp.arange(batch)
  state = [params, opt_state]

  def step():
    p, s, loss, _ = train_step(state[0], state[1], x_all, y_all, idx)
    jax.block_until_ready(loss)
    state[0], state[1] = p, s

  t = _median_time(step, reps)
  flops = train_mlp.train_flops_per_example(params) * batch
  row = {"case": f"mlp N={width} batch={batch}", "step_s": t, "examples_per_s": batch / t,
         "TFLOPs": flops / t / 1e12}
  torch_t = bench_mlp_torch(width, batch, d_in, reps, config.lr)
  if torch_t is not None:
    row.update(torch_step_s=torch_t, jax_vs_torch=torch_t / t)
  return row


def bench_mlp_torch(width: int, batch: int, d_in: int, reps: int, lr: float) -> float | None:
  """The same MLP (input -> N -> N -> 10, ReLU, biases) and SGD step in plain PyTorch, on the CPU."""
  if jax.devices()[0].platform != "cpu":
    return None
  try:
    import torch
  except ImportError:
    print("torch is not installed: skipping the PyTorch comparison (pip install torch)")
    return None
  torch.manual_seed(0)
  net = torch.nn.Sequential(torch.nn.Linear(d_in, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                            torch.nn.ReLU(), torch.nn.Linear(width, 10))
  opt = torch.optim.SGD(net.parameters(), lr=lr)
  x, y = torch.randn(batch, d_in), torch.randint(0, 10, (batch,))

  def step():
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()

  return _median_time(step, reps)


# Model variants compared side by side (`--variants`): fields of rcjax.nn.GPT set on train.gpt's model.
VARIANTS = {
    "default": {},                               # train.gpt's model as built (blocks fully unrolled)
    "scan": {"unroll": 1},                       # the scan over blocks as a loop
    "unscanned": {"scan": False},                # a module per block (params: block_0, block_1, ...)
    "bf16residual": {"residual_dtype": "compute"},  # residual stream in the compute dtype (not float32)
    "fusedloss": {"loss_chunks": 8},             # readout fused into the loss, 8 sequence chunks: no logits stored
    "fusedproj": {"fuse_projections": True},     # q/k/v (and SwiGLU up/gate) as one matmul each
}                                                # (fusedlossK: K chunks)


def variant_fields(spec: str, dtype) -> dict:
  """'scan+bf16residual' -> the GPT fields of those variants ('compute': the compute dtype)."""
  out = {}
  for part in spec.split("+"):
    if part.startswith("fusedloss") and part[9:].isdigit() and int(part[9:]) > 0:
      out["loss_chunks"] = int(part[9:])
      continue
    if part not in VARIANTS:
      raise ValueError(f"unknown variant {part!r}; expected some of {sorted(VARIANTS)} (or fusedlossK) "
                       "joined by '+'")
    out.update({k: (jnp.dtype(dtype) if v == "compute" else v) for k, v in VARIANTS[part].items()})
  return out


def _gpt_setup(preset: str, variant: str, overrides: dict):
  """train.gpt's config, model (as `variant`), optimizer and mesh at `preset` with `overrides`."""
  import dataclasses

  from rcjax import sharding
  from train import gpt as train_gpt

  cfg = dataclasses.replace(train_gpt.Config(), **{**train_gpt.PRESETS.get(preset, {}), **overrides})
  model = train_gpt.build_model(cfg).clone(**variant_fields(variant, cfg.dtype))
  return cfg, model, train_gpt.build_optimizer(cfg), sharding.make_mesh(cfg.mesh)


def gpt_step(preset: str, variant: str = "default", **overrides):
  """train.gpt's jitted, sharded step at `preset` (all local devices on the data axis) for a model
  `variant` (VARIANTS), with params, AdamW state and a random batch: returns (step, state, cfg,
  attention); `step()` runs one step and waits."""
  import sys

  from rcjax import sharding
  from train import gpt as train_gpt

  cfg, model, tx, mesh = _gpt_setup(preset, variant, overrides)
  params = sharding.init(model.init, jax.random.key(0), jnp.ones((1, cfg.seq_len), jnp.int32), mesh=mesh)["params"]
  opt_state = jax.jit(tx.init, out_shardings=sharding.shardings(jax.eval_shape(tx.init, params), mesh))(params)
  trainer = train_gpt.Trainer(model, tx, mesh, params, opt_state)
  batch = jax.device_put(jax.random.randint(jax.random.key(1), (cfg.batch_size, cfg.seq_len + 1), 0, cfg.vocab),
                         trainer.b_sh)
  state = [params, opt_state]
  attention = model.attention or "xla"
  if model.attention == "cudnn":
    try:  # compile first: a rejected shape fails here, before the step donates the params
      trainer.step.lower(params, opt_state, batch).compile()
    except Exception as e:  # noqa: BLE001 - cuDNN attention may reject a shape: measure XLA attention then
      print(f"cuDNN attention failed ({type(e).__name__}: {str(e)[:160]}); using XLA attention", file=sys.stderr)
      model, attention = model.clone(attention=None), "xla (cudnn failed)"
      trainer = train_gpt.Trainer(model, tx, mesh, params, opt_state)

  def step():
    p, s, loss = trainer.step(state[0], state[1], batch)
    jax.block_until_ready(loss)
    state[0], state[1] = p, s

  return step, state, cfg, attention


def bench_gpt(preset: str, reps: int, variant: str = "default", **overrides) -> dict:
  """tokens/s and MFU of train.gpt's jitted, sharded step (all local devices on the data axis)."""
  from train import gpt as train_gpt

  t0 = time.perf_counter()
  step, state, cfg, attention = gpt_step(preset, variant, **overrides)
  t = _median_time(step, reps)
  total = time.perf_counter() - t0  # init, compile, warm-up and the timed steps: for planning GPU sessions
  tokens = cfg.batch_size * cfg.seq_len
  fpt = train_gpt.flops_per_token(state[0], cfg.seq_len)
  peak = train_gpt.peak_flops(cfg)
  n_params = sum(b.value.size for b in jax.tree.leaves(state[0], is_leaf=lambda x: hasattr(x, "axes")))
  return {"case": f"gpt {preset} B={cfg.batch_size} T={cfg.seq_len} {cfg.dtype}" + (" remat" if cfg.remat else "")
          + ("" if variant == "default" else f" {variant}"),
          "params_M": n_params / 1e6, "attention": attention, "step_s": t, "tokens_per_s": tokens / t,
          "TFLOPs_per_device": tokens * fpt / t / 1e12 / jax.device_count(),
          "mfu": tokens * fpt / t / (peak * jax.device_count()) if peak else None, "wall_s": total}


def gpt_memory(preset: str, variant: str = "default", **overrides) -> dict:
  """Compiled memory of train.gpt's step (abstract params and state: nothing is allocated or run): XLA's
  temporaries and the arguments (params, AdamW state, batch), in GiB."""
  from train import gpt as train_gpt

  cfg, model, tx, mesh = _gpt_setup(preset, variant, overrides)
  params = jax.eval_shape(lambda k: model.init(k, jnp.ones((1, cfg.seq_len), jnp.int32))["params"],
                          jax.random.key(0))
  state = jax.eval_shape(tx.init, params)
  trainer = train_gpt.Trainer(model, tx, mesh, params, state)
  batch = jax.ShapeDtypeStruct((cfg.batch_size, cfg.seq_len + 1), jnp.int32)
  t0 = time.perf_counter()
  m = trainer.step.lower(params, state, batch).compile().memory_analysis()
  return {"case": f"gpt {preset} B={cfg.batch_size} T={cfg.seq_len} {cfg.dtype} memory"
          + ("" if variant == "default" else f" {variant}"),
          "temp_GiB": m.temp_size_in_bytes / 2**30, "args_GiB": m.argument_size_in_bytes / 2**30,
          "compile_s": time.perf_counter() - t0}


def parse_spec(ap: argparse.ArgumentParser, spec: str) -> tuple[str, dict]:
  """'PRESET[:BATCH]' -> (preset, {'batch_size': BATCH} or {}), or argparse's usage error."""
  from train import gpt as train_gpt
  preset, colon, batch = spec.strip().partition(":")
  if preset not in train_gpt.PRESETS:
    ap.error(f"unknown train.gpt preset {preset!r} in {spec!r}; presets: {', '.join(train_gpt.PRESETS)}")
  if colon and not (batch.isdigit() and int(batch) >= 1):
    ap.error(f"the batch after ':' in {spec!r} must be a positive integer")
  return preset, ({"batch_size": int(batch)} if colon else {})


def main(argv=None) -> list[dict]:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--smoke", action="store_true", help="tiny shapes (for the test suite)")
  ap.add_argument("--only", choices=["mlp", "gpt"], help="run one family")
  ap.add_argument("--gpt", default="gpt-small,gpt-medium",
                  help="comma-separated train.gpt presets, each optionally with :BATCH (e.g. gpt-medium:64)")
  ap.add_argument("--remat", action="store_true", help="rematerialise blocks in the GPT runs")
  ap.add_argument("--variants", default="default",
                  help="comma-separated model variants measured side by side, each some of "
                  f"{sorted(VARIANTS)} joined by '+' (e.g. default,scan,bf16residual)")
  ap.add_argument("--memory", action="store_true",
                  help="GPT: only compile each step and report its memory (XLA's temporaries, arguments)")
  ap.add_argument("--reps", type=int, default=20)
  ap.add_argument("--json", help="write the rows as JSON to this file")
  args = ap.parse_args(argv)
  if args.reps < 1:
    ap.error("--reps must be at least 1")
  specs = [parse_spec(ap, spec) + (spec,) for spec in (["tiny:8"] if args.smoke else args.gpt.split(","))]
  dev = jax.devices()[0]
  print(f"device: {dev.device_kind} ({dev.platform}) x{jax.device_count()}, jax {jax.__version__}")
  rows = []
  if args.only in (None, "mlp") and not args.memory:
    width, batch, d_in = (32, 16, 64) if args.smoke else (1000, 64, 3072)
    _report(rows, bench_mlp(width, batch, d_in, reps=3 if args.smoke else args.reps), args.json)
  if args.only in (None, "gpt"):
    for preset, over, spec in specs:
      if args.remat:
        over["remat"] = True
      for variant in args.variants.split(","):
        try:
          if args.memory:
            row = gpt_memory(preset, variant=variant, **over)
          else:
            row = bench_gpt(preset, 3 if args.smoke else max(3, args.reps // 2), variant=variant, **over)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory at a large batch: report it, go on
          row = {"case": f"gpt {spec} {variant}", "error": f"{type(e).__name__}: {str(e)[:300]}"}
        _report(rows, row, args.json)
  return rows


def _report(rows: list[dict], row: dict, path: str | None) -> None:
  """Print a row and rewrite the JSON file (after every row: a run cut short keeps what it measured)."""
  row["device"] = jax.devices()[0].device_kind
  if os.environ.get("XLA_FLAGS", "").strip():  # compiler flags change what is measured: keep them with it
    row["xla_flags"] = os.environ["XLA_FLAGS"].strip()
  rows.append(row)
  print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
  if path:
    with open(path, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  sys.exit(1 if any("error" in row for row in main()) else 0)
