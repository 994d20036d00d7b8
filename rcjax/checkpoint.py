"""A thin orbax wrapper: save / restore {params, opt_state, step, config} with the RC structure.

Orbax stores arrays; the RC metadata of every param leaf (axes, fan-in, base, parametrization, init) is
stored beside them as JSON, so params restore as RC boxes without a model, at whatever width was saved.
Saves are atomic (orbax writes a temporary folder and renames it), so a crash never leaves a partial
checkpoint that `latest_step()` would return. Once orbax has finished a step, a digest of every file it
wrote (sizes and SHA-256, which covers every array's bytes and the config) is written into the step folder
(`rcjax-digest.json`, atomically, by process 0 only); restores verify it and raise `CorruptCheckpoint`
naming the step and the file. See docs/reliability.md.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import threading
import time
import warnings
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from rcjax._cli import RuntimeFailure
from rcjax.integrity import (DIGEST, CorruptCheckpoint, UnverifiedCheckpointWarning, _disk_error, config_digest,
                             kill_point, verify_step, write_digest)
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
               read_only: bool = False, verify: bool = True):
    """`max_to_keep`: keep the latest n steps (None: all), and besides them every step in `keep_steps`.
    `verify`: write a digest of each saved step, and check each step against its digest before reading
    it (`CorruptCheckpoint` if it fails; a step without a digest is read with an
    `UnverifiedCheckpointWarning`). `verify=False`: orbax alone, no digests written or checked."""
    self.directory = os.path.abspath(os.fspath(directory))
    self.verify_reads = verify
    self._verified: dict[int, dict | None] = {}
    self._pending: threading.Thread | None = None
    self._failure: BaseException | None = None
    kw: dict[str, Any] = dict(max_to_keep=max_to_keep)
    if max_to_keep is not None and keep_steps:
      from orbax.checkpoint.checkpoint_managers import preservation_policy as pp
      kw = dict(preservation_policy=pp.AnyPreservationPolicy(
          [pp.LatestN(max_to_keep), pp.CustomSteps(sorted(int(s) for s in keep_steps))]))
    if read_only:  # orbax warns on every read-only folder it opens: that is what was asked for
      logging.getLogger("absl").addFilter(_no_read_only_warning)  # a no-op if already added
    options = ocp.CheckpointManagerOptions(create=not read_only, read_only=read_only, **kw)
    self._mngr = ocp.CheckpointManager(self.directory, options=options)

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(int(step)))

  def save(self, step: int, *, params: Any, opt_state: Any = None, config: Any = None,
           extra: dict | None = None) -> None:
    """Save asynchronously; call `wait()` before reading the files or exiting. The digest is written in
    a background thread once orbax has finished; a failed save (e.g. a full disk) raises at the next
    `save` or `wait`, as an `OSError` for disk errors, and leaves no temporary folder behind."""
    self.wait()
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
    kill_point("save", step)
    try:
      self._mngr.save(int(step), args=ocp.args.Composite(meta=ocp.args.JsonSave(meta), **items), force=True)
    except Exception as e:  # noqa: BLE001 - orbax's synchronous part (directories, host copies)
      self._raise_save_error(int(step), e)
    kill_point("saving", step)
    # not a daemon: the interpreter waits for it (and orbax's save) at exit
    self._pending = threading.Thread(target=self._finish, args=(int(step), meta["config"]),
                                     name=f"rcjax-digest-{step}")
    self._pending.start()

  def _finish(self, step: int, config: Any) -> None:
    try:
      self._mngr.wait_until_finished()
      kill_point("saved", step)
      if jax.process_index() == 0 and self.verify_reads:
        write_digest(self.step_dir(step), step, config)
    except BaseException as e:  # noqa: BLE001 - raised in the caller's thread by wait()
      self._failure = (step, e)
      if jax.process_index() == 0:  # now, even if the caller exits on another error without wait()
        self._remove_tmp(step)

  def _raise_save_error(self, step: int, e: BaseException):
    """Remove what the failed save of `step` left, and raise one clear error."""
    try:  # let orbax's other threads of this save end before removing what they wrote
      self._mngr.wait_until_finished()
    except Exception:  # noqa: BLE001 - the same failure, reported below
      pass
    if jax.process_index() == 0:
      self._remove_tmp(step)
    code = _disk_error(e)
    if code is not None:
      raise OSError(code, os.strerror(code), f"{self.directory} (saving checkpoint step {step})") from e
    if isinstance(e, OSError):
      raise e
    raise RuntimeFailure(f"saving checkpoint step {step} in {self.directory} failed: "
                         f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e

  def _remove_tmp(self, step: int) -> None:
    """Remove `STEP.orbax-checkpoint-tmp*` (retrying while a late writer of the failed save recreates
    files in it)."""
    clean = 0
    for _ in range(100):
      names = [n for n in (os.listdir(self.directory) if os.path.isdir(self.directory) else ())
               if n.startswith(f"{step}.orbax-checkpoint-tmp")]
      clean = 0 if names else clean + 1
      if clean >= 3:
        return
      for name in names:
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
      time.sleep(0.02)

  def wait(self) -> None:
    """Block until the last save (and its digest) is written; raise its error if it failed."""
    if self._pending is not None:
      self._pending.join()
      self._pending = None
    if self._failure is not None:
      (step, e), self._failure = self._failure, None
      self._raise_save_error(step, e)

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def verify(self, step: int) -> bool:
    """Check step `step` against its digest: True if it verifies, False if it has no digest (saved before
    rcjax wrote digests, or the process stopped between orbax's save and the digest). Raises
    `CorruptCheckpoint` (one line naming the step and the file) if a file is missing, truncated or changed."""
    step = int(step)
    if not self.verify_reads:
      return False
    if step not in self._verified:
      self.wait()
      record = verify_step(self.step_dir(step), step)
      if record is not None:
        meta = self._read_meta(step)
        if record.get("config") != config_digest(meta.get("config")):
          raise CorruptCheckpoint(step, self.step_dir(step), "config differs from its digest")
      self._verified[step] = record
    return self._verified[step] is not None

  def latest_good_step(self, report: Callable[[str], None] | None = None) -> int | None:
    """The newest step that verifies, or that has no digest but whose metadata reads (None if the
    directory holds no step). Each corrupt step on the way is reported in one line through `report`.
    Raises `CorruptCheckpoint` if every step is corrupt."""
    steps = sorted(self.all_steps(), reverse=True)
    first = None
    for step in steps:
      try:
        verified = self.verify(step)
        self._read_meta(step)
        if report and not verified:
          report(f"checkpoint step {step} has no digest ({DIGEST}): reading it unverified")
        if first is not None and report:
          report(f"falling back to checkpoint step {step}, the newest that verifies")
        return step
      except CorruptCheckpoint as e:
        first = first or e
        if report:
          report(str(e))
        continue
    return None if first is None else self._none_verifies(first, steps)

  def _none_verifies(self, first: CorruptCheckpoint, steps: list[int]):
    raise CorruptCheckpoint(first.step, self.directory, "", message=(
        f"no checkpoint in {self.directory} verifies (steps {sorted(steps)} are all corrupt; the newest: "
        f"{first.path}); move the folder away to start afresh"))

  def set_aside_after(self, step: int | None, report: Callable[[str], None] | None = None) -> None:
    """`set_aside` every step after `step` (the corrupt ones `latest_good_step` skipped), so a resumed
    run saves those steps afresh. Call on one process only (process 0)."""
    for s in self.all_steps():
      if step is not None and s > step:
        where = self.set_aside(s)
        if report:
          report(f"moved checkpoint step {s} to {where}")

  def set_aside(self, step: int) -> str:
    """Move step `step` (e.g. a corrupt one) out of the directory, to `DIRECTORY.corrupt/STEP[-k]`,
    so that `latest_step()` and new saves no longer see it; returns where it went."""
    dest_root = self.directory.rstrip("/") + ".corrupt"
    os.makedirs(dest_root, exist_ok=True)
    dest, k = os.path.join(dest_root, str(step)), 0
    while os.path.exists(dest):
      k += 1
      dest = os.path.join(dest_root, f"{step}-{k}")
    os.rename(self.step_dir(step), dest)
    self._mngr.reload()
    self._verified.pop(int(step), None)
    return dest

  def _read_meta(self, step: int) -> dict:
    try:
      return self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # noqa: BLE001 - orbax reports damaged files in many ways
      raise CorruptCheckpoint(step, os.path.join(self.step_dir(step), "meta"),
                              f"cannot be read ({type(e).__name__})") from None

  def _check(self, step: int) -> None:
    if self.verify_reads and not self.verify(step):
      warnings.warn(f"checkpoint step {step} in {self.directory} has no digest ({DIGEST}): read unverified",
                    UnverifiedCheckpointWarning, stacklevel=3)

  def metadata(self, step: int | None = None) -> dict:
    """The JSON saved with a step: `step`, `config`, `extra`, `leaves` (RC metadata and shapes)."""
    step = self._resolve(step)
    self._check(step)
    return self._read_meta(step)

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
    try:
      raw = self._mngr.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001
      if self._verified.get(step) is not None:  # the bytes are as saved: not a corrupt checkpoint
        raise
      raise CorruptCheckpoint(step, self.step_dir(step), f"cannot be read ({type(e).__name__}: "
                              f"{(str(e).strip().splitlines() or [''])[0][:200]})") from None
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
    try:
      self.wait()
    finally:
      self._mngr.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
