"""Tables and figures of a `harness bench models` store (harness/run/bench_models.py; docs/efficiency.md).

- `efficiency_markdown`: decode (ms/token, tokens/s, the memory floor and how far above it, cache per sequence,
  peak memory, whether batch-1 decode is within TARGET_X of the floor at TARGET_CONTEXT and beyond), speed and
  cache against a baseline model per context, prefill and training tables. A case that ran out of memory or past
  its budget shows as such, with its message.
- figures: decode tokens/s against context (one panel per batch, the floor dashed), cache bytes per sequence
  against context (log-log), training tokens/s and peak memory against context, and quality against efficiency:
  a results store's accuracy (each configuration at its best lr, `harness.analysis.report`) against decode
  tokens/s and cache bytes of the same architecture, one point per configuration.

Figures are matplotlib.figure.Figure (no pyplot), written in every format asked, as the report's figures are.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullFormatter

from harness.analysis.figures import save
from harness.analysis.labels import base_label
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
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def _length(tokens: float) -> str:
    tokens = int(tokens)
    for unit, size in (("M", 1024**2), ("K", 1024)):
        if tokens >= size and tokens % size == 0:
            return f"{tokens // size}{unit}"
    return str(tokens)


def _bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


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
            cache = "-" if pd.isna(r.get("cache_bytes", math.nan)) else _bytes(r["cache_bytes"])
            lines.append(
                f"| {r['label']} | {r['batch']}×{_length(r['context'])} | {_cell(r, 'decode_ms_per_token', '.3f')} | "
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
            f"{_length(TARGET_CONTEXT)} and beyond. kernels: {paths}"
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
                f"| {r['label']} | {r['batch']}×{_length(r['context'])} | {values} | "
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
        "| model | " + " | ".join(_length(c) for c in contexts) + " |",
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


# ---------------------------------------------------------------------------------------------------- figures


def _styles(labels) -> dict[str, tuple[str, str]]:
    return {label: (f"C{i % 10}", _MARKERS[i % len(_MARKERS)]) for i, label in enumerate(sorted(set(labels)))}


def _context_axis(ax, contexts) -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted(set(int(c) for c in contexts))
    ax.set_xticks(ticks, [_length(c) for c in ticks])
    ax.minorticks_off()
    ax.set_xlabel("context (tokens)")
    ax.grid(alpha=0.3)


def _legend(fig: Figure, styles, extra=()) -> None:
    handles = [Line2D([], [], color=c, marker=m, label=label) for label, (c, m) in styles.items()] + list(
        extra
    )
    fig.legend(
        handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize="small", frameon=False
    )


def decode_figure(table: pd.DataFrame) -> Figure | None:
    """Decode tokens/s against context, one panel per batch size, one line per model; the memory floor dashed."""
    decode = table[(table["task"] == "decode") & (table["status"] == "ok")]
    if decode.empty:
        return None
    batches = sorted(decode["batch"].unique())
    styles = _styles(decode["label"])
    fig = Figure(figsize=(5 * len(batches), 4.2))
    axes = fig.subplots(1, len(batches), squeeze=False)[0]
    for ax, batch in zip(axes, batches, strict=True):
        part = decode[decode["batch"] == batch]
        for label, line in part.groupby("label"):
            line = line.sort_values("context")
            colour, marker = styles[label]
            ax.plot(line["context"], line["decode_tokens_per_s"], color=colour, marker=marker)
            ax.plot(
                line["context"],
                batch * 1e3 / line["decode_floor_ms"],
                color=colour,
                linestyle="--",
                linewidth=0.8,
                marker="_",  # a one-context floor still shows
            )
        _context_axis(ax, part["context"])
        ax.set_yscale("log")
        ax.set(ylabel="decode tokens/s (all sequences)", title=f"batch {batch}")
    floor = Line2D([], [], color="0.3", linestyle="--", linewidth=0.8, label="memory floor")
    _legend(fig, styles, [floor])
    fig.suptitle("decode throughput against context", fontsize="medium")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def cache_figure(table: pd.DataFrame) -> Figure | None:
    """Cache bytes per sequence against context, log-log, one line per model."""
    decode = table[(table["task"] == "decode") & (table["status"] == "ok")].dropna(subset=["cache_bytes"])
    if decode.empty:
        return None
    styles = _styles(decode["label"])
    fig = Figure(figsize=(5.5, 4.4))
    ax = fig.subplots()
    for label, line in decode.drop_duplicates(["label", "context"]).groupby("label"):
        line = line.sort_values("context")
        colour, marker = styles[label]
        ax.plot(line["context"], line["cache_bytes"], color=colour, marker=marker, markerfacecolor="none")
    _context_axis(ax, decode["context"])
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: _bytes(value)))
    ax.set_ylabel("decoding cache per sequence")
    _legend(fig, styles)
    fig.suptitle("cache per sequence against context (measured from the cache's tensors)", fontsize="medium")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


def train_figure(table: pd.DataFrame) -> Figure | None:
    """Training tokens/s and peak memory against context, one line per model."""
    train = table[(table["task"] == "train") & (table["status"] == "ok")]
    if train.empty:
        return None
    styles = _styles(train["label"])
    fig = Figure(figsize=(10, 4.2))
    for ax, column, ylabel in zip(
        fig.subplots(1, 2),
        ("train_tokens_per_s", "peak_memory_gib"),
        ("training tokens/s", "peak memory (GiB)"),
        strict=True,
    ):
        for label, line in train.groupby("label"):
            line = line.sort_values("context")
            colour, marker = styles[label]
            ax.plot(line["context"], line[column], color=colour, marker=marker)
        _context_axis(ax, train["context"])
        ax.set_ylabel(ylabel)
    _legend(fig, styles)
    fig.suptitle("training against context (same tokens per step)", fontsize="medium")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


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


def quality_figure(
    table: pd.DataFrame, quality: pd.DataFrame, metric: str = "accuracy", context: int | None = None
) -> Figure | None:
    """Quality (one point per trained configuration) against the batch-1 decode tokens/s and the cache per
    sequence of its architecture at `context` (default: the longest context measured for every architecture
    joined)."""
    decode = table[(table["task"] == "decode") & (table["status"] == "ok") & (table["batch"] == 1)]
    joined = quality.merge(decode, on="model", suffixes=("", "_bench"))
    if joined.empty:
        return None
    if context is None:
        common = set.intersection(*(set(g["context"]) for _, g in joined.groupby("model")))
        if not common:
            return None
        context = max(common)
    joined = joined[joined["context"] == context]
    if joined.empty:
        return None
    styles = _styles(joined["model"])
    fig = Figure(figsize=(10, 4.4))
    for ax, column, xlabel in zip(
        fig.subplots(1, 2),
        ("decode_tokens_per_s", "cache_bytes"),
        (
            f"decode tokens/s at {_length(context)} (batch 1)",
            f"cache per sequence at {_length(context)} (bytes)",
        ),
        strict=True,
    ):
        for _, point in joined.iterrows():
            colour, marker = styles[point["model"]]
            ax.scatter(point[column], point["score"], color=colour, marker=marker, s=40)
            ax.annotate(point["label"], (point[column], point["score"]), fontsize="x-small",
                        xytext=(4, 3), textcoords="offset points")  # fmt: skip
        ax.set_xscale("log")
        tick = _bytes if column == "cache_bytes" else (lambda v: f"{v:g}")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _, tick=tick: tick(v)))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel=xlabel, ylabel=f"{metric} (best lr, mean over slices)")
        ax.grid(alpha=0.3)
    sizes = ", ".join(dict.fromkeys(joined["preset_bench"] if "preset_bench" in joined else joined["preset"]))
    fig.suptitle(f"quality against efficiency (efficiency measured at {sizes})", fontsize="medium")
    handles = [Line2D([], [], color=c, marker=m, linestyle="", label=k) for k, (c, m) in styles.items()]
    fig.legend(
        handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize="small", frameon=False
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def profile_markdown(metas: dict[str, dict]) -> str:
    """Where a decode step's time goes, for the cells that were profiled: device time by kernel, and the step's
    wall time against the device's (the rest is launch and host overhead)."""
    parts = []
    for meta in metas.values():
        profile = meta.get("profile") or {}
        if not profile.get("kernels"):
            continue
        lines = [
            f"#### {meta.get('label', '')}: {profile['wall_ms']:.3f} ms per step, {profile['device_ms']:.3f} ms of it "
            f"in kernels ({profile['device_ms'] / profile['wall_ms']:.0%})",
            "",
            "| kernel | calls per step | ms per step |",
            "|---|---|---|",
        ]
        lines += [f"| {k['kernel']} | {k['calls']:.0f} | {k['ms']:.4f} |" for k in profile["kernels"]]
        parts.append("\n".join(lines))
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
        drawn = {
            "bench_decode_vs_context": decode_figure(table),
            "bench_cache_vs_context": cache_figure(table),
            "bench_train_vs_context": train_figure(table),
        }
        if quality is not None and not quality.empty:
            drawn["bench_quality_vs_efficiency"] = quality_figure(table, quality, metric)
            atomic_write(
                directory / "quality.json", json.dumps(quality.to_dict("records"), indent=1, default=str)
            )
            written.append(directory / "quality.json")
        for name, fig in drawn.items():
            if fig is not None:
                written.append(save(fig, directory / f"{name}.png", formats))
    return text + "\n\nwritten: " + ", ".join(str(p) for p in written)
