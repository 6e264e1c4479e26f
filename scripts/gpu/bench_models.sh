#!/usr/bin/env bash
# Issue #19 on one H200 in ONE device call of at most 9 minutes: the GPU tests of the decode fast path (the CUDA
# graph over a static cache, the Triton MLA decode kernel, generate()), then `harness bench models` for the seven
# architectures at the 167M size (bench-167m) at 4K-1M tokens of context (batch 1) and at 4K/32K with large
# batches, then training at 4K and 32K. Run from the repository root:
#
#     OUT=/tmp/out bash scripts/gpu/bench_models.sh            # the H200 (torch 2.11, Triton 3.6)
#     PYTHON=.venv/bin/python bash scripts/gpu/bench_models.sh --quick    # CPU check of the script (about 1 min)
#
# Needs torch, triton, numpy, pandas, typer (matplotlib for the figures; without it the tables are written and the
# figures can be drawn later from the store: `harness bench models --report-only --out store`). No lm-eval,
# datasets or transformers needed (the generate() test is skipped without transformers). What comes back (at most
# 8 files) lands in $OUT: env.txt, gpu_tests.txt, bench.log, bench.md (the tables), bench_decode_vs_context.png,
# store.tar.gz (the results store, its report folder with every figure and CSV, and the cells' profiles).
#
# Time: the tests get TEST_TIMEOUT s; the benchmark gets what is left of TOTAL_S less a reserve for the last case,
# the report and the tar (--time-budget: cases not started by then are listed as not run; every finished case is
# in the store already). A prefill longer than ROW_BUDGET s stops there and the rest of that cache is made up
# (noted in the table): at 512K and 1M, MLA's quadratic prefill would take minutes.
set -uo pipefail
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HARNESS_CACHE=off PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/bench_models}
TOTAL_S=${TOTAL_S:-510}
ROW_BUDGET=${ROW_BUDGET:-15}
RESERVE_S=${RESERVE_S:-60}
mkdir -p "$OUT"
start=$SECONDS

MODELS=mla,kimi,mla-nope,gdn-h,kda,gdn,mamba2
if [ "${1:-}" = --quick ]; then
  BENCH=(--quick --models "$MODELS" --contexts 64,256 --batched 8x64 --train-contexts 64)
  TEST_TIMEOUT=${TEST_TIMEOUT:-60}
else
  BENCH=(--models "$MODELS" --size bench-167m --contexts 4K,32K,128K,512K,1M --batched 64x4K,16x32K
         --train-contexts 4K,32K --train-tokens 32K --decode-steps 20 --prefill-chunk 64K --profile-contexts 32K,1M)
  TEST_TIMEOUT=${TEST_TIMEOUT:-150}
fi

{
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")'
  "$PY" -c 'import matplotlib; print("matplotlib", matplotlib.__version__)' 2>/dev/null || echo "no matplotlib: tables only"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# 1. the fast path against the plain path on the GPU (skipped without CUDA)
timeout "$TEST_TIMEOUT" "$PY" -m pytest -q -m gpu -p no:cacheprovider -rfs \
  tests/kernels/test_mla_decode_gpu.py tests/models/test_static_cache_gpu.py tests/harness/integrations/test_hf_gpu.py \
  > "$OUT/gpu_tests.txt" 2>&1
echo "gpu tests: rc $? after $((SECONDS - start)) s"; tail -n 5 "$OUT/gpu_tests.txt"

# 2. the benchmark, within what is left of the call
left=$((TOTAL_S - (SECONDS - start) - RESERVE_S))
[ "$left" -lt 30 ] && left=30
timeout $((left + RESERVE_S - 20)) "$PY" -m harness.cli bench models "${BENCH[@]}" --row-budget "$ROW_BUDGET" \
  --time-budget "$left" --out "$OUT/store" > "$OUT/bench.log" 2>&1
echo "bench: rc $? after $((SECONDS - start)) s"
if [ ! -s "$OUT/store/report/bench.md" ] || ! grep -q "^written:" "$OUT/bench.log"; then
  # killed by the timeout: every finished case is in the store; the tables and figures from it
  timeout 60 "$PY" -m harness.cli bench models --report-only --out "$OUT/store" >> "$OUT/bench.log" 2>&1
fi
grep -v "^|" "$OUT/bench.log" | tail -n 12

# 3. what comes back
cp "$OUT/store/report/bench.md" "$OUT/bench.md" 2>/dev/null
cp "$OUT/store/report/bench_decode_vs_context.png" "$OUT/" 2>/dev/null
tar czf "$OUT/store.tar.gz" -C "$OUT" store && rm -rf "$OUT/store"
ls -la "$OUT"
echo "total: $((SECONDS - start)) s"
