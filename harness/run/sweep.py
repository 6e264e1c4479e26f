"""Expand `models x suite` into cells (model x task setting x lr x seed), skip the ones already in the store,
run the rest through a launcher (in this process, a local pool over GPUs, or Ray)."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

import torch

from harness.config import apply_override, check_choices, config_hash, parse_assignment, to_dict
from harness.errors import HarnessError, warn
from harness.registry import MIXERS, SUITES, TASKS
from harness.results.store import DAMAGED, Lease, ResultStore, atomic_write, read_plan, set_aside, write_error
from harness.run.cell import Cell, CellOptions
from harness.run.device import check_device
from harness.run.launchers import InProcess, Launcher
from harness.run.loggers import WandbOptions, run_name
from harness.run.memory import check_fits
from harness.run.sizing import SizeMatch, match_size
from harness.run.train import Checkpointing, TrainConfig
from models.backbone import LanguageModel
from models.presets import build_model_config, parse_architecture, split_model_token
from tasks.suites import Suite

SECTIONS = ("model", "task", "train")


def plan_cells(
    models: Sequence[str],
    suite_name: str,
    scale: str | None = None,
    overrides: Sequence[str] = (),
    seeds: Sequence[int] | None = None,
    lrs: Sequence[float] | None = None,
    match: SizeMatch | None = None,
    local: bool = True,
    force: bool = False,
) -> list[Cell]:
    """Every cell of the run, fully resolved and validated; raises HarnessError before anything is trained.

    `lrs` and `seeds` replace the grid of the suite at its scale (a `--set train.lr=` override pins every
    cell to one lr, and the grid collapses to it). A model named without @SIZE runs at the scale's size, or at
    each of its sizes. Checked besides each setting: every model builds (on the meta device: shapes without
    memory) and, for cells that run on this machine (`local`; not those of a Ray cluster), the devices asked for
    exist here and each cell fits its memory by a lower-bound estimate (unless `force`)."""
    suite: Suite = SUITES.get(suite_name)
    scale = scale or next(iter(suite.scales))
    setting = suite.at(scale, suite_name)
    if not models:
        raise HarnessError("no models given; e.g. --models kda,gdn,mamba2,mla")
    models = [token if "@" in token else f"{token}@{size}" for token in models for size in setting.sizes]
    if lrs is not None and (not lrs or not all(0 < lr < math.inf for lr in lrs)):
        raise HarnessError(
            f"learning rates must be positive and finite, got {', '.join(map(str, lrs)) or 'none'}"
        )
    if seeds is not None and not seeds:
        raise HarnessError("no seeds given")
    for token in models:
        parse_architecture(split_model_token(token, setting.sizes[0])[0])
    assignments = [parse_assignment(text) for text in overrides]
    for path, _ in assignments:
        if path[0] not in SECTIONS:
            raise HarnessError(f"--set {'.'.join(path)}: settings start with one of {', '.join(SECTIONS)}")
    _check_mixer_overrides(assignments, models, setting.sizes[0])

    cells: dict[str, Cell] = {}
    for task_name, task_config in setting.tasks:
        task = TASKS.get(task_name)()
        task_config = _apply(task_config, assignments, "task")
        task.validate(task_config)
        for token in models:
            arch, size = split_model_token(token, setting.sizes[0])
            vocab_size = task.vocab_size(task_config)
            if match is None:
                model = build_model_config(token, setting.sizes[0], vocab_size=vocab_size)
            else:
                model = match_size(token, setting.sizes[0], vocab_size, match).config
                size += match.label
            model = _apply(model, assignments, "model")
            for lr in lrs if lrs is not None else setting.lrs:
                train = _apply(_train_config(setting.train_for(task_name), lr), assignments, "train")
                for seed in seeds if seeds is not None else setting.seeds:
                    cell = Cell(
                        suite=suite_name,
                        scale=scale,
                        model_name=arch,
                        size=size,
                        model=model,
                        task_name=task_name,
                        task=task_config,
                        train=train,
                        seed=seed,
                    )
                    cells.setdefault(cell.id, cell)  # an override can make two grid points the same cell
    _check_cells(list(cells.values()), local, force)
    return list(cells.values())


def same_model_warnings(cells: Sequence[Cell]) -> list[str]:
    """'kimi@tiny and kda:mla=1:1@tiny are the same model': names of a run whose cells train identical
    configurations (everything but the name equal), so that the comparison holds one model twice."""
    names: dict[str, list[str]] = {}
    for cell in cells:
        view = to_dict(cell)
        view.pop("model_name")
        key = json.dumps(view, sort_keys=True, default=str)
        label = f"{cell.model_name}@{cell.size}"
        if label not in names.setdefault(key, []):
            names[key].append(label)
    alike = {tuple(labels) for labels in names.values() if len(labels) > 1}
    return [
        f"{' and '.join(labels)} are the same model (identical configs): each is trained" for labels in alike
    ]


def override_cell(cell: Cell, overrides: Sequence[str]) -> Cell:
    """`cell` with --set style overrides (train.device=cuda, train.max_steps=400) applied to its configs."""
    assignments = [parse_assignment(text) for text in overrides]
    for path, _ in assignments:
        if path[0] not in SECTIONS:
            raise HarnessError(f"--set {'.'.join(path)}: settings start with one of {', '.join(SECTIONS)}")
    return dataclasses.replace(
        cell,
        model=_apply(cell.model, assignments, "model"),
        task=_apply(cell.task, assignments, "task"),
        train=_apply(cell.train, assignments, "train"),
    )


def _train_config(fields: dict, lr: float) -> TrainConfig:
    try:
        return dataclasses.replace(TrainConfig(), **fields, lr=lr)
    except ValueError as err:
        raise HarnessError(f"train: {err}") from None


def _check_cells(cells: list[Cell], local: bool, force: bool) -> None:
    """What can be known about the cells before any runs: Literal choices of configs built in code, that each
    distinct model builds and, for cells run on this machine (`local`), its devices and (unless `force`) that
    each cell fits its memory."""
    params: dict[str, int] = {}
    for cell in cells:
        for section in SECTIONS:
            check_choices(getattr(cell, section), section)
        if local:
            check_device(cell.train.device)
        key = config_hash(cell.model)
        if key not in params:
            params[key] = _built_on_meta(cell)
        if local and not force:
            check_fits(cell, params[key])


def _built_on_meta(cell: Cell) -> int:
    """Build the cell's model on the meta device (shapes only, no memory, no time); returns its parameter count."""
    try:
        with torch.device("meta"):
            model = LanguageModel(cell.model)
    except Exception as err:  # noqa: BLE001 - whatever stops a model from being built is a setting that cannot work
        raise HarnessError(
            f"{cell.model_name}: the model cannot be built with these settings ({type(err).__name__}: {err})"
        ) from None
    return model.num_params()


def _apply(config, assignments, section: str):
    for path, value in assignments:
        if path[0] != section:
            continue
        rest = path[1:]
        if section == "model" and rest[0] in MIXERS:
            # model.kda.num_heads=4 addresses the kda config of models that have kda layers
            if rest[0] not in config.mixers:
                continue
            rest = ("mixers", *rest)
        config = apply_override(config, rest, value, full_key=".".join(path))
    return config


def _check_mixer_overrides(assignments, models, size) -> None:
    used = {name for token in models for name in build_model_config(token, size, vocab_size=2).layers}
    for path, _ in assignments:
        if path[0] == "model" and len(path) > 2 and path[1] in MIXERS and path[1] not in used:
            raise HarnessError(f"--set {'.'.join(path)}: no model of this run has a {path[1]} layer")


@dataclasses.dataclass
class SweepOutcome:
    ran: int = 0
    """Cells run and stored by this sweep."""
    skipped: int = 0
    """Cells already in the store (or stored meanwhile by another sweep)."""
    unfinished: dict[str, str] = dataclasses.field(default_factory=dict)
    """Cells that could not run to their end for a reason outside them (their worker died, ...): not stored,
    so that the next sweep runs them again; cell id -> the reason."""
    not_started: int = 0
    """Cells left for the next sweep because `start_until` had passed before their turn."""
    would_not_fit: list[str] = dataclasses.field(default_factory=list)
    """Cells left for the next sweep because their estimated time no longer fitted before `deadline`."""


def _would_not_fit(cell: Cell, deadline: float | None, wall_s: Mapping[str, float | None] | None) -> bool:
    seconds = (wall_s or {}).get(cell.id)
    return deadline is not None and seconds is not None and time.monotonic() + seconds > deadline


def run_cells(
    cells: Sequence[Cell],
    store: ResultStore,
    on_done: Callable[[Cell, list[dict]], None] | None = None,
    launcher: Launcher | None = None,
    checkpoint_every: Every | None = None,
    poll_s: float = 1.0,
    checkpoints: Path | None = None,
    tensorboard: bool = False,
    on_wait: Callable[[list[Cell]], None] | None = None,
    wandb: WandbOptions | None = None,
    retry: Collection[str] = (),
    on_unfinished: Callable[[Cell, str], None] | None = None,
    start_until: float | None = None,
    deadline: float | None = None,
    wall_s: Mapping[str, float | None] | None = None,
) -> SweepOutcome:
    """Run the cells that are not in the store yet.

    Each cell runs under its lease (see results/store.py), so a killed sweep resumes where it stopped, and two
    sweeps on one store never run the same cell: cells another live process holds are waited for, and taken
    over if that process dies (`on_wait` hears of them once). Long cells save checkpoints `checkpoint_every`
    (steps or seconds) and resume from them. With `checkpoints`, each cell run saves its trained model as a
    transformers checkpoint under checkpoints/<cell id>/; with `tensorboard`, its training curve,
    hyper-parameters and final metrics go to STORE/tensorboard/<label>_<cell id>/, with `wandb` to a W&B run
    (harness/run/loggers.py).

    Stored cells whose status is in `retry` (failed, oom, diverged) run again; their earlier rows move to
    cells/history/. A cell that fails for a reason outside it is not stored (`on_unfinished` hears of it) and
    runs again next time, except that a full disk stops the sweep with a HarnessError: every cell would fail.

    `start_until` (a time.monotonic() value): no cell starts after it; the sweep ends when the cells running then
    have finished, and leaves the rest to the next sweep. For jobs of limited length (preemptible machines, a
    scheduler's wall-time limit) whose cells cannot resume elsewhere: a cell killed halfway is work lost.
    `deadline` (a time.monotonic() value) with `wall_s` (cell id -> its estimated time, None if unknown): a cell
    whose estimate no longer fits before the deadline is not started either, but left for the next sweep.
    """
    launcher = launcher or InProcess()
    store.tidy()
    record_plan(store, cells)
    if retry:
        _retire(store, cells, set(retry))
    done = store.done()
    todo = [cell for cell in cells if cell.id not in done]
    outcome = SweepOutcome(skipped=len(cells) - len(todo))
    leases: dict[str, Lease] = {}
    told = False
    try:
        while todo or leases:
            if start_until is not None and time.monotonic() >= start_until:
                outcome.not_started += len(todo)
                todo = []
                if not leases:
                    break
            waiting = []
            for cell in todo:
                if len(leases) >= launcher.slots:
                    waiting.append(cell)
                elif _would_not_fit(cell, deadline, wall_s):
                    outcome.would_not_fit.append(cell.id)  # time only runs out: it will not fit later either
                elif store.has(cell.id):
                    outcome.skipped += 1  # finished meanwhile by another sweep on this store
                elif (lease := store.lease(cell.id, label=cell.label)) is None:
                    waiting.append(cell)  # another live process runs it
                elif store.has(cell.id):
                    lease.release()
                    outcome.skipped += 1
                else:
                    leases[cell.id] = lease
                    launcher.submit(
                        cell, _options(store, cell, checkpoint_every, checkpoints, tensorboard, wandb)
                    )
            todo = waiting
            if not leases:
                if on_wait and not told:
                    on_wait(todo)
                    told = True
                time.sleep(poll_s)
                continue
            for cell, rows, meta in launcher.wait(timeout=poll_s):
                lease = leases.pop(cell.id)
                try:
                    if not rows:  # a failure of the machine, not of the cell: nothing is stored
                        outcome.unfinished[cell.id] = meta["environment"]
                        if meta.get("no_space"):
                            raise HarnessError(meta["environment"])
                        if on_unfinished:
                            on_unfinished(cell, meta["environment"])
                        continue
                    store.write(cell.id, rows, dict(config=to_dict(cell), label=cell.label, **meta))
                finally:
                    lease.release()
                outcome.ran += 1
                if on_done:
                    on_done(cell, rows)
    finally:
        launcher.close()
        for lease in leases.values():
            lease.release()  # its cell is not finished: the next sweep takes it over (from its checkpoint)
    return outcome


def _retire(store: ResultStore, cells: Sequence[Cell], statuses: set[str]) -> None:
    """Move the stored results of `cells` whose status is in `statuses` to cells/history/, each under the
    cell's lease (a cell that another sweep holds is left to it)."""
    for cell in cells:
        if not store.has(cell.id) or store.rows(cell.id)[0]["status"] not in statuses:
            continue
        lease = store.lease(cell.id, label=cell.label)
        if lease is None:
            continue
        try:
            store.retire(cell.id)
        finally:
            lease.release()


@dataclasses.dataclass(frozen=True)
class Every:
    """How often long cells save a checkpoint: every `steps` optimizer steps or every `seconds` of training."""

    steps: int | None = None
    seconds: float | None = None

    @classmethod
    def parse(cls, text: str) -> Every | None:
        """'500' (steps), '30s', '10m', '1h' (time); '0' or 'off': never."""
        text = text.strip().lower()
        units = {"s": 1, "m": 60, "h": 3600}
        try:
            if text in ("0", "off", "never", "none"):
                return None
            if text[-1:] in units:
                return cls(seconds=float(text[:-1]) * units[text[-1]])
            return cls(steps=int(text))
        except ValueError:
            raise HarnessError(
                f"--checkpoint-every expects steps (500), a time (30s, 10m, 1h) or off, got '{text}'"
            ) from None


def _options(
    store: ResultStore,
    cell: Cell,
    every: Every | None,
    checkpoints: Path | None,
    tensorboard: bool,
    wandb: WandbOptions | None,
) -> CellOptions:
    checkpointing = (
        None
        if every is None
        else Checkpointing(store.checkpoint_path(cell.id), every_steps=every.steps, every_s=every.seconds)
    )
    return CellOptions(
        checkpointing=checkpointing,
        save_dir=None if checkpoints is None else checkpoints / cell.id,
        log_dir=store.root / "tensorboard" / run_name(cell) if tensorboard else None,
        wandb=wandb,
    )


def record_plan(store: ResultStore, cells: Sequence[Cell]) -> Path:
    """Write the sweep's cell list under sweeps/ (once; the same cells make the same sweep id). A record that
    cannot be read is moved to sweeps/damaged/ and written anew."""
    ids = sorted(cell.id for cell in cells)
    sweep_id = config_hash(ids)[:12]
    path = store.root / "sweeps" / f"{sweep_id}.json"
    if path.exists():
        if read_plan(path) is not None:
            return path
        warn(f"unreadable sweep record {path}; moved to {set_aside(path, DAMAGED)}, written anew")
    plan = dict(
        id=sweep_id,
        created=time.time(),
        suites=sorted({cell.suite for cell in cells}),
        models=list(dict.fromkeys(cell.model_name for cell in cells)),
        cells={cell.id: cell.label for cell in cells},
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(plan, indent=1))
    except OSError as err:
        raise write_error(err, path) from None
    return path
