"""Grown variants against the scratch and small runs of benchmarks/results/2026-12-07-cpu-growth (the same
preset, seeds, data order, eval batches and lrs; train.gpt runs are deterministic, so the baselines are
not rerun: the first variant of every call here reruns that study's recipe as a check). From the repo root:
    python benchmarks/results/2026-12-07-cpu-growth2/screen.py OUT SEEDS "VARIANT;VARIANT;..." [WORKERS]
e.g. screen.py screen 0 "at=0.25,cancel=2.0;at=0.25,cancel=2.0,opt=reset-nu" 2
"""
import dataclasses, json, os, sys, tempfile
sys.path.insert(0, os.getcwd())
from benchmarks import growth


def main():
  here = os.path.dirname(os.path.abspath(__file__))
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "rcjax_growth_jax_cache"))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  res = json.load(open(os.path.join(here, "..", "2026-12-07-cpu-growth", "results.json")))
  out, seeds, specs = os.path.join(here, sys.argv[1]), [int(s) for s in sys.argv[2].split(",")], sys.argv[3].split(";")
  workers = int(sys.argv[4]) if len(sys.argv) > 4 else 1
  small, large, _ = growth.configs(res["preset"])
  small = dataclasses.replace(small, lr=res["lr"]["small"])
  jobs = [(growth.variant_config(dataclasses.replace(small, seed=s), growth.parse_variant(v), large.width),
           "grown_" + v.replace("=", "").replace(",", "_") + f"_s{s}") for v in specs for s in seeds]
  curves = growth._train_all(jobs, out, print, workers)
  runs = {"scratch": {s: res["curves"]["scratch"][str(s)] for s in seeds},
          "small": {s: res["curves"]["small"][str(s)] for s in seeds}}
  for (_, name), c in zip(jobs, curves):
    runs.setdefault(name.rsplit("_s", 1)[0], {})[c["seed"]] = c
  table = growth.summarize(runs, seeds, [k for k in runs if k not in ("scratch", "small")])
  json.dump(dict(variants=specs, seeds=seeds, lr=res["lr"], table=table,
                 curves={k: {str(s): c for s, c in r.items()} for k, r in runs.items()}),
            open(os.path.join(out, "results.json"), "w"), indent=1)
  print(growth.format_table(table))


if __name__ == "__main__":
  main()
