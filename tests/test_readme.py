"""The README's and docs/'s Python examples run as written."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("**/*.md")) if (ROOT / "docs").is_dir() else []


def _blocks(path: pathlib.Path) -> list[str]:
  return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.usefixtures("fast_compiles_here")  # compile time dominates
def test_readme_python_blocks_run():
  blocks = _blocks(README)
  assert blocks, "README has no python example"
  for block in blocks:
    exec(compile(block, str(README), "exec"), {})


@pytest.mark.usefixtures("fast_compiles_here")
@pytest.mark.parametrize("page", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_docs_python_blocks_run(page, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # examples that write files write them here
  for block in _blocks(page):
    exec(compile(block, str(page), "exec"), {})
