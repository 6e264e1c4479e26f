"""Tables of a `harness bench models` store (harness/run/bench_models.py; docs/efficiency.md), and the report
that writes them with the figures (`harness.analysis.efficiency_figures`).

- `efficiency_markdown`: decode (ms/token, tokens/s, the memory floor and how far above it, cache per sequence,
  peak memory, whether batch-1 decode is within TARGET_X of the floor at TARGET_CONTEXT and beyond), speed and
  cache against a baseline model per context, prefill and training tables. A case that ran out of memory or past
  its budget shows as such, with its message.
- figures (`efficiency_figures`, drawn where matplotlib is installed): decode tokens/s and cache bytes against
  context, training against context, and quality against efficiency (`quality_table` gives the quality: a results
  store's accuracy, each configuration at its best lr, as `harness report` chooses it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from harness.analysis.labels import base_label, bytes_text, length_text
from harness.results.store import ResultStore, atomic_write

TARGET_X = 3.0
"""The goal of issue #19: batch-1 decode within 3x of the memory floor..."""
TARGET_CONTEXT = 32768
"""...at 32K tokens of context and beyond."""
METRICS = (
    "prefill_ms", "prefill_tokens_per_s", "decode_ms_per_token", "decode_tokens_per_s", "decode_floor_ms",
    "floor_fraction", "cache_bytes", "train_tokens_per_s", "peak_memory_gib",
)  # fmt: skip
"""The benchmark's metrics (harness/results/metrics.py): every one is a column of `wide`, measured or not."""


def bench_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The benchmark's rows of a store's DataFrame, with label, context and batch columns."""
    rows = rows[rows["suite"] == "bench"].copy()
    if rows.empty:
        return rows
    rows["label"] = [base_label(m, p) for m, p in zip(rows["model"], rows["preset"], strict=True)]
    parts = rows["slice"].str.extract(r"context=(\d+),batch=(\d+)").astype(float)
    rows["context"], rows["batch"] = parts[0].astype(int), parts[1].astype(int)
    return rows


def wide(rows: pd.DataFrame, order: list[str] | None = None) -> pd.DataFrame:
    """One row per (label, task, context, batch): the metrics as columns, plus status, error and kernel_impl.
    Models in `order` (architecture names) come first, in that order; cases by batch 1 first, then context."""
    rows = bench_rows(rows)
    if rows.empty:
        return rows
    keys = ["label", "model", "preset", "task", "context", "batch"]
    ok = rows[rows["status"] == "ok"]
    values = ok.pivot_table(index=keys, columns="metric", values="value", aggfunc="first")
    info = rows.groupby(keys, sort=False).agg(
        status=("status", lambda s: "ok" if (s == "ok").all() else s[s != "ok"].iloc[0]),
        error=("error", lambda e: "; ".join(dict.fromkeys(str(x) for x in e if isinstance(x, str) and x))),
        kernel_impl=("kernel_impl", "first"),
        run_id=("run_id", "first"),
    )
    table = info.join(values, how="left").reset_index()
    for metric in METRICS:
        if metric not in table:
            table[metric] = float("nan")
    rank = {model: i for i, model in enumerate(order or [])}
    table["_model"] = table["model"].map(lambda m: rank.get(m, len(rank)))
    table["_batched"] = (table["batch"] > 1) & (table["task"] != "train")
    keys = ["task", "_model", "label", "_batched", "context", "batch"]
    return table.sort_values(keys).drop(columns=["_model", "_batched"]).reset_index(drop=True)


def _cell(row: pd.Series, column: str, spec: str, scale: float = 1.0) -> str:
    if row["status"] != "ok":
        return "OOM" if row["status"] == "oom" else row["status"]
    value = row.get(column)
    return "-" if value is None or pd.isna(value) else format(value * scale, spec)


def _note(row: pd.Series, notes: dict[str, list[str]]) -> str:
    parts = list(notes.get(row["run_id"], []))
    if isinstance(row["error"], str) and row["error"] and row["error"] not in parts:
        parts.append(row["error"])
    return "; ".join(parts)


def decode_mode(kernel_impl: object) -> str:
    """'gdr:triton+sdpa+cuda-graph' -> 'cuda-graph': how the decode step ran (the last part of kernel_impl)."""
    return str(kernel_impl).rsplit("+", 1)[-1] if isinstance(kernel_impl, str) else ""


def efficiency_markdown(
    rows: pd.DataFrame,
    notes: dict[str, list[str]] | None = None,
    baseline: str = "mla",
    order: list[str] | None = None,
) -> str:
    """The benchmark's tables (module docstring). `notes`: run_id -> notes of the cell (made-up cache, ...);
    `order`: architectures first in the tables, in that order."""
    table, notes = wide(rows, order), notes or {}
    if table.empty:
        return "(no benchmark rows)"
    parts = []
    decode = table[table["task"] == "decode"]
    if not decode.empty:
        lines = [
            "| model | B × context | ms/token | tokens/s | floor ms | × floor | cache / seq | peak GiB | step | target | note |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for _, r in decode.iterrows():
            over = r.get("decode_ms_per_token", math.nan) / r.get("decode_floor_ms", math.nan)
            target = ""
            if r["status"] == "ok" and r["batch"] == 1 and r["context"] >= TARGET_CONTEXT:
                target = "met" if over <= TARGET_X else "missed"
            cache = "-" if pd.isna(r.get("cache_bytes", math.nan)) else bytes_text(r["cache_bytes"])
            lines.append(
                f"| {r['label']} | {r['batch']}×{length_text(r['context'])} | {_cell(r, 'decode_ms_per_token', '.3f')} | "
                f"{_cell(r, 'decode_tokens_per_s', '.0f')} | {_cell(r, 'decode_floor_ms', '.3f')} | "
                f"{'-' if math.isnan(over) else f'{over:.1f}×'} | {cache} | {_cell(r, 'peak_memory_gib', '.2f')} | "
                f"{decode_mode(r['kernel_impl'])} | {target} | {_note(r, notes)} |"
            )
        kernels = decode.drop_duplicates("label")
        paths = "; ".join(
            f"{label}: {str(k).rsplit('+', 1)[0]}"
            for label, k in zip(kernels["label"], kernels["kernel_impl"], strict=True)
        )
        parts.append(
            "### decode: one token per sequence after a prompt (median of the timed steps)\n\n"
            + "\n".join(lines)
            + f"\n\nfloor: every weight (less the input embedding) and every sequence's cache read once at the measured "
            f"copy bandwidth; × floor = measured / floor; target: batch 1 within {TARGET_X:g}× of the floor at "
            f"{length_text(TARGET_CONTEXT)} and beyond. kernels: {paths}"
        )
        relative = relative_markdown(decode, baseline)
        if relative:
            parts.append(relative)
    for task, title, columns in (
        ("prefill", "prefill: the prompt in chunks", [("prefill_ms", "s", ".2f", 1e-3), ("prefill_tokens_per_s", "tokens/s", ".0f", 1)]),
        ("train", "training: forward, backward, AdamW step", [("train_tokens_per_s", "tokens/s", ".0f", 1)]),
    ):  # fmt: skip
        part = table[table["task"] == task]
        if part.empty:
            continue
        head = " | ".join(name for _, name, _, _ in columns)
        lines = [f"| model | B × context | {head} | peak GiB | note |", "|---" * (len(columns) + 4) + "|"]
        for _, r in part.iterrows():
            values = " | ".join(_cell(r, column, spec, scale) for column, _, spec, scale in columns)
            lines.append(
                f"| {r['label']} | {r['batch']}×{length_text(r['context'])} | {values} | "
                f"{_cell(r, 'peak_memory_gib', '.2f')} | {_note(r, notes)} |"
            )
        parts.append(f"### {title}\n\n" + "\n".join(lines))
    return "\n\n".join(parts)


def relative_markdown(decode: pd.DataFrame, baseline: str) -> str:
    """Batch-1 decode tokens/s and cache per sequence of every model against `baseline`'s, per context."""
    ok = decode[(decode["status"] == "ok") & (decode["batch"] == 1)]
    base = ok[ok["model"] == baseline]
    if base.empty or ok["label"].nunique() < 2:
        return ""
    contexts = sorted(set(ok["context"]) & set(base["context"]))
    ref = base.drop_duplicates("context").set_index("context")
    lines = [
        "| model | " + " | ".join(length_text(c) for c in contexts) + " |",
        "|---" * (len(contexts) + 1) + "|",
    ]
    for label, group in ok[ok["model"] != baseline].groupby("label", sort=False):
        group = group.set_index("context")
        cells = []
        for c in contexts:
            if c not in group.index:
                cells.append("")
                continue
            speed = group.loc[c, "decode_tokens_per_s"] / ref.loc[c, "decode_tokens_per_s"]
            cache = group.loc[c, "cache_bytes"] / ref.loc[c, "cache_bytes"]
            cells.append(f"{speed:.2f}× · {cache:.0%}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    title = (
        f"against {base['label'].iloc[0]}: batch-1 decode tokens/s (× its) · cache per sequence (% of its)"
    )
    return f"### {title}\n\n" + "\n".join(lines)


def quality_table(store: ResultStore, suite: str | None = None, metric: str = "accuracy") -> pd.DataFrame:
    """Per trained configuration of a results store (at its best lr): its label, architecture and `metric`
    averaged over its test slices."""
    from harness.analysis.report import best_lr, prepare, summarize  # the report's protocol; pandas-heavy

    rows = store.read()
    if suite:
        rows = rows[rows["suite"] == suite]
    rows = rows[rows["suite"] != "bench"]
    if rows.empty:
        return pd.DataFrame(columns=["label", "model", "score", "slices"])
    best = best_lr(summarize(prepare(rows, store)))
    best = best[best["metric"] == metric]
    return (
        best.groupby(["label", "model"], sort=False)
        .agg(score=("mean", "mean"), slices=("slice", "nunique"))
        .reset_index()
    )


def profile_markdown(metas: dict[str, dict]) -> str:
    """Where a decode step's time goes, for the cells that were profiled: per run of the step (as measured, i.e.
    graph replays on CUDA, and eagerly) its wall time, the device time in kernels and the kernels launched, and the
    kernels that took the most."""
    parts = []
    for meta in metas.values():
        runs = meta.get("profile") or {}
        lines = []
        for name, run in runs.items():
            if "error" in run:
                lines.append(f"- {name}: profile failed ({run['error']})")
            elif run:
                lines.append(
                    f"- {name}: {run['wall_ms']:.3f} ms per step, {run['device_ms']:.3f} ms of it in "
                    f"{run['launches']:.0f} kernels ({run['device_ms'] / run['wall_ms']:.0%})"
                )
        # the eager step's kernels where it has them (one launch each), else the measured step's
        kernels = (
            (runs.get("eager") or {}).get("kernels") or (runs.get("measured") or {}).get("kernels") or []
        )
        if not lines:
            continue
        table = ["", "| kernel | calls per step | ms per step |", "|---|---|---|"]
        table += [f"| {k['kernel']} | {k['calls']:.0f} | {k['ms']:.4f} |" for k in kernels[:12]]
        parts.append(f"#### {meta.get('label', '')}\n\n" + "\n".join(lines + (table if kernels else [])))
    return "\n\n".join(parts)


def write_efficiency_report(
    store: ResultStore,
    directory: Path,
    quality: pd.DataFrame | None = None,
    metric: str = "accuracy",
    figures: bool = True,
    formats: tuple[str, ...] = ("png",),
    baseline: str = "mla",
    order: list[str] | None = None,
) -> str:
    """The markdown of the store's benchmark (printed), written as DIRECTORY/bench.md with bench.csv (one row per
    model, task and case) and the figures; the paths written are listed at the end."""
    rows = store.read()
    metas = {run_id: store.read_meta(run_id) for run_id in dict.fromkeys(bench_rows(rows)["run_id"])}
    notes = {run_id: meta.get("notes", []) for run_id, meta in metas.items()}
    text = efficiency_markdown(rows, notes, baseline, order)
    profiles = profile_markdown(metas)
    directory.mkdir(parents=True, exist_ok=True)
    table = wide(rows, order)
    written = [directory / "bench.md", directory / "bench.csv"]
    atomic_write(
        written[0],
        text + ("\n\n### where the decode step's time goes\n\n" + profiles if profiles else "") + "\n",
    )
    atomic_write(written[1], table.to_csv(index=False))
    if figures and not table.empty:
        try:
            from harness.analysis import efficiency_figures as draw  # matplotlib: optional on a GPU image
        except ImportError as error:
            text += f"\n\n(no figures: {error}; draw them later with `harness bench models --report-only`)"
            draw = None
        if draw is not None:
            drawn = {
                "bench_decode_vs_context": draw.decode_figure(table),
                "bench_cache_vs_context": draw.cache_figure(table),
                "bench_train_vs_context": draw.train_figure(table),
            }
            if quality is not None and not quality.empty:
                drawn["bench_quality_vs_efficiency"] = draw.quality_figure(table, quality, metric)
            for name, fig in drawn.items():
                if fig is not None:
                    written.append(draw.save(fig, directory / f"{name}.png", formats))
    if quality is not None and not quality.empty:
        atomic_write(
            directory / "quality.json", json.dumps(quality.to_dict("records"), indent=1, default=str)
        )
        written.append(directory / "quality.json")
    return text + "\n\nwritten: " + ", ".join(str(p) for p in written)
