"""Result tables: rows of a store aggregated over seeds, the best learning rate chosen, pivoted for reading.

The protocol (as Zoology and the Kimi report compare architectures):
1. a row of a table is one trained configuration, its `setting_id`: everything a cell trains but its seed and lr
   (the model at its size, the task config, the training budget and every --set). Rows of two configurations are
   never pooled, whatever their names; a configuration is labelled ARCH@SIZE, with the settings that tell it
   apart from another of the same label in the same table (`harness.analysis.labels.setting_columns`);
2. every configuration is run at every lr of its grid with several seeds; per slice and metric the table takes the
   mean over the values pooled and its 95% Student-t interval (`harness.analysis.stats.mean_interval`), and says
   how many values and seeds that was;
3. per configuration and metric the best lr is the one whose mean over all test slices is best. One lr per
   trained model, not one per slice: a cell is trained once on the task's training mixture and evaluated on every
   slice, so choosing the lr slice by slice would mix different models into one row and flatter every architecture.

Markdown is printed; CSVs (the tidy best-lr table, the pivot, every lr) and figures are written to a report
folder — any folder the user names, so a read-only store can be reported too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from harness.analysis.convergence import LEGEND as IMPROVING_LEGEND
from harness.analysis.convergence import MARK as IMPROVING_MARK
from harness.analysis.convergence import cell_still_improving
from harness.analysis.figures import draw_all
from harness.analysis.labels import (
    format_mean_ci,
    human,
    natural_sort_key,
    same_model_warnings,
    setting_columns,
    slice_sort_key,
    table_deviations,
    task_label,
)
from harness.analysis.stats import mean_interval
from harness.config import config_hash
from harness.results.metrics import default_metrics, metric_spec
from harness.results.store import ResultStore, atomic_write, write_error
from harness.run.cell import setting_id_of

# Constant within one trained configuration: what tables group by and show.
SETTING = [
    "setting_id", "label", "suite", "scale", "model", "preset", "task", "task_setting", "task_variant", "task_version",
]  # fmt: skip
GROUP = [*SETTING, "slice", "metric", "lr"]
# Identity columns of rows written before setting_id existed, when their cell's config is not at hand.
_FALLBACK_IDENTITY = ["suite", "scale", "model", "preset", "task", "task_setting", "task_version", "layers"]


def prepare(rows: pd.DataFrame, store: ResultStore | None = None) -> pd.DataFrame:
    """The rows of finished measurements, ready to aggregate (`with_settings`), whole-task scores (lm-eval groups,
    no slice) under slice 'all', a direction for every metric."""
    ok = with_settings(rows[(rows["status"] == "ok") & rows["metric"].notna()], store)
    ok["still_improving"] = ok["run_id"].map(_improving_by_run(ok, store))
    ok["slice"] = ok["slice"].where(ok["slice"].notna(), "all")
    unknown = ok["higher_is_better"].isna()
    if unknown.any():
        ok["higher_is_better"] = ok["higher_is_better"].astype(object)
        ok.loc[unknown, "higher_is_better"] = [
            spec.higher_is_better if (spec := metric_spec(m)) else True for m in ok.loc[unknown, "metric"]
        ]
    return ok


def with_settings(rows: pd.DataFrame, store: ResultStore | None = None) -> pd.DataFrame:
    """A copy of `rows` with a setting_id for every row (from the cell's stored config for rows written before
    the column existed, else from their identity columns) and a label per setting; the configs found are kept in
    `.attrs['configs']` (setting_id -> the config of one of its cells)."""
    rows = rows.copy()
    for column in ("setting_id", "preset", "layers", "task_setting", "task_version"):
        if column not in rows:
            rows[column] = None
    rows["task_setting"] = rows["task_setting"].fillna("")  # rows written before the column existed have None
    configs = _configs(rows, store)
    missing = rows["setting_id"].isna()
    if missing.any():
        rows.loc[missing, "setting_id"] = [
            setting_id_of(configs[run_id]) if run_id in configs else _fallback_setting_id(row)
            for run_id, (_, row) in zip(rows.loc[missing, "run_id"], rows[missing].iterrows(), strict=True)
        ]
    by_setting = {
        sid: configs[run]
        for sid, run in zip(rows["setting_id"], rows["run_id"], strict=True)
        if run in configs
    }
    rows["task_variant"], rows["label"] = setting_columns(rows, by_setting)
    # the width of each configuration, for figures against d_model
    rows["d_model"] = [by_setting.get(s, {}).get("model", {}).get("d_model") for s in rows["setting_id"]]
    rows.attrs["configs"] = by_setting
    return rows


def _configs(rows: pd.DataFrame, store: ResultStore | None) -> dict[str, dict]:
    """The stored config of one cell of every setting (all cells of rows without a setting_id)."""
    if store is None:
        return {}
    wanted = set(rows.loc[rows["setting_id"].isna(), "run_id"])
    wanted |= set(rows.drop_duplicates("setting_id")["run_id"])
    configs = {}
    for run_id in sorted(wanted):
        config = store.read_meta(run_id).get("config")
        if isinstance(config, dict) and "train" in config:
            configs[run_id] = config
    return configs


def _improving_by_run(rows: pd.DataFrame, store: ResultStore | None) -> dict[str, bool | None]:
    """run_id -> whether that cell was still improving when its steps ran out (`harness.analysis.convergence`);
    None where its history is not at hand."""
    if store is None:
        return {}
    return {run_id: cell_still_improving(store.read_meta(run_id)) for run_id in set(rows["run_id"])}


def _fallback_setting_id(row: pd.Series) -> str:
    return config_hash({key: None if pd.isna(row.get(key)) else row.get(key) for key in _FALLBACK_IDENTITY})


def improving_cells(group: pd.DataFrame) -> int:
    """How many of the cells (seeds) behind these rows were still improving when their steps ran out."""
    if "still_improving" not in group:
        return 0
    return group.loc[group["still_improving"].eq(True), "run_id"].nunique()


def summarize(rows: pd.DataFrame, store: ResultStore | None = None) -> pd.DataFrame:
    """Per (configuration, slice, metric, lr): mean over the values pooled, 95% interval, how many values and
    distinct seeds, params, state size, steps (mean, min, max)."""
    ok = rows if "label" in rows else prepare(rows, store)
    if ok.empty:
        return pd.DataFrame()

    def one(group: pd.DataFrame) -> pd.Series:
        mean, ci95, _ = mean_interval(group["value"].astype(float).tolist())
        params, state, steps = (
            pd.to_numeric(group[c], errors="coerce") for c in ("params", "state_size", "steps")
        )
        return pd.Series(
            dict(
                mean=mean,
                ci95=ci95,
                values=len(group),
                seeds=group["seed"].nunique(),
                params=params.iloc[0],
                d_model=pd.to_numeric(group["d_model"], errors="coerce").iloc[0]
                if "d_model" in group
                else np.nan,
                state=state.iloc[0],
                steps=steps.mean(),
                steps_min=steps.min(),
                steps_max=steps.max(),
                higher_is_better=bool(group["higher_is_better"].iloc[0]),
                kernel=group["kernel_impl"].iloc[0],
                improving=improving_cells(group),
            )
        )

    summary = ok.groupby(GROUP, sort=False, dropna=False).apply(one, include_groups=False).reset_index()
    summary.attrs["configs"] = ok.attrs.get("configs", {})
    return summary


def best_lr(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary rows at each (configuration, metric)'s best lr, with `lrs` = how many lrs were tried."""
    if summary.empty:
        return summary
    keys = [*SETTING, "metric"]
    per_lr = summary.groupby(keys + ["lr"], dropna=False, as_index=False).agg(
        score=("mean", "mean"), higher=("higher_is_better", "first")
    )
    per_lr["rank_score"] = np.where(per_lr["higher"], per_lr["score"], -per_lr["score"])
    per_lr = per_lr.dropna(subset=["rank_score"])
    best = per_lr.loc[per_lr.groupby(keys, dropna=False)["rank_score"].idxmax(), keys + ["lr"]]
    tried = summary.groupby(keys, dropna=False)["lr"].nunique(dropna=False).rename("lrs").reset_index()
    edges = per_lr.groupby(keys, dropna=False).apply(_lr_edge, include_groups=False).rename("lr_edge")
    table = summary.merge(best, on=keys + ["lr"]).merge(tried, on=keys).merge(edges.reset_index(), on=keys)
    table.attrs["configs"] = summary.attrs.get("configs", {})
    return table.reset_index(drop=True)


def _lr_edge(per_lr: pd.DataFrame) -> str:
    """'lowest' or 'highest' when one configuration's best lr is at that end of three or more lrs tried and clearly
    ahead of every other (by more than 1% of its score and more than 0.005): the best may lie beyond the grid.
    '' otherwise, also when an lr inside the grid does about as well (several at the ceiling of a task)."""
    scores = per_lr.dropna(subset=["lr"]).sort_values("lr")
    if len(scores) < 3:
        return ""
    top = scores["rank_score"].max()
    best = scores.loc[scores["rank_score"].idxmax(), "lr"]
    # within 1% of the best, or 0.005 (an accuracy at chance is 0.0002 for one lr and 0.0003 for another)
    close = scores[(scores["lr"] != best) & (scores["rank_score"] >= top - max(0.01 * abs(top), 0.005))]
    if not close.empty:
        return ""
    return "lowest" if best == scores["lr"].iloc[0] else "highest" if best == scores["lr"].iloc[-1] else ""


def best_curves(
    rows: pd.DataFrame, best: pd.DataFrame, store: ResultStore, metric: str = "accuracy"
) -> pd.DataFrame:
    """The stored training curves of the finished cells at each configuration's best lr by `metric` (by its first
    metric where it has no `metric`), with their setting_id and label (`store.read_curves`). One lr per
    configuration: its metrics can each have another best lr (accuracy and loss often do), and a line that took
    the curves of both would draw two trainings as one, with a band between them."""
    prepared = rows if "label" in rows else prepare(rows, store)
    keys = ["setting_id", "lr"]
    chosen = (
        best.assign(_other=best["metric"] != metric)
        .sort_values("_other", kind="stable")
        .drop_duplicates("setting_id")[keys]
    )
    at_best = prepared.merge(chosen, on=keys)
    return store.read_curves(
        at_best.drop_duplicates("run_id"), keys=("setting_id", "label", "preset", "task_variant")
    )


def pivot(best: pd.DataFrame) -> pd.DataFrame:
    """Configuration x slice, one table per (suite, scale, task setting, metric): 'mean ± ci95' strings and the
    context (label, params, state, lr, seeds, values, steps)."""
    if best.empty:
        return best
    frames = []
    # one order of configurations in every table (models as they first appear, then labels with their numbers in
    # numeric order: zoology-64 before zoology-128), tables by task and the numbers of their variants
    rank = {model: i for i, model in enumerate(dict.fromkeys(best["model"]))}
    label_rank = {label: i for i, label in enumerate(sorted(set(best["label"]), key=natural_sort_key))}
    best = best.assign(
        _rank=best["model"].map(rank),
        _label=best["label"].map(label_rank),
        _variant=best["task_variant"].map(slice_sort_key),
    )
    best = best.sort_values(
        ["suite", "scale", "task", "task_setting", "_variant", "_rank", "_label"], kind="stable"
    )
    per_table = ["suite", "scale", "task", "task_setting", "task_variant", "task_version", "metric"]
    for (suite, scale, task, setting, variant, version, metric), group in best.groupby(
        per_table, sort=False, dropna=False
    ):
        slices = sorted(dict.fromkeys(group["slice"]), key=slice_sort_key)
        for _, rows in group.groupby("setting_id", sort=False):
            rows = rows.set_index("slice")
            record = dict(
                suite=suite,
                scale=scale,
                task=f"{task_label(task, setting)}{f' [{variant}]' if variant else ''} (v{version})",
                metric=metric,
                model=rows["label"].iloc[0],
                params=rows["params"].iloc[0],
                # state at the longest slice: attention's cache grows with length, a recurrent state does not
                state=rows["state"].max(),
                lr=rows["lr"].iloc[0],
                lrs=rows["lrs"].iloc[0],
                lr_edge=rows["lr_edge"].iloc[0],
                seeds=rows["seeds"].min(),
                values=rows["values"].min(),
                steps_min=rows["steps_min"].min(),
                steps_max=rows["steps_max"].max(),
                improving=rows["improving"].max(),
                setting_id=rows["setting_id"].iloc[0],
            )
            for name in slices:
                record[name] = format_mean_ci(*rows.loc[name, ["mean", "ci95"]]) if name in rows.index else ""
            frames.append(record)
    return pd.DataFrame(frames)


def pivot_markdown(best: pd.DataFrame) -> str:
    """One markdown table per suite/scale/task setting/metric, configurations as rows and slices as columns."""
    if best.empty:
        return "(no finished cells)"
    table = pivot(best)
    parts = []
    context = ["model", "params", "state", "lr", "seeds", "steps"]
    bookkeeping = [
        "suite",
        "scale",
        "task",
        "metric",
        "setting_id",
        "lrs",
        "lr_edge",
        "values",
        "steps_min",
        "steps_max",
        "improving",
    ]
    for (suite, scale, task, metric), group in table.groupby(
        ["suite", "scale", "task", "metric"], sort=False, dropna=False
    ):
        shown = pd.DataFrame(
            dict(
                model=group["model"],
                params=group["params"].map(lambda n: "" if pd.isna(n) else human(n)),
                # rows of no slice (throughput, lm-eval) have no state size
                state=group["state"].map(lambda n: "" if pd.isna(n) else human(n)),
                lr=[
                    _lr_text(lr, n, edge)
                    for lr, n, edge in zip(group["lr"], group["lrs"], group["lr_edge"], strict=True)
                ],
                seeds=[_seeds_text(s, v) for s, v in zip(group["seeds"], group["values"], strict=True)],
                steps=[
                    _steps_text(a, b) + (f" {IMPROVING_MARK}" if improving else "")
                    for a, b, improving in zip(
                        group["steps_min"], group["steps_max"], group["improving"], strict=True
                    )
                ],
            )
        )
        slices = group[[c for c in group.columns if c not in (*context, *bookkeeping)]].dropna(
            axis=1, how="all"
        )
        shown = pd.concat([shown, slices.fillna("")], axis=1)
        shown = shown.loc[:, (shown != "").any(axis=0)]
        where = " · ".join(str(part) for part in (suite, scale) if pd.notna(part))
        table_text = shown.to_markdown(index=False, disable_numparse=True)
        # settings every row shares but the suite does not plan: said once, above the table
        off = table_deviations(list(group["setting_id"]), best.attrs.get("configs", {}))
        note = f"Not {where}'s settings, in every row: {off}\n\n" if off else ""
        parts.append(f"### {where} · {task} · {metric}\n\n{note}{table_text}")
    intervals = (
        "mean ± half-width of the 95% t-interval over the values pooled (no ± with one); seeds: distinct seeds"
        " (and values, where they differ); best lr by the mean over slices; one row per trained configuration"
    )
    if table["lr_edge"].ne("").any():
        intervals += (
            "; 'the lowest' / 'the highest': the best lr is at that end of the lrs tried, clearly ahead of the"
            " others, so a better one may lie beyond them"
        )
    if table["improving"].gt(0).any():
        intervals += f"; {IMPROVING_LEGEND}"
    return "\n\n".join(parts) + f"\n\n({intervals})"


def _lr_text(lr: float, tried: int, edge: str = "") -> str:
    if pd.isna(lr):
        return ""
    if tried <= 1:
        return f"{lr:g}"
    return f"{lr:g} (best of {tried}, the {edge})" if edge else f"{lr:g} (best of {tried})"


def _seeds_text(seeds: int, values: int) -> str:
    if seeds == values:
        return f"{seeds}"
    count = f"{values} value" + ("s" if values != 1 else "")
    return f"– ({count})" if seeds == 0 else f"{seeds} ({count})"  # no seed: a checkpoint scored as it is


def _steps_text(low: float, high: float) -> str:
    if pd.isna(low):
        return ""
    return f"{low:.0f}" if low == high else f"{low:.0f}–{high:.0f}"


def failures_markdown(rows: pd.DataFrame) -> str:
    bad = rows[rows["status"] != "ok"].drop_duplicates("run_id")
    if bad.empty:
        return ""
    shown = bad.assign(
        model=[
            m if pd.isna(p) else f"{m}@{p}"
            for m, p in zip(bad["model"], bad.get("preset", None), strict=True)
        ]
    )
    return shown[["model", "task", "lr", "seed", "status", "error"]].to_markdown(index=False)


def write_csv(table: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(path, table.to_csv(index=False))  # a failed rewrite leaves the previous report whole
    except OSError as err:
        raise write_error(err, path) from None
    return path


def shown_metrics(best: pd.DataFrame, metric: str | None) -> pd.DataFrame:
    """The rows of the tables to print: `metric` (comma-separated names), or the metric table's defaults where
    present (next-token accuracy is left out for tasks that report perplexity)."""
    if best.empty:
        return best
    if metric:
        return best[best["metric"].isin(metric.split(","))]
    shown = best[
        best["metric"].map(lambda m: (spec := metric_spec(m)) is not None and spec.name in default_metrics())
    ]
    with_perplexity = set(best.loc[best["metric"] == "perplexity", "task"])
    return shown[~((shown["metric"] == "accuracy") & shown["task"].isin(with_perplexity))]


def write_report(
    rows: pd.DataFrame,
    store: ResultStore | None,
    directory: Path | None,
    name: str,
    metric: str | None = None,
    figures: bool = False,
    model_order: list[str] | None = None,
    formats: tuple[str, ...] = ("png", "pdf"),
) -> str:
    """Aggregate `rows` and return the markdown to print (pivot tables of `metric`, default the metric table's
    defaults; warnings; failures). With a `directory`, also write NAME.csv (best lr, every metric, tidy),
    NAME_pivot.csv, NAME_all_lrs.csv and, with `figures`, the figures in every one of `formats` there."""
    prepared = prepare(rows, store)
    summary = summarize(prepared)
    best = best_lr(summary)
    if model_order and not best.empty:
        rank = {model: i for i, model in enumerate(model_order)}
        best = best.sort_values(
            "model", key=lambda names: names.map(lambda m: rank.get(m, len(rank))), kind="stable"
        )
    text = [pivot_markdown(shown_metrics(best, metric))]
    if warnings := same_model_warnings(prepared.attrs.get("configs", {}), prepared):
        text.append("\n".join(f"warning: {line}" for line in warnings))
    if failed := failures_markdown(rows):
        text.append("Cells that did not finish normally:\n\n" + failed)
    if directory is None:
        return "\n\n".join(text)
    written = [
        write_csv(best, directory / f"{name}.csv"),
        write_csv(pivot(best), directory / f"{name}_pivot.csv"),
        write_csv(summary, directory / f"{name}_all_lrs.csv"),
    ]
    if figures and not best.empty:
        drawn_metric = (metric or "accuracy").split(",")[0]
        curves = best_curves(prepared, best, store, drawn_metric) if store is not None else pd.DataFrame()
        written += draw_all(best, curves, directory, name, drawn_metric, formats)
    text.append("written: " + ", ".join(str(p) for p in written))
    return "\n\n".join(text)
