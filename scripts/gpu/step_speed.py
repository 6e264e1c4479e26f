"""Training-step speed of small cells: the eager step against the step replayed from CUDA graphs
(train.step_capture=off / graph), for one cell alone on the GPU and for N copies of it trained at once.

    python scripts/gpu/step_speed.py --out results/step-speed-h200 --budget-s 240 --packed 12
    python scripts/gpu/step_speed.py --quick --out /tmp/step-speed     # CPU: checks the script, eager only

Cells: kimi-synth mla/kda/gdn/mamba2 on the MQAR mixture up to length 1024 at batch 128 (the kimi suite's small
scale), zoology-128 and zoology-512 kda/mla on Zoology's MQAR mixture at batch 256. Each measurement trains through
`harness.run.train.train` (the data pipeline included): `--warmup` steps (Triton compiles, shapes are captured),
then `--steps` timed steps (evaluation excluded, as the history's tokens_per_s). Packed: N processes (spawned once,
reused for every packed measurement) pass a barrier after their warm-up, so their timed steps overlap; the total
is the sum of their rates. Measurements run alone first, then packed, in the order of CASES, each pair (eager,
graph) together; once --budget-s has passed no new one starts, and what was skipped is listed. Writes
step_speed.jsonl (a line per measurement as it is made, so a run cut off keeps them), then step_speed.json (every
measurement) and step_speed.md (the table) to --out.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HARNESS_CACHE", "off")  # tiny data sets: generating is faster than the datasets cache

import torch  # noqa: E402

import models  # noqa: E402, F401 - registers the mixers
from harness.run.train import TrainConfig, train  # noqa: E402
from models.backbone import LanguageModel  # noqa: E402
from models.presets import build_model_config  # noqa: E402
from tasks.mqar import MQAR, MQARConfig  # noqa: E402

KIMI_MIXTURE = tuple((n, n // 16) for n in (64, 128, 256, 512, 1024))
ZOOLOGY_MIXTURE = ((64, 4), (128, 8), (256, 16), (256, 32), (256, 64))


@dataclass(frozen=True)
class Case:
    size: str
    arch: str
    batch: int
    settings: tuple[tuple[int, int], ...]
    vocab: int = 8192

    @property
    def name(self) -> str:
        return f"{self.arch}@{self.size} B{self.batch} T<={max(n for n, _ in self.settings)}"


CASES = [Case("kimi-synth", arch, 128, KIMI_MIXTURE) for arch in ("kda", "mla", "gdn", "mamba2")] + [
    Case(size, arch, 256, ZOOLOGY_MIXTURE)
    for size in ("zoology-512", "zoology-128")
    for arch in ("kda", "mla")
]
QUICK_CASES = [Case("tiny", arch, 8, ((32, 4), (64, 8)), vocab=64) for arch in ("kda", "mla")]


class Probe:
    """A RunLogger stand-in: at the end of the warm-up (its history point) it waits for the other packed
    processes, so that the timed steps of all of them overlap (train restarts its clock after logging)."""

    def __init__(self, warmup: int, barrier=None):
        self.warmup, self.barrier = warmup, barrier

    def log(self, step: int, values: dict[str, Any]) -> None:
        if step == self.warmup and "valid_loss" in values and self.barrier is not None:
            self.barrier.wait(timeout=300)


def measure(case: Case, mode: str, warmup: int, steps: int, device: str, barrier=None) -> dict[str, Any]:
    """Train `case` for warmup + steps steps with step_capture=`mode`; the rate of the timed steps."""
    task = MQARConfig(
        vocab_size=case.vocab,
        train_settings=case.settings,
        test_settings=case.settings[-1:],
        num_train=2 * case.batch * len(case.settings),  # two batches per length and epoch
        num_test=32,
    )
    train_slices, valid = MQAR().generate(task, "train", 0), MQAR().generate(task, "valid", 0)
    torch.manual_seed(0)
    model = LanguageModel(build_model_config(case.arch, case.size, vocab_size=case.vocab))
    config = TrainConfig(
        max_steps=warmup + steps,
        eval_every=warmup,
        batch_size=case.batch,
        eval_batch_size=64,
        target_accuracy=None,
        warmup_steps=10,
        device=device,
        step_capture=mode,
    )
    start = time.perf_counter()
    result = train(model, train_slices, valid, config, 0, torch.device(device), logger=Probe(warmup, barrier))
    wall = time.perf_counter() - start
    timed = result.history[1:]
    previous = result.history[0]["tokens"]
    seconds = tokens = 0.0
    for point in timed:
        window = point["tokens"] - previous
        tokens, seconds, previous = tokens + window, seconds + window / point["tokens_per_s"], point["tokens"]
    timed_steps = result.history[-1]["step"] - result.history[0]["step"]
    return dict(
        tokens_per_s=tokens / seconds,
        ms_per_step=1000 * seconds / timed_steps,
        timed_steps=timed_steps,
        wall_s=round(wall, 2),
        step_path=result.step_path,
        peak_memory_gib=result.history[-1]["peak_memory_gib"],
        # what the process holds (allocator cache and graph pools included): what decides how many cells fit
        reserved_gib=round(torch.cuda.memory_reserved() / 2**30, 2) if device == "cuda" else None,
    )


def packed_worker(rank, items, warmup, steps, device, start_barrier, warm_barrier, deadline, go, queue):
    """One of the N packed processes: every item in turn, all processes together. Process 0 decides whether time
    is left before each item, the others read its decision after the barrier it passes only once it decided."""
    for index, (case, mode) in enumerate(items):
        try:
            if rank == 0:
                go.value = int(time.time() < deadline)
            start_barrier.wait(timeout=600)
            if not go.value:
                return
            queue.put((index, rank, measure(case, mode, warmup, steps, device, warm_barrier)))
        except Exception as err:  # noqa: BLE001 - reported as the item's failure; the others go on
            queue.put((index, rank, dict(error=f"{type(err).__name__}: {err}")))
            return


def run_packed(items, n, warmup, steps, device, deadline, on_item) -> None:
    """Run every (case, mode) of `items` on n processes at once; `on_item(index, results)` with one result per
    process as soon as an item has them all (so that a run cut off keeps what it measured), then once for each
    item left incomplete."""
    context = mp.get_context("spawn")
    go = context.Value("b", 1)
    start_barrier, warm_barrier = context.Barrier(n), context.Barrier(n)
    queue = context.Queue()
    workers = [
        context.Process(
            target=packed_worker,
            args=(rank, items, warmup, steps, device, start_barrier, warm_barrier, deadline, go, queue),
        )
        for rank in range(n)
    ]
    for worker in workers:
        worker.start()
    results: dict[int, list[dict]] = {}
    reported: set[int] = set()
    # a little past the deadline: the measurement under way when it passes is let finish
    while any(w.is_alive() for w in workers) and time.time() < deadline + 120:
        try:
            index, _, result = queue.get(timeout=1.0)
        except Exception:  # noqa: BLE001, S112 - queue.Empty: look again
            continue
        results.setdefault(index, []).append(result)
        if len(results[index]) == n:
            reported.add(index)
            on_item(index, results.pop(index))
    for worker in workers:
        if worker.is_alive():
            worker.kill()
    while not queue.empty():
        index, _, result = queue.get()
        results.setdefault(index, []).append(result)
    for index in range(len(items)):
        if index not in reported:
            on_item(index, results.get(index, []))


def table(rows: list[dict[str, Any]], packed: int) -> str:
    lines = [
        f"| cell | alone eager tok/s (ms/step) | alone graph tok/s (ms/step) | speedup "
        f"| {packed} packed eager tok/s total | {packed} packed graph tok/s total | speedup |",
        "|---|---|---|---|---|---|---|",
    ]
    by = {(r["cell"], r["mode"], r["packing"]): r for r in rows}

    def cell(key):
        row = by.get(key)
        if row is None or "tokens_per_s" not in row:
            return (row or {}).get("error", "skipped"), None
        return f"{row['tokens_per_s'] / 1e6:.2f}M ({row['ms_per_step']:.1f})", row["tokens_per_s"]

    for name in dict.fromkeys(r["cell"] for r in rows):
        parts = []
        for packing in (1, packed):
            (eager, e), (graph, g) = cell((name, "off", packing)), cell((name, "graph", packing))
            parts += [eager, graph, f"{g / e:.2f}x" if e and g else "-"]
        lines.append(f"| {name} | " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, required=True, help="folder for step_speed.json and step_speed.md"
    )
    parser.add_argument("--budget-s", type=float, default=240.0, help="start no measurement after this long")
    parser.add_argument("--packed", type=int, default=12, help="processes trained at once (0: alone only)")
    parser.add_argument("--warmup", type=int, default=40, help="steps before the timed ones")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per measurement (alone)")
    parser.add_argument("--packed-steps", type=int, default=24, help="timed steps per packed measurement")
    parser.add_argument("--cases", default="all", help="comma-separated indices into CASES, or all")
    parser.add_argument("--modes", default="off,graph", help="train.step_capture values to measure")
    parser.add_argument("--packed-only", action="store_true", help="skip the measurements alone")
    parser.add_argument("--quick", action="store_true", help="CPU, tiny cells, eager only: checks the script")
    args = parser.parse_args()

    deadline = time.time() + args.budget_s
    if args.quick:
        cases, modes, device = QUICK_CASES, ("off",), "cpu"
        args.warmup, args.steps, args.packed_steps, args.packed = 3, 4, 4, min(args.packed, 2)
    else:
        if not torch.cuda.is_available():
            sys.exit("step_speed.py measures a GPU; without one, run it with --quick")
        cases, modes, device = CASES, tuple(args.modes.split(",")), "cuda"
    if args.cases != "all":
        cases = [cases[int(i)] for i in args.cases.split(",")]
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    print(f"{len(cases)} cells on {name}, budget {args.budget_s:.0f} s", flush=True)

    rows: list[dict[str, Any]] = []
    args.out.mkdir(parents=True, exist_ok=True)
    # each measurement as it is made: a run cut off keeps what it measured
    lines = args.out / "step_speed.jsonl"

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        with lines.open("a") as file:
            file.write(json.dumps(row) + "\n")

    for case in [] if args.packed_only else cases:
        for mode in modes:
            base = dict(cell=case.name, mode=mode, packing=1)
            if time.time() > deadline:
                record(base | dict(error="skipped (budget)"))
                continue
            try:
                record(base | measure(case, mode, args.warmup, args.steps, device))
            except Exception as err:  # noqa: BLE001 - a failed measurement is a row; the others go on
                record(base | dict(error=f"{type(err).__name__}: {err}"))
    if device == "cuda":
        torch.cuda.empty_cache()  # the packed processes want the memory

    if args.packed > 1:
        items = [(case, mode) for case in cases for mode in modes]

        def packed(index: int, got: list[dict]) -> None:
            case, mode = items[index]
            base = dict(cell=case.name, mode=mode, packing=args.packed)
            errors = [r["error"] for r in got if "error" in r]
            if errors or len(got) < args.packed:
                record(base | dict(error=errors[0] if errors else "not run (budget, or a failure before)"))
                return
            record(
                base
                | dict(
                    tokens_per_s=sum(r["tokens_per_s"] for r in got),
                    tokens_per_s_per_process=[round(r["tokens_per_s"]) for r in got],
                    ms_per_step=sum(r["ms_per_step"] for r in got) / len(got),
                    timed_steps=got[0]["timed_steps"],
                    step_path=got[0]["step_path"],
                    peak_memory_gib=max(r["peak_memory_gib"] for r in got),
                    reserved_gib=max(r["reserved_gib"] or 0 for r in got),
                )
            )

        run_packed(items, args.packed, args.warmup, args.packed_steps, device, deadline, packed)

    header = dict(device=name, torch=torch.__version__, warmup=args.warmup, steps=args.steps)
    (args.out / "step_speed.json").write_text(json.dumps(dict(header, rows=rows), indent=1))
    markdown = f"# Training-step speed on {name}\n\n" + table(rows, args.packed)
    (args.out / "step_speed.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
