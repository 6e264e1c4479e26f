"""A cell's data: its task's slices, materialised once as a `datasets.Dataset` and cached on disk under the hash
of what made it, or the task's own training stream (`Task.training_stream`).

The cache key is the task's name and version, its config, the split and the seed: change any of them and the
data is generated anew; bump a task's version when its generator changes. Set HARNESS_CACHE to move the cache
(default ~/.cache/harness/data); HARNESS_CACHE=off generates in memory every time.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.config import config_hash, to_dict
from harness.registry import TASKS
from tasks.base import Slice, TrainingStream, cache_root


@dataclass(frozen=True)
class CellData:
    train: list[Slice] | TrainingStream
    """The training slices, or the task's own stream of batches."""
    valid: list[Slice]
    """Scored every eval_every steps (the curve, early stopping)."""
    test: list[Slice]
    """Scored once after training: the cell's result rows. Test examples that also occur in the training slices
    are left out."""


def cell_data(task_name: str, config: Any, seed: int) -> CellData:
    """The data of a cell of `task_name` with `config` and `seed`: what it trains, tracks and is scored on."""
    stream = TASKS.get(task_name)().training_stream(config, seed)
    valid = task_data(task_name, config, "valid", seed)
    test = task_data(task_name, config, "test", seed)
    if stream is not None:
        return CellData(stream, valid, test)
    train = task_data(task_name, config, "train", seed)
    return CellData(train, valid, drop_seen(test, train))


def drop_seen(test: list[Slice], train_slices: list[Slice]) -> list[Slice]:
    """Remove test examples whose input also occurs in the training data (possible with small vocabularies)."""
    seen = {row.tobytes() for piece in train_slices for row in piece.inputs}
    kept = []
    for piece in test:
        fresh = [i for i, row in enumerate(piece.inputs) if row.tobytes() not in seen]
        kept.append(Slice(piece.name, piece.inputs[fresh], piece.labels[fresh]))
    return kept


def task_data(task_name: str, config: Any, split: str, seed: int) -> list[Slice]:
    """The slices of one split, from the cache when present, else generated and stored."""
    task = TASKS.get(task_name)()
    root = cache_root()
    if root is None or not task.cache_slices or not _can_cache():
        return task.generate(config, split, seed)
    key = config_hash(
        dict(task=task_name, version=task.version, config=to_dict(config), split=split, seed=seed)
    )
    path = root / f"{task_name}-{split}-{key}"
    if path.exists():
        return _from_dataset(path)
    slices = task.generate(config, split, seed)
    _save(slices, path)
    return slices


def _can_cache() -> bool:
    """Whether the cache's format (a `datasets.Dataset` on disk) can be written here. Without the `datasets`
    package (a GPU image that carries only torch, say) the data is generated in memory, as with HARNESS_CACHE=off:
    the cache saves time, it changes no result."""
    return importlib.util.find_spec("datasets") is not None


def _save(slices: list[Slice], path: Path) -> None:
    # slow to import; only needed when writing or reading the cache
    import datasets
    import pyarrow as pa

    datasets.disable_progress_bars()

    names = np.concatenate([np.full(len(piece), piece.name, dtype=object) for piece in slices])

    def lists(arrays: list[np.ndarray]) -> pa.ListArray:
        # one Arrow list per example, built from flat values and offsets (no Python loop over examples)
        lengths = np.concatenate([np.full(len(a), a.shape[1]) for a in arrays])
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        return pa.ListArray.from_arrays(offsets, np.concatenate([a.ravel() for a in arrays]).astype(np.int64))

    table = pa.table(
        {
            "slice": pa.array(names, pa.string()),
            "input_ids": lists([piece.inputs for piece in slices]),
            "labels": lists([piece.labels for piece in slices]),
        }
    )
    dataset = datasets.Dataset(datasets.table.InMemoryTable(table))
    # Write beside the final place and rename, so that a crash never leaves a half-written cache entry.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        dataset.save_to_disk(str(tmp))
        os.replace(tmp, path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not path.exists():  # another process may have written the same entry first
            raise


def _from_dataset(path: Path) -> list[Slice]:
    import datasets  # slow to import; only needed when reading the cache

    table = datasets.load_from_disk(str(path)).with_format("arrow")[:]
    names = table.column("slice").to_numpy(zero_copy_only=False)
    columns = {}
    for column in ("input_ids", "labels"):
        lists = table.column(column).combine_chunks()
        columns[column] = (lists.offsets.to_numpy(), lists.flatten().to_numpy())
    slices = []
    # rows of one slice are contiguous and of one length (as _save wrote them)
    boundaries = np.flatnonzero(names[1:] != names[:-1]) + 1
    for first, end in zip(np.r_[0, boundaries], np.r_[boundaries, len(names)], strict=True):
        arrays = []
        for column in ("input_ids", "labels"):
            offsets, values = columns[column]
            arrays.append(values[offsets[first] : offsets[end]].reshape(end - first, -1).astype(np.int64))
        slices.append(Slice(str(names[first]), *arrays))
    return slices
