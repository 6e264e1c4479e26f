"""The results store: one tidy row per measurement, one file per cell, append-only, written atomically.

Layout of a store directory:

    cells/<cell id>.json     the cell's resolved config, its training history and notes (written first)
    cells/<cell id>.jsonl    its result rows; present only once the cell finished (ok, diverged, oom or failed)

A file is written to a temporary name in the same directory, flushed to disk and renamed into place, so a crash
at any moment leaves either the complete file or none. Nothing in the store is ever rewritten.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from harness.registry import HarnessError

COLUMNS = [
    "run_id", "suite", "scale", "task", "task_version", "task_setting", "num_fewshot", "slice", "metric", "value",
    "higher_is_better", "n",
    "stderr", "seed", "model", "preset", "layers", "params", "non_embedding_params", "state_size", "lr", "steps",
    "tokens_seen", "kernel_impl", "dtype", "device", "git_commit", "git_dirty", "torch", "triton", "wall_s",
    "status", "error",
]  # fmt: skip


class ResultStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.cells = self.root / "cells"

    def has(self, cell_id: str) -> bool:
        return (self.cells / f"{cell_id}.jsonl").exists()

    def write(self, cell_id: str, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
        """Store one finished cell. Refuses to overwrite: a cell's results are written once."""
        if self.has(cell_id):
            raise FileExistsError(f"results of cell {cell_id} are already in {self.cells}")
        self.cells.mkdir(parents=True, exist_ok=True)
        atomic_write(self.cells / f"{cell_id}.json", json.dumps(meta, indent=1, default=str))
        atomic_write(
            self.cells / f"{cell_id}.jsonl", "".join(json.dumps(r, default=str) + "\n" for r in rows)
        )

    def read(self) -> pd.DataFrame:
        """All rows of all finished cells as one DataFrame (columns as COLUMNS, then any extras)."""
        records = []
        for path in sorted(self.cells.glob("*.jsonl")):
            for line_no, line in enumerate(path.read_text().splitlines(), 1):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    raise HarnessError(
                        f"corrupt result file {path} (line {line_no}); move it out of the store and rerun its cell"
                    ) from None
        frame = pd.DataFrame.from_records(records)
        for column in COLUMNS:
            if column not in frame:
                frame[column] = None
        return frame[COLUMNS + [c for c in frame.columns if c not in COLUMNS]]

    def read_curves(self, rows: pd.DataFrame) -> pd.DataFrame:
        """The training curves of the cells in `rows`: one row per history point (step, tokens, train_loss,
        valid_accuracy, ...) with the cell's run_id, model, task, task_setting, lr and seed."""
        keys = ["run_id", "model", "task", "task_setting", "lr", "seed"]
        cells = rows[keys].drop_duplicates("run_id")
        points = []
        for cell in cells.itertuples(index=False):
            path = self.cells / f"{cell.run_id}.json"
            try:
                history = json.loads(path.read_text()).get("history", [])
            except (OSError, json.JSONDecodeError):
                raise HarnessError(
                    f"unreadable cell file {path}; move it out of the store and rerun its cell"
                ) from None
            points += [dict(cell._asdict(), **point) for point in history]
        frame = pd.DataFrame.from_records(points)
        for column in keys + ["step", "tokens", "train_loss", "valid_accuracy"]:
            if column not in frame:
                frame[column] = None
        return frame


def atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
