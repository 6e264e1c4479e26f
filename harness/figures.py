"""Figures from result rows (matplotlib, written as PNG)."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def slice_value(slice_name: str, key: str) -> float | None:
    """'seq_len=512,pairs=8' -> 512.0 for key 'seq_len'."""
    match = re.search(rf"(?:^|,){re.escape(key)}=([-\d.]+)", slice_name or "")
    return float(match[1]) if match else None


def best_over_lr(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Mean over seeds of `metric` per (task, model, slice, lr), then the best lr per (task, model, slice)."""
    ok = rows[(rows["status"] == "ok") & (rows["metric"] == metric)]
    means = ok.groupby(["task", "model", "slice", "lr"], as_index=False)["value"].mean()
    best = means.loc[means.groupby(["task", "model", "slice"])["value"].idxmax()]
    return best.reset_index(drop=True)


def accuracy_vs_length(rows: pd.DataFrame, path: Path, metric: str = "accuracy") -> Path | None:
    """One panel per task: `metric` (best lr) against sequence length, one line per model."""
    best = best_over_lr(rows, metric)
    best["seq_len"] = best["slice"].map(lambda s: slice_value(s, "seq_len"))
    best = best.dropna(subset=["seq_len"])
    if best.empty:
        return None
    # several slices at one length (e.g. different pair counts) are averaged into one point
    points = best.groupby(["task", "model", "seq_len"], as_index=False)["value"].mean()
    task_names = sorted(points["task"].unique())
    fig, axes = plt.subplots(1, len(task_names), figsize=(4.2 * len(task_names), 3.4), squeeze=False)
    for ax, task in zip(axes[0], task_names, strict=True):
        for model, line in points[points["task"] == task].groupby("model", sort=True):
            line = line.sort_values("seq_len")
            ax.plot(line["seq_len"], line["value"], marker="o", label=model)
        ax.set_xscale("log", base=2)
        ax.set_title(task)
        ax.set_xlabel("sequence length")
        ax.set_ylabel(f"{metric} (best lr)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(title="model", fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
