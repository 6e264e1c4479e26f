"""Result tables: rows of the store aggregated over seeds, the best learning rate chosen, pivoted for reading.

The protocol (as Zoology and the Kimi report compare architectures):
1. every (model, task setting, lr) is run with several seeds; per slice and metric we take the mean over seeds and
   its 95% Student-t interval (`harness.analysis.stats.mean_interval`);
2. per (model, task setting, metric) the best lr is the one whose mean over all test slices is best. One lr per
   trained model, not one per slice: a cell is trained once on the task's training mixture and evaluated on every
   slice, so choosing the lr slice by slice would mix different models into one row and flatter every architecture.

Markdown is printed; CSVs (the tidy best-lr table and the pivot) and figures are written under OUT/report/.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from harness.analysis.figures import draw_all
from harness.analysis.labels import format_mean_ci, human, slice_sort_key, task_label
from harness.analysis.stats import mean_interval
from harness.results.metrics import default_metrics
from harness.results.store import atomic_write, write_error

# What identifies one trained model on one task setting (everything but the seed).
SETTING = ["suite", "scale", "model", "task", "task_setting", "task_version", "metric", "lr"]
GROUP = SETTING[:-2] + ["slice", "metric", "lr"]


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (model, task setting, slice, metric, lr): mean over seeds, 95% interval, seeds, params, state."""
    ok = rows[(rows["status"] == "ok") & rows["metric"].notna()].copy()
    if ok.empty:
        return pd.DataFrame()
    ok["task_setting"] = ok["task_setting"].fillna("")  # rows written before the column existed have None

    def one(group: pd.DataFrame) -> pd.Series:
        mean, ci95, _ = mean_interval(group["value"].astype(float).tolist())
        return pd.Series(
            dict(
                mean=mean,
                ci95=ci95,
                seeds=group["seed"].nunique(),
                params=int(group["params"].iloc[0]),
                state=int(group["state_size"].iloc[0]) if pd.notna(group["state_size"].iloc[0]) else None,
                steps=int(group["steps"].mean()),
                higher_is_better=bool(group["higher_is_better"].iloc[0]),
                kernel=group["kernel_impl"].iloc[0],
            )
        )

    return ok.groupby(GROUP, sort=False, dropna=False).apply(one, include_groups=False).reset_index()


def best_lr(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary rows at each (model, task setting, metric)'s best lr, with `lrs` = how many lrs were tried."""
    if summary.empty:
        return summary
    keys = SETTING[:-1]
    per_lr = summary.groupby(keys + ["lr"], dropna=False, as_index=False).agg(
        score=("mean", "mean"), higher=("higher_is_better", "first")
    )
    per_lr["rank_score"] = np.where(per_lr["higher"], per_lr["score"], -per_lr["score"])
    per_lr = per_lr.dropna(subset=["rank_score"])
    best = per_lr.loc[per_lr.groupby(keys, dropna=False)["rank_score"].idxmax(), keys + ["lr"]]
    tried = summary.groupby(keys, dropna=False)["lr"].nunique().rename("lrs").reset_index()
    table = summary.merge(best, on=keys + ["lr"]).merge(tried, on=keys)
    return table.reset_index(drop=True)


def best_curves(rows: pd.DataFrame, best: pd.DataFrame, store) -> pd.DataFrame:
    """The stored training curves of the finished cells at each model's best lr (`store.read_curves`)."""
    keys = ["model", "task", "task_setting", "lr"]
    at_best = rows.assign(task_setting=rows["task_setting"].fillna("")).merge(
        best[keys].drop_duplicates(), on=keys
    )
    return store.read_curves(at_best[at_best["status"] == "ok"])


def pivot(best: pd.DataFrame) -> pd.DataFrame:
    """Model x slice, one table per (suite, scale, task setting, metric): 'mean ± ci95' strings and the context."""
    if best.empty:
        return best
    frames = []
    per_table = ["suite", "scale", "task", "task_setting", "task_version", "metric"]
    order = list(dict.fromkeys(best["model"]))  # one model order in every table
    best = best.sort_values("model", key=lambda names: names.map(order.index), kind="stable")
    for (suite, scale, task, setting, version, metric), group in best.groupby(
        per_table, sort=False, dropna=False
    ):
        slices = sorted(dict.fromkeys(group["slice"]), key=slice_sort_key)
        for model, rows in group.groupby("model", sort=False):
            rows = rows.set_index("slice")
            record = dict(
                suite=suite,
                scale=scale,
                task=f"{task_label(task, setting)} (v{version})",
                metric=metric,
                model=model,
                params=rows["params"].iloc[0],
                # state at the longest slice: attention's cache grows with length, a recurrent state does not
                state=rows["state"].max(),
                lr=rows["lr"].iloc[0],
                lrs=rows["lrs"].iloc[0],
                seeds=rows["seeds"].min(),
            )
            for name in slices:
                record[name] = format_mean_ci(*rows.loc[name, ["mean", "ci95"]]) if name in rows.index else ""
            frames.append(record)
    return pd.DataFrame(frames)


def pivot_markdown(best: pd.DataFrame) -> str:
    """One markdown table per suite/scale/task setting/metric, models as rows and slices as columns."""
    if best.empty:
        return "(no finished cells)"
    table = pivot(best)
    parts = []
    for (suite, scale, task, metric), group in table.groupby(
        ["suite", "scale", "task", "metric"], sort=False
    ):
        shown = group.drop(columns=["suite", "scale", "task", "metric"]).dropna(axis=1, how="all")
        shown = shown.loc[:, (shown != "").any(axis=0)]
        for column in ("params", "state"):  # rows of no slice (throughput, lm-eval) have no state size
            if column in shown:
                shown[column] = shown[column].map(human)
        shown["lr"] = [
            f"{lr:g} (best of {n})" if n > 1 else f"{lr:g}"
            for lr, n in zip(shown["lr"], shown["lrs"], strict=True)
        ]
        shown = shown.drop(columns=["lrs"])
        parts.append(
            f"### {suite} · {scale} · {task} · {metric}\n\n"
            + shown.to_markdown(index=False, disable_numparse=True)
        )
    intervals = "mean ± half-width of the 95% t-interval over seeds (no ± with one seed); best lr by the mean over slices"
    return "\n\n".join(parts) + f"\n\n({intervals})"


def failures_markdown(rows: pd.DataFrame) -> str:
    bad = rows[rows["status"] != "ok"].drop_duplicates("run_id")
    if bad.empty:
        return ""
    return bad[["model", "task", "lr", "seed", "status", "error"]].to_markdown(index=False)


def write_csv(table: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(path, table.to_csv(index=False))  # a failed rewrite leaves the previous report whole
    except OSError as err:
        raise write_error(err, path) from None
    return path


def shown_metrics(best: pd.DataFrame, metric: str | None) -> pd.DataFrame:
    """The rows of the tables to print: `metric` (comma-separated names), or default_metrics() where present
    (next-token accuracy is left out for tasks that report perplexity)."""
    if best.empty:
        return best
    if metric:
        return best[best["metric"].isin(metric.split(","))]
    shown = best[best["metric"].isin(default_metrics())]
    with_perplexity = set(best.loc[best["metric"] == "perplexity", "task"])
    return shown[~((shown["metric"] == "accuracy") & shown["task"].isin(with_perplexity))]


def write_report(
    rows: pd.DataFrame,
    store,
    directory: Path,
    name: str,
    metric: str | None = None,
    figures: bool = False,
    model_order: list[str] | None = None,
) -> str:
    """Aggregate `rows`, write NAME.csv (best lr, every metric, tidy), NAME_pivot.csv, NAME_all_lrs.csv and, with
    `figures`, the PNGs under DIRECTORY; return the markdown to print (pivot tables of `metric`, default
    default_metrics(), failures, paths)."""
    summary = summarize(rows)
    best = best_lr(summary)
    if model_order and not best.empty:
        best = best.sort_values("model", key=lambda names: names.map(model_order.index), kind="stable")
    text = [pivot_markdown(shown_metrics(best, metric))]
    if failed := failures_markdown(rows):
        text.append("Cells that did not finish normally:\n\n" + failed)
    written = [
        write_csv(best, directory / f"{name}.csv"),
        write_csv(pivot(best), directory / f"{name}_pivot.csv"),
        write_csv(summary, directory / f"{name}_all_lrs.csv"),
    ]
    if figures and not best.empty:
        drawn_metric = (metric or "accuracy").split(",")[0]
        written += draw_all(best, best_curves(rows, best, store), directory, name, drawn_metric)
    text.append("written: " + ", ".join(str(p) for p in written))
    return "\n\n".join(text)
