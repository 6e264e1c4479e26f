"""The results store: one tidy row per measurement, one file per cell, append-only, written atomically.

Layout of a store directory:

    cells/<cell id>.json     the cell's resolved config, its training history and notes (written first)
    cells/<cell id>.jsonl    its result rows; present only once the cell finished (ok, diverged, oom or failed)
    cells/<cell id>.lock     the lease of a cell being run: locked by the sweep process that runs it
    cells/<cell id>.ckpt     mid-training checkpoint of a long cell (model, optimizer, step); gone once it finished
    sweeps/<sweep id>.json   the cells a sweep planned, for `harness status`

A file is written to a temporary name in the same directory, flushed to disk and renamed into place, so a crash
at any moment leaves either the complete file or none. The `.jsonl` file is what marks a cell finished: it is
written last and never rewritten. The `.json` beside it may be replaced until then (a cell killed between the
two writes runs again and writes both).

Leases use `flock`: the kernel releases the lock of a killed process (even after SIGKILL), so a stale `.lock`
file left behind never blocks anyone; it is taken over by the next sweep that wants the cell. Two sweeps can
share one store (on one machine, or on a shared file system with working locks): each runs only the cells it
holds the lease of.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pandas as pd

from harness.errors import HarnessError
from harness.results.schema import COLUMNS, Row


class ResultStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.cells = self.root / "cells"

    def has(self, cell_id: str) -> bool:
        return (self.cells / f"{cell_id}.jsonl").exists()

    def done(self) -> set[str]:
        """Ids of the finished cells."""
        return {path.stem for path in self.cells.glob("*.jsonl")}

    def checkpoint_path(self, cell_id: str) -> Path:
        return self.cells / f"{cell_id}.ckpt"

    def write(self, cell_id: str, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
        """Store one finished cell. Refuses to overwrite: a cell's results are written once. Every row is checked
        against the schema (harness/results/schema.py) and written with all its columns."""
        if self.has(cell_id):
            raise FileExistsError(f"results of cell {cell_id} are already in {self.cells}")
        self.cells.mkdir(parents=True, exist_ok=True)
        atomic_write(self.cells / f"{cell_id}.json", json.dumps(meta, indent=1, default=str))
        atomic_write(
            self.cells / f"{cell_id}.jsonl",
            "".join(json.dumps(Row(**r).to_dict(), default=str) + "\n" for r in rows),
        )
        self.checkpoint_path(cell_id).unlink(missing_ok=True)

    def lease(self, cell_id: str, **note: Any) -> Lease | None:
        """Take the lease of a cell without waiting; None if another live process holds it.

        Whatever a killed holder left half-written (temporary files, never a finished result) is removed once
        the lease is ours. `note` (e.g. the cell's label) is written into the lock file for `harness status`.
        """
        self.cells.mkdir(parents=True, exist_ok=True)
        path = self.cells / f"{cell_id}.lock"
        while True:
            handle = open(path, "a+")  # noqa: SIM115 - held open for the lease's lifetime
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                return None
            # the holder before us may have removed the file after locking it: ours must still be the file there
            try:
                same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            handle.close()
        for leftover in self.cells.glob(f".{cell_id}.*.tmp"):
            leftover.unlink(missing_ok=True)
        record = dict(pid=os.getpid(), host=socket.gethostname(), started=time.time(), **note)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(record, default=str))
        handle.flush()
        return Lease(path, handle)

    def running(self) -> dict[str, dict[str, Any]]:
        """The cells whose lease a live process holds, with what it wrote into the lock file."""
        held = {}
        for path in self.cells.glob("*.lock"):
            try:
                handle = open(path)  # noqa: SIM115
            except FileNotFoundError:
                continue
            with handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    try:
                        held[path.stem] = json.loads(handle.read() or "{}")
                    except json.JSONDecodeError:  # being written this very moment
                        held[path.stem] = {}
        return held

    def tidy(self) -> None:
        """Remove what finished cells no longer need (their leases, checkpoints and temporary files)."""
        if not self.cells.is_dir():
            return
        names = [entry.name for entry in os.scandir(self.cells)]
        done = {name.removesuffix(".jsonl") for name in names if name.endswith(".jsonl")}
        for name in names:
            # <id>.lock, <id>.ckpt, .<id>.<suffix>.<random>.tmp
            cell_id = name.lstrip(".").split(".")[0]
            leftover = name.endswith((".lock", ".ckpt")) or (name.startswith(".") and name.endswith(".tmp"))
            if leftover and cell_id in done:
                (self.cells / name).unlink(missing_ok=True)

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

    def read_meta(self, run_id: str) -> dict[str, Any]:
        """What cells/<run_id>.json holds: the cell's config, label, training history and notes ({} if absent)."""
        path = self.cells / f"{run_id}.json"
        if not path.exists():
            return {}
        try:
            meta = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise HarnessError(
                f"unreadable cell file {path}; move it out of the store and rerun its cell"
            ) from None
        if not isinstance(meta, dict):
            raise HarnessError(
                f"cell file {path} holds no JSON object; move it out of the store and rerun its cell"
            )
        return meta

    def read_curves(self, rows: pd.DataFrame, keys: tuple[str, ...] = ()) -> pd.DataFrame:
        """The training curves of the cells in `rows`: one row per history point (step, tokens, train_loss,
        valid_accuracy, ...) with the cell's run_id, model, task, task_setting, lr, seed and the `keys` columns."""
        keys = list(dict.fromkeys(["run_id", "model", "task", "task_setting", "lr", "seed", *keys]))
        cells = rows[keys].drop_duplicates("run_id")
        points = []
        for cell in cells.itertuples(index=False):
            history = self.read_meta(cell.run_id).get("history", [])
            points += [dict(cell._asdict(), **point) for point in history]
        frame = pd.DataFrame.from_records(points)
        for column in keys + ["step", "tokens", "train_loss", "valid_accuracy"]:
            if column not in frame:
                frame[column] = None
        return frame


class Lease:
    """A held cell lease; `release` after the cell's results are written (or on giving the cell up)."""

    def __init__(self, path: Path, handle: IO[str]):
        self.path, self.handle = path, handle

    def release(self, remove: bool = True) -> None:
        if self.handle.closed:
            return
        if remove:
            # removed while still locked: whoever opened the old file sees it is no longer the one in place
            self.path.unlink(missing_ok=True)
        self.handle.close()


# the process's umask, read once (os.umask can only be read by setting it)
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, content: str | bytes | Callable[[IO[bytes]], None]) -> None:
    """Write `content` (text, bytes, or a function that writes to a binary file) to `path` all or nothing."""
    # the cell id leads the temporary name (.<id>.<suffix>.<random>.tmp): a new lease holder removes its leftovers
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); a store is shared, so give it the permissions of any new file
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
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
