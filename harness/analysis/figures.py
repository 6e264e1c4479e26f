"""Figures from the best-lr table (`harness.analysis.report.best_lr`) and the stored training curves, written as PNG.

Each function draws one figure with one panel per task setting and one line (or heatmap) per model, and returns
the path, or None when the results hold nothing it could draw (e.g. no slice has a depth for the heatmaps).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from harness.analysis.labels import task_label
from harness.results.metrics import is_bounded, metric_spec

# Figures are made with matplotlib.figure.Figure, not pyplot: no backend is chosen for the caller (a notebook's
# inline plots keep working) and no global figure list grows.


def _figure(rows: int, columns: int, width: float, height: float):
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots(rows, columns, squeeze=False)


def slice_value(slice_name: str, key: str) -> float | None:
    """'seq_len=512,pairs=8' -> 512.0 for key 'seq_len'."""
    match = re.search(rf"(?:^|,){re.escape(key)}=([-\d.]+)", slice_name or "")
    return float(match[1]) if match else None


def _panels(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    labels = [task_label(t, s) for t, s in zip(frame["task"], frame["task_setting"], strict=True)]
    frame = frame.assign(panel=labels)
    return [(name, frame[frame["panel"] == name]) for name in sorted(set(labels))]


def _grid(count: int, width: float = 4.2, height: float = 3.4):
    columns = min(count, 4)
    rows = -(-count // columns)
    fig, axes = _figure(rows, columns, width * columns, height * rows)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, axes.flat


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def _with_lengths(best: pd.DataFrame, metric: str) -> pd.DataFrame:
    frame = best[best["metric"] == metric].copy()
    frame["seq_len"] = frame["slice"].map(lambda s: slice_value(s, "seq_len"))
    return frame.dropna(subset=["seq_len"])


def _points(frame: pd.DataFrame, x: str) -> pd.DataFrame:
    # several slices at one x (e.g. pair counts or needle depths at one length) are averaged into one point
    return frame.groupby(["model", x], as_index=False).agg(mean=("mean", "mean"), ci95=("ci95", "mean"))


def accuracy_vs_length(best: pd.DataFrame, path: Path, metric: str = "accuracy") -> Path | None:
    """`metric` at the best lr against sequence length (log2 axis), one line per model, 95% intervals as bars."""
    frame = _with_lengths(best, metric)
    if frame.empty:
        return None
    panels = _panels(frame)
    fig, axes = _grid(len(panels))
    for ax, (name, panel) in zip(axes, panels, strict=False):
        for model, line in _points(panel, "seq_len").groupby("model", sort=True):
            line = line.sort_values("seq_len")
            ax.errorbar(line["seq_len"], line["mean"], yerr=line["ci95"], marker="o", capsize=3, label=model)
        ax.set_xscale("log", base=2)
        ax.set(title=name, xlabel="sequence length", ylabel=f"{metric} (best lr)")
        if is_bounded(metric):
            ax.set_ylim(-0.02, 1.02)
        elif (spec := metric_spec(metric)) is not None and spec.log_scale:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(title="model", fontsize="small")
    return _save(fig, path)


def accuracy_vs_state(best: pd.DataFrame, path: Path, metric: str = "accuracy") -> Path | None:
    """`metric` against the model's inference state size (log axis), one line per model over sequence lengths:
    a recurrent model is a vertical line (its state does not grow), attention moves right as its cache grows."""
    frame = _with_lengths(best, metric)
    if frame.empty:
        return None
    panels = _panels(frame)
    fig, axes = _grid(len(panels))
    for ax, (name, panel) in zip(axes, panels, strict=False):
        points = panel.groupby(["model", "seq_len"], as_index=False).agg(
            mean=("mean", "mean"), state=("state", "max")
        )
        for model, line in points.groupby("model", sort=True):
            line = line.sort_values("seq_len")
            ax.plot(line["state"], line["mean"], marker="o", label=model)
        ax.set_xscale("log")
        ax.set(title=name, xlabel="state size (numbers per sequence)", ylabel=f"{metric} (best lr)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(title="model", fontsize="small")
    return _save(fig, path)


def needle_heatmaps(best: pd.DataFrame, path: Path, metric: str = "accuracy") -> Path | None:
    """Needle depth x sequence length heatmaps of `metric`: one row of panels per task setting, one per model."""
    frame = _with_lengths(best, metric)
    frame["depth"] = frame["slice"].map(lambda s: slice_value(s, "depth"))
    frame = frame.dropna(subset=["depth"])
    if frame.empty:
        return None
    panels = _panels(frame)
    models = sorted(frame["model"].unique())
    fig, axes = _figure(len(panels), len(models), 3.6 * len(models) + 1, 3.0 * len(panels))
    for row, (name, panel) in enumerate(panels):
        for column, model in enumerate(models):
            ax = axes[row][column]
            grid = panel[panel["model"] == model].pivot_table(
                index="depth", columns="seq_len", values="mean", aggfunc="mean"
            )
            image = ax.imshow(grid.to_numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
            ax.set_xticks(range(len(grid.columns)), [f"{int(c)}" for c in grid.columns])
            ax.set_yticks(range(len(grid.index)), [f"{d:g}%" for d in grid.index])
            for (i, j), value in np.ndenumerate(grid.to_numpy()):
                if np.isfinite(value):
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if value > 0.6 else "white")  # fmt: skip
            ax.set(
                title=f"{model} · {name}",
                xlabel="sequence length",
                ylabel="needle depth" if column == 0 else "",
            )
    fig.colorbar(image, ax=axes, shrink=0.8, label=f"{metric} (best lr)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def training_curves(curves: pd.DataFrame, path: Path) -> Path | None:
    """Validation accuracy against steps and training loss against tokens, one line per model (best lr; the
    mean over seeds). `curves`: one row per history point with model, task, task_setting, step, tokens,
    train_loss and valid_accuracy (see `harness.results.store.ResultStore.read_curves`)."""
    if curves.empty:
        return None
    panels = _panels(curves)
    fig, axes = _figure(2, len(panels), 4.2 * len(panels), 6.4)
    for column, (name, panel) in enumerate(panels):
        mean = panel.groupby(["model", "step"], as_index=False)[
            ["tokens", "train_loss", "valid_accuracy"]
        ].mean()
        for model, line in mean.groupby("model", sort=True):
            axes[0][column].plot(line["step"], line["valid_accuracy"], label=model)
            axes[1][column].plot(line["tokens"], line["train_loss"], label=model)
        axes[0][column].set(title=name, xlabel="step", ylabel="validation accuracy", ylim=(-0.02, 1.02))
        axes[1][column].set(xlabel="tokens seen", ylabel="training loss")
        for ax in axes[:, column]:
            ax.grid(alpha=0.3)
            ax.legend(title="model", fontsize="small")
    return _save(fig, path)


def loss_by_position(best: pd.DataFrame, path: Path) -> Path | None:
    """Language modelling: mean loss against position in the document at the longest test length, one line per
    model, the training length marked: past it a model that extrapolates keeps its loss falling."""
    frame = best[best["metric"] == "loss_by_position"].copy()
    if frame.empty:
        return None
    bounds = frame["slice"].str.extract(r"positions=(\d+)-(\d+)").astype(float)
    frame["position"] = (bounds[0] + bounds[1] + 1) / 2
    trained = best[best["metric"] == "perplexity"]["slice"].map(lambda s: slice_value(s, "seq_len")).min()
    panels = _panels(frame)
    fig, axes = _grid(len(panels), width=5.0)
    for ax, (name, panel) in zip(axes, panels, strict=False):
        for model, line in panel.groupby("model", sort=True):
            line = line.sort_values("position")
            ax.plot(line["position"], line["mean"], marker=".", label=model)
        if pd.notna(trained):
            ax.axvline(trained, color="grey", linestyle="--", linewidth=1, label="training length")
        ax.set(title=name, xlabel="position in the document (token)", ylabel="mean loss (nats, best lr)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, path)


def draw_all(
    best: pd.DataFrame, curves: pd.DataFrame, directory: Path, prefix: str, metric: str
) -> list[Path]:
    """Every figure that the results allow, as DIRECTORY/PREFIX_<figure>.png."""
    drawn = [
        accuracy_vs_length(best, directory / f"{prefix}_{metric}_vs_length.png", metric),
        accuracy_vs_state(best, directory / f"{prefix}_{metric}_vs_state.png", metric),
        needle_heatmaps(best, directory / f"{prefix}_needle_heatmaps.png", metric),
        training_curves(curves, directory / f"{prefix}_training_curves.png"),
        accuracy_vs_length(best, directory / f"{prefix}_perplexity_vs_length.png", "perplexity"),
        loss_by_position(best, directory / f"{prefix}_loss_by_position.png"),
    ]
    return [p for p in drawn if p is not None]
