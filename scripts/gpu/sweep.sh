#!/usr/bin/env bash
# One device call's share of a GPU sweep that is longer than one call: unpack the store carried in (if any), run the
# sweep until a deadline, pack the store for the next call. `harness run --deadline` starts no cell whose estimated
# time (from the cells the store already holds, at this packing) no longer fits before SECONDS, and no cell of
# unknown time after START_FOR seconds (default: half of SECONDS); a cell still cut off by the deadline runs again,
# from step 0, in the next call (its checkpoints would not fit the call's transfer limits); finished cells are
# never run twice (harness run skips what its store holds).
#
#   scripts/gpu/sweep.sh NAME SECONDS harness-run-arguments...
#
#   reads   carry/NAME.tgz         the store so far (absent on the first call)
#   writes  $OUT/NAME.tgz          the store after this call (scripts/store_tar.sh; carry it into the next call)
#           $OUT/NAME-status.md    done / remaining (harness status), $OUT/NAME-report.md (harness report)
#
# e.g. scripts/gpu/sweep.sh zoology 555 --suite zoology --scale small --models mla,kda,gdn,mamba2 \
#          --device cuda --launcher pool --cells-per-gpu 12
# Cells too long for one call at this packing are reported as not started ("fewer --cells-per-gpu"): run them in
# a call of their own with fewer cells at once, e.g. --models kda@zoology-512 --cells-per-gpu 3.
# The GPU image has no `datasets` package: task data is generated in memory (HARNESS_CACHE=off).
set -uo pipefail
name=$1 seconds=$2
shift 2
out=${OUT:-/tmp/out}
store=runs/$name
export PYTHONPATH=$PWD HARNESS_CACHE=off PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1
mkdir -p "$out"
[ -f "carry/$name.tgz" ] && bash scripts/store_tar.sh unpack "carry/$name.tgz" "$store"
start=$SECONDS
# SIGTERM at the deadline: the sweep stops, releases its leases; what finished is in the store
# the run's deadline leaves 20 s of the call for packing the store and the report
timeout -s TERM "$seconds" python3 -m harness.cli run "$@" --out "$store" --checkpoint-every off \
    --deadline "$((seconds - 20))" --stop-starting-after "${START_FOR:-$((seconds / 2))}" 2>&1 \
    | grep -v "step/s" | tail -n 40
echo "sweep: $((SECONDS - start)) s"
bash scripts/store_tar.sh pack "$store" "$out/$name.tgz"
python3 -m harness.cli status --out "$store" | tee "$out/$name-status.md"
python3 -m harness.cli report --out "$store" --no-figures --report-dir /tmp/report > "$out/$name-report.md" 2>&1
tail -n 30 "$out/$name-report.md"
