"""How much faster small cells run packed several per GPU than one at a time.

    HARNESS_CACHE=off python scripts/bench_packing.py --cells 16 --steps 300 --packing 1,2,4,8
    HARNESS_CACHE=off python scripts/bench_packing.py --launchers pool,streams --packing 1,12 --cells 12 \
        --suite zoology --scale small --models mla@zoology-64,kda@zoology-64,gdn@zoology-64,mamba2@zoology-64

Runs the same N small cells (by default tiny models of every mixer on the smoke MQAR; a fixed number of steps, no
early stop) once per launcher and packing K: the pool launcher with K worker processes on the one visible GPU
(K = 1 is one at a time), the streams launcher with K threads of this process, each on its own CUDA stream, and
once in this process, one after the other. Each run writes to its own temporary store. Prints the wall time of
each and the speedup over one at a time; --json writes the numbers too.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

import models.presets  # noqa: F401 - registers the model presets
import tasks  # noqa: F401 - registers the tasks and suites
from harness.results.store import ResultStore
from harness.run.launchers import InProcess, LaunchOptions, Pool, Streams, visible_gpus
from harness.run.sweep import plan_cells, run_cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=16, help="cells to run (models x seeds)")
    parser.add_argument("--steps", type=int, default=300, help="training steps per cell")
    parser.add_argument("--packing", default="1,2,4,8", help="cells per GPU to try (1 = one at a time)")
    parser.add_argument("--models", default="kda,gdn,mamba2,mla")
    parser.add_argument("--suite", default="smoke")
    parser.add_argument("--scale", default="tiny")
    parser.add_argument("--launchers", default="pool", help="comma-separated: pool, streams")
    parser.add_argument("--no-inprocess", action="store_true", help="skip the in-process baseline")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    models = args.models.split(",")
    seeds = list(range(-(-args.cells // len(models))))
    overrides = [
        f"train.max_steps={args.steps}",
        f"train.eval_every={args.steps}",  # one validation at the end: the time goes to training
        "train.target_accuracy=none",
        "task.num_train=4000",
    ]
    cells = plan_cells(models, args.suite, args.scale, overrides, seeds=seeds)[: args.cells]
    gpus = visible_gpus()
    device = torch.cuda.get_device_name(0) if gpus else "cpu"
    print(
        f"{len(cells)} cells of {args.steps} steps ({', '.join(models)}, {args.suite} {args.scale}) on {device}"
    )
    if len(gpus) > 1:
        print(
            f"note: {len(gpus)} GPUs visible; set CUDA_VISIBLE_DEVICES to one GPU to measure packing on one"
        )

    results = []
    runs = [("inprocess", 0)] if not args.no_inprocess else []
    runs += [(mode, int(k)) for mode in args.launchers.split(",") for k in args.packing.split(",")]
    kinds = {"pool": Pool, "streams": Streams}
    for mode, packing in runs:
        if mode == "inprocess":
            launcher = InProcess()
        elif mode in kinds:
            launcher = kinds[mode](LaunchOptions(cells_per_gpu=packing))
        else:
            raise SystemExit(f"--launchers: unknown launcher '{mode}'; choose from pool, streams")
        with tempfile.TemporaryDirectory() as tmp:
            store = ResultStore(tmp)
            start = time.perf_counter()
            run_cells(cells, store, launcher=launcher)
            wall = time.perf_counter() - start
            rows = store.read().drop_duplicates("run_id")
        statuses = rows["status"].value_counts().to_dict()
        results.append(
            dict(
                mode=mode,
                cells_per_gpu=packing or 1,
                workers=launcher.slots,
                wall_s=round(wall, 1),
                mean_cell_s=round(float(rows["wall_s"].mean()), 1),
                statuses=statuses,
            )
        )
        print(
            f"  {mode:<9} {packing or 1} per GPU: {wall:7.1f} s  (mean cell {rows['wall_s'].mean():.1f} s) {statuses}"
        )

    # one at a time: the pool with one worker (same process start-up as the packed runs), and in-process
    baseline = next((r["wall_s"] for r in results if r["mode"] == "pool" and r["cells_per_gpu"] == 1), None)
    inprocess = next((r["wall_s"] for r in results if r["mode"] == "inprocess"), None)

    def ratio(reference: float | None, wall: float) -> str:
        return f"{reference / wall:.2f}x" if reference else "-"

    print("\n| launcher | cells per GPU | wall (s) | mean cell (s) | speedup vs pool of 1 | vs in-process |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['mode']} | {r['cells_per_gpu']} | {r['wall_s']} | {r['mean_cell_s']} | "
            f"{ratio(baseline, r['wall_s'])} | {ratio(inprocess, r['wall_s'])} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = dict(
            device=device, cells=len(cells), steps=args.steps, torch=torch.__version__, runs=results
        )
        args.json.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    if "HARNESS_CACHE" not in os.environ:
        try:
            import datasets  # noqa: F401
        except ImportError:
            os.environ["HARNESS_CACHE"] = "off"  # no `datasets`: generate task data in memory
    main()
