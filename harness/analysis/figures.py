"""Figures from the best-lr table (`harness.analysis.report.best_lr`) and the stored training curves.

Every figure is a claim, so none averages away what it exists to show:
- a point is one slice of one trained configuration (a report row), with the 95% interval over its seeds as bars;
- slice dimensions besides the x axis (pairs, depth, hops, noise) are never pooled: each value gets its own line
  style when there are few, its own panel otherwise, and where they vary together with the x axis the slices
  become the x axis themselves, each named;
- every line has markers (a one-point line is still seen); colours and markers follow the configuration's label
  and are the same in every figure of a report; one legend serves the whole figure;
- grids wrap at a few columns; the title says the metric, seeds and step budgets of what is drawn;
- each figure is written in every format asked (PNG for reading, PDF or SVG for papers).

Figures are made with matplotlib.figure.Figure, not pyplot: no backend is chosen for the caller (a notebook's inline
plots keep working) and no global figure list grows.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from harness.analysis.labels import human, slice_sort_key, task_label
from harness.results.metrics import is_bounded, metric_spec

COLUMNS = 3
"""Panels per row before a grid wraps."""
MAX_STYLES = 4
"""Values of a second slice dimension drawn as line styles in one panel; more get a panel each."""
_LINE_STYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def slice_value(slice_name: str, key: str) -> float | None:
    """'seq_len=512,pairs=8' -> 512.0 for key 'seq_len'."""
    match = re.search(rf"(?:^|,){re.escape(key)}=([-\d.]+)", slice_name or "")
    return float(match[1]) if match else None


def slice_dims(slice_name: str) -> dict[str, str]:
    """'seq_len=512,pairs=8' -> {'seq_len': '512', 'pairs': '8'} (the slice's settings, in order)."""
    return dict(part.split("=", 1) for part in str(slice_name).split(",") if "=" in part)


# ---------------------------------------------------------------------------------------------------- layout


def _styles(labels) -> dict[str, tuple[str, str]]:
    """(colour, marker) of every configuration label: fixed by the sorted labels, so figures of one report agree."""
    colours = [f"C{i}" for i in range(10)]
    return {
        label: (colours[i % 10], _MARKERS[(i // 10 + i) % len(_MARKERS)])
        for i, label in enumerate(sorted(set(labels)))
    }


def _grid(count: int, width: float = 4.0, height: float = 3.2, columns: int = COLUMNS):
    columns = max(1, min(count, columns))
    rows = -(-count // columns)
    fig = Figure(figsize=(width * columns, height * rows + 1.3))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:count])


def _finish(
    fig: Figure, title: str, caption: str, handles: list, path: Path, formats: tuple[str, ...]
) -> Path:
    """`_decorate`, then written in every format."""
    _decorate(fig, title, caption, handles)
    return save(fig, path, formats)


def _decorate(fig: Figure, title: str, caption: str, handles: list) -> None:
    """A shared legend below the panels, the title above, the caption at the bottom."""
    fig.suptitle(title, fontsize="medium")
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize="small",
                   bbox_to_anchor=(0.5, 0.02), frameon=False)  # fmt: skip
    fig.text(0.5, 0.003, caption, ha="center", va="bottom", fontsize="x-small", color="0.35")
    rows = -(-len(handles) // 4) if handles else 0
    fig.tight_layout(rect=(0, 0.04 + 0.035 * rows, 1, 0.97))


def save(fig: Figure, path: Path, formats: tuple[str, ...] = ("png",)) -> Path:
    """Write `fig` as path with every suffix in `formats` (the first is returned)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in formats or ("png",):
        target = path.with_suffix(f".{suffix}")
        fig.savefig(target, dpi=110 if suffix == "png" else None, bbox_inches="tight")
        written.append(target)
    return written[0]


def _caption(frame: pd.DataFrame) -> str:
    """What the points are: the interval, the seeds, the lrs each best lr was chosen from, the step budgets."""
    parts = ["mean ± 95% t-interval over seeds"]
    if "seeds" in frame and frame["seeds"].notna().any():
        low, high = int(frame["seeds"].min()), int(frame["seeds"].max())
        parts.append(f"seeds per point {low}" if low == high else f"seeds per point {low}–{high}")
    if "lrs" in frame and frame["lrs"].notna().any():
        # "at its best lr" means little for a point whose configuration was trained at one lr only
        low, high = int(frame["lrs"].min()), int(frame["lrs"].max())
        parts.append(f"lrs tried per point {low}" if low == high else f"lrs tried per point {low}–{high}")
    if "steps_min" in frame and frame["steps_min"].notna().any():
        low, high = frame["steps_min"].min(), frame["steps_max"].max()
        parts.append(f"training steps {low:.0f}" if low == high else f"training steps {low:.0f}–{high:.0f}")
    return " · ".join(parts)


def _title(frame: pd.DataFrame, what: str) -> str:
    where = " · ".join(
        dict.fromkeys(f"{s} {c}" for s, c in zip(frame["suite"], frame["scale"], strict=True) if pd.notna(s))
    )
    return f"{where}: {what}" if where else what


def _legend(styles: dict[str, tuple[str, str]], labels, extra: list | None = None) -> list:
    handles = [
        Line2D([], [], color=styles[label][0], marker=styles[label][1], label=label)
        for label in sorted(set(labels))
    ]
    return handles + (extra or [])


def _style_legend(key: str, values: list[str]) -> list:
    return [
        Line2D([], [], color="0.3", linestyle=_LINE_STYLES[i], label=f"{key}={value}")
        for i, value in enumerate(values)
    ]


def _panel_title(ax, text: str) -> None:
    """Panel titles wrap (task variants name their settings) in a small font."""
    ax.set_title(textwrap.fill(text, 42), fontsize="small")


def _y_axis(ax, metric: str) -> None:
    if is_bounded(metric):
        ax.set_ylim(-0.03, 1.03)
    elif (spec := metric_spec(metric)) is not None and spec.log_scale:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)


def _by_task(frame: pd.DataFrame, variants: bool = True) -> list[tuple[str, pd.DataFrame]]:
    """One panel per task setting, and (`variants`) per task variant (a config of its own, e.g. one per length)."""
    if variants and "task_variant" in frame:
        variants = frame["task_variant"]
    else:
        variants = pd.Series("", index=frame.index)
    names = [
        task_label(t, s) + (f" [{v}]" if isinstance(v, str) and v else "")
        for t, s, v in zip(frame["task"], frame["task_setting"], variants, strict=True)
    ]
    frame = frame.assign(panel=names)
    return [
        (name, frame[frame["panel"] == name]) for name in sorted(dict.fromkeys(names), key=slice_sort_key)
    ]


def _points(best: pd.DataFrame, metric: str) -> pd.DataFrame:
    frame = best[best["metric"] == metric].copy()
    frame["seq_len"] = frame["slice"].map(lambda s: slice_value(s, "seq_len"))
    return frame


# ---------------------------------------------------------------------------------------------------- figures


# Task settings that only say which lengths a configuration is trained and tested at: configurations that differ
# in nothing else (the kimi suite trains one model per length) are drawn as one line against length.
_LENGTH_SETTINGS = {"train_lengths", "test_lengths", "train_settings", "test_settings"}


def _line_names(frame: pd.DataFrame) -> pd.Series:
    """The line each row belongs to: its label, and its task variant unless that only names lengths."""
    variants = frame["task_variant"] if "task_variant" in frame else pd.Series("", index=frame.index)

    def name(label: str, variant: object) -> str:
        if not isinstance(variant, str) or not variant:
            return label
        keys = {part.split("=", 1)[0].strip() for part in re.split(r",\s(?=\w+=)", variant)}
        return label if keys <= _LENGTH_SETTINGS else f"{label} [{variant}]"

    return pd.Series([name(lb, v) for lb, v in zip(frame["label"], variants, strict=True)], index=frame.index)


@dataclass(frozen=True)
class LengthPanel:
    """One panel of the length figure: its rows, and how the slice dimensions besides the length are kept apart."""

    title: str
    rows: pd.DataFrame
    style_key: str | None = None
    """A second slice dimension drawn as line styles (its values in `style_values`)."""
    style_values: tuple[str, ...] = ()
    categorical: bool = False
    """The other dimensions change with the length: each slice is its own x position."""


def length_panels(frame: pd.DataFrame) -> list[LengthPanel]:
    """The panels of the length figure for the rows of one metric with a seq_len (see `length_figure`)."""
    panels = []
    for name, task in _by_task(frame, variants=False):
        combos = task["slice"].map(
            lambda s: ",".join(f"{k}={v}" for k, v in slice_dims(s).items() if k != "seq_len")
        )
        task = task.assign(combo=combos)
        others = {k for s in task["slice"] for k in slice_dims(s) if k != "seq_len"}
        crossed = (task.groupby("combo")["seq_len"].nunique() > 1).all()
        order = sorted(dict.fromkeys(task["combo"]), key=slice_sort_key)
        if combos.nunique() == 1:
            panels.append(LengthPanel(name, task))
        elif crossed and len(order) <= MAX_STYLES and len(others) == 1:
            panels.append(LengthPanel(name, task, next(iter(others)), tuple(order)))
        elif crossed:
            panels += [LengthPanel(f"{name} · {combo}", task[task["combo"] == combo]) for combo in order]
        else:
            panels.append(LengthPanel(name, task, categorical=True))
    return panels


def length_figure(best: pd.DataFrame, metric: str = "accuracy") -> Figure | None:
    """`metric` at each configuration's best lr against sequence length, one line per configuration (a suite
    that trains one model per length joins them into one line per architecture).

    The other slice dimensions of a task are kept apart (see the module docstring): crossed with the length, as
    line styles (up to MAX_STYLES values) or panels; varying with it (MQAR's pairs), the slices themselves on the
    x axis. Tasks with a needle depth are drawn as heatmaps instead (`needle_heatmaps`). None: nothing to draw."""
    frame = _points(best, metric).dropna(subset=["seq_len"])
    frame = frame[~frame["slice"].str.contains(r"(?:^|,)depth=", regex=True)]
    if frame.empty:
        return None
    frame["line"] = _line_names(frame)
    styles = _styles(frame["line"])
    panels = length_panels(frame)
    fig, axes = _grid(len(panels))
    extra = []
    for ax, panel in zip(axes, panels, strict=True):
        order = sorted(dict.fromkeys(panel.rows["slice"]), key=slice_sort_key)
        for line_name, line in panel.rows.groupby("line", sort=True):
            colour, marker = styles[line_name]
            parts = [(None, line)] if panel.style_key is None else [
                (v, line[line["combo"] == v]) for v in panel.style_values
            ]  # fmt: skip
            for value, part in parts:
                if part.empty:
                    continue
                x = part["slice"].map(order.index) if panel.categorical else part["seq_len"]
                part = part.assign(x=x).sort_values("x")
                style = "-" if value is None else _LINE_STYLES[panel.style_values.index(value)]
                ax.errorbar(part["x"], part["mean"], yerr=part["ci95"].fillna(0), color=colour, marker=marker,
                            linestyle=style, capsize=3, markersize=5)  # fmt: skip
        if panel.categorical:
            ax.set_xticks(range(len(order)), [s.replace(",", "\n") for s in order], fontsize="x-small")
            ax.set_xlabel("test slice")
        else:
            ax.set_xscale("log", base=2)
            lengths = sorted(panel.rows["seq_len"].unique())
            ax.set_xticks(lengths, [f"{int(n)}" for n in lengths])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("sequence length")
        if panel.style_key is not None and not extra:
            extra = _style_legend(panel.style_key, [v.split("=", 1)[1] for v in panel.style_values])
        _panel_title(ax, panel.title)
        ax.set(ylabel=f"{metric} (best lr)")
        _y_axis(ax, metric)
    what = f"{metric} against sequence length, each configuration at its best lr"
    _decorate(fig, _title(frame, what), _caption(frame), _legend(styles, frame["line"], extra))
    return fig


def accuracy_vs_length(
    best: pd.DataFrame, path: Path, metric: str = "accuracy", formats: tuple[str, ...] = ("png",)
) -> Path | None:
    """`length_figure`, written to `path` in every format; None when there is nothing to draw."""
    fig = length_figure(best, metric)
    return None if fig is None else save(fig, path, formats)


def accuracy_vs_state(
    best: pd.DataFrame, path: Path, metric: str = "accuracy", formats: tuple[str, ...] = ("png",)
) -> Path | None:
    """`metric` against the inference state size (numbers per sequence at the slice's length, log axis): one panel
    per test slice, one line per architecture through its configurations (sizes). A recurrent model's state does
    not grow with length; attention's cache does (Zoology's accuracy-vs-state view)."""
    return _against_size(best, path, metric, "state", "state size (numbers per sequence)", formats)


def accuracy_vs_width(
    best: pd.DataFrame, path: Path, metric: str = "accuracy", formats: tuple[str, ...] = ("png",)
) -> Path | None:
    """`metric` against d_model: one panel per test slice, one line per architecture through its widths (Zoology's
    accuracy-vs-width view). None unless some architecture was run at two or more widths."""
    if "d_model" not in best or best.groupby("model")["d_model"].nunique().max() < 2:
        return None
    return _against_size(best, path, metric, "d_model", "model width (d_model)", formats)


def _against_size(best, path, metric, x, xlabel, formats) -> Path | None:
    frame = _points(best, metric).dropna(subset=["seq_len", x])
    if frame.empty:
        return None
    # one line per architecture across its sizes; configurations that differ otherwise keep their own lines
    frame["line"] = [
        label.split("@")[0] + (label[label.index(" [") :] if " [" in label else "")
        for label in frame["label"]
    ]
    styles = _styles(frame["line"])
    panels = [
        (f"{name} · {piece}", rows)
        for name, task in _by_task(frame)
        for piece, rows in sorted(task.groupby("slice"), key=lambda kv: slice_sort_key(kv[0]))
    ]
    fig, axes = _grid(len(panels), columns=4 if len(panels) > 6 else COLUMNS)
    for ax, (name, panel) in zip(axes, panels, strict=True):
        for line_name, line in panel.groupby("line", sort=True):
            line = line.sort_values(x)
            colour, marker = styles[line_name]
            # hollow markers: architectures with the same state size (kda and gdn) stay visible on top of each other
            ax.errorbar(line[x], line["mean"], yerr=line["ci95"].fillna(0), color=colour, marker=marker,
                        markerfacecolor="none", markeredgewidth=1.5, capsize=3, markersize=7)  # fmt: skip
        ax.set_xscale("log", base=2 if x == "d_model" else 10)
        if x == "d_model":
            widths = sorted(panel[x].unique())
            ax.set_xticks(widths, [f"{int(w)}" for w in widths])
        else:
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 3.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: human(value)))
        ax.xaxis.set_minor_formatter(NullFormatter())
        _panel_title(ax, name)
        ax.set(xlabel=xlabel, ylabel=f"{metric} (best lr)")
        _y_axis(ax, metric)
    what = f"{metric} against {xlabel.split(' (')[0]}, each configuration at its best lr"
    return _finish(fig, _title(frame, what), _caption(frame), _legend(styles, frame["line"]), path, formats)


def needle_heatmaps(
    best: pd.DataFrame, path: Path, metric: str = "accuracy", formats: tuple[str, ...] = ("png",)
) -> Path | None:
    """Needle depth x sequence length heatmaps of `metric`: a panel per (task setting, configuration)."""
    frame = _points(best, metric).dropna(subset=["seq_len"])
    frame["depth"] = frame["slice"].map(lambda s: slice_value(s, "depth"))
    frame = frame.dropna(subset=["depth"])
    if frame.empty:
        return None
    panels = [
        (f"{label} · {name}", rows) for name, task in _by_task(frame) for label, rows in task.groupby("label")
    ]
    fig, axes = _grid(len(panels), width=3.8, height=3.2, columns=4)
    image = None
    for ax, (name, panel) in zip(axes, panels, strict=True):
        grid = panel.pivot_table(index="depth", columns="seq_len", values="mean", aggfunc="first")
        image = ax.imshow(grid.to_numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
        ax.set_xticks(range(len(grid.columns)), [f"{int(c)}" for c in grid.columns], fontsize="x-small")
        ax.set_yticks(range(len(grid.index)), [f"{d:g}%" for d in grid.index], fontsize="x-small")
        for (i, j), value in np.ndenumerate(grid.to_numpy()):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if value > 0.6 else "white")  # fmt: skip
        _panel_title(ax, name)
        ax.set(xlabel="sequence length", ylabel="needle depth")
    fig.colorbar(image, ax=axes, shrink=0.8, label=f"{metric} (best lr)")
    fig.suptitle(_title(frame, f"{metric} by needle depth and length"), fontsize="medium")
    fig.text(0.5, 0.003, _caption(frame), ha="center", va="bottom", fontsize="x-small", color="0.35")
    return save(fig, path, formats)


def training_curves(curves: pd.DataFrame, path: Path, formats: tuple[str, ...] = ("png",)) -> Path | None:
    """`curves_figure`, written to `path` in every format; None when there is nothing to draw."""
    fig = curves_figure(curves)
    return None if fig is None else save(fig, path, formats)


def curves_figure(curves: pd.DataFrame) -> Figure | None:
    """Validation accuracy against steps (top) and training loss against tokens (bottom) per task setting, one
    line per configuration at its best lr: the mean over seeds, the band their range. `curves`: one row per
    history point (see `harness.results.store.ResultStore.read_curves`)."""
    if curves.empty:
        return None
    curves = curves.copy()
    if "label" not in curves:
        curves["label"] = curves["model"]
    styles = _styles(curves["label"])
    panels = _by_task(curves)
    columns = min(len(panels), COLUMNS)
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(4.2 * columns, 6.0 * rows + 1.3))
    axes = fig.subplots(2 * rows, columns, squeeze=False)
    for index in range(rows * columns):
        top, bottom = (
            axes[2 * (index // columns)][index % columns],
            axes[2 * (index // columns) + 1][index % columns],
        )
        if index >= len(panels):
            top.set_visible(False)
            bottom.set_visible(False)
            continue
        name, panel = panels[index]
        for label, line in panel.groupby("label", sort=True):
            colour, marker = styles[label]
            for ax, x, y in ((top, "step", "valid_accuracy"), (bottom, "tokens", "train_loss")):
                stats = line.groupby(x)[y].agg(["mean", "min", "max"]).reset_index()
                ax.plot(stats[x], stats["mean"], color=colour, marker=marker, markersize=3)
                if (stats["max"] > stats["min"]).any():
                    ax.fill_between(
                        stats[x], stats["min"], stats["max"], color=colour, alpha=0.15, linewidth=0
                    )
        _panel_title(top, name)
        top.set(xlabel="step", ylabel="validation accuracy", ylim=(-0.03, 1.03))
        bottom.set(xlabel="tokens seen", ylabel="training loss")
        top.grid(alpha=0.3)
        bottom.grid(alpha=0.3)
    seeds = curves.groupby(["label", "task", "task_setting"])["seed"].nunique()
    caption = f"mean over seeds (band: their range) · seeds per line {seeds.min()}" + (
        "" if seeds.min() == seeds.max() else f"–{seeds.max()}"
    )
    _decorate(
        fig, "training curves at each configuration's best lr", caption, _legend(styles, curves["label"])
    )
    return fig


def loss_by_position(best: pd.DataFrame, path: Path, formats: tuple[str, ...] = ("png",)) -> Path | None:
    """Language modelling: mean loss against position in the document at the longest test length, one line per
    configuration, the training length marked: past it a model that extrapolates keeps its loss falling."""
    frame = best[best["metric"] == "loss_by_position"].copy()
    if frame.empty:
        return None
    bounds = frame["slice"].str.extract(r"positions=(\d+)-(\d+)").astype(float)
    frame["position"] = (bounds[0] + bounds[1] + 1) / 2
    trained = best[best["metric"] == "perplexity"]["slice"].map(lambda s: slice_value(s, "seq_len")).min()
    styles = _styles(best["label"])
    panels = _by_task(frame)
    fig, axes = _grid(len(panels), width=5.0)
    for ax, (name, panel) in zip(axes, panels, strict=True):
        for label, line in panel.groupby("label", sort=True):
            line = line.sort_values("position")
            colour, marker = styles[label]
            ax.plot(line["position"], line["mean"], color=colour, marker=marker, markersize=4)
        if pd.notna(trained):
            ax.axvline(trained, color="grey", linestyle="--", linewidth=1)
        _panel_title(ax, name)
        ax.set(xlabel="position in the document (token)", ylabel="mean loss (nats, best lr)")
        ax.grid(alpha=0.3)
    extra = (
        [Line2D([], [], color="grey", linestyle="--", label="training length")] if pd.notna(trained) else []
    )
    title = _title(frame, "loss by position at the longest test length")
    return _finish(fig, title, _caption(frame), _legend(styles, frame["label"], extra), path, formats)


def draw_all(
    best: pd.DataFrame,
    curves: pd.DataFrame,
    directory: Path,
    prefix: str,
    metric: str,
    formats: tuple[str, ...] = ("png",),
) -> list[Path]:
    """Every figure that the results allow, as DIRECTORY/PREFIX_<figure>.<format>; the first format's paths."""
    drawn = [
        accuracy_vs_length(best, directory / f"{prefix}_{metric}_vs_length.png", metric, formats),
        accuracy_vs_state(best, directory / f"{prefix}_{metric}_vs_state.png", metric, formats),
        accuracy_vs_width(best, directory / f"{prefix}_{metric}_vs_width.png", metric, formats),
        needle_heatmaps(best, directory / f"{prefix}_needle_heatmaps.png", metric, formats),
        training_curves(curves, directory / f"{prefix}_training_curves.png", formats),
        accuracy_vs_length(best, directory / f"{prefix}_perplexity_vs_length.png", "perplexity", formats),
        loss_by_position(best, directory / f"{prefix}_loss_by_position.png", formats),
    ]
    return [p for p in drawn if p is not None]


__all__ = [
    "accuracy_vs_length",
    "accuracy_vs_state",
    "accuracy_vs_width",
    "curves_figure",
    "draw_all",
    "length_figure",
    "length_panels",
    "loss_by_position",
    "needle_heatmaps",
    "save",
    "slice_dims",
    "slice_value",
    "training_curves",
]
