"""One cell of a sweep: model x task setting x lr x seed. A frozen config whose hash is its identity, and the
function that trains, evaluates and turns the outcome into tidy result rows (harness/results/schema.py)."""

from __future__ import annotations

import errno
import re
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.config import config_hash, from_view, to_dict, without_added_defaults
from harness.registry import MIXERS, TASKS
from harness.results.metrics import AUXILIARY, METRICS, SLICE_METRICS
from harness.results.provenance import device_label, git_state, library_versions
from harness.results.schema import Row
from harness.results.store import write_error
from harness.run.capture_gate import GATE
from harness.run.data import cell_data
from harness.run.device import autocast_dtype, resolve_device
from harness.run.evaluate import evaluate, loss_by_position
from harness.run.loggers import RunLogger, WandbOptions, final_metrics
from harness.run.train import Checkpointing, TrainConfig, TrainResult, train
from models.backbone import LanguageModel, ModelConfig
from tasks.base import Slice


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
    def setting_id(self) -> str:
        """The id of what the cell trains, less its seed and lr: the cells of one trained configuration over a
        grid of seeds and lrs share it, and a report row is one setting_id."""
        return setting_id_of(to_dict(self))

    @classmethod
    def from_view(cls, view: dict[str, Any]) -> Cell:
        """The cell a stored config view describes (`to_dict(cell)`, as in cells/<id>.json): the same cell, the
        same id (fields added to the configs since take their defaults, as ADDED_LATER keeps ids)."""
        mixers = {
            name: from_view(MIXERS.get(name).Config, fields)
            for name, fields in view["model"]["mixers"].items()
        }
        return cls(
            suite=view["suite"],
            scale=view["scale"],
            model_name=view["model_name"],
            size=view["size"],
            model=from_view(ModelConfig, view["model"], mixers=mixers),
            task_name=view["task_name"],
            task=from_view(TASKS.get(view["task_name"]).Config, view["task"]),
            train=from_view(TrainConfig, view["train"]),
            seed=view["seed"],
        )

    @property
    def label(self) -> str:
        """'kda@tiny · mqar · lr=0.003 · seed=0': how progress lines, plans and TensorBoard name the cell."""
        return f"{self.model_name}@{self.size} · {self.task_name} · lr={self.train.lr:g} · seed={self.seed}"


@dataclass(frozen=True)
class CellOptions:
    """What a run of a cell writes besides its result rows. None of it changes a result, so none of it is part of
    the cell's id."""

    checkpointing: Checkpointing | None = None
    """Save training state now and then and resume from a checkpoint found there (crash safety)."""
    save_dir: Path | None = None
    """Save the trained model there as a transformers checkpoint, with its tokenizer and its test slices as
    lm-eval tasks (harness/integrations/checkpoint.py)."""
    log_dir: Path | None = None
    """Log the training curve, hyper-parameters and final metrics to TensorBoard there (harness/run/loggers.py)."""
    wandb: WandbOptions | None = None
    """Log the same as a Weights & Biases run."""


_SEEDING = threading.Lock()
"""Held while a cell seeds torch's global generator and initialises its model from it."""


def run_cell(cell: Cell, options: CellOptions | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train and evaluate one cell. Returns (result rows as dicts of the Row schema, extra metadata such as the
    training history).

    Failures are data: a non-finite loss gives status 'diverged', CUDA running out of memory 'oom', any other
    exception 'failed' with its message; the caller writes these rows like any other. A failure of the machine
    rather than of the cell (an OSError: a full disk, a file that cannot be written) is no result: it returns
    `environment_failure` (no rows), and the cell runs again next time. `options` says what else the run writes
    (see CellOptions).
    """
    options = options or CellOptions()
    start = time.perf_counter()
    base = cell_row(cell)
    task = TASKS.get(cell.task_name)()
    logger = None
    try:
        if options.log_dir is not None or options.wandb is not None:
            logger = RunLogger(cell, options.log_dir, options.wandb)
        data = cell_task_data(cell)
        device = resolve_device(cell.train.device)
        model = seeded_model(cell)
        base = base.with_(**model_columns(model, cell, device))
        outcome = train(
            model,
            data.train,
            data.valid,
            cell.train,
            cell.seed,
            device,
            description=cell.label,
            checkpointing=options.checkpointing,
            logger=logger,
        )
        metrics, trained, extra = evaluated(cell, task, data, model, outcome, device, options, base)
        if logger is not None:
            logger.finish(final_metrics(metrics, outcome.steps))
            logger = None
    except Exception as err:  # noqa: BLE001 - failures are data (failure_result); the sweep goes on
        return failure_result(err, base, start)
    finally:
        if logger is not None:  # the cell failed before it had final metrics
            logger.finish(None)
    return result_rows(trained, extra, data, options, base, start)


def cell_task_data(cell: Cell):
    """The cell's train / valid / test data. Tasks make it on the CPU: other cells of this process may capture a
    CUDA graph meanwhile (capture_gate.py)."""
    with GATE.without_cuda():
        return cell_data(cell.task_name, cell.task, cell.seed)


def seeded_model(cell: Cell) -> LanguageModel:
    """The cell's model, initialised from torch's global generator seeded with the cell's seed."""
    # torch's global generator: cells of other threads (the streams launcher) must not draw from it meanwhile
    with _SEEDING:
        torch.manual_seed(cell.seed)
        return LanguageModel(cell.model)


def evaluated(cell: Cell, task, data, model, outcome: TrainResult, device, options: CellOptions, base: Row):
    """A trained cell's test metrics per slice (the task's own included), the trained model as tasks see it, and
    the task's extra rows."""
    metrics = evaluate(model, data.test, cell.train, device)
    for piece in data.test:
        metrics[piece.name].update(task.slice_metrics(cell.task, piece, metrics[piece.name]))
    trained = _Trained(model, cell, data.test, metrics, outcome, device, options, base)
    return metrics, trained, task.extra_rows(cell.task, trained, data.test)


def result_rows(trained: _Trained, extra, data, options: CellOptions, base: Row, start: float):
    """(rows, meta) of a trained and evaluated cell: a row per test slice and metric, the task's extra rows, and
    the training history with what the steps ran as."""
    outcome, model = trained.outcome, trained.model
    status = "diverged" if outcome.diverged else "ok"
    meta = {"history": outcome.history, "train_wall_s": outcome.wall_s, "train_step": outcome.step_path}
    if options.save_dir is not None:
        meta["checkpoint"] = str(trained.save(options.save_dir))
    done = base.with_(steps=outcome.steps, tokens_seen=outcome.tokens_seen, status=status)
    rows = slice_rows(done, trained.metrics, model, data.test) + [done.with_(**row) for row in extra]
    wall = round(time.perf_counter() - start, 3)
    return [row.with_(wall_s=wall).to_dict() for row in rows], meta


def failure_result(err: Exception, base: Row, start: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """What a cell that raised `err` returns: an 'oom' or 'failed' row (a result), or, for a failure of the
    machine (an OSError: a full disk, a file that cannot be written), `environment_failure` (no rows)."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return [_failure_row(base, "oom", err, start).to_dict()], {}
    if isinstance(err, OSError):
        no_space = err.errno in (errno.ENOSPC, errno.EDQUOT)
        message = (
            str(write_error(err, err.filename or "a file of the cell"))
            if no_space
            else f"{type(err).__name__}: {err}"
        )
        return environment_failure(message, no_space)
    return [_failure_row(base, "failed", err, start).to_dict()], {"traceback": traceback.format_exc()}


def setting_id_of(view: dict[str, Any]) -> str:
    """The setting id of a cell from its stored config view (`to_dict(cell)`, as in cells/<id>.json): the hash of
    everything but the seed and the lr, fields added to the configs since the view was stored ignored at their
    defaults (harness.config.ADDED_LATER), so that old and new stores agree."""
    train = without_added_defaults({k: v for k, v in view["train"].items() if k != "lr"}, TrainConfig)
    task_config = TASKS.get(view["task_name"]).Config if view["task_name"] in TASKS else None
    task = without_added_defaults(view["task"], task_config) if task_config else view["task"]
    model = without_added_defaults(view["model"], ModelConfig)
    if isinstance(model.get("mixers"), dict):
        model["mixers"] = {
            name: without_added_defaults(fields, MIXERS.get(name).Config) if name in MIXERS else fields
            for name, fields in model["mixers"].items()
        }
    return config_hash(
        {**{k: v for k, v in view.items() if k != "seed"}, "train": train, "task": task, "model": model}
    )


def cell_row(cell: Cell) -> Row:
    """The columns every row of a cell shares, before it has run."""
    commit, dirty = git_state()
    task_cls = TASKS.get(cell.task_name)
    return Row(
        run_id=cell.id,
        setting_id=cell.setting_id,
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


def environment_failure(message: str, no_space: bool = False) -> tuple[list, dict[str, Any]]:
    """What a cell that could not run to its end for a reason outside it (a full disk, its worker killed) hands
    back: no rows, so that nothing is stored and the next sweep runs it again, and the reason."""
    return [], {"environment": message, "no_space": no_space}


def slice_rows(done: Row, metrics: dict[str, dict], model: LanguageModel, slices: list[Slice]) -> list[Row]:
    """One row per (test slice, metric) in the order of the metric table, each with its count and stderr."""
    rows = []
    for piece in slices:
        measured = metrics[piece.name]
        unknown = set(measured) - set(SLICE_METRICS) - set(AUXILIARY)
        if unknown:
            raise ValueError(
                f"metric(s) {sorted(unknown)} of slice {piece.name} are not in harness/results/metrics.py"
            )
        state = model.state_size(_slice_seq_len(piece))
        for name in SLICE_METRICS:
            if name not in measured:
                continue
            spec, value = METRICS[name], measured[name]
            n = measured[spec.count]
            stderr = spec.stderr(measured, value, n) if spec.stderr is not None else None
            rows.append(
                done.with_(
                    slice=piece.name,
                    metric=name,
                    value=value,
                    higher_is_better=spec.higher_is_better,
                    n=n,
                    stderr=stderr,
                    state_size=state,
                )
            )
    return rows


class _Trained:
    """The trained model of a cell as a task's `extra_rows` sees it (tasks.base.TrainedModel), and its saving."""

    def __init__(self, model, cell, test_slices, metrics, outcome: TrainResult, device, options, base: Row):
        self.model, self.cell, self.test_slices, self.metrics = model, cell, test_slices, metrics
        self.outcome, self.device, self.options, self.base = outcome, device, options, base
        self.history = outcome.history

    def loss_by_position(self, piece: Slice) -> np.ndarray:
        return loss_by_position(self.model, piece, self.cell.train, self.device)

    def save(self, folder: Path) -> Path:
        # transformers' model classes are slow to import: only cells that save a checkpoint pay for it
        from harness.integrations.checkpoint import save_checkpoint

        provenance = self.base.with_(steps=self.outcome.steps, tokens_seen=self.outcome.tokens_seen)
        return save_checkpoint(
            self.model, self.cell, self.test_slices, folder, self.outcome, self.metrics, provenance.to_dict()
        )

    def lm_eval(self, task_names: Sequence[str]) -> list[dict[str, Any]]:
        """Save the model (into options.save_dir when given, else a temporary folder) and score it with lm-eval."""
        # lm-eval and transformers are slow to import: only tasks that ask for lm-eval scores pay for them
        from harness.integrations.lm_eval_scoring import evaluate_checkpoint

        keep = self.options.save_dir is not None
        folder = Path(self.options.save_dir) if keep else Path(tempfile.mkdtemp(prefix="harness-lm-"))
        try:
            _, rows = evaluate_checkpoint(
                self.save(folder), list(task_names), device=str(self.device), batch_size=8
            )
        finally:
            if not keep:
                shutil.rmtree(folder, ignore_errors=True)
        kept = (
            "task",
            "task_version",
            "num_fewshot",
            "slice",
            "metric",
            "value",
            "higher_is_better",
            "n",
            "stderr",
        )
        return [{key: row[key] for key in kept} | {"wall_s": row["wall_s"]} for row in rows]


def model_columns(model: LanguageModel, cell: Cell, device: torch.device) -> dict[str, Any]:
    amp = autocast_dtype(cell.train.dtype, device)
    return dict(
        params=model.num_params(),
        non_embedding_params=model.num_params(non_embedding=True),
        kernel_impl=model.kernel_names(device),
        dtype=str(amp or torch.float32).removeprefix("torch."),
        device=device_label(device),
    )


def _slice_seq_len(piece: Slice) -> int:
    match = re.search(r"seq_len=(\d+)", piece.name)
    return int(match[1]) if match else piece.inputs.shape[1]


def _failure_row(base: Row, status: str, err: Exception, start: float) -> Row:
    message = f"{type(err).__name__}: {err}".splitlines()[0][:500]
    return base.with_(status=status, error=message, wall_s=time.perf_counter() - start)
