"""Training-step speed of G models of one architecture stacked and trained as one (harness/run/grid_step.py),
against one cell's step as the harness trains it today: eager (op by op, train.step_capture=off) and replayed
from a CUDA graph (CapturedStep, step_capture=graph). Is stacking worth wiring into sweeps? This says.

    python scripts/gpu/grid_step_speed.py --out OUT --budget-s 300
    python scripts/gpu/grid_step_speed.py --quick --out /tmp/grid     # CPU: checks the script (eager only)

Each case is one batch shape of a synthetic suite's cells (MQAR, V 8192, one length, the suite's batch): the
harness's own step for one cell (`cell eager`, `cell graph`), then G = 1, 2, 4, 8 stacked models (`stacked`,
eager and replayed from a graph). Every step copies its batch from pinned host memory, as training does; the
timed steps follow --warmup untimed ones (Triton compiles, the graph is captured) and are timed with CUDA events.
Reported: ms per step, tokens per second of all the step's models together, and that rate over one eager cell's
(`x eager cell`), the number issue #18 asks to be 3 or more. Writes grid_step_speed.jsonl (a line per
measurement, as made) and grid_step_speed.md (the table) to --out; once --budget-s has passed no new case starts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HARNESS_CACHE", "off")

import torch  # noqa: E402

import models  # noqa: E402, F401 - registers the mixers
from harness.run.grid_step import StackedAdamW, StackedModels, StackedStep  # noqa: E402
from harness.run.step_capture import CapturedStep  # noqa: E402
from harness.run.train import TrainConfig, eager_step, make_optimizer  # noqa: E402
from models.backbone import LanguageModel  # noqa: E402
from models.presets import build_model_config  # noqa: E402
from tasks.base import IGNORE  # noqa: E402


@dataclass(frozen=True)
class Case:
    arch: str
    size: str
    batch: int
    seq_len: int
    pairs: int
    vocab: int = 8192

    @property
    def name(self) -> str:
        return f"{self.arch}@{self.size} B{self.batch} T{self.seq_len}"


# the kimi suite's small scale (MQAR at batch 128) and the zoology suite's (batch 256)
CASES = [Case(arch, "kimi-synth", 128, 512, 32) for arch in ("kda", "gdn", "mamba2", "mla")] + [
    Case(arch, "zoology-128", 256, 256, 16) for arch in ("kda", "mla")
]
QUICK_CASES = [Case(arch, "tiny", 4, 32, 4, vocab=64) for arch in ("kda", "mla")]
STACKS = (1, 2, 4, 8)


def batches(case: Case, n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n (inputs, labels) CPU batches of the case's shape: random tokens, `pairs` scored positions per sequence
    (what a step costs does not depend on what the tokens are)."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        inputs = torch.randint(0, case.vocab, (case.batch, case.seq_len), generator=gen)
        labels = torch.full_like(inputs, IGNORE)
        scored = torch.randint(case.seq_len // 2, case.seq_len, (case.batch, case.pairs), generator=gen)
        labels.scatter_(1, scored, torch.randint(0, case.vocab, scored.shape, generator=gen))
        out.append((inputs, labels))
    return out


def build(case: Case, seed: int) -> LanguageModel:
    torch.manual_seed(seed)
    return LanguageModel(build_model_config(case.arch, case.size, vocab_size=case.vocab))


def cell_step(case: Case, mode: str, device: torch.device, amp):
    """The harness's step for one cell: a function of a CPU batch."""
    model = build(case, 0).to(device)
    config = TrainConfig(lr=1e-3, device=str(device))
    if mode == "graph":
        step = CapturedStep(
            model, make_optimizer(model, config, capturable=True), config.grad_clip, amp, device
        )
        return lambda inputs, labels: step(inputs, labels, None)
    optimizer = make_optimizer(model, config)
    return lambda inputs, labels: eager_step(model, optimizer, config, inputs, labels, None, amp, device)


def stacked_step(case: Case, size: int, mode: str, device: torch.device, amp):
    """G stacked models' step as `harness run --stack-lrs` trains them (grid_step.StackedStep): a function of a
    CPU batch."""
    stacked = StackedModels([build(case, 0).to(device) for _ in range(size)], amp)
    optimizer = StackedAdamW(stacked, [1e-3 * 2**i for i in range(size)], (0.9, 0.95), 0.1)
    step = StackedStep(stacked, optimizer, 1.0, device, graphs=mode == "graph")
    return lambda inputs, labels: step(inputs, labels, 1.0)


def time_steps(step, data, warmup: int, steps: int, device: torch.device) -> float:
    """Seconds per step over `steps` steps after `warmup` untimed ones."""
    for i in range(warmup):
        step(*data[i % len(data)])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(steps):
            step(*data[i % len(data)])
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000 / steps
    begin = time.perf_counter()
    for i in range(steps):
        step(*data[i % len(data)])
    return (time.perf_counter() - begin) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--budget-s", type=float, default=300.0, help="start no case after this many seconds")
    parser.add_argument("--cases", default=None, help="comma-separated indices into CASES (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny CPU cases, eager only: checks the script")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.quick
    device = torch.device("cuda" if cuda else "cpu")
    amp = torch.bfloat16 if cuda else None
    cases = QUICK_CASES if args.quick else CASES
    if args.cases:
        cases = [cases[int(i)] for i in args.cases.split(",")]
    modes = ("eager", "graph") if cuda else ("eager",)
    stacks = (1, 2) if args.quick else STACKS
    args.out.mkdir(parents=True, exist_ok=True)
    log = (args.out / "grid_step_speed.jsonl").open("a")
    start, rows, skipped = time.perf_counter(), [], []
    for case in cases:
        if time.perf_counter() - start > args.budget_s:
            skipped.append(case.name)
            continue
        data = batches(case)
        tokens = case.batch * case.seq_len
        runs = [("cell", 1, mode) for mode in modes] + [
            ("stacked", g, mode) for g in stacks for mode in modes
        ]
        for kind, size, mode in runs:
            try:
                step = (
                    cell_step(case, mode, device, amp)
                    if kind == "cell"
                    else stacked_step(case, size, mode, device, amp)
                )
                seconds = time_steps(step, data, args.warmup, args.steps, device)
                row: dict[str, Any] = dict(
                    ms_per_step=round(1000 * seconds, 3), tokens_per_s=size * tokens / seconds
                )
            except torch.cuda.OutOfMemoryError:
                row = dict(error="out of memory")
            except Exception as err:  # noqa: BLE001 - one failed measurement is a row, the others still run
                row = dict(error=f"{type(err).__name__}: {str(err)[:200]}")
            row = dict(case=case.name, kind=kind, models=size, mode=mode, **row)
            if cuda:
                row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                torch.cuda.reset_peak_memory_stats()
            del step
            if cuda:
                torch.cuda.empty_cache()
            rows.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(json.dumps(row), flush=True)
    table = [
        "| case | step | models | ms/step | tokens/s (all models) | x eager cell | peak GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in {r["case"]: None for r in rows}:
        base = next(
            (r for r in rows if r["case"] == case and r["kind"] == "cell" and r["mode"] == "eager"), {}
        )
        for r in (r for r in rows if r["case"] == case):
            if "error" in r:
                table.append(f"| {case} | {r['kind']} {r['mode']} | {r['models']} | {r['error']} | | | |")
                continue
            ratio = r["tokens_per_s"] / base["tokens_per_s"] if base.get("tokens_per_s") else float("nan")
            table.append(
                f"| {case} | {r['kind']} {r['mode']} | {r['models']} | {r['ms_per_step']:.2f} | "
                f"{r['tokens_per_s']:,.0f} | {ratio:.2f} | {r.get('peak_memory_gib', '')} |"
            )
    if skipped:
        table.append(f"\nnot measured (--budget-s {args.budget_s:g} passed): {', '.join(skipped)}")
    (args.out / "grid_step_speed.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
