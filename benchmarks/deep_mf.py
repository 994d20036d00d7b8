"""Which remedies make the 7-layer mean-field MLP (the paper's Figure 4.2 network) learn on digits?

    PYTHONPATH=. python benchmarks/deep_mf.py baseline > benchmarks/results/2026-12-07-deep-mf/baseline.jsonl

Each line: the config's varying fields, train loss and test accuracy after each epoch, seconds.
"""
import json, sys, tempfile, time

from train import mlp

GRIDS = {
    "baseline": [dict(init=i, lr=lr) for i in ("uniform", "normal:1,3") for lr in (0.1, 1.0, 10.0, 100.0)],
    "lowrank": [dict(init="uniform", hidden_init=f"lowrank:{k}", lr=lr) for k in (4, 16) for lr in (0.1, 1.0, 10.0)],
    "tune": [dict(init="uniform", hidden_init="lowrank:16", lr=lr, epochs=10) for lr in (0.02, 0.05, 0.1)]
            + [dict(init="uniform", hidden_init="lowrank:16", lr=0.05, epochs=10, bias=b) for b in ("trainable", "none")]
            + [dict(init="uniform", hidden_init="lowrank:16", lr=0.05, epochs=10, width=512)],
    "more": [dict(init="uniform", lr=0.05, epochs=10)]
            + [dict(init="uniform", hidden_init="lowrank:16", lr=lr, epochs=3, width=64) for lr in (0.05, 0.1)]
            + [dict(init="uniform", hidden_init="lowrank:16", lr=0.05, epochs=10, width=1000)],
}


def main(grid, width=128, epochs=5, depth=7, bias="constant", **extra):
  for kw in GRIDS[grid]:
    kw = {"width": width, "epochs": epochs, "bias": bias, **extra, **kw}
    with tempfile.TemporaryDirectory() as d:
      t0 = time.time()
      try:
        lines = mlp.run(mlp.Config(dataset="digits", depth=depth, out=d, progress=False, plot=False, **kw))
        res = {"train_loss": [round(m["train_loss"], 4) for m in lines],
               "test_acc": [round(m["test_acc"], 4) for m in lines]}
      except mlp.TrainingDiverged as e:
        res = {"diverged": str(e)[:60]}
    print(json.dumps({"depth": depth, **kw, **res, "seconds": round(time.time() - t0, 1)}), flush=True)


if __name__ == "__main__":
  main(sys.argv[1])
