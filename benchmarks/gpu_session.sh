#!/usr/bin/env bash
# Everything that needs the GPU, as one short session under a deadline (SECONDS_MAX, default 540 s; each
# step gets what is left, with a reserve for the steps after it), most wanted first. Results in $OUT
# (8 files; the device tool brings back 8 at most): checks.txt (versions, device_check.py, the tests, the
# time each step started), transfer.{txt,json}, train_step.{txt,json}, train_step_llama.json,
# profile.json, repeat_kernel.json (the Pallas kernel per leaf; its table goes to transfer.txt).
# MED: the ~350M step's preset:batch at the best measured H100 setting (gpt-medium:64 with the loss fused
# into the readout and a bf16 residual stream: 43.7% MFU).
# Run from the repository root:  OUT=/tmp/gpu bash benchmarks/gpu_session.sh   (SMOKE=1: tiny sizes)
# The library's tests run meanwhile on the machine's CPU cores (niced), under its JAX (0.11 there).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=. TF_CPP_MIN_LOG_LEVEL=3 XLA_PYTHON_CLIENT_MEM_FRACTION=${MEM_FRACTION:-0.92}
O=${OUT:-/tmp/rcjax_gpu}; mkdir -p "$O"
PY=${PYTHON:-python3}
END=$((SECONDS + ${SECONDS_MAX:-540}))
left() { local s=$((END - SECONDS - ${1:-0})); [ "$s" -gt 5 ] && echo "$s" || echo 5; }  # seconds left, minus a reserve
step() { echo "step $1 at ${SECONDS}s" >> "$O/checks.txt"; }
if [ -n "${SMOKE:-}" ]; then
  MED="tiny:16"; BIG="tiny:24"; LLAMA="tiny-llama:16"; REP="--smoke"; PROF="--smoke"
  GPTX=(--smoke --only gpt); REST=(--smoke --only mlp,matrix)
else
  MED=${MED:-gpt-medium:64}; BIG=${BIG:-gpt-medium:80}; LLAMA=${LLAMA:-llama-medium:64}; REP="--reps 10"
  PROF="--gpt $MED --steps 3"
  GPTX=(--big --reps 10 --no-numpy --only "bfloat16 2x,float32 2x"); REST=(--big --reps 5 --no-numpy --only mlp,matrix)
fi
{ date -u; nvidia-smi -L 2>&1; $PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"; } 2>&1 | tee "$O/checks.txt"
{ JAX_PLATFORMS=cpu nice -n 19 timeout "$(left 10)" $PY -m pytest -q -x -n 6 -p no:cacheprovider tests/test_rc.py \
  tests/test_transfer.py tests/test_transfer_fast.py tests/test_optimizer_transfer.py tests/test_gpt.py \
  tests/test_sharding.py tests/test_checkpoint.py > /tmp/rcjax_tests.txt 2>&1; echo "pytest exit $?" >> /tmp/rcjax_tests.txt; } &
TESTS=$!
# 1. The GPT pytree grown 2x (bf16, f32): the library's default (the Pallas kernel for 16-bit leaves of
#    at least 1 MiB out on GPUs) next to XLA's path, the kernel for every leaf ('on': also the small norm
#    and bias leaves, as before kernels.AUTO_MIN_BYTES) and the kernel's word form (WORDS), bitwise checked;
#    'tiled': the probe with the new neurons in tiled order (whole rows copied; checked against apply_maps).
step 1; timeout "$(left 440)" $PY benchmarks/transfer.py "${GPTX[@]}" --kernel off,auto,tiled,on,words --json "$O/transfer.json" \
  2>&1 | tee "$O/transfer.txt"
# 1b. The bf16 leaves grown 2x with the copies in tiled order (whole rows written k times, another order of
#     the same new neurons) next to XLA's repeat and the kernel: does XLA reach copy speed that way? (Rows
#     to transfer.txt; step 5's sweep has them too.)
step 1b; timeout "$(left 400)" $PY benchmarks/repeat_kernel.py $REP --dtypes bfloat16 --configs 8192:4 2>&1 \
  | tee -a "$O/transfer.txt"
# 2. train.gpt's step at ~350M params (MFU goal): the best setting measured on an H100 (B=64, fused loss,
#    bf16 residual), then with q/k/v fused into one matmul (fusedproj). Each row's wall_s is its setup,
#    compile and steps: the time a variant costs a session.
step 2; timeout "$(left 320)" $PY benchmarks/train_step.py --only gpt --gpt "$MED" --reps 10 \
  --variants fusedloss+bf16residual,fusedproj+fusedloss+bf16residual \
  --json "$O/train_step.json" 2>&1 | tee "$O/train_step.txt"
# The faster of step 2's variants (by tokens/s; the known best if none ran) for steps 2c and 3.
BEST=$($PY -c "import json, sys
rows = [r for r in json.load(open(sys.argv[1])) if r.get('tokens_per_s')]
print(max(rows, key=lambda r: r['tokens_per_s'])['case'].split()[-1] if rows else 'fusedloss+bf16residual')" \
  "$O/train_step.json" 2>/dev/null || echo fusedloss+bf16residual)
echo "best of step 2: $BEST" | tee -a "$O/checks.txt"
# 2b. The same best setting with XLA's dot merger allowed to merge large dots (its default threshold,
#     32 MB, leaves q/k/v separate at this size): does XLA fuse the projections by itself?
step 2b; XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_dot_merger_threshold_mb=4096" timeout "$(left 250)" $PY \
  benchmarks/train_step.py --only gpt --gpt "$MED" --reps 10 --variants fusedloss+bf16residual 2>&1 \
  | tee -a "$O/train_step.txt"
# 2c. A larger batch at step 2's best variant: B=64 with stored logits asked for 70.4 GiB, and the fused loss
#     drops the (B, T, vocab) logits and their gradient, so B=80 may fit in the H100's 80 GB (B=48 -> 64
#     gave +1.3 points on the H200). An out-of-memory error is reported as the row. (Its row goes to
#     train_step.txt only: the device tool brings back 8 files.)
step 2c; timeout "$(left 190)" $PY benchmarks/train_step.py --only gpt --gpt "$BIG" --reps 10 \
  --variants "$BEST" 2>&1 | tee -a "$O/train_step.txt"
# 3. Where step 2's best variant's step goes (kernel classes, top kernels).
step 3; timeout "$(left 130)" $PY benchmarks/profile_step.py $PROF --variant "$BEST" --out /tmp/rcjax_prof --json "$O/profile.json" 2>&1 \
  | tee -a "$O/train_step.txt"
# 4. A Llama-style ~330M (no biases, RMSNorm, SwiGLU, vocab 32000) at the best setting, unfused and with
#    q/k/v and up/gate fused.
step 4; timeout "$(left 60)" $PY benchmarks/train_step.py --only gpt --gpt "$LLAMA" --reps 10 \
  --variants fusedproj+fusedloss+bf16residual,fusedloss+bf16residual --json "$O/train_step_llama.json" 2>&1 \
  | tee -a "$O/train_step.txt"
# 5. The rest: the MLP and matrix transfer cases, the kernel per leaf (block sizes, warps; bitwise checked).
step 5; timeout "$(left 30)" $PY benchmarks/transfer.py "${REST[@]}" 2>&1 | tee -a "$O/transfer.txt"
timeout "$(left 15)" $PY benchmarks/repeat_kernel.py $REP --json "$O/repeat_kernel.json" 2>&1 | tee -a "$O/transfer.txt"
step 6; timeout "$(left 5)" $PY benchmarks/device_check.py 2>&1 | tee -a "$O/checks.txt"
wait $TESTS  # under its timeout: done by the deadline
tail -5 /tmp/rcjax_tests.txt | tee -a "$O/checks.txt"
echo "session done at ${SECONDS}s" | tee -a "$O/checks.txt"
