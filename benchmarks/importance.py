"""Shrinking by importance against uniform and stride sampling: loss right after shrinking and after K
steps of retraining, on a small GPT (train.gpt, markov data) and the digits MLP (train.mlp).

    python benchmarks/importance.py --gpt-steps 300 --out benchmarks/results/2026-12-07-cpu-importance
    python benchmarks/importance.py --quick --out /tmp/imp   # 1 seed, few steps (above: 25 min, shared CPU)

For every seed a source model is trained (GPT: tiny preset, float32; MLP: 64 -> 128 -> 128 -> 10,
mean-field, SGD), then shrunk to each target by each sampler with the same key, evaluated on fixed
held-out data, and retrained for K steps (a fresh optimizer, the same for every sampler). 'scratch' is
the small model from a fresh init trained the same K steps (the baseline every transfer has to beat).
Writes `importance.json` and `importance.png` to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rcjax
from train import data as data_lib
from train import gpt as tg
from train import mlp as tm
from train.text_data import TextData

SAMPLERS = ("uniform", "stride", "importance-act", "importance-weight", "importance-sample")


def _scores(sampler, act, weight):
  if sampler in ("importance-act", "importance-sample"):
    return act
  return weight if sampler == "importance-weight" else None


def _rc_sampler(sampler):
  names = {"uniform": "stratified", "stride": "stride", "importance-sample": "importance-sample"}
  return names.get(sampler, "importance")


# --- GPT --------------------------------------------------------------------------------------

def gpt_targets(sizes):
  half = {k: sizes[k] // 2 for k in ("embed", "mlp", "heads", "kv_heads")}
  quarter = {k: sizes[k] // 4 for k in ("embed", "mlp", "heads", "kv_heads")}
  return {"width 1/2": half, "width 1/4": quarter,
          "heads 1/2": {"heads": sizes["heads"] // 2, "kv_heads": sizes["kv_heads"] // 2},
          "heads 1/4": {"heads": sizes["heads"] // 4, "kv_heads": sizes["kv_heads"] // 4},
          "mlp 1/2": {"mlp": sizes["mlp"] // 2}, "mlp 1/4": {"mlp": sizes["mlp"] // 4}}


@functools.lru_cache(maxsize=None)
def gpt_fns(cfg):
  model, tx = tg.build_model(cfg), tg.build_optimizer(cfg)

  @jax.jit
  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(lambda p: model.apply({"params": p}, batch[:, :-1], batch[:, 1:]))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  loss = jax.jit(lambda p, b: model.apply({"params": p}, b[:, :-1], b[:, 1:]))
  return model, tx, step, loss


def gpt_train(cfg, params, data, steps, offset=0):
  model, tx, step, _ = gpt_fns(cfg)
  opt_state = tx.init(params)
  for s in range(steps):
    params, opt_state, _ = step(params, opt_state, jnp.asarray(data.batch(offset + s, range(cfg.batch_size))))
  return params


def gpt_eval(cfg, params, evals):
  loss = gpt_fns(cfg)[3]
  return float(np.mean([float(loss(params, b)) for b in evals]))


def run_gpt(seed, a):
  cfg = dataclasses.replace(tg.Config(), dtype="float32", steps=a.gpt_steps, seed=seed, progress=False)
  model = tg.build_model(cfg)
  data = TextData("markov", cfg.seq_len, seed, markov=dict(order=cfg.markov_order, symbols=cfg.markov_symbols,
                                                           alpha=cfg.markov_alpha, seed=seed))
  evals = [jnp.asarray(data.batch(i, range(32), eval=True)) for i in range(a.eval_batches)]
  params = model.init(jax.random.key(seed), jnp.zeros((1, cfg.seq_len), jnp.int32))["params"]
  params = gpt_train(cfg, params, data, cfg.steps)
  calib = [jnp.asarray(data.batch(10**6 + i, range(16))[:, :-1]) for i in range(a.calib_batches)]
  act = rcjax.importance.activations(model, params, calib)
  weight = rcjax.importance.weights(params)
  sizes = rcjax.width_axes(params)
  rows = [dict(model="gpt", seed=seed, target="source", sampler="-", shrunk=gpt_eval(cfg, params, evals))]
  rcfg = dataclasses.replace(cfg, steps=a.k, warmup=max(1, a.k // 10), lr=cfg.lr / 3)
  for target, new in list(gpt_targets(sizes).items())[: 1 if a.smoke else None]:
    sized = dataclasses.replace(rcfg, width=new.get("embed", sizes["embed"]), heads=new.get("heads", sizes["heads"]),
                                mlp=new.get("mlp", sizes["mlp"]), head_dim=sizes["head_dim"], base_width=0)
    for sampler in SAMPLERS:
      key = jax.random.key(1000 + seed)
      small = rcjax.transfer_model(model, params, key, new, sampler=_rc_sampler(sampler),
                                   scores=_scores(sampler, act, weight))
      before = gpt_eval(cfg, small, evals)
      after = gpt_eval(cfg, gpt_train(rcfg, small, data, a.k, offset=cfg.steps), evals)
      rows.append(dict(model="gpt", seed=seed, target=target, sampler=sampler, shrunk=before, retrained=after))
    fresh = tg.build_model(sized).init(jax.random.key(seed + 77), jnp.zeros((1, cfg.seq_len), jnp.int32))["params"]
    fresh = rcjax.boxes(rcjax.unbox(fresh), small)  # the small model's base sizes (the source's)
    rows.append(dict(model="gpt", seed=seed, target=target, sampler="scratch", shrunk=gpt_eval(cfg, fresh, evals),
                     retrained=gpt_eval(cfg, gpt_train(rcfg, fresh, data, a.k, offset=cfg.steps), evals)))
    print(f"gpt seed {seed} {target}: " + ", ".join(f"{r['sampler']} {r['shrunk']:.3f}->{r['retrained']:.3f}"
                                                    for r in rows[-len(SAMPLERS) - 1:]), flush=True)
  return rows


# --- MLP --------------------------------------------------------------------------------------

def run_mlp(seed, a):
  cfg = tm.Config(width=a.mlp_width, dataset="digits", lr=0.1, batch_size=64, seed=seed, progress=False)
  data = data_lib.load("digits")
  model = tm.build_model(cfg)
  train_step, eval_batch = tm.make_fns(model, cfg.lr, 0.0)
  x_tr, y_tr, x_te, y_te = (jnp.asarray(v) for v in (data.x_train, data.y_train, data.x_test, data.y_test))
  rng = np.random.default_rng(seed)

  def train(params, steps):
    opt_state = tm.optimizer(cfg).init(params)
    for _ in range(steps):
      idx = jnp.asarray(rng.integers(0, len(data.y_train), cfg.batch_size))
      params, opt_state, _, _ = train_step(params, opt_state, x_tr, y_tr, idx)
    return params

  test = lambda p: tm.evaluate(eval_batch, p, x_te, y_te)[0]
  params = model.init(jax.random.key(seed), x_tr[:1])["params"]
  params = train(params, a.mlp_steps)
  act = rcjax.importance.activations(model, params, [x_tr[i:i + 256] for i in range(0, 512, 256)])
  weight = rcjax.importance.weights(params)
  rows = [dict(model="mlp", seed=seed, target="source", sampler="-", shrunk=test(params))]
  for frac, target in ((2, "width 1/2"), (4, "width 1/4"))[: 1 if a.smoke else None]:
    new = {k: v // frac for k, v in rcjax.width_axes(params).items()}
    for sampler in SAMPLERS:
      small = rcjax.shrink(params, jax.random.key(1000 + seed), sizes=new, sampler=_rc_sampler(sampler),
                           scores=_scores(sampler, act, weight))
      rows.append(dict(model="mlp", seed=seed, target=target, sampler=sampler, shrunk=test(small),
                       retrained=test(train(small, a.k))))
    fresh_model = tm.build_model(dataclasses.replace(cfg, width=cfg.width // frac))
    fresh = rcjax.boxes(rcjax.unbox(fresh_model.init(jax.random.key(seed + 77), x_tr[:1])["params"]), small)
    rows.append(dict(model="mlp", seed=seed, target=target, sampler="scratch", shrunk=test(fresh),
                     retrained=test(train(fresh, a.k))))
    print(f"mlp seed {seed} {target}: " + ", ".join(f"{r['sampler']} {r['shrunk']:.3f}->{r['retrained']:.3f}"
                                                    for r in rows[-len(SAMPLERS) - 1:]), flush=True)
  return rows


# --- summary, plot ----------------------------------------------------------------------------

def summarize(rows):
  out = {}
  for r in rows:
    for col in ("shrunk", "retrained"):
      if col in r:
        out.setdefault((r["model"], r["target"], r["sampler"], col), []).append(r[col])
  return [dict(model=m, target=t, sampler=s, column=c, mean=float(np.mean(v)), std=float(np.std(v)),
               min=float(np.min(v)), max=float(np.max(v)), n=len(v)) for (m, t, s, c), v in out.items()]


def plot(summary, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  panels = [(m, c) for m in ("gpt", "mlp") for c in ("shrunk", "retrained")]
  fig, axes = plt.subplots(2, 2, figsize=(13, 8))
  names = SAMPLERS + ("scratch",)
  for ax, (m, c) in zip(axes.flat, panels):
    rows = [r for r in summary if r["model"] == m and r["column"] == c and r["target"] != "source"]
    targets = list(dict.fromkeys(r["target"] for r in rows))
    w = 0.8 / len(names)
    for i, s in enumerate(names):
      ys = [next((r for r in rows if r["target"] == t and r["sampler"] == s), None) for t in targets]
      ax.bar(np.arange(len(targets)) + i * w, [y["mean"] if y else np.nan for y in ys], w,
             yerr=[y["std"] if y else 0 for y in ys], label=s, capsize=2)
    src = [r["mean"] for r in summary if r["model"] == m and r["target"] == "source"]
    if src:
      ax.axhline(src[0], color="k", lw=1, ls="--", label="source (unshrunk)")
    ax.set_xticks(np.arange(len(targets)) + 0.4 - w / 2, targets)
    ax.set_yscale("log")
    ax.set_ylabel("held-out loss (nats)")
    ax.set_title(f"{m}: {'right after shrinking' if c == 'shrunk' else 'after K steps of retraining'}")
  axes[0, 0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def table(summary) -> str:
  """Markdown: one row per (model, target, column), mean ± std over seeds per sampler (best in bold)."""
  names = SAMPLERS + ("scratch",)
  lines = ["| model | target | loss | " + " | ".join(names) + " |", "|---" * (len(names) + 3) + "|"]
  for m in ("gpt", "mlp"):
    src = [r for r in summary if r["model"] == m and r["target"] == "source"]
    if src:
      lines.append(f"| {m} | source (unshrunk) | {src[0]['mean']:.3f} ± {src[0]['std']:.3f} |" + " |" * len(names))
    targets = list(dict.fromkeys(r["target"] for r in summary if r["model"] == m and r["target"] != "source"))
    for t in targets:
      for c in ("shrunk", "retrained"):
        cells = {r["sampler"]: r for r in summary if r["model"] == m and r["target"] == t and r["column"] == c}
        best = min((cells[n]["mean"] for n in SAMPLERS if n in cells), default=None)
        fmt = lambda n: "" if n not in cells else (("**{:.3f}**" if cells[n]["mean"] == best else "{:.3f}")
                                                    .format(cells[n]["mean"]) + f" ± {cells[n]['std']:.3f}")
        lines.append(f"| {m} | {t} | {'after shrinking' if c == 'shrunk' else 'after K steps'} | "
                     + " | ".join(fmt(n) for n in names) + " |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", required=True)
  ap.add_argument("--seeds", type=int, default=3)
  ap.add_argument("--k", type=int, default=100, help="retraining steps")
  ap.add_argument("--gpt-steps", type=int, default=400)
  ap.add_argument("--mlp-steps", type=int, default=600)
  ap.add_argument("--mlp-width", type=int, default=128)
  ap.add_argument("--eval-batches", type=int, default=4)
  ap.add_argument("--calib-batches", type=int, default=4)
  ap.add_argument("--quick", action="store_true", help="1 seed, few steps")
  ap.add_argument("--smoke", action="store_true", help="--quick, and the first target only (tests)")
  ap.add_argument("--only", default="mlp,gpt", help="models to run: mlp, gpt or both")
  ap.add_argument("--table-from", help="only print the markdown table of an importance.json")
  a = ap.parse_args(argv)
  if a.table_from:
    with open(a.table_from) as f:
      print(table(json.load(f)["summary"]), end="")
    return
  if a.quick or a.smoke:
    a.seeds, a.k, a.gpt_steps, a.mlp_steps, a.eval_batches, a.calib_batches = 1, 5, 10, 20, 1, 1
  os.makedirs(a.out, exist_ok=True)
  t0 = time.time()
  rows = []
  for seed in range(a.seeds):
    rows += run_mlp(seed, a) if "mlp" in a.only else []
    rows += run_gpt(seed, a) if "gpt" in a.only else []
  summary = summarize(rows)
  cpu = platform.processor() or platform.machine()
  meta = dict(device=f"{cpu}, {os.cpu_count()} CPU cores (shared with other work)",
              jax=jax.__version__, seconds=round(time.time() - t0, 1), args=vars(a), samplers=SAMPLERS)
  with open(os.path.join(a.out, "importance.json"), "w") as f:
    json.dump(dict(meta=meta, summary=summary, rows=rows), f, indent=1)
  plot(summary, os.path.join(a.out, "importance.png"))
  with open(os.path.join(a.out, "table.md"), "w") as f:
    f.write(table(summary))
  print(f"wrote {a.out}/importance.json and importance.png in {time.time() - t0:.0f}s")
  return rows


if __name__ == "__main__":
  main()
