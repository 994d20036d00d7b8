"""The model-level transfer rules (`rcjax.transfer_model`, rcjax/model_rules.py), above the core and the
models: they take the maps the core applied (`rcjax.transfer.transfer_with_maps`) instead of redrawing
them, and `rcjax/nn/` imports nothing of the transfer."""

import ast
import inspect
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rcjax
import rcjax.model_rules
import rcjax.transfer  # noqa: F401  (the module; `rcjax.transfer` is also the function)
from rcjax.depth import depth_map
from rcjax.maps import tree_blocks
from rcjax.transfer import transfer_with_maps

pytestmark = pytest.mark.usefixtures("fast_compiles")
ROOT = pathlib.Path(__file__).resolve().parent.parent / "rcjax"
TOKENS = jnp.arange(6)[None] % 16


@pytest.fixture(scope="module")
def gpt():
  """A tied Llama-style GPT in SP: its readout needs the copy counts, RMSNorm the amplitudes."""
  model = rcjax.nn.GPT(vocab=16, width=16, depth=2, heads=4, kv_heads=2, max_len=8, style="llama", param="sp",
                       tied=True)
  return model, jax.jit(model.init)(jax.random.key(0), TOKENS)["params"]


def _logits(model, params):
  return model.apply({"params": params}, TOKENS)


def test_transfer_with_maps_returns_the_maps_it_drew_and_applied(gpt):
  model, p = gpt
  key, sizes = jax.random.key(3), {"embed": 24, "mlp": 80, "heads": 6}
  out, maps = transfer_with_maps(p, key, sizes, exact=True)
  plain = rcjax.transfer(p, key, sizes, exact=True)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(plain)))
  # the same maps as index_maps draws for this key (heads in blocks per kv head)
  drawn = rcjax.index_maps(key, rcjax.sizes(p), sizes, blocks=tree_blocks(p))
  assert sorted(maps) == sorted(drawn) == ["embed", "heads", "mlp"]
  assert all(np.array_equal(maps[k], drawn[k]) for k in maps)
  # and applied: they rebuild the output
  again = rcjax.apply_maps(p, maps, exact=True)
  assert all(np.allclose(a, b, rtol=1e-6, atol=0) for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(again)))
  # a depth transfer returns its depth map under 'layers'
  _, deep = transfer_with_maps(p, key, {"layers": 5}, depth_mode="interleave")
  assert np.array_equal(deep["layers"], depth_map(2, 5, "interleave"))


def test_model_rules_take_the_copy_counts_from_the_applied_map(gpt, monkeypatch):
  """A tied SP readout at 1.5x (exact) stays the same function only if the final norm's correction uses
  the copy counts of the embed map the leaves were gathered with. Here the core's transfer draws its maps
  from another key than the one given (so redrawing with that key gives other copy counts): the function
  is still kept, so the counts come from the returned map."""
  model, p = gpt
  key, sizes = jax.random.key(5), {"embed": 24}
  core = rcjax.model_rules.transfer_with_maps
  other = lambda tree, k, s, **kw: core(tree, jax.random.fold_in(k, 1), s, **kw)
  monkeypatch.setattr(rcjax.model_rules, "transfer_with_maps", other)
  big = rcjax.transfer_model(model, p, key, sizes, exact=True)
  applied = other(p, key, sizes, exact=True)[1]["embed"]
  redrawn = rcjax.index_maps(key, {"embed": 16}, sizes)["embed"]
  count = lambda m: np.bincount(np.asarray(m), minlength=16)
  assert not np.array_equal(count(applied), count(redrawn))  # a redraw would use other counts
  np.testing.assert_allclose(_logits(model, big), _logits(model, p), rtol=1e-5, atol=1e-5)


def test_transfer_model_moves_the_optimizer_state_with_the_same_maps(gpt):
  model, p = gpt
  opt = rcjax.adamw(1e-3).init(p)
  key, sizes = jax.random.key(7), {"embed": 24, "mlp": 96}
  big, big_opt = rcjax.transfer_model(model, p, key, sizes, opt_state=opt, exact=True)
  alone = rcjax.transfer((p, opt), key, sizes, exact=True)[1]
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(big_opt), jax.tree.leaves(alone)))
  np.testing.assert_allclose(_logits(model, big), _logits(model, p), rtol=1e-5, atol=1e-5)


def test_bad_calls_are_clear_errors(gpt):
  model, p = gpt
  with pytest.raises(TypeError, match="must be an rcjax.nn.GPT or rcjax.nn.Bert, got MLP"):
    rcjax.transfer_model(rcjax.nn.MLP(features=(4,), out_features=2), p, jax.random.key(0), {"embed": 24})
  with pytest.raises(TypeError, match="unexpected keyword argument 'exactly'"):
    transfer_with_maps(p, jax.random.key(0), {"embed": 24}, exactly=True)
  assert "_direction" not in inspect.signature(rcjax.transfer).parameters


def _imports(path: pathlib.Path) -> set[str]:
  """The rcjax modules a file imports (at module level or inside functions); `from rcjax import x` names
  rcjax.x where that is a module, else rcjax (its namespace)."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for a in node.names:
        sub = f"{node.module}.{a.name}"
        path = ROOT.parent / sub.replace(".", "/")
        as_module = path.with_suffix(".py").exists() or path.is_dir()
        out.add(sub if as_module else node.module)
  return {m for m in out if m == "rcjax" or m.startswith("rcjax.")}


def _module(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_models_import_nothing_of_the_transfer():
  """Follow the imports from every module of rcjax/nn/ through rcjax/: neither the transfer (nor the
  model-level rules, nor the package namespace that re-exports them) is reachable."""
  graph = {_module(f): _imports(f) for f in ROOT.rglob("*.py")}
  for start in (m for m in graph if m == "rcjax.nn" or m.startswith("rcjax.nn.")):
    seen, todo = set(), [start]
    while todo:
      m = todo.pop()
      for n in graph.get(m, ()):
        if n not in seen:
          seen.add(n)
          todo.append(n)
    bad = seen & {"rcjax", "rcjax.transfer", "rcjax.model_rules", "rcjax.transfer_checks", "rcjax.leafmap"}
    assert not bad, f"{start} imports {sorted(bad)}"
  # the model-level layer does import both sides (the test would pass vacuously on a broken graph)
  assert {"rcjax.transfer", "rcjax.nn.gpt", "rcjax.nn.bert"} <= graph["rcjax.model_rules"]
