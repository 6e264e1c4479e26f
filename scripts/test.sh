#!/usr/bin/env bash
# Set up (scripts/setup.sh dev), lint, run the whole test suite on the CPU, then the regression check of the smoke
# suite against the committed baseline (results/smoke-cpu; it trains every smoke model once, a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
ruff check .
ruff format --check .
# two test processes of one thread each: most tests train tiny models, which a second torch thread only slows
OMP_NUM_THREADS=1 python -m pytest -q -n 2 "$@"
harness regress --baseline results/smoke-cpu --workers 2 --out "$(mktemp -d)/regress"
