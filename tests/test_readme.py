"""The README's Python examples run as written."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.usefixtures("fast_compiles_here")  # compile time dominates
def test_readme_python_blocks_run():
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
  assert blocks, "README has no python example"
  for block in blocks:
    exec(compile(block, str(README), "exec"), {})
