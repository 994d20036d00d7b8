# The Python time of one rcjax.grow call on gpt-small (4 blocks, bf16) grown 2x, with the jitted transfer
# stubbed out (its output prebuilt): validation, tree walks and the output's unflatten. Run from the repo
# root: PYTHONPATH=. python benchmarks/results/2026-11-27-cpu-e/call_overhead.py
import sys, time, jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, 'benchmarks')
from transfer import gpt_tree
import rcjax
from train import gpt as train_gpt
T = sys.modules["rcjax.transfer"]
g, cfg = gpt_tree("gpt-small", jnp.bfloat16, depth=4)
sizes = train_gpt.scaled_sizes(cfg, 2 * cfg.width)
key = jax.random.key(0)
out = jax.block_until_ready(rcjax.grow(g, key, sizes=sizes))
leaves, treedef = jax.tree.flatten(out)
T._transfer_jit = lambda *a, **k: jax.tree.unflatten(treedef, leaves)  # the validation and the output's unflatten only
ts = []
for _ in range(200):
  t = time.perf_counter(); rcjax.grow(g, key, sizes=sizes); ts.append(time.perf_counter() - t)
print(f"python per grow call (jit call stubbed): median {np.median(ts)*1e3:.3f} ms")
