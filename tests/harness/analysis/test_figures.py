"""Figures are drawn from the best-lr table: files appear when the data allow, and nothing when they do not."""

import pandas as pd
import pytest

from harness.analysis.figures import (
    accuracy_vs_length,
    accuracy_vs_state,
    length_figure,
    length_panels,
    needle_heatmaps,
    slice_value,
    training_curves,
)
from harness.analysis.report import best_lr, summarize

PNG = b"\x89PNG\r\n\x1a\n"


def best(depths=False):
    records = []
    for model, base in (("kda", 0.9), ("mla", 0.6)):
        for seq_len in (256, 512, 1024):
            for depth in (0, 50, 100) if depths else (None,):
                name = f"seq_len={seq_len},depth={depth}" if depths else f"seq_len={seq_len},pairs=8"
                for seed in (0, 1):
                    records.append(
                        dict(run_id=f"{model}{seed}", suite="s", scale="tiny", task="niah" if depths else "mqar",
                             task_version="1", task_setting="", slice=name, metric="accuracy",
                             value=base - seq_len / 4096 + 0.01 * seed, higher_is_better=True, seed=seed, model=model,
                             params=100, state_size=seq_len if model == "mla" else 64, lr=1e-3, steps=5,
                             kernel_impl="x", status="ok")
                    )  # fmt: skip
    return best_lr(summarize(pd.DataFrame(records)))


def test_slice_value():
    assert slice_value("seq_len=512,pairs=8", "seq_len") == 512
    assert slice_value("seq_len=512,pairs=8", "pairs") == 8
    assert slice_value("depth=50", "seq_len") is None


def test_length_and_state_figures(tmp_path):
    for draw in (accuracy_vs_length, accuracy_vs_state):
        path = draw(best(), tmp_path / f"{draw.__name__}.png")
        assert path.read_bytes()[:8] == PNG
        assert draw(best().assign(slice="depth=10"), tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_needle_heatmaps_only_with_depths(tmp_path):
    assert needle_heatmaps(best(), tmp_path / "a.png") is None
    assert needle_heatmaps(best(depths=True), tmp_path / "b.png").read_bytes()[:8] == PNG


def test_training_curves(tmp_path):
    curves = pd.DataFrame(
        [dict(model=m, task="mqar", task_setting="", seed=0, step=s, tokens=32 * s, train_loss=1 / s,
              valid_accuracy=s / 10) for m in ("kda", "mla") for s in (1, 2, 3)]
    )  # fmt: skip
    assert training_curves(curves, tmp_path / "c.png").read_bytes()[:8] == PNG
    assert training_curves(curves.iloc[0:0], tmp_path / "d.png") is None


def test_loss_by_position_and_perplexity_figures_from_the_committed_lm_run(tmp_path):
    from harness.analysis.figures import loss_by_position
    from harness.results.store import ResultStore

    best = best_lr(summarize(ResultStore("results/lm-small-h100/store").read()))
    path = loss_by_position(best, tmp_path / "positions.png")
    assert path is not None and path.stat().st_size > 10_000
    assert accuracy_vs_length(best, tmp_path / "ppl.png", "perplexity").exists()
    assert loss_by_position(best[best["metric"] != "loss_by_position"], tmp_path / "none.png") is None


def grid_best(settings):
    """Best-lr rows of kda and mla on mqar slices named by (seq_len, pairs) settings, two seeds each."""
    records = [
        dict(run_id=f"{model}{seed}", suite="s", scale="tiny", task="mqar", task_version="1", task_setting="",
             slice=f"seq_len={L},pairs={N}", metric="accuracy", value=base - L / 4096 - N / 256 + 0.01 * seed,
             higher_is_better=True, seed=seed, model=model, preset="tiny", params=100, state_size=64, lr=1e-3,
             steps=5, kernel_impl="x", status="ok")
        for model, base in (("kda", 0.9), ("mla", 0.6)) for L, N in settings for seed in (0, 1)
    ]  # fmt: skip
    return best_lr(summarize(pd.DataFrame(records)))


def drawn_points(fig) -> list[tuple[float, float]]:
    return sorted(
        (round(float(y), 6), round(float(x), 6))
        for ax in fig.axes
        for container in ax.containers
        for x, y in zip(*container.lines[0].get_data(), strict=True)
    )


@pytest.mark.parametrize(
    "settings, panels, style",
    [
        ([(L, N) for L in (64, 128, 256) for N in (2, 4)], 1, "pairs"),  # crossed, few values: line styles
        ([(L, N) for L in (64, 128) for N in (1, 2, 3, 4, 5, 6)], 6, None),  # crossed, many: a panel each
        (
            [(64, 4), (128, 8), (512, 32), (512, 64)],
            1,
            None,
        ),  # pairs change with length: slices on the x axis
    ],
)
def test_no_slice_dimension_is_averaged_into_a_point(settings, panels, style):
    best = grid_best(settings)
    planned = length_panels(best.assign(seq_len=best["slice"].map(lambda s: slice_value(s, "seq_len"))))
    assert len(planned) == panels and planned[0].style_key == style
    assert planned[0].categorical == (settings[-1] == (512, 64))
    fig = length_figure(best)
    # every point drawn is one (configuration, slice) of the table, with its own mean: nothing pooled
    assert len(drawn_points(fig)) == len(best)
    assert sorted(round(m, 6) for m in best["mean"]) == [y for y, _ in drawn_points(fig)]
    assert len(fig.legends) == 1  # one legend for the whole figure


def test_figures_are_written_in_every_format_asked(tmp_path):
    path = accuracy_vs_length(
        grid_best([(64, 2), (128, 2)]), tmp_path / "f.png", formats=("png", "pdf", "svg")
    )
    assert path == tmp_path / "f.png" and path.read_bytes()[:8] == PNG
    assert (tmp_path / "f.pdf").read_bytes()[:5] == b"%PDF-" and b"<svg" in (tmp_path / "f.svg").read_bytes()[
        :500
    ]


def test_caption_says_how_many_lrs_each_best_lr_was_chosen_from():
    from harness.analysis.figures import _caption

    table = best()
    assert "lrs tried per point 1" in _caption(table)
    mixed = table.assign(lrs=[1 if model == "kda" else 3 for model in table["model"]])
    assert "lrs tried per point 1–3" in _caption(mixed)
