"""`harness export`: a store's raw rows and training curves as one parquet or CSV file each, for the tools people
load tables with. Rows keep every column of the schema (harness/results/schema.py) plus `label`; rows written
before setting_id existed get it from their cell's config, as the report does."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.analysis.report import with_settings
from harness.results.store import ResultStore, atomic_write


def export_store(store: ResultStore, out: Path, format_: str = "parquet") -> dict[Path, int]:
    """Write OUT/rows.<format> and OUT/curves.<format> (atomically); returns {path: number of rows}."""
    rows = with_settings(store.read(), store)
    rows.attrs = {}  # parquet would try to store the configs
    finished = rows[rows["status"].notna()]
    curves = store.read_curves(finished.drop_duplicates("run_id"), keys=("setting_id", "label", "preset"))
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, table in (("rows", rows), ("curves", curves)):
        path = out / f"{name}.{format_}"
        atomic_write(path, lambda f, table=table: _write(table, f, format_))
        written[path] = len(table)
    return written


def _write(table: pd.DataFrame, handle, format_: str) -> None:
    if format_ == "csv":
        handle.write(table.to_csv(index=False).encode())
    else:
        # mixed-type columns (None beside numbers) are stored as their common type by pyarrow
        table.to_parquet(handle, index=False)
