"""Expand `models x suite` into cells, skip the ones already in the store, run the rest in this process."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

from harness.cell import Cell, run_cell
from harness.config import apply_override, parse_assignment, to_dict
from harness.registry import MIXERS, SUITES, TASKS, HarnessError
from harness.results import ResultStore
from harness.train import TrainConfig
from models.presets import build_model_config, parse_architecture, split_model_token
from tasks.suites import Suite

SECTIONS = ("model", "task", "train")


def plan_cells(
    models: Sequence[str],
    suite_name: str,
    scale: str | None = None,
    overrides: Sequence[str] = (),
    seeds: Sequence[int] | None = None,
) -> list[Cell]:
    """Every cell of the run, fully resolved and validated; raises HarnessError before anything is trained."""
    suite: Suite = SUITES.get(suite_name)
    scale = scale or next(iter(suite.scales))
    setting = suite.at(scale, suite_name)
    if not models:
        raise HarnessError("no models given; e.g. --models kda,gdn,mamba2,mla")
    for token in models:
        parse_architecture(split_model_token(token, setting.model_size)[0])
    assignments = [parse_assignment(text) for text in overrides]
    for path, _ in assignments:
        if path[0] not in SECTIONS:
            raise HarnessError(f"--set {'.'.join(path)}: settings start with one of {', '.join(SECTIONS)}")
    _check_mixer_overrides(assignments, models, setting.model_size)

    cells: dict[str, Cell] = {}
    for task_name, task_config in setting.tasks:
        task = TASKS.get(task_name)()
        task_config = _apply(task_config, assignments, "task")
        task.validate(task_config)
        for token in models:
            arch, size = split_model_token(token, setting.model_size)
            model = build_model_config(token, setting.model_size, vocab_size=task.vocab_size(task_config))
            model = _apply(model, assignments, "model")
            for lr in setting.lrs:
                train = _apply(
                    dataclasses.replace(TrainConfig(), **setting.train, lr=lr), assignments, "train"
                )
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
    return list(cells.values())


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


def run_cells(
    cells: Sequence[Cell],
    store: ResultStore,
    on_done: Callable[[Cell, list[dict]], None] | None = None,
    checkpoints: Path | None = None,
    tensorboard: bool = False,
) -> tuple[int, int]:
    """Run the cells that are not in the store yet. Returns (ran, skipped). With `checkpoints`, each cell run
    saves its trained model to checkpoints/<cell id>/ (cells skipped save nothing); with `tensorboard`, each cell
    logs its training curve under STORE/tensorboard/<cell id>/."""
    ran = skipped = 0
    for cell in cells:
        if store.has(cell.id):
            skipped += 1
            continue
        rows, meta = run_cell(
            cell,
            checkpoint_dir=None if checkpoints is None else checkpoints / cell.id,
            log_dir=store.root / "tensorboard" / cell.id if tensorboard else None,
        )
        store.write(cell.id, rows, dict(config=to_dict(cell), label=cell.label, **meta))
        ran += 1
        if on_done:
            on_done(cell, rows)
    return ran, skipped
