"""Two stores of the same sweep side by side (`harness compare-stores A B`): e.g. one run on one GPU and one on
several, or a run interrupted and resumed against an uninterrupted one. Rows are matched by cell id, task, slice
and metric; a value differs when the absolute difference exceeds the tolerance (NaN equals NaN).

The stores agree when they hold the same cells, each with the same status and the same measurements, every value
within the tolerance, and no measurement twice in a cell.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness.errors import HarnessError
from harness.results.store import ResultStore

KEY = ("run_id", "task", "slice", "metric")


@dataclass(frozen=True, kw_only=True)
class Difference:
    run_id: str
    label: str
    """The cell as a reader knows it: model, lr, seed."""
    task: str
    slice: str
    metric: str
    a: float
    b: float

    @property
    def diff(self) -> float:
        return _diff(self.a, self.b)


@dataclass(frozen=True, kw_only=True)
class Comparison:
    a: str
    b: str
    tolerance: float
    both: list[str]
    """Cell ids in both stores."""
    only_a: list[str]
    only_b: list[str]
    status: dict[str, tuple[str, str]]
    """Cells in both whose status differs: id -> (status in a, status in b)."""
    unmatched: list[tuple[str, ...]]
    """Measurements (KEY) of cells in both that one store lacks."""
    duplicated: list[tuple[str, ...]]
    """Measurements (KEY) that a store holds more than once."""
    matched: pd.DataFrame = field(repr=False)
    """One line per measurement in both: KEY, label, a, b, diff."""

    @property
    def differing(self) -> list[Difference]:
        beyond = self.matched[self.matched["diff"] > self.tolerance]
        return [
            Difference(**{k: row[k] for k in (*KEY, "label", "a", "b")})
            for row in beyond.sort_values("diff", ascending=False).to_dict("records")
        ]

    @property
    def agree(self) -> bool:
        return not (
            self.only_a or self.only_b or self.status or self.unmatched or self.duplicated or self.differing
        )

    def render(self, limit: int = 20) -> str:
        """Markdown: the counts, max and mean absolute differences per metric, and the values that differ."""
        lines = [
            f"# {self.a} vs {self.b}",
            "",
            f"- cells: {len(self.both)} in both, {len(self.only_a)} only in {self.a}, "
            f"{len(self.only_b)} only in {self.b}",
            f"- measurements matched: {len(self.matched)}; in one store only: {len(self.unmatched)}; "
            f"held twice: {len(self.duplicated)}",
            f"- tolerance: {self.tolerance:g} (absolute); beyond it: {len(self.differing)}",
        ]
        for name, ids in ((self.a, self.only_a), (self.b, self.only_b)):
            if ids:
                lines.append(
                    f"- only in {name}: {', '.join(ids[:limit])}" + (" ..." if len(ids) > limit else "")
                )
        for run_id, (left, right) in sorted(self.status.items()):
            lines.append(f"- status of {run_id}: {left} in {self.a}, {right} in {self.b}")
        for key in (self.unmatched + self.duplicated)[:limit]:
            what = "held twice" if key in self.duplicated else "in one store only"
            lines.append(f"- {what}: {' '.join(map(str, key))}")
        if len(self.matched):
            lines += [
                "",
                "| metric | values | max abs diff | mean abs diff | beyond tolerance |",
                "|---|---:|---:|---:|---:|",
            ]
            for metric, group in self.matched.groupby("metric", sort=True):
                finite = group["diff"][group["diff"].map(math.isfinite)]
                lines.append(
                    f"| {metric} | {len(group)} | {finite.max() if len(finite) else math.nan:.3g} | "
                    f"{finite.mean() if len(finite) else math.nan:.3g} | {int((group['diff'] > self.tolerance).sum())} |"
                )
        if self.differing:
            lines += [
                "",
                "| cell | task | slice | metric | a | b | abs diff |",
                "|---|---|---|---|---:|---:|---:|",
            ]
            for d in self.differing[:limit]:
                lines.append(
                    f"| {d.run_id} {d.label} | {d.task} | {d.slice} | {d.metric} | {d.a:.6g} | {d.b:.6g} | "
                    f"{d.diff:.3g} |"
                )
            if len(self.differing) > limit:
                lines.append(f"\n({len(self.differing) - limit} more beyond the tolerance)")
        lines += ["", "the stores agree" if self.agree else "the stores differ"]
        return "\n".join(lines)


def compare_stores(a: str | Path, b: str | Path, tolerance: float = 0.0) -> Comparison:
    """Compare the finished cells of two stores (a damaged cell in either is a HarnessError, as for `report`)."""
    if tolerance < 0 or not math.isfinite(tolerance):
        raise HarnessError(f"--tolerance must be a finite number >= 0, got {tolerance}")
    frames = []
    for root in (a, b):
        if not (Path(root) / "cells").is_dir():
            raise HarnessError(f"no results store at {root}/ (no cells/ folder)")
        frames.append(_measurements(ResultStore(root).read()))
    (rows_a, status_a), (rows_b, status_b) = frames
    both = sorted(status_a.keys() & status_b.keys())
    status = {i: (status_a[i], status_b[i]) for i in both if status_a[i] != status_b[i]}
    duplicated = sorted(
        {
            key
            for rows in (rows_a, rows_b)
            for key, n in Counter(map(tuple, rows[list(KEY)].values)).items()
            if n > 1
        }
    )
    shared = set(both)
    rows_a, rows_b = (
        rows[rows["run_id"].isin(shared)].drop_duplicates(list(KEY)) for rows in (rows_a, rows_b)
    )
    merged = rows_a.merge(rows_b, on=list(KEY), how="outer", suffixes=("_a", "_b"), indicator=True)
    unmatched = sorted(map(tuple, merged.loc[merged["_merge"] != "both", list(KEY)].values))
    matched = merged[merged["_merge"] == "both"]
    matched = pd.DataFrame(
        {
            **{k: matched[k] for k in KEY},
            "label": matched["label_a"],
            "a": matched["value_a"].astype(float),
            "b": matched["value_b"].astype(float),
        }
    ).reset_index(drop=True)
    matched["diff"] = [_diff(x, y) for x, y in zip(matched["a"], matched["b"], strict=True)]
    return Comparison(
        a=str(a),
        b=str(b),
        tolerance=tolerance,
        both=both,
        only_a=sorted(status_a.keys() - status_b.keys()),
        only_b=sorted(status_b.keys() - status_a.keys()),
        status=status,
        unmatched=unmatched,
        duplicated=duplicated,
        matched=matched,
    )


def _measurements(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """The rows that carry a value (KEY, label, value), and each cell's status."""
    if frame.empty:
        return pd.DataFrame(columns=[*KEY, "label", "value"]), {}
    status = {run_id: ",".join(sorted(set(group["status"]))) for run_id, group in frame.groupby("run_id")}
    rows = frame[frame["metric"].notna()].copy()
    rows["label"] = [
        f"({model} lr={lr:g} seed={seed})" if model is not None else ""
        for model, lr, seed in zip(rows["model"], rows["lr"].fillna(math.nan), rows["seed"], strict=True)
    ]
    for column in ("task", "slice"):
        rows[column] = rows[column].fillna("")
    return rows[[*KEY, "label", "value"]], status


def _diff(a: float, b: float) -> float:
    if a == b or (math.isnan(a) and math.isnan(b)):
        return 0.0
    if math.isnan(a) or math.isnan(b):
        return math.inf
    return abs(a - b)
