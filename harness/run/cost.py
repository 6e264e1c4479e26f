"""What a sweep costs before it runs: each planned cell's time from step times measured on the same kind of
device (`harness run ... --dry-run`), and the table of measured step times that `harness bench steps` writes.

A cell's time is modelled as

    fixed_s + max_steps * step_s + validations * valid_s

with `fixed_s` its data, model and final test evaluation, `step_s` one optimizer step, `valid_s` one validation
pass (one every `eval_every` steps, and at the last). Early stopping (`train.target_accuracy`) can end a cell
sooner, so the estimate is an upper bound of the training it counts. Not counted: a task's extra rows (lm-eval
scores, loss by position) and the time to start workers.

Measurements are looked up per device kind ("NVIDIA H200", "cpu") and cell *shape*: everything that changes the
time of a step (the model config, the task config, batch sizes, dtype), not the lr or the seed, which do not.
A cell is

    measured      a measurement of its shape exists on the device
    extrapolated  none does, but one of the same architecture does: the nearest in tokens per step and parameters,
                  scaled linearly in both (rough: a small model's step is bound by kernel launches, not FLOPs)
    unknown       no measurement of its architecture on the device: nothing is made up

Where measurements come from:
  - the step-time table: `results/step-times/<device>.jsonl` in this repository (HARNESS_STEP_TIMES moves it),
    one JSON object a line, written by `harness bench steps` (harness/run/bench_steps.py) and meant to be
    committed; for a shape measured again, the newest line counts;
  - result stores: every finished `ok` cell of a store is a measurement of its shape (from its wall time, its
    training time and, where recorded, its training throughput). Their cells count as run one at a time, though
    many ran beside others on a shared GPU: each cell records the most that ran at once (`cells_at_once`, from
    its launcher; older stores lack it), and the estimate says how many of the cells it rests on shared their GPU
    or do not say, since their times then overstate a cell alone. The table wins over stores for the same
    shape.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from harness.analysis.labels import duration_text
from harness.config import config_hash, to_dict
from harness.errors import HarnessError, warn
from harness.registry import TASKS
from harness.results.provenance import REPO, device_kind, device_name
from harness.results.store import ResultStore, atomic_write, write_error
from harness.run.cell import Cell
from models.backbone import LanguageModel

TABLE_ENV = "HARNESS_STEP_TIMES"
Basis = Literal["measured", "extrapolated", "unknown"]


def table_dir() -> Path:
    """The folder of the step-time table: $HARNESS_STEP_TIMES, else results/step-times/ of this repository."""
    return Path(os.environ.get(TABLE_ENV) or REPO / "results" / "step-times")


def device_file(folder: Path, device: str) -> Path:
    """'NVIDIA H200' -> FOLDER/nvidia-h200.jsonl."""
    return folder / f"{re.sub(r'[^a-z0-9]+', '-', device.lower()).strip('-')}.jsonl"


def local_device(cell: Cell) -> str:
    """The device kind `cell` trains on here: a GPU's name, or 'cpu'."""
    name = cell.train.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        return "cpu"
    return device_name(torch.device(name))


# ---- shapes: what a step's time depends on


@dataclass(frozen=True)
class Shape:
    """What makes a cell's step take the time it takes, and the sizes an extrapolation scales by."""

    id: str
    """Hash of the model config, the task and its config, batch sizes and dtype (not lr, seed or step counts)."""
    model: str
    size: str
    task: str
    params: int
    tokens_per_step: float | None
    """batch_size x the mean training length (None where the task does not say its lengths)."""
    eval_tokens: int | None
    """Tokens of the validation and test slices."""
    data_tokens: int | None
    """Tokens of all the cell's data."""


# train fields that change no step's time: the schedule, the step counts, when to validate and stop, the device name
_TIMELESS = ("lr", "weight_decay", "betas", "warmup_steps", "min_lr_ratio", "schedule", "decay_fraction",
             "max_steps", "eval_every", "target_accuracy", "device", "grad_clip")  # fmt: skip


def shape_id(cell: Cell) -> str:
    # hashed as configs, so that fields added later keep the ids of shapes measured before them (ADDED_LATER)
    train = {k: v for k, v in to_dict(cell.train, for_hash=True).items() if k not in _TIMELESS}
    return config_hash(dict(model=cell.model, task_name=cell.task_name, task=cell.task, train=train))


def shape_of(cell: Cell, params: int | None = None) -> Shape:
    """The cell's shape; `params` if known, else the model is built on the meta device to count them."""
    if params is None:
        with torch.device("meta"):
            params = LanguageModel(cell.model).num_params()
    size = TASKS.get(cell.task_name)().data_size(cell.task)
    lengths = _train_lengths(cell.task)
    if not lengths and size is not None:
        lengths = [size.train_len]
    return Shape(
        id=shape_id(cell),
        model=cell.model_name,
        size=cell.size,
        task=cell.task_name,
        params=params,
        tokens_per_step=cell.train.batch_size * statistics.fmean(lengths) if lengths else None,
        eval_tokens=size.eval_tokens if size else None,
        data_tokens=size.train_tokens + size.eval_tokens if size else None,
    )


def shapes_of(cells: Sequence[Cell]) -> dict[str, Shape]:
    """Cell id -> its Shape, each distinct model built once on the meta device."""
    params: dict[str, int] = {}
    shapes = {}
    for cell in cells:
        key = config_hash(cell.model)
        if key not in params:
            params[key] = shape_of(cell).params
        shapes[cell.id] = shape_of(cell, params[key])
    return shapes


def _train_lengths(task: Any) -> list[int]:
    if hasattr(task, "train_settings"):
        return [int(setting[0]) for setting in task.train_settings]
    return [int(length) for length in getattr(task, "train_lengths", ())]


def validations(cell: Cell) -> int:
    """Validation passes of a cell trained to max_steps: every eval_every steps and at the last."""
    return -(-cell.train.max_steps // cell.train.eval_every)


# ---- measurements


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """The measured time of one shape on one device kind: a line of the step-time table."""

    device: str
    shape: str
    """Shape.id of what was measured."""
    cells_per_gpu: int = 1
    """Cells that ran at once on the device while it was measured (each at this step time)."""
    step_s: float
    valid_s: float
    """One validation pass."""
    fixed_s: float
    """The rest of a cell: data, model, test evaluation."""
    model: str
    size: str
    task: str
    params: int
    tokens_per_step: float | None = None
    eval_tokens: int | None = None
    data_tokens: int | None = None
    source: str = "bench"
    """'bench' (harness bench steps) or 'store PATH'."""
    steps_timed: int | None = None
    note: str = ""
    """What the numbers include or lack, e.g. 'validation in step_s'."""
    kernel_impl: str | None = None
    torch: str | None = None
    git_commit: str | None = None
    measured_at: float = 0.0
    """Unix time of the measurement."""
    shared_by: int | None = 1
    """A store's cell: the most cells that ran at once on its device while it ran (its launcher's record; None
    for stores written before it was recorded). It is still counted as a cell alone (cells_per_gpu 1): its time is
    an upper bound of one alone, and the report says so."""

    def cell_s(self, cell: Cell) -> float:
        return self.fixed_s + cell.train.max_steps * self.step_s + validations(cell) * self.valid_s

    @classmethod
    def of(cls, shape: Shape, **fields: Any) -> Measurement:
        sizes = dict(model=shape.model, size=shape.size, task=shape.task, params=shape.params)
        sizes |= dict(tokens_per_step=shape.tokens_per_step, eval_tokens=shape.eval_tokens)
        return cls(shape=shape.id, data_tokens=shape.data_tokens, **sizes, **fields)


FIELDS = {f.name for f in dataclasses.fields(Measurement)}


def read_table(folder: Path) -> list[Measurement]:
    """Every measurement of the table's files (*.jsonl); a line that is not one is named in a warning and left out."""
    found = []
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                found.append(Measurement(**{k: v for k, v in record.items() if k in FIELDS}))
            except (ValueError, TypeError) as err:
                warn(f"{path}:{number}: not a step-time measurement ({type(err).__name__}: {err}); left out")
    return found


def append_measurements(folder: Path, measurements: Sequence[Measurement]) -> list[Path]:
    """Add the measurements to the table, one file per device kind (rewritten atomically); returns the files."""
    written = []
    for device in dict.fromkeys(m.device for m in measurements):
        path = device_file(folder, device)
        lines = path.read_text().splitlines() if path.exists() else []
        lines += [json.dumps(dataclasses.asdict(m)) for m in measurements if m.device == device]
        try:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(path, "\n".join(lines) + "\n")
        except OSError as err:
            raise write_error(err, path) from None
        written.append(path)
    return written


def store_measurements(root: Path) -> list[Measurement]:
    """A measurement of every finished `ok` cell of the store at `root` (none if there is no store there)."""
    store = ResultStore(root)
    if not store.cells.is_dir():
        return []
    found = []
    for cell_id in sorted(store.done()):
        try:
            row = store.rows(cell_id)[0]
            meta = store.read_meta(cell_id)
            cell = Cell.from_view(meta["config"])
        except Exception:  # noqa: BLE001 - a cell of an older layout or of an unknown task is no measurement
            continue
        steps, wall, train_s = row.get("steps"), row.get("wall_s"), meta.get("train_wall_s")
        if row.get("status") != "ok" or not steps or not wall or not train_s or not row.get("device"):
            continue
        if meta.get("stacked_with"):  # its time is its stack's (harness/run/stacked.py), not one cell's
            continue
        history = meta.get("history") or []
        shared_by = meta.get("cells_at_once")
        step_s, valid_s, note = train_s / steps, 0.0, "validation in step_s"
        if history and all(point.get("tokens_per_s") for point in history):
            tokens = [0] + [point["tokens"] for point in history]
            stepping = sum(
                (b - a) / p["tokens_per_s"] for a, b, p in zip(tokens, tokens[1:], history, strict=False)
            )
            step_s, valid_s, note = stepping / steps, max(0.0, train_s - stepping) / len(history), ""
        found.append(
            Measurement.of(
                shape_of(cell, row.get("params")),
                device=device_kind(row["device"]),
                step_s=step_s,
                valid_s=valid_s,
                fixed_s=max(0.0, wall - train_s),
                source=f"store {root}",
                note=note,
                shared_by=shared_by,
                kernel_impl=row.get("kernel_impl"),
                torch=row.get("torch"),
                git_commit=row.get("git_commit"),
            )
        )
    return found


def committed_stores() -> list[Path]:
    """The result stores committed under results/ of this repository."""
    return sorted({path.parent for path in (REPO / "results").glob("**/cells") if path.is_dir()})


def best_per_shape(measurements: Iterable[Measurement]) -> dict[tuple[str, str, int], Measurement]:
    """One measurement per (device, shape, cells_per_gpu): the newest of the table, else the mean of the stores'."""
    table: dict[tuple, Measurement] = {}
    stored: dict[tuple, list[Measurement]] = {}
    for m in measurements:
        key = (m.device, m.shape, m.cells_per_gpu)
        if m.source == "bench":
            if key not in table or m.measured_at >= table[key].measured_at:
                table[key] = m
        else:
            stored.setdefault(key, []).append(m)
    for key, group in stored.items():
        if key not in table:
            mean = {
                f: statistics.fmean(getattr(m, f) for m in group) for f in ("step_s", "valid_s", "fixed_s")
            }
            shares = [m.shared_by for m in group]
            shared_by = None if None in shares else max(shares)
            table[key] = dataclasses.replace(group[0], **mean, shared_by=shared_by)
    return table


# ---- estimates


@dataclass(frozen=True)
class CellCost:
    cell: Cell
    seconds: float | None
    """None: unknown."""
    basis: Basis
    source: Measurement | None = None


def estimate(
    cells: Sequence[Cell],
    shapes: dict[str, Shape],
    measurements: Iterable[Measurement],
    device: str,
    cells_per_gpu: int = 1,
) -> list[CellCost]:
    """Each cell's time on `device` with `cells_per_gpu` cells sharing it, from the measurements of that packing
    (`shapes`: cell id -> its Shape)."""
    known = [
        m for key, m in best_per_shape(measurements).items() if key[0] == device and key[2] == cells_per_gpu
    ]
    by_shape = {m.shape: m for m in known}
    costs = []
    for cell in cells:
        shape = shapes[cell.id]
        if shape.id in by_shape:
            costs.append(CellCost(cell, by_shape[shape.id].cell_s(cell), "measured", by_shape[shape.id]))
            continue
        nearest = _nearest(shape, [m for m in known if m.model == shape.model])
        if nearest is None:
            costs.append(CellCost(cell, None, "unknown"))
        else:
            costs.append(CellCost(cell, _scaled(nearest, shape).cell_s(cell), "extrapolated", nearest))
    return costs


def wall_when_packed(
    cells: Sequence[Cell],
    shapes: dict[str, Shape],
    measurements: Iterable[Measurement],
    device: str,
    packing: int = 1,
) -> dict[str, float | None]:
    """Cell id -> its estimated wall time on `device` while `packing` cells share it (None: unknown), for deciding
    what still fits in a job of limited length (`harness run --deadline`).

    A measurement of the cell's shape at that packing is used as it is. Otherwise a GPU that several processes
    share runs their kernels in turns, so a cell's time is taken to grow with the number of cells beside it: a
    measurement made with `s` cells at once (a store cell's `shared_by`, a table line's `cells_per_gpu`; a store
    cell that does not say counts as made at this packing) is scaled by packing / s. That overstates a packed
    cell's time by what packing gains (1.3x for 12 small cells on an H200, results/step-speed-h200/), and an
    extrapolation to a larger model overstates it too (small models are bound by launches, not by their size):
    both err towards not starting a cell that would have been cut off."""
    measurements = list(measurements)
    packed = {}
    if packing > 1:
        packed = {c.cell.id: c for c in estimate(cells, shapes, measurements, device, packing)}
    walls: dict[str, float | None] = {}
    for cost in estimate(cells, shapes, measurements, device):
        at_packing = packed.get(cost.cell.id)
        if at_packing is not None and at_packing.basis == "measured":
            walls[cost.cell.id] = at_packing.seconds
        elif cost.seconds is None or cost.source is None:
            walls[cost.cell.id] = None
        else:
            beside = cost.source.cells_per_gpu if cost.source.source == "bench" else cost.source.shared_by
            walls[cost.cell.id] = cost.seconds * packing / (beside or packing)
    return walls


def _nearest(shape: Shape, candidates: list[Measurement]) -> Measurement | None:
    def distance(m: Measurement) -> float:
        return abs(math.log(shape.tokens_per_step / m.tokens_per_step)) + abs(
            math.log(shape.params / m.params)
        )

    usable = [m for m in candidates if m.tokens_per_step and m.params]
    if not shape.tokens_per_step or not usable:
        return None
    return min(usable, key=lambda m: (distance(m), m.task != shape.task, m.source != "bench"))


def _scaled(m: Measurement, shape: Shape) -> Measurement:
    params = shape.params / m.params
    step = shape.tokens_per_step / m.tokens_per_step * params
    valid = shape.eval_tokens / m.eval_tokens * params if shape.eval_tokens and m.eval_tokens else step
    fixed = shape.data_tokens / m.data_tokens if shape.data_tokens and m.data_tokens else step
    return dataclasses.replace(
        m, step_s=m.step_s * step, valid_s=m.valid_s * valid, fixed_s=m.fixed_s * fixed
    )


@dataclass(frozen=True)
class Plan:
    """How the cells are spread: `cells_per_gpu` at once on each of `gpus` devices."""

    launcher: str = "inprocess"
    cells_per_gpu: int = 1
    gpus: int = 1


def cost_report(
    cells: Sequence[Cell],
    shapes: dict[str, Shape],
    measurements: Sequence[Measurement],
    device: str,
    plan: Plan,
    done: set[str] = frozenset(),
) -> str:
    """The estimate of a sweep as text: per model the cells, how many are measured, extrapolated or unknown,
    device-hours and the longest cell; then the wall time under `plan`, and what the numbers assume."""
    unit = "CPU-h" if device == "cpu" else "GPU-h"
    if not any(m.device == device for m in measurements):
        return f"no measurements for {device}: run `harness bench steps` with the same options on it"
    alone = estimate(cells, shapes, measurements, device)
    packing = plan.cells_per_gpu if plan.launcher != "inprocess" else 1
    packed = estimate(cells, shapes, measurements, device, packing) if packing > 1 else alone
    lines = [f"estimated cost on {device} ({_sources(measurements, device)}):", ""]
    header = f"| model | cells | measured | extrapolated | unknown | {unit} | longest cell |"
    lines += [header, "|---|---:|---:|---:|---:|---:|---:|"]
    models = list(dict.fromkeys(c.cell.model_name for c in alone))
    for name in [*models, None]:
        group = [c for c in alone if name is None or c.cell.model_name == name]
        count = {
            basis: sum(c.basis == basis for c in group) for basis in ("measured", "extrapolated", "unknown")
        }
        seconds = [c.seconds for c in group if c.seconds is not None]
        hours = f"{sum(seconds) / 3600:.2f}" if seconds else "?"
        if count["unknown"] and seconds:
            hours += "+?"
        longest = duration_text(max(seconds)) if seconds else "?"
        label = name if name is not None else "**all**"
        lines.append(
            f"| {label} | {len(group)} | {count['measured']} | {count['extrapolated']} | {count['unknown']} | {hours} | {longest} |"
        )
    lines.append("")
    wall = _wall_lines(alone, packed, plan, packing, unit)
    if wall and (unknown_cells := sum(c.basis == "unknown" for c in alone)):
        wall[-1] += f" (+ {unknown_cells} unknown cells)"
    lines += wall
    todo = [c for c in alone if c.cell.id not in done]
    if len(todo) < len(alone):
        seconds = sum(c.seconds for c in todo if c.seconds is not None)
        lines.append(
            f"still to run: {len(todo)} of {len(alone)} cells, {seconds / 3600:.2f} {unit} (one at a time)"
        )
    steps = sorted({c.cell.train.max_steps for c in alone})
    stopping = any(c.cell.train.target_accuracy is not None for c in alone)
    lines.append(
        f"counted: max_steps ({', '.join(map(str, steps))}) per cell and a validation every eval_every steps"
        + ("; early stopping (train.target_accuracy) makes these upper bounds" if stopping else "")
        + "; not counted: extra rows (lm-eval scores), starting workers"
    )
    if shared := _shared_note([c.source for c in alone if c.source is not None]):
        lines.append(shared)
    if any(c.basis == "extrapolated" for c in alone):
        lines.append(
            "extrapolated: scaled linearly in tokens per step and parameters from the nearest measured shape of"
            " the same architecture (rough; `harness bench steps` measures them)"
        )
    if unknown := sorted({c.cell.model_name for c in alone if c.basis == "unknown"}):
        lines.append(
            f"unknown: no measurement of {', '.join(unknown)} on {device}: run `harness bench steps` with the same"
            " options on it"
        )
    return "\n".join(lines)


def _wall_lines(
    alone: list[CellCost], packed: list[CellCost], plan: Plan, packing: int, unit: str
) -> list[str]:
    known = [c.seconds for c in alone if c.seconds is not None]
    if not known:
        return []
    where = f"{plan.gpus} GPU(s)" if unit == "GPU-h" else "this CPU"
    if plan.launcher == "ray":
        where = "the cluster (divide by its GPUs)"
    elif plan.launcher == "inprocess":
        return [f"wall time: {duration_text(sum(known))} one cell at a time"]
    total = sum(known) / plan.gpus
    if packing == 1:
        return [f"wall time: {duration_text(max(total, max(known)))} on {where}, one cell per GPU"]
    if all(p.seconds is not None for p, a in zip(packed, alone, strict=True) if a.seconds is not None):
        together = [p.seconds for p, a in zip(packed, alone, strict=True) if a.seconds is not None]
        wall = max(sum(together) / packing / plan.gpus, max(together))
        return [
            f"wall time: {duration_text(wall)} on {where}, {packing} cells at once (from packed step times)"
        ]
    low, high = max(total / packing, max(known)), max(total, max(known))
    return [
        f"wall time: between {duration_text(low)} (if packing slows no cell) and"
        f" {duration_text(high)} (if packing gains nothing) on {where}: packed step times are not measured for every"
        f" shape (`harness bench steps --cells-per-gpu {packing}` measures them)"
    ]


def _shared_note(used: Sequence[Measurement]) -> str:
    """A caveat when the estimate rests on store cells that shared their GPU, or that do not say whether they did:
    their times count as of cells alone, which overstates what one alone takes."""
    stored = {id(m): m for m in used if m.source != "bench"}.values()
    shared = [m.shared_by for m in stored if m.shared_by is not None and m.shared_by > 1]
    unrecorded = sum(m.shared_by is None for m in stored)
    if not shared and not unrecorded:
        return ""
    parts = []
    if shared:
        parts.append(
            f"{len(shared)} are of cells that ran beside others on their GPU (up to {max(shared)} at once)"
        )
    if unrecorded:
        parts.append(f"{unrecorded} do not say whether theirs did (older stores)")
    return (
        f"shared GPUs: of the measured shapes taken from stores, {' and '.join(parts)}; a cell's time on a shared"
        " GPU counts here as its time alone, so these figures are upper bounds, too high by up to the number of"
        " cells that shared it (`harness bench steps` measures cells alone and packed)"
    )


def _sources(measurements: Sequence[Measurement], device: str) -> str:
    mine = [m for m in measurements if m.device == device]
    shapes = len({m.shape for m in mine if m.source == "bench"})
    parts = [f"{shapes} shape(s) in {_short(device_file(table_dir(), device))}"] if shapes else []
    for source in dict.fromkeys(m.source for m in mine if m.source != "bench"):
        count = sum(m.source == source for m in mine)
        parts.append(f"{count} cell(s) of {_short(Path(source.removeprefix('store ')))}")
    return "; ".join(parts)


def _short(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd()))
    return str(path)


def measurements_for(out: Path) -> list[Measurement]:
    """All the measurements a dry-run of a sweep into `out` uses: the step-time table, the committed stores and
    the store at `out`."""
    found = read_table(table_dir())
    for root in dict.fromkeys([*committed_stores(), Path(out)]):
        found += store_measurements(root)
    return found


def check_device_name(device: str, measurements: Sequence[Measurement]) -> str:
    """`device` as the measurements spell it (case aside); HarnessError naming the known ones if none has it."""
    known = sorted({m.device for m in measurements} | {"cpu"})
    for name in known:
        if name.lower() == device.strip().lower():
            return name
    raise HarnessError(
        f"--estimate-for '{device}': no step times measured on such a device; measured: {', '.join(known)}"
        f" (run `harness bench steps` on it to add it; the table is {table_dir()})"
    )
