"""Figures are drawn from the best-lr table: files appear when the data allow, and nothing when they do not."""

import pandas as pd

from harness.analysis.figures import (
    accuracy_vs_length,
    accuracy_vs_state,
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
