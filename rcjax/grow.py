"""`python -m rcjax.grow SRC DST ...`: grow a HuggingFace checkpoint (see `rcjax.hf_grow` for the flags).

`rcjax.grow` is also the library function (`rcjax.transfer.grow`). Importing this module would make the
package attribute `rcjax.grow` this module (Python binds submodules to their parent), so the module is
made callable as that function: `rcjax.grow(params, key, ...)` works either way.
"""

import sys
import types

from rcjax.transfer import grow as _grow  # (rcjax.transfer is also a function name)


class _CallableModule(types.ModuleType):
  def __call__(self, *args, **kwargs):
    return _grow(*args, **kwargs)


if __name__ == "__main__":
  from rcjax.hf_grow import main

  sys.exit(main(direction="grow"))
else:
  sys.modules[__name__].__class__ = _CallableModule
