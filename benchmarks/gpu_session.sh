#!/usr/bin/env bash
# Everything that needs the GPU, as one short session under a deadline (SECONDS_MAX, default 540 s; each
# step gets what is left), most wanted first. Results in $OUT (7 files; the device tool brings back 8 at
# most): checks.txt (versions, device_check.py, the tests), repeat_kernel.{txt,json} (the Pallas kernel
# per leaf), train_step.{txt,json}, transfer.{txt,json}. PROFILE=1 adds profile_step.py's summary to
# train_step.txt.
# Run from the repository root:  OUT=/tmp/gpu bash benchmarks/gpu_session.sh   (SMOKE=1: tiny sizes)
# The library's tests run meanwhile on the machine's CPU cores (niced), under its JAX (0.11 there).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. TF_CPP_MIN_LOG_LEVEL=3 XLA_PYTHON_CLIENT_MEM_FRACTION=${MEM_FRACTION:-0.92}
O=${OUT:-/tmp/rcjax_gpu}; mkdir -p "$O"
PY=${PYTHON:-python3}
END=$((SECONDS + ${SECONDS_MAX:-540}))
left() { local s=$((END - SECONDS - ${1:-0})); [ "$s" -gt 5 ] && echo "$s" || echo 5; }  # seconds left, minus a reserve
if [ -n "${SMOKE:-}" ]; then
  MED="tiny:8"; SMALL="tiny:4"; REP="--smoke"; BIG="--smoke"; PROF="--smoke"
else
  MED="gpt-medium:64"; SMALL="gpt-small"; REP="--reps 20"; BIG="--big --reps 5 --no-numpy"; PROF="--gpt gpt-medium:48 --steps 3"
fi
{ date -u; nvidia-smi -L 2>&1; $PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"; } 2>&1 | tee "$O/checks.txt"
{ JAX_PLATFORMS=cpu nice -n 19 timeout 300 $PY -m pytest -q -x -n 6 -p no:cacheprovider tests/test_rc.py \
  tests/test_transfer.py tests/test_transfer_fast.py tests/test_optimizer_transfer.py tests/test_gpt.py \
  tests/test_sharding.py tests/test_checkpoint.py > /tmp/rcjax_tests.txt 2>&1; echo "pytest exit $?" >> /tmp/rcjax_tests.txt; } &
TESTS=$!
# 1. The Pallas repeat kernel per leaf: block sizes and warps, next to XLA and a copy (bitwise checked).
timeout "$(left 420)" $PY benchmarks/repeat_kernel.py $REP --json "$O/repeat_kernel.json" 2>&1 | tee "$O/repeat_kernel.txt"
# 2. train.gpt's step at ~350M params (MFU goal), and the bf16 residual stream beside it; a smaller
#    batch if that one does not fit; then ~125M.
timeout "$(left 250)" $PY benchmarks/train_step.py --only gpt --gpt "$MED" --variants default,bf16residual --reps 10 \
  --json "$O/train_step.json" 2>&1 | tee "$O/train_step.txt"
if grep -q '"error"' "$O/train_step.json" 2>/dev/null && [ -z "${SMOKE:-}" ]; then
  timeout "$(left 220)" $PY benchmarks/train_step.py --only gpt --gpt gpt-medium:48 --reps 10 \
    --json "$O/train_step_b48.json" 2>&1 | tee -a "$O/train_step.txt"
fi
# 3. Transfer of whole pytrees, with and without the kernel, next to copy and the naive baseline.
timeout "$(left 80)" $PY benchmarks/transfer.py $BIG --pallas --json "$O/transfer.json" 2>&1 | tee "$O/transfer.txt"
timeout "$(left 45)" $PY benchmarks/train_step.py --only gpt --gpt "$SMALL" --reps 10 2>&1 | tee -a "$O/train_step.txt"
if [ -n "${PROFILE:-}" ]; then
  timeout "$(left 45)" $PY benchmarks/profile_step.py $PROF --out /tmp/rcjax_prof 2>&1 | tee -a "$O/train_step.txt"
fi
timeout "$(left 5)" $PY benchmarks/device_check.py 2>&1 | tee -a "$O/checks.txt"
kill -0 $TESTS 2>/dev/null && sleep "$(left 0)"
tail -5 /tmp/rcjax_tests.txt | tee -a "$O/checks.txt"
echo "session done at ${SECONDS}s"
