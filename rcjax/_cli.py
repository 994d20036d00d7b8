"""One error convention for every command-line tool (train.mlp, train.gpt, python -m rcjax.grow/shrink/analyze).

- Usage errors and bad input (flags, arguments, a SRC that is not a checkpoint, a refused transfer): one line
  `PROG: error: ...` on stderr, exit status 2 (argparse's own convention).
- Runtime failures (a full or read-only disk, corrupt or truncated data, a run that diverged): one line
  `PROG: error: ...`, exit status 1.
- A traceback only with `--debug` on the command line or `RCJAX_DEBUG=1` in the environment.

>>> def body(argv):
...   raise UsageError("--factor must be > 1, got 1")
>>> run("rcjax.grow", body, [], stderr=sys.stdout)
rcjax.grow: error: --factor must be > 1, got 1
2
>>> run("rcjax.grow", lambda argv: 0, [])
0
"""

from __future__ import annotations

import errno
import json
import math
import os
import sys
import traceback
from collections.abc import Callable, Sequence


class UsageError(ValueError):
  """Bad input a user can fix by changing the command (exit 2)."""


class RuntimeFailure(RuntimeError):
  """A failure of the run itself (disk, corrupt data, divergence; exit 1)."""


# Exceptions that are the user's input (exit 2) unless they are OSErrors of the disk (exit 1)
USAGE = (UsageError, ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError,
         IsADirectoryError, NotImplementedError, KeyError)
DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EIO, errno.EFBIG}


def debugging(argv: Sequence[str] | None) -> bool:
  """Whether tracebacks were asked for (`--debug` in argv or RCJAX_DEBUG=1)."""
  args = sys.argv[1:] if argv is None else list(argv)
  return "--debug" in args or os.environ.get("RCJAX_DEBUG", "") not in ("", "0")


def strip_debug(argv: Sequence[str] | None) -> list[str]:
  """argv without `--debug` (so parsers need not know the flag)."""
  return [a for a in (sys.argv[1:] if argv is None else argv) if a != "--debug"]


def describe(e: BaseException) -> str:
  """A one-line message for an exception: its text, with the file for OSErrors."""
  if isinstance(e, OSError) and e.errno is not None:
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{os.strerror(e.errno).lower()}" + (" (the disk is full)" if e.errno == errno.ENOSPC else "")
  text = str(e).strip().splitlines()
  return " ".join(line.strip() for line in text) if text else type(e).__name__


def exit_code(e: BaseException) -> int:
  """2 for usage errors and bad input, 1 for runtime failures (disk, corrupt data, divergence)."""
  if isinstance(e, RuntimeFailure):
    return 1
  if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
    return 1
  if isinstance(e, USAGE):
    return 2
  return 1


def run(prog: str, body: Callable[[list[str]], int | None], argv: Sequence[str] | None = None, *,
        stderr=None) -> int:
  """Run `body(argv without --debug)` under the convention above; returns the exit status."""
  stderr = sys.stderr if stderr is None else stderr
  debug = debugging(argv)
  try:
    return int(body(strip_debug(argv)) or 0)
  except SystemExit as e:  # argparse: it printed its own usage line; exit 2
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
  except KeyboardInterrupt:
    print(f"{prog}: interrupted", file=stderr)
    return 130
  except Exception as e:  # noqa: BLE001 - every failure becomes one line
    if debug:
      traceback.print_exc(file=stderr)
    print(f"{prog}: error: {describe(e)}", file=stderr)
    return exit_code(e)


def finite_or_none(x):
  """`x` with every non-finite float (NaN, inf) replaced by None, through dicts, lists and tuples."""
  if isinstance(x, float):
    return x if math.isfinite(x) else None
  if isinstance(x, dict):
    return {k: finite_or_none(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [finite_or_none(v) for v in x]
  return x


def json_line(record) -> str:
  """One line of strict JSON (metrics.jsonl): non-finite floats become null, so every line parses
  with any JSON reader.

  >>> json_line({"loss": float("nan"), "step": 3})
  '{"loss": null, "step": 3}'
  """
  return json.dumps(finite_or_none(record), allow_nan=False)
