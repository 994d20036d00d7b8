"""Grown variants added to the 3-seed study in this folder, against its scratch and small runs (the same
seeds, data, eval batches and lrs; train.gpt runs are deterministic, so rerunning the baselines would
give the same curves). Run from the repository root:
    python benchmarks/results/2026-12-07-cpu-growth/extra.py "at=0.25,cancel=2.0,len=0.7;..."
"""
import dataclasses, json, os, sys, tempfile
sys.path.insert(0, os.getcwd())
from benchmarks import growth


def main():
  here = os.path.dirname(os.path.abspath(__file__))
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "rcjax_growth_jax_cache"))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  res = json.load(open(os.path.join(here, "results.json")))
  small, large, _ = growth.configs(res["preset"])
  small = dataclasses.replace(small, lr=res["lr"]["small"])
  specs = sys.argv[1].split(";")
  jobs = [(growth.variant_config(dataclasses.replace(small, seed=s), growth.parse_variant(v), large.width),
           "grown_" + v.replace("=", "").replace(",", "_") + f"_s{s}") for v in specs for s in res["seeds"]]
  out = os.path.join(here, "extra")
  curves = growth._train_all(jobs, out, print, len(jobs))
  runs = {"scratch": {s: res["curves"]["scratch"][str(s)] for s in res["seeds"]},
          "small": {s: res["curves"]["small"][str(s)] for s in res["seeds"]}}
  for (_, name), c in zip(jobs, curves):
    runs.setdefault(name.rsplit("_s", 1)[0], {})[c["seed"]] = c
  table = growth.summarize(runs, res["seeds"], [k for k in runs if k not in ("scratch", "small")])
  json.dump(dict(variants=specs, table=table, curves={k: {str(s): c for s, c in r.items()} for k, r in runs.items()}),
            open(os.path.join(out, "results.json"), "w"), indent=1)
  print(growth.format_table(table))


if __name__ == "__main__":
  main()
