"""The results store: one tidy row per measurement, one file per cell, append-only, written atomically, checked
when read.

Layout of a store directory:

    cells/<cell id>.jsonl     its result rows; written first when the cell finished (ok, diverged, oom or failed)
    cells/<cell id>.json      the cell's resolved config, training history and notes, and the row count and
                              sha256 of its .jsonl (written second: this file marks the cell finished)
    cells/<cell id>.lock      the lease of a cell being run: locked by the sweep process that runs it
    cells/<cell id>.ckpt.safetensors   mid-training checkpoint of a long cell; gone once it finished
    cells/damaged/            files of damaged cells and unusable checkpoints, moved aside (<id>.<n>.<suffix>)
    cells/history/            earlier results of cells rerun with `harness run --retry` (<id>.<n>.jsonl, .json)
    sweeps/<sweep id>.json    the cells a sweep planned, for `harness status`

A file is written to a temporary name in the same directory, flushed to disk and renamed into place, so a crash
at any moment leaves either the complete file or none. A cell is finished when its .jsonl exists and its .json
records the .jsonl's row count and checksum, and they match. Anything else with a cell's name is damaged: a
.jsonl without its .json (a crash between the two writes), a .jsonl that does not match its checksum (cut short,
edited), a .json that is not JSON, a .json alone. Readers name a damaged cell in one line and never count it as
finished; the next sweep that takes the cell's lease moves its files to cells/damaged/ and runs it again.

Cells written before checksums existed (their .json has no `result_sha256`) are legacy: they are finished when
every line of their .jsonl is a JSON object and there is at least one. A legacy .jsonl cut at a line boundary
cannot be told from a complete one.

Leases use `flock`: the kernel releases the lock of a killed process (even after SIGKILL), so a stale `.lock`
file left behind never blocks anyone; it is taken over by the next sweep that wants the cell. Two sweeps can
share one store (on one machine, or on a shared file system with working locks): each runs only the cells it
holds the lease of. A cell whose lease is held is being written, never damaged.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import pandas as pd

from harness.errors import HarnessError, warn
from harness.results.schema import COLUMNS, Row

DAMAGED, HISTORY = "damaged", "history"


class ResultStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.cells = self.root / "cells"

    # ---- reading: every answer is checked against the cell's checksum

    def has(self, cell_id: str) -> bool:
        """True if the cell finished and its files are intact."""
        return self.inspect(cell_id)[0] == "done"

    def done(self) -> set[str]:
        """Ids of the finished cells whose files are intact."""
        return {cell_id for cell_id in self._ids() if self.has(cell_id)}

    def damaged(self) -> dict[str, str]:
        """The damaged cells, each with one line that names its file and what is wrong. Cells whose lease a
        live process holds are being written, not damaged."""
        found = {}
        for cell_id in self._ids():
            state, why = self.inspect(cell_id)
            if state == "damaged" and not self._held(cell_id):
                found[cell_id] = why
        return found

    def rows(self, cell_id: str) -> list[dict[str, Any]]:
        """The rows of a finished cell; HarnessError naming the file if it is damaged or missing."""
        state, found = self.inspect(cell_id, rows=True)
        if state == "absent":
            raise HarnessError(f"no results of cell {cell_id} in {self.cells}")
        if state == "damaged":
            raise HarnessError(found)
        return found

    def inspect(self, cell_id: str, rows: bool = False) -> tuple[str, Any]:
        """The state of a cell's files: ('done', its rows if `rows` else None), ('absent', None), or
        ('damaged', one line naming the file and what is wrong)."""
        jsonl, meta_path = self.cells / f"{cell_id}.jsonl", self.cells / f"{cell_id}.json"
        if not jsonl.exists():
            if meta_path.exists():
                return "damaged", f"damaged cell {meta_path}: its result rows ({jsonl.name}) are missing"
            return "absent", None
        try:
            data = jsonl.read_bytes()
            meta = json.loads(meta_path.read_bytes()) if meta_path.exists() else None
        except (OSError, ValueError) as err:  # ValueError: not UTF-8 or not JSON
            name = meta_path if isinstance(err, ValueError) else getattr(err, "filename", jsonl)
            return "damaged", f"damaged cell {name}: unreadable ({type(err).__name__}: {err})"
        if meta is None:
            return (
                "damaged",
                f"damaged cell {jsonl}: its metadata {meta_path.name} is missing (a write cut short)",
            )
        if not isinstance(meta, dict):
            return "damaged", f"damaged cell {meta_path}: not a JSON object"
        digest = meta.get("result_sha256")
        if digest is not None and hashlib.sha256(data).hexdigest() != digest:
            return "damaged", (
                f"damaged cell {jsonl}: its contents do not match the checksum in {meta_path.name}"
                f" ({meta.get('result_rows')} rows were written)"
            )
        if digest is not None and not rows:
            return "done", None
        # legacy cells (no checksum) are parsed to be checked; checked cells only when their rows are wanted
        try:
            parsed = [json.loads(line) for line in data.decode().splitlines()]
        except ValueError as err:
            return "damaged", f"damaged cell {jsonl}: not JSON lines ({err})"
        if not all(isinstance(row, dict) for row in parsed):
            return "damaged", f"damaged cell {jsonl}: a line that is not a JSON object"
        if digest is None and not parsed:  # a legacy cell always had a row, a failure too
            return "damaged", f"damaged cell {jsonl}: empty"
        if len(parsed) != meta.get("result_rows", len(parsed)):
            return (
                "damaged",
                f"damaged cell {jsonl}: {len(parsed)} rows, its metadata says {meta['result_rows']}",
            )
        return "done", parsed if rows else None

    def read(self, cell_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """The rows of the finished cells (of `cell_ids`, default all) as one DataFrame (columns as COLUMNS, then
        any extras). A damaged cell among them is a HarnessError naming its file: the table would otherwise lack
        it without saying so."""
        wanted = sorted(self._ids() if cell_ids is None else set(cell_ids))
        records, damaged = [], []
        for cell_id in wanted:
            state, found = self.inspect(cell_id, rows=True)
            if state == "done":
                records += found
            elif state == "damaged" and not self._held(cell_id):
                damaged.append(found)
        if damaged:
            more = f" (and {len(damaged) - 1} more damaged cell(s))" if len(damaged) > 1 else ""
            raise HarnessError(
                f"{damaged[0]}{more}; rerun its sweep (`harness run` with the same options): the cell is moved"
                " to cells/damaged/ and run again"
            )
        frame = pd.DataFrame.from_records(records)
        for column in COLUMNS:
            if column not in frame:
                frame[column] = None
        return frame[COLUMNS + [c for c in frame.columns if c not in COLUMNS]]

    def _ids(self) -> set[str]:
        """Every cell id with a result or metadata file (temporary files, dot-named, are not cells)."""
        if not self.cells.is_dir():
            return set()
        return {
            path.name.split(".")[0]
            for path in self.cells.iterdir()
            if path.suffix in (".jsonl", ".json") and not path.name.startswith(".") and path.is_file()
        }

    def _held(self, cell_id: str) -> bool:
        """True if a live process holds the cell's lease (it is writing the cell right now)."""
        try:
            handle = open(self.cells / f"{cell_id}.lock")  # noqa: SIM115
        except FileNotFoundError:
            return False
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
        return False

    # ---- writing

    def checkpoint_path(self, cell_id: str) -> Path:
        return self.cells / f"{cell_id}.ckpt.safetensors"

    def prepare(self) -> None:
        """Make the store's folders, or raise HarnessError naming the path that cannot be written."""
        for folder in (self.root, self.cells, self.root / "sweeps"):
            if folder.exists() and not folder.is_dir():
                raise HarnessError(
                    f"{folder} is a file where the results store needs a folder; pass another --out"
                )
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise write_error(err, folder) from None

    def write(self, cell_id: str, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
        """Store one finished cell. Refuses to overwrite: a cell's results are written once. Every row is checked
        against the schema (harness/results/schema.py) and written with all its columns; then the metadata, with
        the rows' count and checksum, marks the cell finished. What a damaged earlier attempt left is moved to
        cells/damaged/ first."""
        if self.has(cell_id):
            raise FileExistsError(f"results of cell {cell_id} are already in {self.cells}")
        self.cells.mkdir(parents=True, exist_ok=True)
        self._set_aside_damaged(cell_id)
        data = "".join(json.dumps(Row(**r).to_dict(), default=str) + "\n" for r in rows).encode()
        meta = dict(meta, result_rows=len(rows), result_sha256=hashlib.sha256(data).hexdigest())
        for path, content in (
            (self.cells / f"{cell_id}.jsonl", data),
            (self.cells / f"{cell_id}.json", json.dumps(meta, indent=1, default=str)),
        ):
            try:
                atomic_write(path, content)
            except OSError as err:
                raise write_error(err, path) from None
        for leftover in (self.checkpoint_path(cell_id), self.cells / f"{cell_id}.ckpt"):
            leftover.unlink(missing_ok=True)

    def retire(self, cell_id: str) -> list[Path]:
        """Move a finished cell's files to cells/history/, so that it runs again (`harness run --retry`)."""
        files = [self.cells / f"{cell_id}.jsonl", self.cells / f"{cell_id}.json"]
        return set_aside([path for path in files if path.exists()], HISTORY)

    def lease(self, cell_id: str, **note: Any) -> Lease | None:
        """Take the lease of a cell without waiting; None if another live process holds it.

        Whatever a killed holder left half-written (temporary files, never a finished result) is removed once
        the lease is ours, and the files of a damaged cell are moved to cells/damaged/ (with a warning). `note`
        (e.g. the cell's label) is written into the lock file for `harness status`.
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
        self._set_aside_damaged(cell_id)
        record = dict(pid=os.getpid(), host=socket.gethostname(), started=time.time(), **note)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(record, default=str))
        handle.flush()
        return Lease(path, handle)

    def _set_aside_damaged(self, cell_id: str) -> None:
        state, why = self.inspect(cell_id)
        if state == "damaged":
            files = [self.cells / f"{cell_id}.jsonl", self.cells / f"{cell_id}.json"]
            moved = set_aside([path for path in files if path.exists()], DAMAGED)
            warn(f"{why}; moved to {moved[0].parent}/, running the cell again")

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
        done = self.done()
        for entry in os.scandir(self.cells):
            name = entry.name
            # <id>.lock, <id>.ckpt.safetensors (<id>.ckpt before safetensors), .<id>.<suffix>.<random>.tmp
            cell_id = name.lstrip(".").split(".")[0]
            leftover = name.endswith((".lock", ".ckpt", ".ckpt.safetensors")) or (
                name.startswith(".") and name.endswith(".tmp")
            )
            if leftover and cell_id in done and entry.is_file():
                (self.cells / name).unlink(missing_ok=True)

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


def set_aside(paths: list[Path] | Path, folder: str = DAMAGED) -> list[Path] | Path:
    """Move files of one cell into `folder` beside them, as <id>.<n><suffix> with one n for all of them (the
    first n that names none of them yet): nothing is deleted, and repeated attempts keep apart. Returns the new
    paths (one path for one path)."""
    single = isinstance(paths, Path)
    paths = [paths] if single else paths
    if not paths:
        return []
    target = paths[0].parent / folder
    target.mkdir(exist_ok=True)
    cell_id = paths[0].name.split(".")[0]
    suffixes = [path.name[len(cell_id) :] for path in paths]  # ".jsonl", ".ckpt.safetensors"
    n = 1
    while any((target / f"{cell_id}.{n}{suffix}").exists() for suffix in suffixes):
        n += 1
    moved = []
    for path, suffix in zip(paths, suffixes, strict=True):
        os.replace(path, target / f"{cell_id}.{n}{suffix}")
        moved.append(target / f"{cell_id}.{n}{suffix}")
    return moved[0] if single else moved


def read_plan(path: Path) -> dict | None:
    """A sweep record written by `record_plan`; None if it cannot be read or is not one."""
    try:
        plan = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    keys = ("id", "suites", "models", "cells")
    if (
        not isinstance(plan, dict)
        or any(key not in plan for key in keys)
        or not isinstance(plan["cells"], dict)
    ):
        return None
    return plan


def write_error(err: OSError, path: Path | str) -> HarnessError:
    """A failed write as one line that names the file (not a temporary one) and says what to do."""
    reason = (err.strerror or str(err)).lower()
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "free some space and run again (finished cells are kept)"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "use a folder you can write (--out)"
    else:
        hint = "check the path and run again"
    return HarnessError(f"{reason} writing {path}; {hint}")


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
