# Screening (seed 0, one lr): grown variants only, split/cancel injected into rcjax.nn.gpt.transfer until
# train.gpt has --split-rate/--cancel-rate (branch sym). Usage: python screen.py OUT "spec;spec"
import sys, dataclasses, json, os
import jax
jax.config.update("jax_compilation_cache_dir", "/tmp/rcjax_growth_jax_cache")
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
import rcjax.nn.gpt as G
from benchmarks import growth
orig, EXTRA = G.transfer, {}
def patched(*a, **k):
  return orig(*a, **{**k, **EXTRA})
G.transfer = patched
import train.gpt
out, specs = sys.argv[1], sys.argv[2].split(";")
small, large, every = growth.configs("cpu")
small = dataclasses.replace(small, lr=1e-2)
for spec in specs:
  v = growth.parse_variant(spec)
  EXTRA.clear()
  if "split" in v: EXTRA["split_rate"] = v.pop("split")
  if "cancel" in v: EXTRA["cancel_rate"] = v.pop("cancel")
  cfg = growth.variant_config(small, v, large.width)
  name = "grown_" + spec.replace("=", "").replace(",", "_")
  c = growth.train(cfg, name + "_s0", out)
  target = 1.9367
  f = growth.first_reach(c, target)
  print(f"SCREEN {spec}: final {c['eval_loss'][-1]:.4f} reach {None if f is None else f / 1.21e12}", flush=True)
  json.dump(c, open(os.path.join(out, name + ".json"), "w"))
