"""`python -m rcjax.shrink SRC DST ...`: a narrower HuggingFace model sampled from SRC's neurons (flags and
behaviour: `rcjax.cli.hf`, docs/hf.md).

>>> main(["--help"])  # doctest: +ELLIPSIS
usage: python -m rcjax.shrink [-h] ...
0
"""

from __future__ import annotations

import sys
from typing import Sequence

from rcjax.cli import hf


def main(argv: Sequence[str] | None = None) -> int:
  """Run `python -m rcjax.shrink` with `argv` (default: sys.argv[1:]); returns the exit status."""
  return hf.main(argv, direction="shrink")


if __name__ == "__main__":
  sys.exit(main())
