"""`python -m rcjax.shrink SRC DST ...`: shrink a HuggingFace checkpoint (the flags: `rcjax.cli.hf`).

`rcjax.shrink` is also the library function (`rcjax.transfer.shrink`); this module is made callable as it, so
`import rcjax.shrink` (which rebinds the package attribute to the module) leaves `rcjax.shrink(params, key)` working.
"""

import sys

from rcjax.cli.hf import callable_module, main

if __name__ == "__main__":
  sys.exit(main(direction="shrink"))
callable_module(__name__, "shrink")
