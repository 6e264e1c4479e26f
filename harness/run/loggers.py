"""Where a cell's training goes besides the results store: TensorBoard and Weights & Biases, the logs people
already read. Nothing here changes a result row or a cell's id: whether to log is a CellOptions field, not config.

Each cell is one run, named by its label and id: in TensorBoard the run folder OUT/tensorboard/<run_name(cell)>/,
e.g. `kda@tiny_mqar_lr=0.003_seed=0_c11ae78602ded640`; in W&B the run `kda@tiny · mqar · lr=0.003 · seed=0
(c11ae78602ded640)`, grouped by suite and scale. What a run holds:

    every optimizer step   train_loss_step (that step's loss)
    every evaluation       train_loss (mean since the last), valid_loss, valid_accuracy, current_lr, tokens_per_s
    at the end             the hyper-parameters (the cell's config flattened: train.lr, model.d_model,
                           task.vocab_size, ..., cell_id, setting_id) and the final metrics: test/<metric> (mean
                           over the test slices), test/<metric>/<slice>, steps; TensorBoard's HPARAMS tab, W&B's
                           config and summary
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import to_dict
from harness.errors import HarnessError
from harness.results.metrics import SLICE_METRICS

# What a TensorBoard evaluation point logs, of the training history's fields (harness/run/train.py).
EVALUATION_FIELDS = ("train_loss", "valid_loss", "valid_accuracy", "current_lr", "tokens_per_s")


@dataclass(frozen=True)
class WandbOptions:
    """Log each cell as a Weights & Biases run (mode, e.g. offline, from WANDB_MODE as wandb reads it)."""

    project: str = "harness"
    dir: Path | None = None
    """Where wandb keeps its files (its `wandb/` folder goes inside); None: the working directory."""


def run_name(cell) -> str:
    """The cell's label and id as one folder name: 'kda:mla=1:1@tiny · mqar · lr=0.003 · seed=0' ->
    'kda_mla=1_1@tiny_mqar_lr=0.003_seed=0_<cell id>'."""
    return re.sub(r"[^0-9A-Za-z@=.+-]+", "_", f"{cell.label} {cell.id}")


def require_tensorboard() -> None:
    """Raise a one-line HarnessError when the tensorboard package is missing (logging is optional)."""
    try:
        import torch.utils.tensorboard  # noqa: F401  (optional: only --tensorboard needs it)
    except ImportError:
        raise HarnessError(
            "TensorBoard logging needs the tensorboard package: pip install tensorboard (or run without --tensorboard)"
        ) from None


def require_wandb() -> None:
    """Raise a one-line HarnessError when the wandb package is missing (logging is optional)."""
    try:
        import wandb  # noqa: F401  (optional: only --wandb needs it)
    except ImportError:
        raise HarnessError(
            "Weights & Biases logging needs the wandb package: pip install wandb (or run without --wandb)"
        ) from None


class RunLogger:
    """One cell's run in TensorBoard (a folder) and/or W&B; `train` logs to it, `run_cell` finishes it.

    A logger that fails (no W&B login, a full disk) never fails the cell: the error is one warning line on stderr,
    that logger stops, and the cell's rows are stored as they would be without it.
    """

    def __init__(self, cell, tensorboard_dir: Path | None = None, wandb: WandbOptions | None = None):
        self.cell = cell
        self.last_step = 0
        self.writer = self.wandb_run = None
        if tensorboard_dir is not None:
            self.writer = self._guard("TensorBoard", lambda: _tensorboard_writer(tensorboard_dir))
        if wandb is not None:
            self.wandb_run = self._guard("W&B", lambda: _wandb_run(cell, wandb))

    def log(self, step: int, values: dict[str, float]) -> None:
        self.last_step = step
        if self.writer is not None:
            self.writer = self._guard("TensorBoard", lambda: _add_scalars(self.writer, values, step))
        if self.wandb_run is not None:
            self.wandb_run = self._guard("W&B", lambda: _wandb_log(self.wandb_run, values, step))

    def finish(self, metrics: dict[str, float] | None) -> None:
        """Record the hyper-parameters with the final `metrics` (None: the cell failed, nothing to record) and
        close the run."""
        if self.writer is not None:
            self._guard("TensorBoard", lambda: self._close_tensorboard(metrics))
        if self.wandb_run is not None:
            self._guard("W&B", lambda: self._close_wandb(metrics))
        self.writer = self.wandb_run = None

    def _close_tensorboard(self, metrics: dict[str, float] | None) -> None:
        if metrics is not None:
            # torch's add_hparams writes into a new run folder of its own; these summaries go into this run's
            from torch.utils.tensorboard.summary import hparams  # optional, as in _tensorboard_writer

            flat = {key: _hparam_value(value) for key, value in hyperparameters(self.cell).items()}
            for summary in hparams(flat, metrics):
                self.writer.file_writer.add_summary(summary)
            _add_scalars(self.writer, metrics, self.last_step)
        self.writer.close()

    def _close_wandb(self, metrics: dict[str, float] | None) -> None:
        if metrics is not None:
            self.wandb_run.summary.update(metrics)
        self.wandb_run.finish(exit_code=0 if metrics is not None else 1)

    def _guard(self, what: str, action: Callable[[], Any]) -> Any:
        """action(), or None after a warning when it fails (so that the caller drops that logger)."""
        try:
            return action()
        except Exception as err:  # noqa: BLE001 - logging is optional; the cell's results are not
            message = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            print(f"warning: {what} logging of {self.cell.label} stopped ({message})", file=sys.stderr)
            return None


def hyperparameters(cell) -> dict[str, Any]:
    """The cell's config flattened to dotted keys (train.lr, model.mixers.kda.num_heads, ...), with its ids."""
    flat: dict[str, Any] = {"cell_id": cell.id, "setting_id": cell.setting_id}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        else:
            flat[prefix] = value

    walk("", to_dict(cell))
    return flat


def final_metrics(metrics: dict[str, dict[str, float]], steps: int) -> dict[str, float]:
    """test/<metric> (mean over slices) and test/<metric>/<slice> of the metric table's slice metrics, and steps."""
    final: dict[str, float] = {"steps": float(steps)}
    for name in SLICE_METRICS:
        values = {piece: measured[name] for piece, measured in metrics.items() if name in measured}
        if not values:
            continue
        finite = [v for v in values.values() if math.isfinite(v)]
        final[f"test/{name}"] = sum(finite) / len(finite) if finite else math.nan
        final.update({f"test/{name}/{piece}": float(value) for piece, value in values.items()})
    return final


def _add_scalars(writer, values: dict[str, float], step: int):
    for key, value in values.items():
        writer.add_scalar(key, value, step)
    return writer


def _wandb_log(run, values: dict[str, float], step: int):
    run.log(dict(values), step=step)
    return run


def _hparam_value(value: Any) -> bool | int | float | str:
    """TensorBoard's hparams take numbers, strings and booleans: anything else as its JSON text."""
    return value if isinstance(value, bool | int | float | str) else json.dumps(value)


def _tensorboard_writer(log_dir: Path):
    require_tensorboard()
    from torch.utils.tensorboard import SummaryWriter  # optional dependency, checked above

    return SummaryWriter(log_dir=str(log_dir), flush_secs=10)  # a running cell shows up within seconds


def _wandb_run(cell, options: WandbOptions):
    require_wandb()
    import wandb  # optional dependency, checked above

    if options.dir is not None:
        Path(options.dir).mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=options.project,
        name=f"{cell.label} ({cell.id})",
        group=f"{cell.suite}@{cell.scale}",
        config=dict(to_dict(cell), cell_id=cell.id, setting_id=cell.setting_id),
        dir=None if options.dir is None else str(options.dir),
        reinit="create_new",  # one run per cell, several cells per process
        settings=wandb.Settings(silent=True),  # a banner per cell would bury the progress lines
    )
