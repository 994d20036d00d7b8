"""Progress bars on a terminal only: piped or redirected output gets plain lines (no bar glued onto them)."""

from __future__ import annotations

import sys
from typing import Any, Iterable


def on_terminal(file: Any = None) -> bool:
  """Whether `file` (default: stderr) is an interactive terminal."""
  file = sys.stderr if file is None else file
  try:
    return bool(file.isatty())
  except (AttributeError, ValueError):  # no isatty, or a closed file
    return False


def bar(iterable: Iterable | None = None, *, disable: bool = False, file: Any = None, **kw):
  """A tqdm bar on `file` (default: stderr), shown only there is a terminal (and not `disable`d).

  A disabled bar still iterates, and `bar.write(line)` still prints the line.
  """
  from tqdm import tqdm

  file = sys.stderr if file is None else file
  return tqdm(iterable, disable=disable or not on_terminal(file), file=file, **kw)
