#!/usr/bin/env bash
# One device call for issue #18's open measurements: the GPU tests of what has only run on the CPU so far (stacked
# training, the kernels under vmap, the capture gate), then the stacked-step benchmark and the kernels' launch
# settings. Each part has its own time limit, so that one that hangs or runs long leaves the others their time.
#
#   OUT=... bash scripts/gpu/throughput_checks.sh        # about 9 minutes on one H200
#
# writes $OUT/gpu-tests.txt, $OUT/grid/ (grid_step_speed.jsonl, .md), $OUT/tune/ (tune_launch.jsonl, .md)
set -uo pipefail
out=${OUT:-/tmp/out}
export PYTHONPATH=$PWD HARNESS_CACHE=off PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1
mkdir -p "$out"
start=$SECONDS
timeout "${TEST_TIMEOUT:-200}" python3 -m pytest -q -m gpu -x \
    tests/harness/run/test_stacked_gpu.py tests/harness/run/test_step_capture_gpu.py \
    tests/kernels/test_gated_delta_rule_gpu.py -k "vmap or stacked or capture or streams" \
    > "$out/gpu-tests.txt" 2>&1
echo "gpu tests: exit $? after $((SECONDS - start)) s"; tail -n 5 "$out/gpu-tests.txt"
timeout "${GRID_TIMEOUT:-180}" python3 scripts/gpu/grid_step_speed.py --out "$out/grid" \
    --budget-s "$(( ${GRID_TIMEOUT:-180} - 40 ))" 2>&1 | tail -n 30
echo "grid step speed: $((SECONDS - start)) s"
timeout "${TUNE_TIMEOUT:-150}" python3 scripts/gpu/tune_launch.py --out "$out/tune" \
    --budget-s "$(( ${TUNE_TIMEOUT:-150} - 30 ))" 2>&1 | tail -n 30
echo "launch settings: $((SECONDS - start)) s"
