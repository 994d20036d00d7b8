"""`python -m rcjax.grow SRC DST ...`: a wider HuggingFace model that starts where SRC is (flags and
behaviour: `rcjax.cli.hf`, docs/hf.md).

>>> main(["--help"])  # doctest: +ELLIPSIS
usage: python -m rcjax.grow [-h] ...
0
"""

from __future__ import annotations

import sys
from typing import Sequence

from rcjax.cli import hf


def main(argv: Sequence[str] | None = None) -> int:
  """Run `python -m rcjax.grow` with `argv` (default: sys.argv[1:]); returns the exit status."""
  return hf.main(argv, direction="grow")


if __name__ == "__main__":
  sys.exit(main())
