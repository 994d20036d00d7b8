"""A thin orbax wrapper: save / restore {params, opt_state, step, config} with the RC structure.

Orbax stores arrays; the RC metadata of every param leaf (axes, fan-in, base, parametrization, init) is
stored beside them as JSON, so params restore as RC boxes without a model, at whatever width was saved.
Saves are atomic (orbax writes a temporary folder and renames it), so a crash never leaves a partial
checkpoint that `latest_step()` would return.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from rcjax.rc import RC, is_rc, leaves_with_paths, unbox


def leaf_metadata(params: Any, plain: bool = False) -> dict[str, dict]:
  """`{path: {keys, shape, dtype, axes, fan_in, base, param, init, blocks}}` for every RC leaf (JSON);
  `keys` is the list of dict keys leading to the leaf (None if the path is not all dict keys).
  `plain=True`: `{path: {keys, shape, dtype}}` for the other array leaves instead."""
  out = {}
  for p, b in jax.tree_util.tree_flatten_with_path(params, is_leaf=is_rc)[0]:
    if is_rc(b) == plain or (plain and not hasattr(b, "shape")):
      continue
    keys = [getattr(k, "key", None) for k in p]
    v = b.value if is_rc(b) else b
    out[jax.tree_util.keystr(p)] = {
        "keys": keys if all(isinstance(k, str) for k in keys) else None,
        "shape": list(np.shape(v)), "dtype": str(v.dtype)}
    if not plain:
      out[jax.tree_util.keystr(p)].update({
          "axes": list(b.axes), "fan_in": list(b.fan_in), "base": list(b.base), "param": b.param,
          "init": b.init, "blocks": [list(x) for x in b.blocks]})
  return out


def _template(leaves: dict[str, dict], where: str, plain: dict[str, dict] | None = None) -> dict:
  """Nested dict of RC boxes (and plain leaves) holding `ShapeDtypeStruct`s, rebuilt from `leaf_metadata`."""
  tree: dict = {}
  for path, m in {**leaves, **(plain or {})}.items():
    if not m.get("keys"):
      raise ValueError(f"checkpoint {where}: leaf {path} is not in a nested dict; pass a params target")
    node = tree
    for k in m["keys"][:-1]:
      node = node.setdefault(k, {})
    value = jax.ShapeDtypeStruct(tuple(m["shape"]), m["dtype"])
    node[m["keys"][-1]] = value if "axes" not in m else RC(
        value, axes=tuple(m["axes"]), fan_in=tuple(m["fan_in"]), base=tuple(m["base"]), param=m["param"],
        init=m["init"], blocks=tuple(tuple(x) for x in m.get("blocks", ())))
  return tree


def _abstract(x: Any) -> jax.ShapeDtypeStruct:
  v = x.value if is_rc(x) else x
  return jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=getattr(v, "sharding", None))


def _no_read_only_warning(record: logging.LogRecord) -> bool:
  message = record.getMessage()
  return "Given directory is read only" not in message and "read_only=True" not in message


def _jsonable(config: Any) -> Any:
  if dataclasses.is_dataclass(config) and not isinstance(config, type):
    return dataclasses.asdict(config)
  return config


class Checkpointer:
  """Save and restore training state in `directory` (one orbax step folder per saved step).

  >>> import tempfile, jax.numpy as jnp, rcjax
  >>> p = rcjax.nn.MLP((4,), 2).init(jax.random.key(0), jnp.ones((1, 3)))['params']
  >>> ckpt = Checkpointer(tempfile.mkdtemp())
  >>> ckpt.save(7, params=p, config={'width': 4}); ckpt.wait()
  >>> ckpt.restore()['params']['Dense_0']['kernel'].axes
  ('input', 'hidden_0')
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = None, keep_steps=(),
               read_only: bool = False):
    """`max_to_keep`: keep the latest n steps (None: all), and besides them every step in `keep_steps`."""
    self.directory = os.path.abspath(os.fspath(directory))
    kw: dict[str, Any] = dict(max_to_keep=max_to_keep)
    if max_to_keep is not None and keep_steps:
      from orbax.checkpoint.checkpoint_managers import preservation_policy as pp
      kw = dict(preservation_policy=pp.AnyPreservationPolicy(
          [pp.LatestN(max_to_keep), pp.CustomSteps(sorted(int(s) for s in keep_steps))]))
    if read_only:  # orbax warns on every read-only folder it opens: that is what was asked for
      logging.getLogger("absl").addFilter(_no_read_only_warning)  # a no-op if already added
    options = ocp.CheckpointManagerOptions(create=not read_only, read_only=read_only, **kw)
    self._mngr = ocp.CheckpointManager(self.directory, options=options)

  def save(self, step: int, *, params: Any, opt_state: Any = None, config: Any = None,
           extra: dict | None = None) -> None:
    """Save asynchronously; call `wait()` before reading the files or exiting."""
    items = {"params": ocp.args.StandardSave(unbox(params))}
    if opt_state is not None:
      items["opt_state"] = ocp.args.StandardSave(unbox(opt_state))
    meta = {"step": int(step), "config": _jsonable(config), "extra": extra or {},
            "leaves": leaf_metadata(params), "plain": leaf_metadata(params, plain=True),
            "has_opt_state": opt_state is not None}
    try:
      json.dumps(meta)
    except TypeError as e:  # else orbax fails later, in its background thread, leaving a tmp folder
      raise TypeError(f"Checkpointer.save: config/extra must be JSON data (dicts, lists, str, numbers): {e}") from None
    self._mngr.save(int(step), args=ocp.args.Composite(meta=ocp.args.JsonSave(meta), **items), force=True)

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def metadata(self, step: int | None = None) -> dict:
    """The JSON saved with a step: `step`, `config`, `extra`, `leaves` (RC metadata and shapes)."""
    step = self._resolve(step)
    return self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def params_template(self, step: int | None = None) -> Any:
    """The saved params as RC boxes of `jax.ShapeDtypeStruct`s (no data read), e.g. to add shardings
    with `rcjax.sharding.abstract` and restore onto another mesh."""
    step = self._resolve(step)
    meta = self.metadata(step)
    return _template(meta["leaves"], self.directory, meta.get("plain"))

  def restore(self, step: int | None = None, *, params: Any = None, opt_state: Any = None) -> dict:
    """Restore a step (default: the latest complete one).

    Args:
      step: which step.
      params: optional target (RC boxes of arrays or `jax.ShapeDtypeStruct`s, possibly with shardings)
        to restore onto, e.g. another mesh; without it params come back as RC boxes at the saved shapes.
      opt_state: a target for the optimizer state (e.g. `jax.eval_shape(tx.init, params)`, shardings
        allowed); without it the optimizer state is not restored.

    Returns:
      `{'step', 'params', 'opt_state' (or None), 'config', 'extra'}`.
    """
    step = self._resolve(step)
    meta = self.metadata(step)
    if params is None:
      params = _template(meta["leaves"], self.directory, meta.get("plain"))
    items = {"params": ocp.args.StandardRestore(jax.tree.map(_abstract, params, is_leaf=is_rc))}
    if opt_state is not None:
      if not meta.get("has_opt_state"):
        raise ValueError(f"checkpoint {self.directory} step {step} holds no optimizer state")
      items["opt_state"] = ocp.args.StandardRestore(jax.tree.map(_abstract, opt_state, is_leaf=is_rc))
    saved = {p: m["shape"] for p, m in meta["leaves"].items()}
    for path, b in leaves_with_paths(params):
      if path in saved and list(b.shape) != saved[path]:
        raise ValueError(f"checkpoint {self.directory} step {step}: leaf {path} was saved with shape "
                         f"{tuple(saved[path])}, the target has {b.shape}")
    raw = self._mngr.restore(step, args=ocp.args.Composite(**items))
    rebox_like = lambda t, v: t.replace(value=v) if is_rc(t) else v
    return {"step": meta["step"],
            "params": jax.tree.map(rebox_like, params, raw["params"], is_leaf=is_rc),
            "opt_state": None if opt_state is None else jax.tree.map(rebox_like, opt_state, raw["opt_state"],
                                                                      is_leaf=is_rc),
            "config": meta["config"], "extra": meta["extra"]}

  def _resolve(self, step: int | None) -> int:
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
    elif step not in self.all_steps():
      raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; "
                              f"saved steps: {self.all_steps()}")
    return step

  def close(self) -> None:
    self._mngr.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.wait()
    self.close()
