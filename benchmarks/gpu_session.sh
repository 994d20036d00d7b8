#!/usr/bin/env bash
# Everything that needs the GPU, as one short session (about 8 minutes on an H200, from its parts' times),
# results in $OUT (7 files; the device tool brings back 8 at most): checks.txt (versions, device_check.py,
#   the tests), train_step.{txt,json}, profile.txt + profile_trace.json.gz, transfer.{txt,json}
# Run from the repository root:  OUT=/tmp/gpu bash benchmarks/gpu_session.sh   (SMOKE=1: tiny sizes)
# The library's tests run meanwhile on the machine's CPU cores (niced), under its JAX (0.11 there).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. TF_CPP_MIN_LOG_LEVEL=3
O=${OUT:-/tmp/rcjax_gpu}; mkdir -p "$O"
PY=${PYTHON:-python3}
if [ -n "${SMOKE:-}" ]; then
  PROF="--smoke"; GPT="--gpt tiny:8 --reps 3"; BIG="--smoke"
else
  PROF="--gpt gpt-medium:48 --steps 3"; GPT="--gpt gpt-small,gpt-medium:64 --reps 10"; BIG="--big --reps 5 --no-numpy"
fi
{ date -u; nvidia-smi -L 2>&1; $PY -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"; } 2>&1 | tee "$O/checks.txt"
{ JAX_PLATFORMS=cpu nice -n 19 timeout 300 $PY -m pytest -q -x -n 6 -p no:cacheprovider tests/test_rc.py \
  tests/test_transfer.py tests/test_transfer_fast.py tests/test_optimizer_transfer.py tests/test_gpt.py \
  tests/test_sharding.py tests/test_checkpoint.py > /tmp/rcjax_tests.txt 2>&1; echo "pytest exit $?" >> /tmp/rcjax_tests.txt; } &
TESTS=$!
# train.gpt's step (blocks unrolled) next to the scan's loop; then where the step's time goes.
timeout 240 $PY benchmarks/train_step.py --only gpt $GPT --variants default,scan --json "$O/train_step.json" 2>&1 | tee "$O/train_step.txt"
timeout 90 $PY benchmarks/profile_step.py $PROF --out /tmp/rcjax_prof 2>&1 | tee "$O/profile.txt"
T=$(ls -t /tmp/rcjax_prof/plugins/profile/*/*.trace.json.gz 2>/dev/null | head -1)
[ -n "$T" ] && [ "$(stat -c %s "$T")" -lt 15000000 ] && cp "$T" "$O/profile_trace.json.gz"
timeout 200 $PY benchmarks/transfer.py $BIG --pallas --json "$O/transfer.json" 2>&1 | tee "$O/transfer.txt"
timeout 90 $PY benchmarks/device_check.py 2>&1 | tee -a "$O/checks.txt"
wait $TESTS; tail -5 /tmp/rcjax_tests.txt | tee -a "$O/checks.txt"
echo "session done"
