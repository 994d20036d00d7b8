"""Multi-process helpers: a barrier (`sync`), `jax.distributed` set-up from flags or the environment
(`init_distributed`) and a check that every process got the same flags (`check_same_on_every_process`);
re-exported by `rcjax.sharding`.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np


def sync(name: str) -> None:
  """A barrier across processes (nothing for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def init_distributed(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> None:
  """`jax.distributed.initialize`: explicit flags, or auto-detected on multi-host TPU and SLURM job steps
  (nothing for one process; `num_processes=1` means one process whatever the environment says)."""
  import os

  if coordinator or (num_processes or 1) > 1:
    if not (coordinator and num_processes and process_id is not None):
      raise ValueError("multi-process runs need --coordinator, --num-processes and --process-id together")
    jax.distributed.initialize(coordinator, num_processes, process_id)
  elif num_processes == 1:
    return
  elif ((int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in os.environ)  # under srun
        or "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")):
    jax.distributed.initialize()


def check_same_on_every_process(values: Mapping[str, Any], what: str = "flags") -> None:
  """Raise ValueError on every process, naming the entries of `values` (JSON-able) that differ between
  processes: processes started with other flags would otherwise mix two runs, or wait on each other in
  collectives that never match. Nothing to do for one process."""
  if jax.process_count() == 1:
    return
  import hashlib
  import json

  from jax.experimental import multihost_utils

  keys = sorted(values)
  digest = lambda v: int.from_bytes(hashlib.sha256(json.dumps(v, sort_keys=True, default=str).encode())
                                    .digest()[:4], "little") & 0x7FFFFFFF
  mine = np.array([digest(k) for k in keys] + [digest(values[k]) for k in keys], np.int32)
  n = multihost_utils.process_allgather(np.array([len(keys)], np.int32))
  if len(set(np.asarray(n).ravel().tolist())) > 1:
    raise ValueError(f"the processes disagree on {what}: they have {np.asarray(n).ravel().tolist()} entries")
  every = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, len(mine))
  differ = [k for i, k in enumerate(keys) if len(set(every[:, i])) > 1 or len(set(every[:, len(keys) + i])) > 1]
  if differ:
    mine_ = ", ".join(f"{k}={values[k]!r}" for k in differ[:4])
    raise ValueError(f"the processes disagree on {what} {differ} (process {jax.process_index()} has {mine_}); "
                     "start every process with the same flags")
