"""Result tables: rows of the store aggregated over seeds, as markdown (printed) and CSV (written)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

GROUP = ["suite", "scale", "model", "task", "task_version", "slice", "metric", "lr"]


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of every (model, task, slice, metric, lr), with its ± and the columns people compare."""
    ok = rows[rows["status"] == "ok"]
    if ok.empty:
        return pd.DataFrame()

    def one(group: pd.DataFrame) -> pd.Series:
        values = group["value"].astype(float)
        if len(values) > 1:
            spread = values.std(ddof=1) / np.sqrt(len(values))  # standard error over seeds
        else:
            spread = group["stderr"].iloc[0]  # within-run standard error
        return pd.Series(
            dict(
                params=int(group["params"].iloc[0]),
                state=int(group["state_size"].iloc[0]),
                value=values.mean(),
                pm=spread,
                seeds=group["seed"].nunique(),
                steps=int(group["steps"].mean()),
                kernel=group["kernel_impl"].iloc[0],
            )
        )

    table = ok.groupby(GROUP, sort=False, dropna=False).apply(one, include_groups=False).reset_index()
    return table


def markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "(no finished cells)"
    shown = pd.DataFrame(
        {
            "model": table["model"],
            "params": table["params"].map(human),
            "state": table["state"].map(human),
            "task (v)": table["task"] + " (" + table["task_version"].astype(str) + ")",
            "slice": table["slice"],
            "metric": table["metric"],
            "value": table["value"].map(lambda v: f"{v:.3f}"),
            "±": table["pm"].map(lambda v: "" if pd.isna(v) else f"{v:.3f}"),
            "seeds": table["seeds"],
            "lr": table["lr"].map(lambda v: f"{v:g}"),
            "steps": table["steps"],
            "kernel": table["kernel"],
        }
    )
    return shown.to_markdown(index=False)


def failures_markdown(rows: pd.DataFrame) -> str:
    bad = rows[rows["status"] != "ok"].drop_duplicates("run_id")
    if bad.empty:
        return ""
    return bad[["model", "task", "lr", "seed", "status", "error"]].to_markdown(index=False)


def write_csv(table: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return path


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return str(int(n))
