#!/usr/bin/env bash
# The GPU regression check: rerun a few configurations of the committed GPU baselines on one GPU (harness regress:
# each at its best baseline lr, first seed, rebuilt from the stored config) and fail when one falls below its
# baseline beyond the seed spread. Run from the repository root on a CUDA machine; exits 1 on a regression.
#
#   bash scripts/gpu/regress.sh            # PASSED on one H200 (2026-12-02): 170 s, 3 + 7 configurations
set -uo pipefail
export PYTHONPATH=$PWD HARNESS_CACHE=off PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1
out=${OUT:-/tmp/out}
status=0
check() {  # BASELINE MODELS [harness regress options...]
    [ -d "$1/cells" ] || { echo "no baseline at $1 (skipped)"; return; }
    local baseline=$1 models=$2
    shift 2
    python3 -m harness.cli regress --baseline "$baseline" --models "$models" --device cuda --workers 8 \
        --out "$out/regress-$(basename "$(dirname "$baseline")")" "$@" 2>&1 | grep -v "step/s" | tail -n 20
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
}
# configurations that leave the MQAR plateau well inside their budget (a cell that leaves it near its end, such
# as kda@zoology-64, scores anywhere between 0.5 and 0.99 from run to run: no regression test)
check results/zoology-h200/store "mla@zoology-128,mla@zoology-256,kda@zoology-128"
# the kimi store grows towards 72 cells (lengths up to 2048): only its configurations that trained in at most
# 250 s (beside 2-4 others) are rerun, so that the check stays inside one job, and only those that had settled
# (mla's stack cell, 0.05 and rising at 3000 steps, would score anywhere from run to run)
check results/kimi-small-h200/store "mla@kimi-synth,kda@kimi-synth" --longest-s 250 --settled-only
exit $status
