"""HuggingFace safetensors checkpoints in and out of rcjax (docs/hf.md).

`load(path) -> (model, params)` and `save(model, params, path)` convert causal LMs to and from
`rcjax.nn.GPT` and BERT encoders to and from `rcjax.nn.Bert`; `Checkpoint(path)` reads a checkpoint's
blocks as RC leaves one at a time, for the diagnostics (`python -m rcjax.analyze`).

Supported families (read from config.json `model_type`, else `architectures`): Llama (`llama`, `mistral`,
`qwen2`), GPT-2 (`gpt2`), GPT-NeoX/Pythia (`gpt_neox`), BERT (`bert`). Single-file (`model.safetensors`)
and sharded (`model.safetensors.index.json`) checkpoints, the files picked as transformers does (`shard_files`);
every shard is checked for presence and size when the checkpoint is opened, so a missing shard or a
truncated file fails at once with a one-line error.

The package, from the bottom up (imports point down only):

- `layout`: ONE table per family of every HF tensor (name, rcjax leaf, axes, how it is stored), and what
  derives from it: the views between the HF and rcjax layouts, the entries, the block reader's rules;
- `files`: the safetensors files (headers, shards, dtypes, memory maps);
- `bert`, `config`: config.json <-> `rcjax.nn.Bert` / `rcjax.nn.GPT`, a model's family and architecture;
- `reader` (`Checkpoint`), `write` (`save`), `model` (`load`), `stream` (the block-by-block grow/shrink
  of `python -m rcjax.grow`), `synthetic` (tiny random checkpoints: `python -m rcjax.hf.synthetic`).

>>> import tempfile
>>> from rcjax.hf.synthetic import write_synthetic
>>> d = tempfile.mkdtemp(); _ = write_synthetic(d, 'llama', num_blocks=2, embed=8, heads=2, kv_heads=1)
>>> family(Checkpoint(d).config), Checkpoint(d).num_blocks
('llama', 2)
"""

from rcjax.hf.config import config_at_depth, config_for, family_of, model_from_config
from rcjax.hf.files import is_hf_checkpoint, read_header, shard_files
from rcjax.hf.layout import family, supported
from rcjax.hf.model import abstract_params, load, stored_dtype
from rcjax.hf.reader import Checkpoint
from rcjax.hf.write import as_sp, save, tokenizer_files

__all__ = [
    "Checkpoint", "abstract_params", "as_sp", "config_at_depth", "config_for", "family", "family_of",
    "is_hf_checkpoint", "load", "model_from_config", "read_header", "save", "shard_files", "stored_dtype",
    "supported", "tokenizer_files",
]
