"""`python -m rcjax.grow/shrink` fast path: output bytes pinned, full disk, CLI convention, bounded memory.

The digests below were written by the grow CLI of main at b2793e5 (before the streaming write): the
streaming path must produce byte-identical files for the same key and flags.
"""

import hashlib
import os

import pytest

from rcjax.cli import hf as hf_cli
from rcjax.hf.synthetic import write_synthetic

# name: (model_type, synthetic shape, direction, flags, sha256 of (file name, bytes) over the sorted files)
PINNED = {
    "llama_gqa_grow2": ("llama", dict(num_blocks=2, embed=16, heads=4, kv_heads=2, mlp=24, vocab=40,
                                      dtype="bfloat16"), "grow", ["--factor", "2"], "c3f42c4f197766981539"),
    "gpt2_shrink": ("gpt2", dict(num_blocks=2, embed=16, heads=4, vocab=40), "shrink", ["--factor", "0.5"],
                    "d407884aef1d96da8c57"),
    "llama_exact_1p5": ("llama", dict(num_blocks=2, embed=16, heads=4, kv_heads=2, mlp=24, vocab=40), "grow",
                        ["--factor", "1.5", "--exact", "--kv-heads", "3", "--heads", "6", "--embed", "24"],
                        "51b2dfea74b376983401"),
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
  assert hf_cli.main([src, dst, "--no-check", "--seed", "3"] + flags, direction=direction) == 0
  return dst


@pytest.mark.parametrize("name", sorted(PINNED))
def test_output_bytes_pinned(tmp_path, name):
  names, d = digest(grow_case(tmp_path, name))
  print(name, names, d)
  assert d == PINNED[name][4], (name, names, d)


# --- CLI convention (rcjax._cli): bad input exit 2, runtime failures exit 1, one line ---------------------
def _cli(argv, capsys, direction="grow"):
  code = hf_cli.main(argv, direction=direction)
  err = capsys.readouterr().err.strip().splitlines()
  return code, [line for line in err if "param/s" not in line and line.strip()]


@pytest.fixture(scope="module")
def tiny_src(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("src") / "tiny")
  write_synthetic(d, "llama", num_blocks=2, embed=16, heads=4, kv_heads=2, mlp=24, vocab=40)
  return d


def test_cli_refusals_are_one_line_exit_2(tmp_path, tiny_src, capsys):
  code, err = _cli([tiny_src, str(tmp_path / "a"), "--factor", "1"], capsys)
  assert code == 2 and len(err) == 1 and err[0].startswith("rcjax.grow: error: --factor") and "> 1" in err[0]
  code, err = _cli([tiny_src, str(tmp_path / "a"), "--factor", "1"], capsys, "shrink")
  assert code == 2 and len(err) == 1 and "< 1" in err[0]
  assert not os.path.exists(tmp_path / "a")
  weights = os.path.join(tiny_src, "model.safetensors")
  code, err = _cli([weights, str(tmp_path / "a"), "--factor", "2"], capsys)
  assert code == 2 and len(err) == 1 and "is a file, not a directory" in err[0]
  keep = tmp_path / "notes"
  keep.mkdir()
  (keep / "thesis.tex").write_text("precious")
  code, err = _cli([tiny_src, str(keep), "--factor", "2", "--overwrite"], capsys)
  assert code == 2 and len(err) == 1 and "not a HuggingFace checkpoint" in err[0]
  assert (keep / "thesis.tex").read_text() == "precious"
  code, err = _cli([tiny_src, str(tmp_path / "a"), "--factor", "1", "--debug"], capsys)
  assert code == 2 and err[0].startswith("Traceback") and err[-1].startswith("rcjax.grow: error:")


def test_overwrite_replaces_a_checkpoint(tmp_path, tiny_src, capsys):
  dst = str(tmp_path / "out")
  assert hf_cli.main([tiny_src, dst, "--factor", "2", "--no-check"]) == 0
  first = digest(dst)
  assert hf_cli.main([tiny_src, dst, "--factor", "4", "--no-check", "--overwrite"]) == 0
  assert digest(dst) != first and sorted(os.listdir(tmp_path)) == ["out"]


# --- a full disk: ENOSPC is one line (exit 1) and nothing is left; never a SIGBUS ------------------------
@pytest.fixture
def small_disk(tmp_path):
  """A 2 MiB tmpfs (tests run as root; FACTS.md), unmounted afterwards."""
  import subprocess

  d = tmp_path / "disk"
  d.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(d)], capture_output=True).returncode:
    pytest.fail("mount -t tmpfs failed: this test needs root (as CI and the sessions run)")
  try:
    yield d
  finally:
    subprocess.run(["umount", "-l", str(d)], check=True)


def test_full_disk_cli_and_library(tmp_path, small_disk, capsys):
  import subprocess
  import sys

  from rcjax import hf

  src = str(tmp_path / "src")  # grown 2x: ~3.3 MB of float32, more than the 2 MiB disk
  write_synthetic(src, "llama", num_blocks=2, embed=64, heads=4, kv_heads=2, mlp=128, vocab=2048)
  dst = str(small_disk / "big")
  p = subprocess.run([sys.executable, "-m", "rcjax.grow", src, dst, "--factor", "2", "--no-check"],
                     capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  err = [line for line in p.stderr.splitlines() if line.strip() and "param/s" not in line]
  assert p.returncode == 1, (p.returncode, p.stderr[-2000:])  # not -7 (SIGBUS)
  assert len(err) == 1 and "no space left on device" in err[0], err
  assert os.listdir(small_disk) == []  # neither DST nor DST.rcjax-tmp
  with open(small_disk / "filler", "wb") as f:  # the disk really full: a second grow, in this process
    try:
      f.write(b"\0" * (2 << 20))
    except OSError:
      pass
  code, err = _cli([src, dst, "--factor", "2", "--no-check"], capsys)
  assert code == 1 and len(err) == 1 and "no space left on device" in err[0], err
  # the library's save (memory-mapped writes, the mesh path's) reserves its space first: an OSError
  os.remove(small_disk / "filler")
  with open(small_disk / "filler", "wb") as f:
    f.write(b"\0" * (1 << 20) + b"\0" * (3 << 18))
  model, params = hf.load(src)
  with pytest.raises(OSError, match="No space left"):
    hf.save(model, params, str(small_disk / "lib"))
  assert sorted(os.listdir(small_disk)) == ["filler"]


# --- memory: one block at a time --------------------------------------------------------------------------
PEAK = r"""
import resource, runpy, sys
sys.argv = ["rcjax.grow"] + sys.argv[1:]
try:
  runpy.run_module("rcjax.grow", run_name="__main__")
except SystemExit as e:
  assert not e.code, e.code
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_peak_memory_does_not_grow_with_depth(tmp_path):
  """2 vs 8 blocks of the same widths, each CLI in a fresh process: the peak RSS may differ by less than
  half of what 6 more grown blocks would take if the model were held whole (it is one block at a time)."""
  import subprocess
  import sys

  peaks = {}
  for depth in (2, 8):
    src = str(tmp_path / f"d{depth}")
    write_synthetic(src, "llama", num_blocks=depth, embed=384, heads=4, kv_heads=2, mlp=1536, vocab=256, keep=False)
    p = subprocess.run([sys.executable, "-c", PEAK, src, src + "-out", "--factor", "2", "--no-check"],
                       capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert p.returncode == 0, p.stderr[-2000:]
    peaks[depth] = int(p.stdout.split("MAXRSS_KB")[-1]) * 1024
  E, F, Q, KV = 768, 3072, 768, 384  # grown sizes; float32
  block = 4 * (2 * E * Q + 2 * E * KV + 3 * E * F)
  print(peaks, block)
  assert peaks[8] - peaks[2] < 0.5 * 6 * block, (peaks, block)
