#!/usr/bin/env bash
# One device call for issue #18's open measurements: the GPU tests of what has only run on the CPU so far (the
# chunked kernels' autograd Function in torch.func's form with its vmap rule, stacked training, the capture gate),
# then the stacked-step benchmark; with TUNE=1, the kernels' launch settings instead of the tests (their own call).
# Each part has its own time limit, so that one that hangs or runs long leaves the others their time.
#
#   OUT=... bash scripts/gpu/throughput_checks.sh          # about 9 minutes on one H200
#   OUT=... TUNE=1 bash scripts/gpu/throughput_checks.sh   # the launch settings, then the benchmark
#
# writes $OUT/gpu-tests.txt, $OUT/grid/ (grid_step_speed.jsonl, .md), with TUNE=1 $OUT/tune/ (tune_launch.*)
set -uo pipefail
out=${OUT:-/tmp/out}
export PYTHONPATH=$PWD HARNESS_CACHE=off PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1
mkdir -p "$out"
start=$SECONDS
if [ "${TUNE:-0}" = 1 ]; then
    timeout "${TUNE_TIMEOUT:-330}" python3 scripts/gpu/tune_launch.py --out "$out/tune" \
        --budget-s "$(( ${TUNE_TIMEOUT:-330} - 40 ))" 2>&1 | tail -n 30
    echo "launch settings: $((SECONDS - start)) s"
else
    # every kernel test: every GPU training goes through the changed autograd Function
    timeout "${KERNEL_TIMEOUT:-200}" python3 -m pytest -q -m gpu tests/kernels/test_gated_delta_rule_gpu.py \
        > "$out/gpu-tests.txt" 2>&1
    echo "kernel gpu tests: exit $? after $((SECONDS - start)) s"; tail -n 3 "$out/gpu-tests.txt"
    timeout "${TRAIN_TIMEOUT:-150}" python3 -m pytest -q -m gpu \
        tests/harness/run/test_stacked_gpu.py tests/harness/run/test_step_capture_gpu.py >> "$out/gpu-tests.txt" 2>&1
    echo "training gpu tests: exit $? after $((SECONDS - start)) s"; tail -n 3 "$out/gpu-tests.txt"
fi
timeout "${GRID_TIMEOUT:-170}" python3 scripts/gpu/grid_step_speed.py --out "$out/grid" \
    --budget-s "$(( ${GRID_TIMEOUT:-170} - 40 ))" 2>&1 | tail -n 30
echo "grid step speed: $((SECONDS - start)) s"
