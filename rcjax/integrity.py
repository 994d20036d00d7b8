"""Checkpoint integrity and disk checks for `rcjax.checkpoint`: digests of a step folder's files (written
after orbax finished a step, verified before it is read), the one-line `CorruptCheckpoint`, a writability
check for output folders, the errno behind orbax's disk errors, quieting orbax's logs for command-line
tools, and the `kill_point` test hook. See docs/reliability.md.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
from typing import Any

from rcjax._cli import RuntimeFailure


DIGEST = "rcjax-digest.json"  # in each step folder, written after orbax finished the step
_CHUNK = 1 << 22


class CorruptCheckpoint(RuntimeFailure):
  """A checkpoint step that fails its digest, is truncated, misses a file or cannot be read.
  `step` and `path` (the file or step folder) name it; the message is one line."""

  def __init__(self, step: int, path: str, what: str, message: str | None = None):
    super().__init__(message or f"checkpoint step {step} is corrupt: {path}: {what}")
    self.step, self.path = step, path


class UnverifiedCheckpointWarning(UserWarning):
  """A step without a digest (saved by rcjax before digests, or killed between orbax's save and its
  digest) was read without verification."""


def kill_point(name: str, step: int) -> None:
  """Test hook: SIGKILL this process at point `name` of step `step` when RCJAX_KILL_AT=name@step (used by
  the kill-and-resume tests; a no-op otherwise)."""
  if os.environ.get("RCJAX_KILL_AT") == f"{name}@{step}":
    os.kill(os.getpid(), signal.SIGKILL)


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      h.update(chunk)
  return h.hexdigest()


def _files(step_dir: str) -> list[str]:
  """Every file under a step folder (relative paths, sorted), the digest excepted."""
  out = []
  for root, _, names in os.walk(step_dir):
    for n in names:
      rel = os.path.relpath(os.path.join(root, n), step_dir)
      if rel != DIGEST and not n.startswith("." + DIGEST):
        out.append(rel)
  return sorted(out)


def config_digest(config: Any) -> str:
  """SHA-256 of a config's canonical JSON (sorted keys)."""
  return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def write_digest(step_dir: str, step: int, config: Any) -> None:
  """Hash every file of a finished step folder and write `DIGEST` atomically (tmp file + rename)."""
  files = {rel: [os.path.getsize(os.path.join(step_dir, rel)), _sha256(os.path.join(step_dir, rel))]
           for rel in _files(step_dir)}
  record = {"version": 1, "step": int(step), "algorithm": "sha256", "config": config_digest(config),
            "files": files}
  fd, tmp = tempfile.mkstemp(dir=step_dir, prefix="." + DIGEST)
  with os.fdopen(fd, "w") as f:
    json.dump(record, f, indent=0)
    f.flush()
    os.fsync(f.fileno())
  kill_point("digest", step)
  os.replace(tmp, os.path.join(step_dir, DIGEST))


def verify_step(step_dir: str, step: int) -> dict | None:
  """Check a step folder against its digest: the digest record, or None if it has none. Raises
  `CorruptCheckpoint` for a missing, truncated, extra-long or changed file, or an unreadable digest."""
  path = os.path.join(step_dir, DIGEST)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      record = json.load(f)
    files = record["files"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CorruptCheckpoint(step, path, f"unreadable digest ({type(e).__name__})") from None
  for rel, (size, digest) in sorted(files.items()):
    full = os.path.join(step_dir, rel)
    if not os.path.exists(full):
      raise CorruptCheckpoint(step, full, "missing")
    n = os.path.getsize(full)
    if n != size:
      raise CorruptCheckpoint(step, full, f"{'truncated' if n < size else 'grown'} ({n} bytes, saved {size})")
    if _sha256(full) != digest:
      raise CorruptCheckpoint(step, full, "contents changed since it was saved (SHA-256 mismatch)")
  return record


def _disk_error(e: BaseException) -> int | None:
  """The errno of a full or read-only disk behind an exception orbax or tensorstore raised (they wrap
  it in other exceptions and messages), else None."""
  seen = e
  while seen is not None:
    if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES):
      return seen.errno
    text = str(seen)
    if "No space left" in text or "RESOURCE_EXHAUSTED" in text:
      return errno.ENOSPC
    if "Read-only file system" in text:
      return errno.EROFS
    seen = seen.__cause__ or seen.__context__
  return None


def check_writable(path: str | os.PathLike, what: str = "--out") -> None:
  """Raise before any work if `path` (a directory, created later if missing) cannot be written: an
  `OSError` (read-only or full disk, no permission) naming it, or ValueError if a parent is a file.

  >>> check_writable(tempfile.mkdtemp())
  """
  path = os.path.abspath(os.fspath(path))
  base = path
  while not os.path.exists(base):
    base = os.path.dirname(base)
  if not os.path.isdir(base):
    raise ValueError(f"{what} {path}: {base} is not a directory")
  try:
    fd, tmp = tempfile.mkstemp(dir=base, prefix=".rcjax-write-test-")
    os.close(fd)
    os.remove(tmp)
  except OSError as e:
    raise OSError(e.errno, os.strerror(e.errno or errno.EIO), f"{what} {path}") from None




def quiet_save_errors(record: logging.LogRecord) -> bool:
  """A logging filter for absl's logger: drops orbax's error logs (tracebacks of a failed save, from
  each of its threads); the `Checkpointer` raises the failure as one clear error at the next `save` or
  `wait`. The command-line tools install it unless --debug or RCJAX_DEBUG=1."""
  return not (record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in (record.pathname or ""))


def quiet_orbax_noise() -> None:
  """Install `quiet_save_errors` on absl's logger, and drop the "Event loop is closed" RuntimeErrors
  that orbax's threads may print at exit after a failed save (through `sys.unraisablehook` and
  `threading.excepthook`): for command-line tools, which report the failure in one line."""
  logging.getLogger("absl").addFilter(quiet_save_errors)
  noise = lambda e: isinstance(e, RuntimeError) and "Event loop is closed" in str(e)
  unraisable, excepthook = sys.unraisablehook, threading.excepthook
  if getattr(unraisable, "_rcjax_quiet", False):
    return

  def quiet_unraisable(u):
    if not noise(u.exc_value):
      unraisable(u)

  def quiet_thread(args):
    if not noise(args.exc_value):
      excepthook(args)
  quiet_unraisable._rcjax_quiet = True
  sys.unraisablehook, threading.excepthook = quiet_unraisable, quiet_thread
