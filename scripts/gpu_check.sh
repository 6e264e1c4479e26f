#!/usr/bin/env bash
# Run on a CUDA machine (e.g. through the device tool) from the repo root: environment facts, the whole test
# suite (GPU tests included, slow CPU smoke excluded) and the smoke suite on the GPU, timed.
# Needs torch, triton, numpy, pandas, typer, tqdm, tabulate (the lent H100 image has them all).
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out="${OUT:-/tmp/gpu_check}"
mkdir -p "$out"
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
python3 -m pytest -q -m "not slow" tests 2>&1 | tail -n 15
start=$SECONDS
python3 -m harness.cli run --models kda,gdn,mamba2,mla,kimi,gdn-h --suite smoke --device cuda --out "$out/runs" \
    2>"$out/smoke_progress.log" | tee "$out/smoke_table.md"
echo "smoke suite on the GPU: $((SECONDS - start)) s wall"
