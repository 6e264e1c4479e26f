"""How results are named in tables and figures: tasks with their setting, slices in numeric order, numbers."""

from __future__ import annotations

import re

import pandas as pd


def task_label(task: str, setting: object) -> str:
    """'niah' + 'variant=multi-key' -> 'niah[variant=multi-key]'; just the task when it has one setting."""
    return f"{task}[{setting}]" if isinstance(setting, str) and setting else task


def slice_sort_key(name: str) -> tuple:
    """'seq_len=64,pairs=8' sorts by (64, 8): numbers in the order they appear, numerically."""
    name = name if isinstance(name, str) else ""  # rows without a slice (lm-eval scores) have NaN there
    return tuple(float(x) for x in re.findall(r"=(-?[\d.]+)", name)), name


def format_mean_ci(mean: float, ci95: float) -> str:
    if pd.isna(mean):
        return "n/a"
    return f"{mean:.3f}" if pd.isna(ci95) else f"{mean:.3f} ± {ci95:.3f}"


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return str(int(n))
