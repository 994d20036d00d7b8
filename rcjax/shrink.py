"""`python -m rcjax.shrink SRC DST ...`: shrink a HuggingFace checkpoint (see `rcjax.hf_grow` for the flags).

`rcjax.shrink` is also the library function (`rcjax.transfer.shrink`). Importing this module would make the
package attribute `rcjax.shrink` this module (Python binds submodules to their parent), so the module is
made callable as that function: `rcjax.shrink(params, key, ...)` works either way.
"""

import sys
import types

from rcjax.transfer import shrink as _shrink  # (rcjax.transfer is also a function name)


class _CallableModule(types.ModuleType):
  def __call__(self, *args, **kwargs):
    return _shrink(*args, **kwargs)


if __name__ == "__main__":
  from rcjax.hf_grow import main

  sys.exit(main(direction="shrink"))
else:
  sys.modules[__name__].__class__ = _CallableModule
