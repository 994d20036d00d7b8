#!/usr/bin/env bash
# Everything that needs the GPU, as one short session (about 8 minutes on an H100), results in $OUT:
#   env.txt, device_check.txt, transfer.{txt,json}, train_step.{txt,json}, tests_jax.txt
# Run from the repository root:  OUT=/tmp/gpu bash benchmarks/gpu_session.sh   (SMOKE=1: tiny sizes)
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. TF_CPP_MIN_LOG_LEVEL=3
O=${OUT:-/tmp/rcjax_gpu}; mkdir -p "$O"
PY=${PYTHON:-python3}
if [ -n "${SMOKE:-}" ]; then BIG="--smoke"; GPT="--smoke"; else BIG="--big --reps 5"; GPT="--gpt gpt-small,gpt-medium,gpt-medium:48 --reps 10"; fi
{ date -u; nvidia-smi -L 2>&1; $PY -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"; } 2>&1 | tee "$O/env.txt"
timeout 90 $PY benchmarks/device_check.py 2>&1 | tee "$O/device_check.txt"
timeout 170 $PY benchmarks/transfer.py $BIG --no-numpy --json "$O/transfer.json" 2>&1 | tee "$O/transfer.txt"
timeout 200 $PY benchmarks/train_step.py $GPT --json "$O/train_step.json" 2>&1 | tee "$O/train_step.txt"
# The library's own tests under this machine's JAX (0.11 there), on its CPU cores with 8 simulated devices.
JAX_PLATFORMS=cpu timeout 120 $PY -m pytest -q -x -n 12 -p no:cacheprovider tests/test_rc.py tests/test_transfer.py \
  tests/test_optimizer_transfer.py tests/test_gpt.py tests/test_sharding.py tests/test_checkpoint.py \
  2>&1 | tail -15 | tee "$O/tests_jax.txt"
echo "session done"
