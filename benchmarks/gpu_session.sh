#!/usr/bin/env bash
# Everything that needs the GPU, as one short session (about 7 minutes on an H200), results in $OUT:
#   env.txt, profile.{txt,json} + profile_trace.json.gz, train_step.{txt,json}, train_step_flags.{txt,json},
#   transfer.{txt,json}, device_check.txt, tests_jax.txt
# Run from the repository root:  OUT=/tmp/gpu bash benchmarks/gpu_session.sh   (SMOKE=1: tiny sizes)
# The library's tests run meanwhile on the machine's CPU cores (niced), under its JAX (0.11 there).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. TF_CPP_MIN_LOG_LEVEL=3
O=${OUT:-/tmp/rcjax_gpu}; mkdir -p "$O"
PY=${PYTHON:-python3}
if [ -n "${SMOKE:-}" ]; then
  PROF="--smoke"; GPT="--gpt tiny:8 --reps 3"; BIG="--smoke"
else
  PROF="--gpt gpt-medium:48 --steps 3"; GPT="--gpt gpt-medium:48 --reps 10"; BIG="--big --reps 5 --no-numpy"
fi
{ date -u; nvidia-smi -L 2>&1; $PY -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"; } 2>&1 | tee "$O/env.txt"
{ JAX_PLATFORMS=cpu nice -n 19 timeout 300 $PY -m pytest -q -x -n 6 -p no:cacheprovider tests/test_rc.py \
  tests/test_transfer.py tests/test_transfer_fast.py tests/test_optimizer_transfer.py tests/test_gpt.py \
  tests/test_sharding.py tests/test_checkpoint.py > "$O/tests_jax.txt" 2>&1; echo "pytest exit $?" >> "$O/tests_jax.txt"; } &
TESTS=$!
# Where the step's time goes (kernel classes and the top kernels), then the step with scanned and unrolled
# blocks, then with cuBLAS for every matmul (XLA otherwise may pick Triton GEMMs).
timeout 90 $PY benchmarks/profile_step.py $PROF --out /tmp/rcjax_prof --json "$O/profile.json" 2>&1 | tee "$O/profile.txt"
T=$(ls -t /tmp/rcjax_prof/plugins/profile/*/*.trace.json.gz 2>/dev/null | head -1)
[ -n "$T" ] && [ "$(stat -c %s "$T")" -lt 15000000 ] && cp "$T" "$O/profile_trace.json.gz"
timeout 150 $PY benchmarks/train_step.py --only gpt $GPT --scan both --json "$O/train_step.json" 2>&1 | tee "$O/train_step.txt"
XLA_FLAGS="--xla_gpu_enable_triton_gemm=false" timeout 60 $PY benchmarks/train_step.py --only gpt $GPT \
  --json "$O/train_step_flags.json" 2>&1 | tee "$O/train_step_flags.txt"
# Transfer: 16-bit leaves moved as 16-bit entries (words=0) and as 32-bit words (2), side by side.
timeout 110 $PY benchmarks/transfer.py $BIG --only gpt --words 0,2 --json "$O/transfer.json" 2>&1 | tee "$O/transfer.txt"
timeout 50 $PY benchmarks/device_check.py 2>&1 | tee "$O/device_check.txt"
wait $TESTS; tail -5 "$O/tests_jax.txt"
echo "session done"
