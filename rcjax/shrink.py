"""`python -m rcjax.shrink SRC DST ...`: runs the command `rcjax.cli.shrink` (flags: docs/hf.md).

A script, not a module to import: `rcjax.shrink` is the library function (`rcjax.transfer.shrink`), and an
imported submodule of that name would replace it as the attribute of the package. Importing this file
raises ImportError (which leaves `rcjax.shrink` the function); import `rcjax.cli.shrink` for the command.
"""

if __name__ != "__main__":
  raise ImportError("rcjax.shrink is the library function (rcjax.transfer.shrink); the command line lives in rcjax.cli.shrink")

import sys

from rcjax.cli.shrink import main

sys.exit(main())
