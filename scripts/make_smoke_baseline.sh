#!/usr/bin/env bash
# Make the CPU baseline of `harness regress`: the smoke suite, every smoke model, seeds 0-2, one process per cell
# (one thread each) so that a many-core machine does it in minutes. Usage: scripts/make_smoke_baseline.sh OUT
set -euo pipefail
out=${1:?usage: $0 OUT}
export CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
for model in kda gdn mamba2 mla; do
  for seed in 0 1 2; do
    python -m harness.cli run --models "$model" --suite smoke --seeds "$seed" --out "$out" >"$out.$model.$seed.log" 2>&1 &
  done
done
wait
python -m harness.cli report --out "$out" --no-figures
