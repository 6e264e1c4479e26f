#!/usr/bin/env bash
# One device call: the `lm` suite at its small scale for kda, gdn and mla (three cells side by side on one GPU),
# then the report. Run from a copy of the repository root on the GPU machine. The corpus is every .py file of the
# machine's Python environment ('python-packages'); lm-eval is not installed there, so no lm-eval tasks.
#   STEPS (default 3000, the suite's) and TOKENS (training tokens to tokenise) shorten the run.
set -o pipefail
export PYTHONPATH=$PWD HARNESS_CACHE=/tmp/harness-cache PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/out}
STEPS=${STEPS:-3000}
TOKENS=${TOKENS:-100000000}
MODELS=${MODELS:-kda,gdn,mla}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
start=$(date +%s)
timeout ${RUN_TIMEOUT:-470} python -m harness.cli run --models "$MODELS" --suite lm --scale small --lrs 3e-3 \
  --set train.max_steps="$STEPS" --set task.max_train_tokens="$TOKENS" --set 'task.lm_eval_tasks=' \
  --launcher pool --cells-per-gpu 3 --out "$OUT/store" 2>&1 | tee "$OUT/run.log" | grep -v "it/s\]" | tail -80
echo "run: $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"
python -m harness.cli report --out "$OUT/store" --no-figures > "$OUT/report.md" 2>&1
cat "$OUT/report.md"
ls /tmp/harness-cache/*/info.json >/dev/null 2>&1 && cat /tmp/harness-cache/corpus-*/info.json > "$OUT/corpus.json"
tar czf "$OUT/store.tgz" -C "$OUT" store && rm -rf "$OUT/store"
