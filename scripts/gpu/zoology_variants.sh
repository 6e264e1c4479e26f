#!/usr/bin/env bash
# Why do GDN (widths 64-128) and MLA (width 512) miss in the zoology suite (results/zoology-h200/)? One device call
# that trains the suspects' cells under changed settings, side by side on one GPU, into one store, through
# `harness run` itself: each variant is a --set on the suite's own cells, so its rows are labelled with what
# changed (`gdn@zoology-128 [task.num_train=180000, ...]`) and sit beside the suite's in one report when the two
# stores are read together. docs/findings/mqar-plateau.md ("Open") says what each one tests.
#
#   OUT=/tmp/out bash scripts/gpu/zoology_variants.sh [SECONDS]      # default 540; writes $OUT/variants.tgz, .md
#   ONLY=gdn-data,mla512-lr OUT=/tmp/out bash scripts/gpu/zoology_variants.sh 300     # some of them only
#   DEADLINE=off ...     # start every variant (--deadline estimates from cells that shared the GPU, too high)
#
# Written for the suite's first small settings (20K examples per setting, 3000 steps, early stop on the mean; the
# store in results/zoology-h200/): since the suite trains on Zoology's data for up to 6000 steps, the *_DATA and
# -long variants repeat what the suite now does.
# Every `harness run` below shares the GPU (leases keep them apart in the store); all stop starting cells by the
# deadline, and what finished is packed even if the call is cut short.
set -uo pipefail
seconds=${1:-540}
out=${OUT:-/tmp/out}
store=runs/zoology-variants
export PYTHONPATH=$PWD HARNESS_CACHE=off PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1
mkdir -p "$out"
deadline=(--deadline "$((seconds - 20))")
[ "${DEADLINE:-on}" = off ] && deadline=()
[ -f carry/variants.tgz ] && bash scripts/store_tar.sh unpack carry/variants.tgz "$store"
# Zoology's own mixture: 100K examples at (64, 4) and 20K at each of the other four settings (the suite: 20K each)
ZOOLOGY_DATA=(--set task.num_train=180000 --set task.train_shares=5,1,1,1,1)
variant() {  # NAME MODEL LRS harness-run-arguments...
    local name=$1 model=$2 lrs=$3
    shift 3
    [ -z "${ONLY:-}" ] || [[ ",$ONLY," == *",$name,"* ]] || return 0
    timeout -s TERM "$seconds" python3 -m harness.cli run --suite zoology --scale small --models "$model" \
        --lrs "$lrs" --device cuda --out "$store" --checkpoint-every off "${deadline[@]}" \
        "$@" >"/tmp/variant-$name.log" 2>&1 &
}
# GDN at chance: more distinct data (it fitted the suite's 100K), and Zoology's top lr
variant gdn-data gdn@zoology-128 1e-3 "${ZOOLOGY_DATA[@]}"
variant gdn-lr gdn@zoology-128 1e-2
variant gdn64-data gdn@zoology-64 3e-3 "${ZOOLOGY_DATA[@]}"
# ... or its forget gate's start: with one or two heads, each head's decay is one random draw (half-lives of 4-83
# tokens at seed 0), where KDA draws one per channel (some start near 600); these start every head slow
SLOW_GATE=(--set model.gdn.A_init_range=1,1 --set model.gdn.dt_init_range=0.001,0.01)
variant gdn-slow gdn@zoology-128 1e-3 "${SLOW_GATE[@]}"
variant gdn64-slow gdn@zoology-64 1e-3 "${SLOW_GATE[@]}"
# ... or its output gate: GDN multiplies the normalised output by SiLU(W_g x), which starts near 0 (W_g ~ N(0, 0.02));
# KDA (and the Kimi report's GDN-H) by a sigmoid, which starts near 0.5. On the CPU (V 256, one head of 64) the
# sigmoid let GDN leave the plateau from the standard gate start, where SiLU never did in 800 steps
SIGMOID=(--set model.gdn.output_gate=sigmoid)
variant gdn-sig gdn@zoology-128 1e-3 "${SIGMOID[@]}"
variant gdn64-sig gdn@zoology-64 3e-3 "${SIGMOID[@]}"
variant gdn256-sig gdn@zoology-256 1e-3 "${SIGMOID[@]}"
# KDA at width 64 left the plateau at the end of its budget: does more data move it earlier?
variant kda64-data kda@zoology-64 3e-3 "${ZOOLOGY_DATA[@]}"
# MLA at width 512 below 0.99: the grid's lower end, its latent as wide as the model, Zoology's data
variant mla512-lr mla@zoology-512 1e-4
variant mla512-latent mla@zoology-512 3e-4 --set model.mla.kv_lora_rank=512
variant mla512-data mla@zoology-512 3e-4 "${ZOOLOGY_DATA[@]}"
variant mla512-long mla@zoology-512 3e-4 --set train.max_steps=6000   # still rising after 3000
variant mla512-data-long mla@zoology-512 3e-4 --set train.max_steps=6000 "${ZOOLOGY_DATA[@]}"
wait
for log in /tmp/variant-*.log; do echo "== $log"; grep -v "step/s" "$log" | grep -E "^\[|error|Error" | tail -5; done
bash scripts/store_tar.sh pack "$store" "$out/variants.tgz"
python3 -m harness.cli report --out "$store" --no-figures --report-dir /tmp/variants-report >"$out/variants.md" 2>&1
cat "$out/variants.md"
