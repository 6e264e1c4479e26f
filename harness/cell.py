"""One cell of a sweep: model x task setting x lr x seed. A frozen config whose hash is its identity, and the
function that trains, evaluates and turns the outcome into tidy result rows."""

from __future__ import annotations

import math
import re
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.checkpoint import save_checkpoint
from harness.config import config_hash
from harness.data import task_data
from harness.provenance import device_name, git_state, library_versions
from harness.registry import TASKS
from harness.train import (
    Checkpointing,
    TrainConfig,
    TrainResult,
    autocast_dtype,
    evaluate,
    resolve_device,
    train,
)
from models.backbone import LanguageModel, ModelConfig
from tasks.base import Slice

# Metrics reported per slice; scaled_accuracy, (accuracy - chance) / (1 - chance), only for tasks with a chance level.
HIGHER_IS_BETTER = {
    "accuracy": True,
    "sequence_accuracy": True,
    "scaled_accuracy": True,
    "loss": False,
    "perplexity": False,
    "unigram_loss": False,
}


@dataclass(frozen=True, kw_only=True)
class Cell:
    suite: str
    scale: str
    model_name: str
    """The model token as given (architecture, e.g. 'kimi' or 'kda:mla=1:1')."""
    size: str
    """Size preset name."""
    model: ModelConfig
    task_name: str
    task: Any
    train: TrainConfig
    seed: int

    @property
    def id(self) -> str:
        return config_hash(self)

    @property
    def label(self) -> str:
        return f"{self.model_name} · {self.task_name} · lr={self.train.lr:g} · seed={self.seed}"


@dataclass(frozen=True)
class CellOptions:
    """What a run of a cell writes besides its result rows. None of it changes a result, so none of it is part of
    the cell's id."""

    checkpointing: Checkpointing | None = None
    """Save training state now and then and resume from a checkpoint found there (crash safety)."""
    save_dir: Path | None = None
    """Save the trained model there as a transformers checkpoint, with its tokenizer and its test slices as
    lm-eval tasks (harness/checkpoint.py)."""
    log_dir: Path | None = None
    """Log the training curve to TensorBoard there."""


def run_cell(cell: Cell, options: CellOptions | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train and evaluate one cell. Returns (result rows, extra metadata such as the training history).

    Failures are data: a non-finite loss gives status 'diverged', CUDA running out of memory 'oom', any other
    exception 'failed' with its message; the caller writes these rows like any other. `options` says what else
    the run writes (see CellOptions).
    """
    options = options or CellOptions()
    start = time.perf_counter()
    base = _base_row(cell)
    task = TASKS.get(cell.task_name)()
    try:
        valid_slices = task_data(cell.task_name, cell.task, "valid", cell.seed)
        if task.text_corpus:  # batches are cut from a token stream
            train_data = task.training_stream(cell.task, cell.seed)
            test_slices = task_data(cell.task_name, cell.task, "test", cell.seed)
        else:
            train_data = task_data(cell.task_name, cell.task, "train", cell.seed)
            test_slices = drop_seen(task_data(cell.task_name, cell.task, "test", cell.seed), train_data)
        device = resolve_device(cell.train.device)
        torch.manual_seed(cell.seed)
        model = LanguageModel(cell.model)
        base.update(_model_columns(model, cell, device))
        outcome = train(
            model,
            train_data,
            valid_slices,
            cell.train,
            cell.seed,
            device,
            description=cell.label,
            checkpointing=options.checkpointing,
            log_dir=options.log_dir,
        )
        metrics = evaluate(model, test_slices, cell.train, device)
        extra_rows = []
        if task.text_corpus:
            from harness.lm import language_model_rows

            extra_rows = language_model_rows(
                model, task, cell, test_slices, metrics, outcome, device, options
            )
    except torch.cuda.OutOfMemoryError as err:
        return [_failure_row(base, "oom", err, start)], {}
    except Exception as err:  # noqa: BLE001 - a failed cell is recorded, the sweep goes on
        return [_failure_row(base, "failed", err, start)], {"traceback": traceback.format_exc()}
    status = "diverged" if outcome.diverged else "ok"
    for piece in test_slices:
        chance = task.chance_accuracy(cell.task, piece.name)
        if chance is not None:
            metrics[piece.name]["chance"] = chance
            metrics[piece.name]["scaled_accuracy"] = (metrics[piece.name]["accuracy"] - chance) / (1 - chance)
    meta = {"history": outcome.history, "train_wall_s": outcome.wall_s}
    if options.save_dir is not None:
        meta["checkpoint"] = str(
            save_checkpoint(model, cell, test_slices, options.save_dir, outcome, metrics)
        )
    rows = _metric_rows(base, metrics, outcome, status, model, test_slices)
    rows += [dict(_row_defaults(base, outcome, status), **row) for row in extra_rows]
    for row in rows:
        row["wall_s"] = round(time.perf_counter() - start, 3)
    return rows, meta


def failed_rows(cell: Cell, message: str, status: str = "failed") -> list[dict[str, Any]]:
    """The one row of a cell that could not run to its end for a reason outside it (e.g. its worker died)."""
    return [
        dict(_base_row(cell), slice=None, metric=None, value=None, status=status, error=message, wall_s=None)
    ]


def drop_seen(test: list[Slice], train_slices: list[Slice]) -> list[Slice]:
    """Remove test examples whose input also occurs in the training data (possible with small vocabularies)."""
    seen = {row.tobytes() for piece in train_slices for row in piece.inputs}
    kept = []
    for piece in test:
        fresh = [i for i, row in enumerate(piece.inputs) if row.tobytes() not in seen]
        kept.append(Slice(piece.name, piece.inputs[fresh], piece.labels[fresh]))
    return kept


def _base_row(cell: Cell) -> dict[str, Any]:
    commit, dirty = git_state()
    task_cls = TASKS.get(cell.task_name)
    return dict(
        run_id=cell.id,
        suite=cell.suite,
        scale=cell.scale,
        task=cell.task_name,
        task_version=task_cls.version,
        task_setting=task_cls().setting_name(cell.task),
        num_fewshot=0,
        seed=cell.seed,
        model=cell.model_name,
        preset=cell.size,
        layers=",".join(cell.model.layers),
        lr=cell.train.lr,
        git_commit=commit,
        git_dirty=dirty,
        **library_versions(),
    )


def _model_columns(model: LanguageModel, cell: Cell, device: torch.device) -> dict[str, Any]:
    amp = autocast_dtype(cell.train, device)
    return dict(
        params=model.num_params(),
        non_embedding_params=model.num_params(non_embedding=True),
        kernel_impl=model.kernel_names(device),
        dtype=str(amp or torch.float32).removeprefix("torch."),
        device=device_name(device),
    )


def _metric_rows(base, metrics, outcome: TrainResult, status, model: LanguageModel, slices) -> list[dict]:
    rows = []
    for piece in slices:
        seq_len = _slice_seq_len(piece)
        for metric, higher in HIGHER_IS_BETTER.items():
            if metric not in metrics[piece.name]:
                continue
            value = metrics[piece.name][metric]
            n = metrics[piece.name]["n_sequences" if metric == "sequence_accuracy" else "n_tokens"]
            # binomial standard error for accuracies (tokens of one sequence are not independent: a lower bound)
            p = metrics[piece.name]["accuracy"] if metric == "scaled_accuracy" else value
            stderr = math.sqrt(p * (1 - p) / n) if metric in ACCURACIES and n else None
            if metric == "scaled_accuracy" and stderr is not None:
                stderr /= 1 - metrics[piece.name]["chance"]
            rows.append(
                dict(
                    base,
                    slice=piece.name,
                    metric=metric,
                    value=value,
                    higher_is_better=higher,
                    n=n,
                    stderr=stderr,
                    state_size=model.state_size(seq_len),
                    steps=outcome.steps,
                    tokens_seen=outcome.tokens_seen,
                    status=status,
                    error=None,
                )
            )
    return rows


ACCURACIES = ("accuracy", "sequence_accuracy", "scaled_accuracy")


def _row_defaults(base: dict, outcome: TrainResult, status: str) -> dict[str, Any]:
    """What a row that is not one slice's metric (throughput, lm-eval scores) shares with the cell's rows."""
    return dict(base, steps=outcome.steps, tokens_seen=outcome.tokens_seen, status=status, error=None)


def _slice_seq_len(piece: Slice) -> int:
    match = re.search(r"seq_len=(\d+)", piece.name)
    return int(match[1]) if match else piece.inputs.shape[1]


def _failure_row(base: dict, status: str, err: Exception, start: float) -> dict[str, Any]:
    message = f"{type(err).__name__}: {err}".splitlines()[0][:500]
    return dict(
        base,
        slice=None,
        metric=None,
        value=None,
        status=status,
        error=message,
        wall_s=time.perf_counter() - start,
    )
