#!/usr/bin/env bash
# Issue #20 in one device call on an N-GPU machine (N >= 2): the same small sweep on one GPU and on all of them,
# through the pool and through Ray, then a worker and a Ray node killed with SIGKILL mid-sweep and the sweep resumed;
# the stores compared with `harness compare-stores`, the wall times and each cell's GPU in a summary.
#
#   scripts/gpu/multigpu.sh            on the GPU machine (N from nvidia-smi)
#   scripts/gpu/multigpu.sh --quick    here, on the CPU: 2 pool workers / 2 Ray CPUs instead of GPUs, 8 MLA cells
#                                      of 16 steps (PYTHON=.venv/bin/python; about 3 minutes on 2 cores)
#
# stages (each store under $WORK/, each wall time in the summary)
#   one        CUDA_VISIBLE_DEVICES=0, --launcher pool --cells-per-gpu 4            (the reference)
#   pool       all GPUs, --launcher pool --cells-per-gpu 4
#   ray        all GPUs, --launcher ray --cells-per-gpu 4 (a local instance that harness run starts)
#   pool-kill  as pool; one worker SIGKILLed while running a cell; then the same command again
#   ray-kill   a Ray head started here (`ray start --head`, all GPUs), --ray-address of it; one task's worker
#              SIGKILLed, later the raylet (the whole node); the head started again and the same command again
# after each: harness compare-stores one <store> --tolerance $TOL; a kill stage must end with every cell of `one`,
# each once, and no lock, temporary or damaged file.
#
# writes into $OUT (8 files at most, flat): summary.md, log.txt, and <stage>.tgz for each store (scripts/store_tar.sh)
#
# The sweep: smoke-suite MQAR, kda, gdn, mamba2, mla at tiny size, lrs 1e-3,3e-3, seeds 0,1,2: 24 cells of $STEPS
# (300) steps, no early stop. Override with MODELS, SEEDS, STEPS, TOL (0.02), STAGES (all five, in the order above;
# a stage compares with `one`), DEADLINE_S (510: a stage that would start too close to it is skipped, and says so).
#
# Ray is not on the GPU image, and its wheel is too large to travel (ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl
# is 75.6 MiB; a call carries 64 MiB). What travels is a trimmed install, .ray/ray.tar.xz (about 27 MiB), built here:
#   echo /.ray/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d /tmp/ray-wheels \
#       ray==2.60.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
#   scripts/gpu/ray_bundle.sh /tmp/ray-wheels .ray/ray.tar.xz
# ray needs click, filelock, jsonschema, msgpack, packaging>=24.2, protobuf, pyyaml, requests; the image has all of
# them but jsonschema (whose own needs are attrs, on the image, jsonschema-specifications, referencing and rpds-py).
# The device call then names .ray in carry:  run(command="bash scripts/gpu/multigpu.sh", carry=[".ray"])
set -uo pipefail
quick=0
[ "${1:-}" = "--quick" ] && quick=1
out=${OUT:-/tmp/multigpu-out}
work=${WORK:-/tmp/multigpu}
python=${PYTHON:-python3}
deadline=$((SECONDS + ${DEADLINE_S:-510}))
tol=${TOL:-0.02}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HARNESS_CACHE=off PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
# the machine's GPUs are shared with others: NVLink multicast stays off (KINDS.md)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
rm -rf "$work" && mkdir -p "$work" "$out"
log=$out/log.txt summary=$out/summary.md
exec > >(tee -a "$log") 2>&1

if [ -f .ray/ray.tar.xz ]; then
  mkdir -p /tmp/ray-site && tar xJf .ray/ray.tar.xz -C /tmp/ray-site && export PYTHONPATH=$PYTHONPATH:/tmp/ray-site
fi
ray_ok=0
$python -c "import ray" 2>/dev/null && ray_ok=1

if [ $quick = 1 ]; then
  gpus=0 kind="CPU (quick mode)" where="2 CPU workers"
  sweep=(--models mla --suite smoke --lrs 1e-3,3e-3 --seeds 0,1,2,3 --device cpu
         --set train.max_steps=${STEPS:-16} --set train.eval_every=8 --set train.batch_size=16
         --set task.num_train=320 --set task.num_test=32 --set train.target_accuracy=none)
  one=(--launcher pool --workers 2) all=(--launcher pool --workers 2) ray=(--launcher ray --workers 2)
  export OMP_NUM_THREADS=1
  ray_resources=(--num-cpus 2 --num-gpus 0)
else
  gpus=$(nvidia-smi -L | grep -c '^GPU')
  kind="$gpus x $(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1)" where="$gpus GPUs"
  sweep=(--models "${MODELS:-kda,gdn,mamba2,mla}" --suite smoke --lrs 1e-3,3e-3 --seeds "${SEEDS:-0,1,2}"
         --device cuda --set train.max_steps=${STEPS:-300} --set train.eval_every=100
         --set train.target_accuracy=none)
  one=(--launcher pool --cells-per-gpu 4) all=(--launcher pool --cells-per-gpu 4) ray=(--launcher ray --cells-per-gpu 4)
  ray_resources=(--num-gpus "$gpus")
fi
harness() { $python -m harness.cli "$@"; }
sweep_cmd() { harness run "${sweep[@]}" --checkpoint-every off --out "$@"; }

{
  echo "# Several GPUs: one sweep on 1 GPU and on $where, pool and Ray, workers killed ($(date -u +%F))"
  echo
  echo "machine: $kind; $(getconf _NPROCESSORS_ONLN) CPU cores; commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "sweep: harness run ${sweep[*]} --checkpoint-every off"
  echo "tolerance of the comparisons: $tol (absolute)"
  echo
  echo "| stage | how | wall (s) | exit | cells | devices (cells) | vs one |"
  echo "|---|---|---:|---:|---:|---|---|"
} > "$summary"
notes=()

# cells, and the device column's values with their cell counts; a line on what a resumed store must not hold
describe() {
  $python - "$1" <<'EOF'
import sys
from pathlib import Path
from harness.results.store import ResultStore
store = ResultStore(sys.argv[1])
if not store.cells.is_dir():
    sys.exit(print("0|-|no store"))
frame = store.read()
cells = frame.drop_duplicates("run_id") if len(frame) else frame
devices = "; ".join(f"{d} ({n})" for d, n in sorted(cells["device"].value_counts().items())) if len(frame) else "-"
left = [p.name for p in store.cells.iterdir() if p.name.endswith((".lock", ".tmp", ".ckpt.safetensors"))]
aside = [p.name for folder in ("damaged", "history") if (store.cells / folder).is_dir()
         for p in (store.cells / folder).iterdir()]
print(f"{len(cells)}|{devices}|{len(left)} left-over, {len(aside)} set aside")
EOF
}

# compare with the reference; prints "agree" / "differ: ..." for the table, the full comparison into the log
versus() {
  [ "$1" = one ] && { echo "(reference)"; return; }
  local report
  report=$(harness compare-stores "$work/one" "$work/$1" --tolerance "$tol")
  local code=$?
  echo "$report" > "$work/$1.compare.md"
  { echo "== compare one $1 (exit $code)"; echo "$report"; } >&2
  local cells max
  cells=$(echo "$report" | grep -m1 '^- cells:' | sed 's/^- cells: //; s|'"$work"'/||g')
  max=$(echo "$report" | awk -F'|' '/^\| [a-z_]+ \| [0-9]+ \|/ {gsub(/ /,"",$2); gsub(/ /,"",$4); printf "%s%s %s", sep, $2, $4; sep=", "}')
  echo "$([ $code = 0 ] && echo agree || echo DIFFER): $cells; max abs diff $max"
}

row() {  # stage, how, wall, exit
  local d cells devices leftovers
  d=$(describe "$work/$1")
  IFS='|' read -r cells devices leftovers <<< "$d"
  echo "| $1 | $2 | $3 | $4 | $cells | $devices | $(versus "$1") |" >> "$summary"
  [ "$leftovers" = "0 left-over, 0 set aside" ] || notes+=("$1: $leftovers")
  bash scripts/store_tar.sh pack "$work/$1" "$out/$1.tgz" > /dev/null || true
}

# a time limit of at most $1 s that ends by the deadline (+60 s), and never under 10 s
cap() { local left=$((deadline + 60 - SECONDS)); ((left > $1)) && left=$1; echo $((left < 10 ? 10 : left)); }
want() { [[ " ${STAGES:-one pool ray pool-kill ray-kill} " == *" $1 "* ]]; }
time_left() { [ $((deadline - SECONDS)) -ge "$1" ] || { notes+=("$2 skipped: under $1 s left"); return 1; }; }

run_stage() {  # name, how, limit seconds, env..., -- harness-run-options...
  local name=$1 how=$2 limit=$3 start=$SECONDS code
  shift 3
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  echo "== $name: $how"
  env "${envs[@]}" timeout -s TERM "$(cap "$limit")" $python -m harness.cli run "${sweep[@]}" --checkpoint-every off \
    --out "$work/$name" "$@" 2>&1 | grep -v "step/s" | tail -n 8
  code=${PIPESTATUS[0]}
  row "$name" "$how" $((SECONDS - start)) "$code"
}

# the cells done so far in a store
done_cells() { find "$1/cells" -maxdepth 1 -name '*.json' 2>/dev/null | wc -l; }

# ---- one GPU, all GPUs, Ray
want one && time_left 60 one && run_stage one "$([ $quick = 1 ] && echo "$where" || echo "1 GPU"), pool, 4 per GPU" 200 CUDA_VISIBLE_DEVICES=0 -- "${one[@]}"
want pool && time_left 45 pool && run_stage pool "$where, pool, 4 per GPU" 150 -- "${all[@]}"
if [ $ray_ok = 1 ]; then
  want ray && time_left 60 ray && run_stage ray "$where, ray (a local instance), 4 per GPU" 180 -- "${ray[@]}"
else
  notes+=("ray and ray-kill skipped: ray is not importable (see the header of scripts/gpu/multigpu.sh)")
fi

# ---- a pool worker killed mid-sweep
wait_for_cells() {  # store, count, pid, seconds: until the store holds `count` cells (or the sweep ended)
  local until=$((SECONDS + $4))
  while [ "$(done_cells "$1")" -lt "$2" ] && kill -0 "$3" 2>/dev/null && [ $SECONDS -lt $until ]; do sleep 0.5; done
}
if want pool-kill && time_left 90 pool-kill; then
  name=pool-kill start=$SECONDS
  echo "== $name"
  $python -m harness.cli run "${sweep[@]}" --checkpoint-every off --out "$work/$name" "${all[@]}" \
    > "$work/$name.first.log" 2>&1 &
  sweep_pid=$!
  wait_for_cells "$work/$name" 2 $sweep_pid 120
  # a worker of this sweep (a multiprocessing child, not its resource tracker) while it runs a cell
  victim=$(pgrep -P $sweep_pid -f spawn_main | head -n1)
  if [ -n "$victim" ]; then
    kill -KILL "$victim" && echo "killed pool worker $victim after $(done_cells "$work/$name") cell(s)"
    notes+=("pool-kill: worker pid $victim SIGKILLed after $(done_cells "$work/$name") cell(s)")
  else
    notes+=("pool-kill: no worker found to kill (the sweep had ended?)")
  fi
  ( sleep 150; kill -TERM $sweep_pid 2>/dev/null ) & watchdog=$!
  wait $sweep_pid; first=$?
  kill $watchdog 2>/dev/null
  grep -v "step/s" "$work/$name.first.log" | tail -n 6
  echo "first run exit $first; resuming"
  timeout -s TERM "$(cap 150)" $python -m harness.cli run "${sweep[@]}" --checkpoint-every off --out "$work/$name" \
    "${all[@]}" 2>&1 | grep -v "step/s" | tail -n 6
  row "$name" "pool as above, a worker SIGKILLed, resumed" $((SECONDS - start)) "$first, ${PIPESTATUS[0]}"
fi

# ---- Ray: a task's worker killed, then the raylet (the node); the head started again, the sweep resumed
ray_cli() { $python -c "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()" "$@"; }
ray_temp=/tmp/rmg$$  # short: Ray's socket paths must stay under 108 characters
ray_pids() { pgrep -f -- "$ray_temp/" || true; }  # every process of our Ray instance names its temp dir
ray_down() { for pid in $(ray_pids); do kill -KILL "$pid" 2>/dev/null; done; sleep 1; }
ray_up() {
  ray_port=$((20000 + RANDOM % 20000))
  ray_cli start --head --node-ip-address 127.0.0.1 --port "$ray_port" --temp-dir "$ray_temp" \
    --include-dashboard false "${ray_resources[@]}" --disable-usage-stats > "$work/ray-start.log" 2>&1 \
    || { cat "$work/ray-start.log"; return 1; }
}
if [ $ray_ok = 1 ] && want ray-kill && time_left 120 ray-kill; then
  name=ray-kill start=$SECONDS
  echo "== $name"
  # Ray >= 2.5x asks a driver joining a cluster for a token: this instance's own, given to the head and the sweeps
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$($python -c "import secrets; print(secrets.token_hex(32))")
  if ray_up; then
    ray_args=(--launcher ray --cells-per-gpu 4 --ray-address "127.0.0.1:$ray_port")
    $python -m harness.cli run "${sweep[@]}" --checkpoint-every off --out "$work/$name" "${ray_args[@]}" \
      > "$work/$name.first.log" 2>&1 &
    sweep_pid=$!
    raylet=$(pgrep -f -- "raylet/raylet .*$ray_temp/" | head -n1)
    wait_for_cells "$work/$name" 2 $sweep_pid 150
    # a worker of our raylet while it runs a cell (Ray names a worker after the task it runs)
    task=$(pgrep -P "$raylet" -f "^ray::_ray_run_cell" | head -n1)
    if [ -n "$task" ]; then
      kill -KILL "$task" && notes+=("ray-kill: task worker pid $task SIGKILLed after $(done_cells "$work/$name") cell(s)")
    else
      notes+=("ray-kill: no running task worker found to kill")
    fi
    wait_for_cells "$work/$name" $(($(done_cells "$work/$name") + 2)) $sweep_pid 90
    kill -KILL "$raylet" && notes+=("ray-kill: raylet pid $raylet SIGKILLed after $(done_cells "$work/$name") cell(s)")
    # the driver loses its node: it exits or hangs; it gets 30 s, then SIGKILL (the kernel drops its leases)
    ( sleep 30; kill -KILL $sweep_pid 2>/dev/null ) & watchdog=$!
    wait $sweep_pid; first=$?
    kill $watchdog 2>/dev/null
    grep -v "step/s" "$work/$name.first.log" | tail -n 6
    ray_down
    echo "first run exit $first; Ray started again, resuming"
    ray_up
    ray_args=(--launcher ray --cells-per-gpu 4 --ray-address "127.0.0.1:$ray_port")
    timeout -s TERM "$(cap 180)" $python -m harness.cli run "${sweep[@]}" --checkpoint-every off --out "$work/$name" \
      "${ray_args[@]}" 2>&1 | grep -v "step/s" | tail -n 6
    second=${PIPESTATUS[0]}
    ray_down
    row "$name" "ray head of its own; a task worker, then the raylet SIGKILLed; resumed" $((SECONDS - start)) \
      "$first, $second"
  else
    notes+=("ray-kill: ray start failed (log.txt)")
  fi
fi

{
  echo
  echo "exit: of the sweep (the first run and the resumed one for kill stages; 124 = stopped at its time limit)."
  echo "devices: the rows' device column, one count per cell. vs one: \`harness compare-stores\` against the"
  echo "one-GPU store, cells in both and in one only, and the largest absolute difference per metric."
  echo
  for note in "${notes[@]}"; do echo "- $note"; done
  for f in "$work"/*.compare.md; do
    [ -f "$f" ] || continue
    echo
    echo "## $(basename "$f" .compare.md) against one"
    echo
    sed -n '/^| metric/,/^$/p' "$f"
    grep -E '^- (only in|status of|held twice|in one store only)' "$f" | head -n 10
  done
} >> "$summary"
echo
cat "$summary"
