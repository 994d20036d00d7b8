import sys, time, jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, '.')
import rcjax
import importlib; T = importlib.import_module("rcjax.transfer")
sys.path.insert(0, 'benchmarks')
import transfer as B
from train import gpt as train_gpt

orig = T._repeat
def plain(x, d, k):
  shape = x.shape
  x = jnp.broadcast_to(jnp.expand_dims(x, d + 1), shape[:d + 1] + (k,) + shape[d + 1:])
  return x.reshape(shape[:d] + (shape[d] * k,) + shape[d + 1:])

def gather_last_first(x, dims, names, maps, repeats):
  if all(n in repeats for n in names):
    order = sorted(zip(dims, names), key=lambda t: -t[0])  # last axis first
    for d, n in order:
      x = orig(x, d, repeats[n])
    return x
  return orig_gather(x, dims, names, maps, repeats)
orig_gather = T._gather

def run(label, tree, sizes, compiled_copy):
  f = jax.jit(lambda t, k: rcjax.grow(t, k, sizes=sizes)).lower(tree, jax.random.key(0)).compile()
  t = B.timeit(f, tree, jax.random.key(0), reps=10)
  out = f(tree, jax.random.key(0))
  moved = B.nbytes(tree) + B.nbytes(out)
  tc = B.copy_seconds(out, reps=10)
  print(f"{label:40s} {moved/t/1e9:8.1f} GB/s  copy {2*B.nbytes(out)/tc/1e9:8.1f} GB/s  ratio {moved/t/(2*B.nbytes(out)/tc):.2f}", flush=True)

g, cfg = B.gpt_tree(sys.argv[1] if len(sys.argv) > 1 else "gpt-medium", jnp.bfloat16)
m = B.matrix_tree(int(sys.argv[2]) if len(sys.argv) > 2 else 8192, jnp.bfloat16)
cases = [("gpt bf16 2x", g, train_gpt.scaled_sizes(cfg, 2 * cfg.width)), ("matrix bf16 2x", m, {"a": 2 * m["w"].shape[0], "b": 2 * m["w"].shape[0]})]
for vname, rep, gat in [("plain", plain, orig_gather), ("u32 last", orig, orig_gather), ("u32 last-first", orig, gather_last_first), ("plain again", plain, orig_gather)]:
  T._repeat, T._gather = rep, gat; T._transfer_jit.clear_cache()
  for cname, tree, sizes in cases:
    run(f"{vname}: {cname}", tree, sizes, None)
