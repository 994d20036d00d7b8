"""`python -m rcjax.grow SRC DST ...`: runs the command `rcjax.cli.grow` (flags: docs/hf.md).

A script, not a module to import: `rcjax.grow` is the library function (`rcjax.transfer.grow`), and an
imported submodule of that name would replace it as the attribute of the package. Importing this file
raises ImportError (which leaves `rcjax.grow` the function); import `rcjax.cli.grow` for the command.
"""

if __name__ != "__main__":
  raise ImportError("rcjax.grow is the library function (rcjax.transfer.grow); the command line lives in rcjax.cli.grow")

import sys

from rcjax.cli.grow import main

sys.exit(main())
