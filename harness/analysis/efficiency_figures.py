"""The figures of a `harness bench models` store (the tables are in `harness.analysis.efficiency`): decode tokens/s
against context (one panel per batch, the memory floor dashed), cache bytes per sequence against context (log-log),
training tokens/s and peak memory against context, and quality against efficiency (a results store's accuracy
against the decode tokens/s and cache bytes of the same architecture, one point per trained configuration).

matplotlib.figure.Figure (no pyplot), as the report's figures; a module of its own so that the tables need no
matplotlib (a GPU image may lack it: draw the figures later with `harness bench models --report-only`).
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullFormatter

from harness.analysis.figures import save
from harness.analysis.labels import bytes_text, length_text

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def _styles(labels) -> dict[str, tuple[str, str]]:
    return {label: (f"C{i % 10}", _MARKERS[i % len(_MARKERS)]) for i, label in enumerate(sorted(set(labels)))}


def _context_axis(ax, contexts) -> None:
    ax.set_xscale("log", base=2)
    ticks = sorted(set(int(c) for c in contexts))
    ax.set_xticks(ticks, [length_text(c) for c in ticks])
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
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: bytes_text(value)))
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
            f"decode tokens/s at {length_text(context)} (batch 1)",
            f"cache per sequence at {length_text(context)} (bytes)",
        ),
        strict=True,
    ):
        for _, point in joined.iterrows():
            colour, marker = styles[point["model"]]
            ax.scatter(point[column], point["score"], color=colour, marker=marker, s=40)
            ax.annotate(point["label"], (point[column], point["score"]), fontsize="x-small",
                        xytext=(4, 3), textcoords="offset points")  # fmt: skip
        ax.set_xscale("log")
        tick = bytes_text if column == "cache_bytes" else (lambda v: f"{v:g}")
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


__all__ = ["cache_figure", "decode_figure", "quality_figure", "save", "train_figure"]
