"""Cells that differ only in their learning rate, trained together as one stacked model (`harness run --stack-lrs`).

The lr grid of one configuration and seed (3 cells at the suites' small scales) shares its data, its batches (the
batch order is the seed's), its initial parameters (the seed's too) and every shape. `run_stack` trains such cells
as one stacked model (harness/run/grid_step.py: the G models' matrix products batched, their recurrent kernels
launched once with all heads side by side) and then evaluates and stores each cell as `run_cell` would: the same
rows, the same metadata, and `stacked_with` saying how many trained together. Each member keeps its own lr
schedule, gradient clipping, early stop (a member that reaches its target is frozen from then on, its parameters
those of that validation) and divergence (a member whose loss is not finite is frozen before that step's update,
as one cell alone makes no update from it).

What stacking does not do (yet): mid-training checkpoints (a stack cut off restarts from step 0), TensorBoard and
W&B logging, packed documents (the `lm` task): `harness run` refuses those combinations.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from harness.registry import TASKS
from harness.run.cell import (
    Cell,
    CellOptions,
    cell_row,
    cell_task_data,
    evaluated,
    failure_result,
    model_columns,
    result_rows,
    seeded_model,
)
from harness.run.device import autocast_dtype, resolve_device
from harness.run.evaluate import evaluate
from harness.run.grid_step import StackedAdamW, StackedModels, StackedStep
from harness.run.train import (
    READ_EVERY,
    TrainResult,
    batch_stream,
    history_point,
    lr_factor,
    reached,
    uses_graphs,
)
from tasks.base import Task

Result = tuple[list[dict[str, Any]], dict[str, Any]]


def stack_key(cell: Cell) -> tuple[str, int]:
    """Cells with one key differ in their lr alone (the setting id leaves out lr and seed)."""
    return cell.setting_id, cell.seed


@dataclass(frozen=True)
class CellStack:
    """Cells of one stack key, run as one job by a launcher (with each cell's options)."""

    cells: tuple[Cell, ...]
    options: tuple[CellOptions, ...]

    @property
    def label(self) -> str:
        """'kda@tiny · mqar · lr=0.001,0.003 · seed=0 (stacked)', as Cell.label names one cell."""
        first, lrs = self.cells[0], ",".join(f"{cell.train.lr:g}" for cell in self.cells)
        return f"{first.model_name}@{first.size} · {first.task_name} · lr={lrs} · seed={first.seed} (stacked)"

    @property
    def id(self) -> str:
        return "+".join(cell.id for cell in self.cells)


def group_stacks(cells: Sequence[Cell]) -> list[list[Cell]]:
    """The cells in stacks (lists of one key, in the order of their first cell); a cell alone is a stack of one."""
    stacks: dict[tuple[str, int], list[Cell]] = {}
    for cell in cells:
        stacks.setdefault(stack_key(cell), []).append(cell)
    return list(stacks.values())


def stackable_problem(cell: Cell) -> str | None:
    """Why a cell cannot train in a stack, or None."""
    if TASKS.get(cell.task_name).training_stream is not Task.training_stream:
        return (
            f"task {cell.task_name} trains on a packed document stream, which --stack-lrs does not take yet"
        )
    return None


def run_stack(stack: CellStack) -> list[Result]:
    """Train the stack's cells as one stacked model, then evaluate each; a (rows, meta) per cell, in order, as
    `run_cell` gives them. A failure in training is every member's (the same 'failed' or 'oom' row each); a failure
    while evaluating one member is that member's alone."""
    cells = stack.cells
    if len({stack_key(cell) for cell in cells}) != 1:
        raise ValueError("a stack's cells must differ in their lr alone")
    start = time.perf_counter()
    bases = [cell_row(cell) for cell in cells]
    task = TASKS.get(cells[0].task_name)()
    try:
        data = cell_task_data(cells[0])
        device = resolve_device(cells[0].train.device)
        models = [seeded_model(cell) for cell in cells]
        bases = [
            base.with_(**model_columns(models[0], cell, device))
            for base, cell in zip(bases, cells, strict=True)
        ]
        outcomes, trained_models = train_stacked(models, data.train, data.valid, cells, device)
    except Exception as err:  # noqa: BLE001 - a failed training is every member's result
        return [failure_result(err, base, start) for base in bases]
    results = []
    for cell, options, model, outcome, base in zip(
        cells, stack.options, trained_models, outcomes, bases, strict=True
    ):
        try:
            metrics, trained, extra = evaluated(cell, task, data, model, outcome, device, options, base)
            rows, meta = result_rows(trained, extra, data, options, base, start)
        except Exception as err:  # noqa: BLE001 - this member's evaluation failed, the others stand
            rows, meta = failure_result(err, base, start)
        if rows:
            meta["stacked_with"] = len(cells)
        results.append((rows, meta))
    return results


def train_stacked(
    models: list[torch.nn.Module], train_slices, valid_slices, cells: Sequence[Cell], device: torch.device
) -> tuple[list[TrainResult], list[torch.nn.Module]]:
    """Train `models` (one per cell, same architecture and initialisation) as one stacked model, each cell's own lr
    on the batches of their shared seed; returns each cell's TrainResult (as `harness.run.train.train` makes it)
    and its trained model (the stack's parameters at its last step, or at the validation where it reached its
    early-stop target)."""
    configs = [cell.train for cell in cells]
    config = configs[0]  # every field but lr is shared (stack_key)
    amp = autocast_dtype(config.dtype, device)
    stacked = StackedModels([m.to(device) for m in models], amp)
    optimizer = StackedAdamW(stacked, [c.lr for c in configs], config.betas, config.weight_decay)
    step_fn = StackedStep(stacked, optimizer, config.grad_clip, device, uses_graphs(config, device))
    results = [TrainResult() for _ in cells]
    done = [False] * len(cells)  # reached its target, or diverged: frozen
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    window_start, window_tokens = time.perf_counter(), 0
    loss_sums, loss_counts = [0.0] * len(cells), [0] * len(cells)
    # steps whose losses and active marks are still on the device, read a few at a time (one wait for the GPU)
    pending: list[tuple[int, torch.Tensor, torch.Tensor, int]] = []

    def settle() -> None:
        if not pending:
            return
        losses = torch.stack([p[1] for p in pending]).float().cpu()
        actives = torch.stack([p[2] for p in pending]).cpu()
        for (step, _, _, tokens), step_losses, active in zip(pending, losses, actives, strict=True):
            for i, result in enumerate(results):
                if done[i]:
                    continue
                if not active[i]:  # its loss was not finite: no update from it (train_step), and none after
                    done[i] = result.diverged = True
                    continue
                result.steps, result.tokens_seen = step, result.tokens_seen + tokens
                loss_sums[i] += step_losses[i].item()
                loss_counts[i] += 1
        pending.clear()

    batches = batch_stream(train_slices, config.batch_size, cells[0].seed)
    scratch = models[0]  # evaluation copies each member's parameters in here, one at a time
    for step in range(1, config.max_steps + 1):
        inputs, labels, segments = next(batches)
        if segments is not None:
            raise ValueError("stacked training takes no packed documents")
        losses = step_fn(inputs, labels, lr_factor(step - 1, config))
        tokens = math.prod(inputs.shape)
        pending.append((step, losses, step_fn.active.clone(), tokens))
        window_tokens += tokens
        evaluating = step % config.eval_every == 0 or step == config.max_steps
        if evaluating or len(pending) >= READ_EVERY:
            settle()
        if evaluating:
            tokens_per_s = window_tokens / max(time.perf_counter() - window_start, 1e-9)
            for i, (cell, result) in enumerate(zip(cells, results, strict=True)):
                if done[i]:
                    continue
                stacked.load_into(scratch, i)
                metrics = evaluate(scratch, valid_slices, cell.train, device)
                # tokens_per_s: the stack's rate, all members together (each member's share of the GPU is 1/G)
                lr = cell.train.lr * lr_factor(step, cell.train)
                train_loss = loss_sums[i] / max(1, loss_counts[i])
                result.history.append(
                    history_point(
                        step, result.tokens_seen, train_loss, metrics, lr, tokens_per_s * len(cells), device
                    )
                )
                loss_sums[i], loss_counts[i] = 0.0, 0
                if cell.train.target_accuracy is not None and reached(metrics, cell.train):
                    done[i] = True
                    step_fn.active[i] = False  # frozen at this validation's parameters
            window_start, window_tokens = time.perf_counter(), 0
        if all(done):
            break
    settle()
    wall = time.perf_counter() - start
    for result in results:
        result.wall_s = wall
        result.step_path = step_fn.describe()
    return results, [stacked.load_into(model, i) for i, model in enumerate(models)]
