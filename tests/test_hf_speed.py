"""`python -m rcjax.grow/shrink` fast path: output bytes pinned, full disk, CLI convention, bounded memory.

The digests below were written by the grow CLI of main at b2793e5 (before the streaming write): the
streaming path must produce byte-identical files for the same key and flags.
"""

import hashlib
import os

import pytest

from rcjax import hf_grow
from rcjax.hf_synthetic import write_synthetic

# name: (model_type, synthetic shape, direction, flags, sha256 of (file name, bytes) over the sorted files)
PINNED = {
    "llama_gqa_grow2": ("llama", dict(num_blocks=2, embed=16, heads=4, kv_heads=2, mlp=24, vocab=40,
                                      dtype="bfloat16"), "grow", ["--factor", "2"], "c3f42c4f197766981539"),
    "gpt2_shrink": ("gpt2", dict(num_blocks=2, embed=16, heads=4, vocab=40), "shrink", ["--factor", "0.5"], "d407884aef1d96da8c57"),
    "llama_exact_1p5": ("llama", dict(num_blocks=2, embed=16, heads=4, kv_heads=2, mlp=24, vocab=40), "grow",
                        ["--factor", "1.5", "--exact", "--kv-heads", "3", "--heads", "6", "--embed", "24"], "51b2dfea74b376983401"),
    "neox_sharded": ("gpt_neox", dict(num_blocks=2, embed=32, heads=2, vocab=40, dtype="float16"), "grow",
                     ["--factor", "2", "--max-shard-size", "0.00004"], "5b9df635047106a024c2"),
}


def digest(path: str) -> tuple[list[str], str]:
  h = hashlib.sha256()
  names = sorted(os.listdir(path))
  for n in names:
    h.update(n.encode() + b"\0")
    with open(os.path.join(path, n), "rb") as f:
      h.update(f.read())
  return names, h.hexdigest()[:20]


def grow_case(tmp_path, name: str) -> str:
  mt, shape, direction, flags, _ = PINNED[name]
  src, dst = str(tmp_path / name), str(tmp_path / (name + "-out"))
  write_synthetic(src, mt, **shape)
  assert hf_grow.main([src, dst, "--no-check", "--seed", "3"] + flags, direction=direction) == 0
  return dst


@pytest.mark.parametrize("name", sorted(PINNED))
def test_output_bytes_pinned(tmp_path, name):
  names, d = digest(grow_case(tmp_path, name))
  print(name, names, d)
  assert d == PINNED[name][4], (name, names, d)
