"""Regression check on small models: rerun the cells of a committed baseline store and compare metric by metric.

The baseline (e.g. `results/smoke-cpu/`) holds a suite run over its lr grid with several seeds. A candidate run
repeats, for each configuration (a report row: ARCH@SIZE and its settings), the baseline's best lr (as `harness
report` chooses it) with the baseline's first seed, rebuilt from the config stored with the baseline's cell: the
same cell, run by the current code, optionally on another device. A metric regresses when it falls below the
baseline's mean by more than its tolerance, k standard deviations of the baseline's seed-to-seed spread, but at
least `min_tolerance` (with 2-3 seeds the spread can be nearly zero, and CPU numerics differ a little between
machines and library versions).
Improvements pass. A cell of the baseline that is missing or did not finish in the candidate fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.analysis.convergence import cell_still_improving
from harness.analysis.labels import task_label
from harness.analysis.report import best_lr, prepare, summarize
from harness.errors import HarnessError
from harness.results.store import ResultStore
from harness.run.cell import Cell
from harness.run.launchers import LaunchOptions, make_launcher
from harness.run.sweep import override_cell, run_cells

KEYS = ["model", "task", "task_setting", "slice", "metric"]


@dataclass(frozen=True)
class Tolerance:
    k: float = 3.0
    """Allowed drop in units of the baseline's seed-to-seed standard deviation."""
    min_tolerance: float = 0.03
    """Allowed drop at least this large (absolute)."""


def baseline_rows(path: Path) -> pd.DataFrame:
    if not (path / "cells").is_dir():
        raise HarnessError(
            f"no baseline store at {path}/ (make one with `harness run ... --seeds 0,1,2 --out {path}`)"
        )
    rows = ResultStore(path).read()
    rows = rows[rows["status"] == "ok"]
    if rows.empty:
        raise HarnessError(f"the baseline {path}/ holds no finished cells")
    for column in ("suite", "scale"):
        if rows[column].nunique() != 1:
            raise HarnessError(f"a baseline must be one suite at one scale; {path}/ has several {column}s")
    return rows.assign(task_setting=rows["task_setting"].fillna(""))


def compare(
    baseline: pd.DataFrame, candidate: pd.DataFrame, metrics: list[str], tolerance: Tolerance
) -> pd.DataFrame:
    """One row per baseline measurement: baseline mean/std/seeds, candidate value, allowed bound, verdict."""
    base = baseline[baseline["metric"].isin(metrics)]
    stats = base.groupby(KEYS, dropna=False).agg(
        mean=("value", "mean"),
        std=("value", "std"),
        seeds=("seed", "nunique"),
        higher_is_better=("higher_is_better", "first"),
    )
    stats["std"] = stats["std"].fillna(0.0)
    done = candidate[candidate["status"] == "ok"].assign(task_setting=candidate["task_setting"].fillna(""))
    got = done.groupby(KEYS, dropna=False)["value"].mean().rename("candidate")
    table = stats.join(got, how="left").reset_index()
    table["tolerance"] = (tolerance.k * table["std"]).clip(lower=tolerance.min_tolerance)
    sign = table["higher_is_better"].map({True: 1.0, False: -1.0})
    table["bound"] = table["mean"] - sign * table["tolerance"]
    change = sign * (table["candidate"] - table["mean"])
    table["verdict"] = "ok"
    table.loc[change > table["tolerance"], "verdict"] = "better"
    table.loc[change < -table["tolerance"], "verdict"] = "REGRESSED"
    table.loc[table["candidate"].isna(), "verdict"] = "MISSING"
    return table


def render(table: pd.DataFrame) -> str:
    shown = pd.DataFrame(
        {
            "model": table["model"],
            "task": [task_label(t, s) for t, s in zip(table["task"], table["task_setting"], strict=True)],
            "slice": table["slice"],
            "metric": table["metric"],
            "baseline": [f"{m:.3f} ± {s:.3f} ({n})" for m, s, n in zip(table["mean"], table["std"], table["seeds"], strict=True)],
            "candidate": table["candidate"].map(lambda v: "—" if pd.isna(v) else f"{v:.3f}"),
            "bound": [f"{'≥' if h else '≤'} {b:.3f}" for h, b in zip(table["higher_is_better"], table["bound"], strict=True)],
            "verdict": table["verdict"],
        }
    )  # fmt: skip
    return shown.to_markdown(index=False, disable_numparse=True) + (
        "\n\n(baseline: mean ± std over seeds (number of seeds); bound: the baseline mean minus the tolerance)"
    )


def regress(
    baseline_dir: Path,
    out: Path,
    models: list[str] | None = None,
    metrics: tuple[str, ...] = ("accuracy",),
    tolerance: Tolerance = Tolerance(),
    device: str = "cpu",
    workers: int | None = None,
    overrides: tuple[str, ...] = (),
    longest_s: float | None = None,
    settled_only: bool = False,
) -> tuple[bool, str, pd.DataFrame]:
    """Rerun the baseline's configurations (each at its best lr, the first seed, rebuilt from the config stored in
    the baseline: the same cells, run by this code) into `out`, compare. `models`: labels (mla@zoology-128) or
    architectures (mla: all its sizes); default all. Returns (passed, text, table). With `workers`, the cells run
    in that many processes at once (the pool launcher; on a GPU they share it), else one after another.
    `overrides` (--set style) change the rebuilt cells, e.g. a cap on steps that the baseline's cells stayed under.
    `longest_s`: only the configurations whose baseline cell trained in at most this many seconds (a check that must
    fit a job of limited length, against a store that keeps growing); `settled_only`: only configurations whose
    baseline cell was not still improving when its steps ran out (one near a transition scores anywhere from run
    to run: harness.analysis.convergence). The text names the ones left out."""
    store = ResultStore(baseline_dir)
    baseline = prepare(baseline_rows(baseline_dir), store)
    known = list(dict.fromkeys(baseline["label"]))
    if models:
        # a label as the report prints it, its model@size part alone (a label can name changed fields after it,
        # 'gdn@tiny [model.mixers.gdn.chunk_size=64]'), or an architecture
        sized = baseline["model"].astype(str) + "@" + baseline["preset"].astype(str)
        names = set(known) | set(sized) | set(baseline["model"])
        unknown = [m for m in models if m not in names]
        if unknown:
            raise HarnessError(f"the baseline has no model {', '.join(unknown)}; it has: {', '.join(known)}")
        baseline = baseline[
            baseline["label"].isin(models) | sized.isin(models) | baseline["model"].isin(models)
        ]
    best = best_lr(summarize(baseline))
    best_lrs = best[best["metric"] == metrics[0]].groupby("setting_id")["lr"].first()
    baseline = baseline[baseline["setting_id"].map(best_lrs) == baseline["lr"]]
    seed = int(baseline["seed"].min())
    suite, scale = baseline["suite"].iloc[0], baseline["scale"].iloc[0]
    # one cell per configuration: its first seed at its best lr, longest first (by the baseline's steps), so that
    # parallel workers finish together
    firsts = (
        baseline[baseline["seed"] == seed].sort_values("steps", ascending=False).drop_duplicates("setting_id")
    )
    metas = {run_id: store.read_meta(run_id) for run_id in firsts["run_id"]}
    notes = []
    if settled_only:
        moving = firsts["run_id"].map(lambda run_id: cell_still_improving(metas[run_id]) is True)
        if moving.any():
            notes.append(f"still improving at the end of the baseline: {_names(firsts[moving])}")
        firsts = firsts[~moving]
    if longest_s is not None:
        walls = firsts["run_id"].map(lambda run_id: metas[run_id].get("train_wall_s") or 0.0)
        if len(firsts) and (walls > longest_s).all():
            raise HarnessError(
                f"--longest-s {longest_s:g}: every chosen configuration of {baseline_dir} trained for longer "
                f"(shortest: {walls.min():.0f} s); raise it"
            )
        if (walls > longest_s).any():
            notes.append(f"longer than {longest_s:g} s in the baseline: {_names(firsts[walls > longest_s])}")
        firsts = firsts[walls <= longest_s]
    if firsts.empty:
        raise HarnessError(f"no configuration of {baseline_dir} is left to rerun ({'; '.join(notes)})")
    baseline = baseline[baseline["setting_id"].isin(firsts["setting_id"])]
    left_out = f" (left out: {'; '.join(notes)})" if notes else ""
    cells, label_of = [], {}
    for run_id, label in zip(firsts["run_id"], firsts["label"], strict=True):
        view = metas[run_id].get("config")
        if not view:
            raise HarnessError(
                f"baseline cell {run_id} has no stored config in {baseline_dir}/cells/{run_id}.json"
            )
        cell = override_cell(Cell.from_view(view), [f"train.device={device}", *overrides])
        cells.append(cell)
        label_of[cell.id] = label
    launcher = None if workers is None else make_launcher("pool", LaunchOptions(workers=workers))
    run_cells(cells, ResultStore(out), launcher=launcher)
    candidate = ResultStore(out).read()
    candidate = candidate[candidate["run_id"].isin(label_of)]
    # compare configuration by configuration: both sides keyed by the baseline's label
    table = compare(
        baseline.assign(model=baseline["label"]),
        candidate.assign(model=candidate["run_id"].map(label_of)),
        list(metrics),
        tolerance,
    )
    passed = bool((table["verdict"].isin(["ok", "better"])).all())
    chosen = ", ".join(
        f"{label} (lr {lr:g})" for label, lr in zip(firsts["label"], firsts["lr"], strict=True)
    )
    head = (
        f"regression check of {chosen} on {suite}/{scale}, seed {seed}, against {baseline_dir}/{left_out}: "
        + ("PASSED" if passed else "FAILED")
    )
    return passed, head + "\n\n" + render(table), table


def _names(configurations: pd.DataFrame) -> str:
    """'mla@kimi-synth on stack, ...': the configurations (one baseline row each) by label and task."""
    pairs = zip(configurations["label"], configurations["task"], strict=True)
    return ", ".join(f"{label} on {task}" for label, task in pairs)
