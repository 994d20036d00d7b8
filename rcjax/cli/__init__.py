"""The command-line tools of rcjax (each one line `PROG: error: ...` and exit 2/1 on failure, `rcjax._cli`).

- `python -m rcjax.grow SRC DST --factor 2`: a wider HuggingFace checkpoint that starts where SRC is
  (`rcjax.cli.grow`; the body shared with shrink: `rcjax.cli.hf`; docs/hf.md).
- `python -m rcjax.shrink SRC DST --factor 0.5`: a narrower one sampled from SRC's neurons (`rcjax.cli.shrink`).
- `python -m rcjax.hf.synthetic DST --family llama`: a tiny random HF checkpoint to try them on.
- `python -m rcjax.analyze`: RC diagnostics of a checkpoint (`rcjax.analyze`; docs/diagnostics.md).

`rcjax.grow` and `rcjax.shrink` are the library functions (`rcjax.transfer.grow/shrink`); the files
`rcjax/grow.py` and `rcjax/shrink.py` only make the `python -m` spellings run these commands and refuse
to be imported (an imported submodule would replace the function as the package's attribute).
"""
