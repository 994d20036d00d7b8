"""`python -m rcjax.grow SRC DST ...`: grow a HuggingFace checkpoint (the flags: `rcjax.cli.hf`).

`rcjax.grow` is also the library function (`rcjax.transfer.grow`); this module is made callable as it, so
`import rcjax.grow` (which rebinds the package attribute to the module) leaves `rcjax.grow(params, key)` working.
"""

import sys

from rcjax.cli.hf import callable_module, main

if __name__ == "__main__":
  sys.exit(main(direction="grow"))
callable_module(__name__, "grow")
