#!/usr/bin/env bash
# Everything that needs the GPU, as one short session under a deadline (SECONDS_MAX, default 540 s; each
# step gets what is left, with a reserve for the steps after it), most wanted first. Results in $OUT
# (8 files; the device tool brings back 8 at most): checks.txt (versions, device_check.py, the tests),
# transfer.{txt,json}, train_step.{txt,json}, train_step_big.json, repeat_kernel.{txt,json} (the Pallas
# kernel per leaf).
# MED: the ~350M step's preset:batch (default gpt-medium:48, which fits an H100's 80 GB; 64 on an H200);
# BIG: a larger batch tried with the loss fused into the readout (no logits stored; default gpt-medium:64).
# PROFILE=1 adds profile_step.py's summary to train_step.txt.
# Run from the repository root:  OUT=/tmp/gpu bash benchmarks/gpu_session.sh   (SMOKE=1: tiny sizes)
# The library's tests run meanwhile on the machine's CPU cores (niced), under its JAX (0.11 there).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. TF_CPP_MIN_LOG_LEVEL=3 XLA_PYTHON_CLIENT_MEM_FRACTION=${MEM_FRACTION:-0.92}
O=${OUT:-/tmp/rcjax_gpu}; mkdir -p "$O"
PY=${PYTHON:-python3}
END=$((SECONDS + ${SECONDS_MAX:-540}))
left() { local s=$((END - SECONDS - ${1:-0})); [ "$s" -gt 5 ] && echo "$s" || echo 5; }  # seconds left, minus a reserve
if [ -n "${SMOKE:-}" ]; then
  MED="tiny:8"; BIG="tiny:16"; SMALL="tiny:4"; REP="--smoke"; PROF="--smoke"
  GPTX=(--smoke --only gpt); REST=(--smoke --only mlp,matrix)
else
  MED=${MED:-gpt-medium:48}; BIG=${BIG:-gpt-medium:64}; SMALL="gpt-small"; REP="--reps 10"; PROF="--gpt gpt-medium:48 --steps 3"
  GPTX=(--big --reps 5 --no-numpy --only "bfloat16 2x,float32 2x"); REST=(--big --reps 5 --no-numpy --only mlp,matrix)
fi
{ date -u; nvidia-smi -L 2>&1; $PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"; } 2>&1 | tee "$O/checks.txt"
{ JAX_PLATFORMS=cpu nice -n 19 timeout "$(left 10)" $PY -m pytest -q -x -n 6 -p no:cacheprovider tests/test_rc.py \
  tests/test_transfer.py tests/test_transfer_fast.py tests/test_optimizer_transfer.py tests/test_gpt.py \
  tests/test_sharding.py tests/test_checkpoint.py > /tmp/rcjax_tests.txt 2>&1; echo "pytest exit $?" >> /tmp/rcjax_tests.txt; } &
TESTS=$!
# 1. The GPT pytree grown 2x (bf16, f32), with and without the Pallas kernel (bitwise checked).
timeout "$(left 360)" $PY benchmarks/transfer.py "${GPTX[@]}" --pallas --json "$O/transfer.json" 2>&1 | tee "$O/transfer.txt"
# 2. train.gpt's step at ~350M params (MFU goal), and the bf16 residual stream beside it; then a larger
#    batch with the fused loss (B=64 did not fit an H100 with the logits stored).
timeout "$(left 240)" $PY benchmarks/train_step.py --only gpt --gpt "$MED" --variants default,bf16residual --reps 10 \
  --json "$O/train_step.json" 2>&1 | tee "$O/train_step.txt"
timeout "$(left 150)" $PY benchmarks/train_step.py --only gpt --gpt "$BIG" --variants fusedloss+bf16residual,fusedloss \
  --reps 10 --json "$O/train_step_big.json" 2>&1 | tee -a "$O/train_step.txt"
# 3. The kernel per leaf: block sizes and warps, next to XLA and a copy (bitwise checked).
timeout "$(left 120)" $PY benchmarks/repeat_kernel.py $REP --json "$O/repeat_kernel.json" 2>&1 | tee "$O/repeat_kernel.txt"
# 4. The rest: ~125M step, the MLP and matrix transfer cases (XLA path), checks against the host.
timeout "$(left 90)" $PY benchmarks/train_step.py --only gpt --gpt "$SMALL" --reps 10 2>&1 | tee -a "$O/train_step.txt"
timeout "$(left 60)" $PY benchmarks/transfer.py "${REST[@]}" 2>&1 | tee -a "$O/transfer.txt"
# 5. With the time left: the ~350M step with XLA's cuBLASLt epilogues (bias, GELU fused into the matmuls)
#    and cuDNN layer norm, next to the default (both printed to train_step.txt).
FLAGS_TRY=${FLAGS_TRY:---xla_gpu_enable_cublaslt=true --xla_gpu_enable_cudnn_layer_norm=true}
echo "XLA_FLAGS=$FLAGS_TRY for the next rows" | tee -a "$O/train_step.txt"
XLA_FLAGS="$FLAGS_TRY" timeout "$(left 25)" $PY benchmarks/train_step.py --only gpt --gpt "$MED" --reps 10 2>&1 \
  | tee -a "$O/train_step.txt"
if [ -n "${PROFILE:-}" ]; then
  timeout "$(left 45)" $PY benchmarks/profile_step.py $PROF --out /tmp/rcjax_prof 2>&1 | tee -a "$O/train_step.txt"
fi
timeout "$(left 5)" $PY benchmarks/device_check.py 2>&1 | tee -a "$O/checks.txt"
wait $TESTS  # under its timeout: done by the deadline
tail -5 /tmp/rcjax_tests.txt | tee -a "$O/checks.txt"
echo "session done at ${SECONDS}s"
