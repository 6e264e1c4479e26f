"""`harness bench steps`: measure what a sweep's cells cost per step on this device, for the estimate of
`harness run --dry-run` (harness/run/cost.py).

One cell per shape (cells that differ only in lr and seed share a shape: their steps take the same time) is
trained through the trainer itself (harness/run/train.py: `train`, so what it does to a step, eager or captured as
CUDA graphs, is what is timed), with no early stop and one validation at the end: `warmup` steps to warm up, then
`warmup` and `warmup + steps` steps timed; the difference is the time of `steps` steps. A clock in place of the
training logger notes when the last step's loss was read and when the validation after it ended, the device
synchronised. Before training, the cell's data are generated with fewer training
examples than the cell has (they take time, not steps) and the generation time scaled to the full count; after
it, the test slices are scored. The measurement is appended to the step-time table.

With `cells_per_gpu` K > 1, K copies of each shape train at once in K processes on the device, each of their
runs started together, and the measurement is recorded as one of K cells at once (what `--launcher pool
--cells-per-gpu K` gets).
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from harness.errors import HarnessError
from harness.plugins import load_plugins, loaded_modules
from harness.registry import TASKS
from harness.results.provenance import device_name, git_state, library_versions
from harness.run.cell import Cell
from harness.run.cost import Measurement, append_measurements, read_table, shapes_of
from harness.run.data import CellData, drop_seen
from harness.run.device import resolve_device
from harness.run.evaluate import evaluate
from harness.run.sweep import override_cell
from harness.run.train import train
from models.backbone import LanguageModel


class StepClock:
    """What `train` sees as its logger: when the last step's loss was read and when the validation after it ended,
    the device synchronised first. (The captured step reads losses back in batches, so a step's log line is no
    time of that step; the last one's is: train reads every loss before it validates.)"""

    def __init__(self, device: torch.device, last: int):
        self.device, self.last = device, last
        self.stepped: float | None = None
        self.validated: float | None = None

    def log(self, step: int, values: dict[str, float]) -> None:
        if step != self.last:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if "train_loss_step" in values:
            self.stepped = time.perf_counter()
        else:
            self.validated = time.perf_counter()


def bench_cell(cell: Cell, steps: int) -> Cell:
    """The cell as measured: `steps` steps, no early stop, one validation at the end."""
    return override_cell(
        cell, [f"train.max_steps={steps}", f"train.eval_every={steps}", "train.target_accuracy=none"]
    )


def measure(cell: Cell, steps: int = 20, warmup: int = 3, barrier: Any = None) -> dict[str, Any]:
    """Time one cell's shape here: step_s, valid_s, fixed_s (data at its full size, model, test evaluation).

    Training runs three times on one model: `warmup` steps (compilation, caches, allocator), `warmup` steps
    timed, `warmup + steps` steps timed; the difference of the two times is `steps` steps, whatever each run
    spends before its first step (the optimizer, capturing CUDA graphs). With `barrier`, the copies of a packed
    measurement start each run together."""
    if steps < 1 or warmup < 1:
        raise HarnessError(f"--steps and --warmup must be at least 1, got {steps} and {warmup}")
    device = resolve_device(cell.train.device)
    data, data_s = _timed_data(cell)
    start = time.perf_counter()
    torch.manual_seed(cell.seed)
    model = LanguageModel(cell.model)
    build_s = time.perf_counter() - start

    def run(count: int) -> tuple[float, float]:
        if barrier is not None:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=600)
        config = bench_cell(cell, count).train
        clock = StepClock(device, count)
        began = time.perf_counter()
        with _no_progress_bar():
            train(model, data.train, data.valid, config, cell.seed, device, logger=clock)
        if clock.stepped is None or clock.validated is None:
            raise RuntimeError(f"training stopped before step {count} (a non-finite loss?)")
        return clock.stepped - began, clock.validated - clock.stepped

    run(warmup)
    short, _ = run(warmup)
    long, valid_s = run(warmup + steps)
    if long <= short:
        raise RuntimeError(f"{steps} steps took no measurable time; time more of them (--steps)")
    start = time.perf_counter()
    task = TASKS.get(cell.task_name)()
    metrics = evaluate(model, data.test, cell.train, device)
    for piece in data.test:
        task.slice_metrics(cell.task, piece, metrics[piece.name])
    test_s = time.perf_counter() - start
    return dict(
        step_s=(long - short) / steps,
        valid_s=valid_s,
        fixed_s=data_s + build_s + test_s,
        device=device_name(device),
        kernel_impl=model.kernel_names(device),
    )


def _timed_data(cell: Cell) -> tuple[CellData, float]:
    """The cell's data with fewer training examples (enough for the steps), and the seconds that its data at
    full size take to generate (the training examples' time scaled by their count)."""
    task = TASKS.get(cell.task_name)()
    config = cell.task
    full = getattr(config, "num_train", None)
    if full is not None:
        lengths = len(getattr(config, "train_settings", ())) or len(getattr(config, "train_lengths", ())) or 1
        fewer = min(full, 4 * cell.train.batch_size * lengths)
        config = dataclasses.replace(config, num_train=fewer)
    start = time.perf_counter()
    stream = task.training_stream(config, cell.seed)
    slices = task.generate(config, "train", cell.seed) if stream is None else None
    train_s = time.perf_counter() - start
    if full is not None:
        train_s *= full / config.num_train
    start = time.perf_counter()
    valid, test = (task.generate(config, split, cell.seed) for split in ("valid", "test"))
    eval_s = time.perf_counter() - start
    data = (
        CellData(stream, valid, test)
        if stream is not None
        else CellData(slices, valid, drop_seen(test, slices))
    )
    return data, train_s + eval_s


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    # the command prints a line per shape; the trainer reads TQDM_DISABLE when it starts
    before = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TQDM_DISABLE")
        else:
            os.environ["TQDM_DISABLE"] = before


def measure_packed(cell: Cell, copies: int, steps: int, warmup: int) -> dict[str, Any]:
    """`copies` measurements of the cell at once, in as many processes on this device; their mean."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(copies), context.Queue()
    workers = [
        context.Process(target=_packed_worker, args=(cell, steps, warmup, barrier, results, loaded_modules()))
        for _ in range(copies)
    ]
    for worker in workers:
        worker.start()
    found = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    if errors := [r for r in found if isinstance(r, str)]:
        raise RuntimeError(errors[0])
    mean = {key: statistics.fmean(r[key] for r in found) for key in ("step_s", "valid_s", "fixed_s")}
    return found[0] | mean


def _packed_worker(cell, steps, warmup, barrier, results, plugins) -> None:
    load_plugins(plugins)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // barrier.parties))
    try:
        results.put(measure(cell, steps, warmup, barrier))
    except Exception as err:  # noqa: BLE001 - reported by the parent as this shape's failure
        barrier.abort()
        results.put(f"{type(err).__name__}: {err}".splitlines()[0])


@dataclasses.dataclass
class BenchOutcome:
    measured: list[Measurement] = dataclasses.field(default_factory=list)
    skipped: int = 0
    """Shapes already in the table (not measured again)."""
    failed: int = 0
    left: int = 0
    """Shapes not started: the time budget was spent."""


def bench_steps(
    cells: Sequence[Cell],
    table: Any,
    steps: int = 20,
    warmup: int = 3,
    cells_per_gpu: int = 1,
    budget_s: float | None = None,
    again: bool = False,
    on_line: Callable[[str], None] = print,
) -> BenchOutcome:
    """Measure one cell of every shape of `cells` not yet in the step-time table at `table` for this device
    (all of them with `again`); shapes not started within `budget_s` seconds are left for the next run."""
    if cells_per_gpu < 1:
        raise HarnessError(f"--cells-per-gpu must be at least 1, got {cells_per_gpu}")
    groups: dict[str, list[Cell]] = {}
    by_cell = shapes_of(cells)
    shapes = {shape.id: shape for shape in by_cell.values()}
    for cell in cells:
        groups.setdefault(by_cell[cell.id].id, []).append(cell)
    device = device_name(resolve_device(cells[0].train.device))
    known = {
        (m.shape, m.cells_per_gpu) for m in read_table(table) if m.device == device and m.source == "bench"
    }
    outcome = BenchOutcome()
    commit, _ = git_state()
    start = time.perf_counter()
    for number, (shape_id, group) in enumerate(groups.items(), 1):
        cell = group[0]
        what = f"[{number}/{len(groups)}] {cell.model_name}@{cell.size} · {cell.task_name} ({len(group)} cell(s))"
        if (shape_id, cells_per_gpu) in known and not again:
            outcome.skipped += 1
            continue
        if budget_s is not None and time.perf_counter() - start > budget_s:
            outcome.left = len(groups) - number + 1
            break
        try:
            found = (
                measure(cell, steps, warmup)
                if cells_per_gpu == 1
                else measure_packed(cell, cells_per_gpu, steps, warmup)
            )
        except torch.cuda.OutOfMemoryError:
            on_line(f"{what}: out of memory; not measured")
            outcome.failed += 1
            continue
        except (HarnessError, OSError):
            raise
        except Exception as err:  # noqa: BLE001 - a shape that cannot run is named, the others are measured
            on_line(f"{what}: failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); not measured")
            outcome.failed += 1
            continue
        measurement = Measurement.of(
            shapes[shape_id],
            cells_per_gpu=cells_per_gpu,
            steps_timed=steps,
            git_commit=commit,
            torch=library_versions()["torch"],
            measured_at=round(time.time(), 1),
            **found,
        )
        outcome.measured.append(measurement)
        append_measurements(table, [measurement])  # at once: a run cut short keeps what it measured
        on_line(
            f"{what}: {measurement.step_s * 1e3:.2f} ms/step, validation {measurement.valid_s:.2f} s,"
            f" data+model+test {measurement.fixed_s:.1f} s -> {_seconds(measurement.cell_s(cell))} a cell"
        )
    return outcome


def _seconds(value: float) -> str:
    return f"{value / 60:.1f} min" if value >= 60 else f"{value:.1f} s"
