"""The report's protocol on made-up rows: mean and 95% interval over seeds, one best lr per trained model, pivots."""

import math

import pandas as pd
import pytest

from harness.analysis.labels import slice_sort_key
from harness.analysis.report import best_lr, pivot, pivot_markdown, summarize
from harness.analysis.stats import mean_interval


def row(model, task, slice_, lr, seed, value, setting="", metric="accuracy", status="ok"):
    return dict(
        run_id=f"{model}-{task}-{setting}-{lr}-{seed}", suite="s", scale="tiny", task=task, task_version="1",
        task_setting=setting, slice=slice_, metric=metric, value=value, higher_is_better=metric != "loss",
        seed=seed, model=model, params=1000, state_size=64 if model != "mla" else int(slice_.split("=")[1]),
        lr=lr, steps=10, kernel_impl="gdr:torch", status=status, error=None,
    )  # fmt: skip


def test_the_interval_is_student_t_over_seeds():
    mean, half, n = mean_interval([0.5, 0.7, 0.9])
    assert mean == pytest.approx(0.7) and n == 3
    assert half == pytest.approx(4.3027 * 0.2 / math.sqrt(3), rel=1e-4)  # t_{0.975,2} * s / sqrt(n)


def test_one_best_lr_per_trained_model_not_per_slice():
    # lr 1e-3 wins the short slice, 1e-4 the long one; 1e-4 is better on average, so both slices report 1e-4
    rows = pd.DataFrame(
        [row("kda", "mqar", "seq_len=64", 1e-3, s, 0.9) for s in (0, 1)]
        + [row("kda", "mqar", "seq_len=256", 1e-3, s, 0.1) for s in (0, 1)]
        + [row("kda", "mqar", "seq_len=64", 1e-4, s, 0.8) for s in (0, 1)]
        + [row("kda", "mqar", "seq_len=256", 1e-4, s, 0.5 + 0.1 * s) for s in (0, 1)]
    )
    best = best_lr(summarize(rows))
    assert set(best["lr"]) == {1e-4} and set(best["lrs"]) == {2}
    long = best[best["slice"] == "seq_len=256"].iloc[0]
    assert long["mean"] == pytest.approx(0.55) and long["seeds"] == 2
    assert long["ci95"] == pytest.approx(12.7062 * math.sqrt(0.005) / math.sqrt(2), rel=1e-4)


def test_lower_is_better_metrics_pick_the_smallest():
    rows = pd.DataFrame(
        [row("kda", "mqar", "seq_len=64", 1e-3, 0, 2.0, metric="loss"), row("kda", "mqar", "seq_len=64", 1e-4, 0, 1.0, metric="loss")]
    )  # fmt: skip
    assert best_lr(summarize(rows))["lr"].tolist() == [1e-4]


def test_failed_cells_are_left_out_of_the_means():
    rows = pd.DataFrame(
        [row("kda", "mqar", "seq_len=64", 1e-3, 0, 0.8), row("kda", "mqar", "seq_len=64", 1e-3, 1, None, status="failed")]
    )  # fmt: skip
    table = summarize(rows)
    assert table["mean"].tolist() == [0.8] and table["seeds"].tolist() == [1]


def test_pivot_is_model_by_slice_and_keeps_task_settings_apart():
    rows = pd.DataFrame(
        [row(m, "niah", f"seq_len={L}", 1e-3, s, v, setting=f"variant={variant}")
         for m, v in (("kda", 0.9), ("mla", 0.5)) for L in (128, 64) for s in (0, 1)
         for variant in ("single", "multi-key")]
    )  # fmt: skip
    table = pivot(best_lr(summarize(rows)))
    assert set(table["task"]) == {"niah[variant=single] (v1)", "niah[variant=multi-key] (v1)"}
    assert list(table.columns[-2:]) == ["seq_len=64", "seq_len=128"]  # numeric slice order
    kda = table[(table["model"] == "kda") & (table["task"] == "niah[variant=single] (v1)")].iloc[0]
    assert kda["seq_len=64"] == "0.900 ± 0.000" and kda["state"] == 64
    assert table[table["model"] == "mla"]["state"].tolist() == [128, 128]  # the longest slice's cache
    text = pivot_markdown(best_lr(summarize(rows)))
    assert text.count("### s · tiny · niah[variant=") == 2 and "| kda " in text


def test_slice_sort_key_is_numeric():
    names = ["seq_len=512,pairs=8", "seq_len=64,pairs=16", "seq_len=64,pairs=4"]
    assert sorted(names, key=slice_sort_key) == [
        "seq_len=64,pairs=4",
        "seq_len=64,pairs=16",
        "seq_len=512,pairs=8",
    ]


def test_sizes_of_one_model_are_listed_in_numeric_order():
    # labels 'mla@zoology-64' ... '-512': a text sort would put -128 before -64
    rows = pd.DataFrame(
        [dict(row("mla", "mqar", "seq_len=64", 1e-3, 0, 0.5 + w / 1000), preset=f"zoology-{w}",
              run_id=f"mla-{w}", label=f"mla@zoology-{w}", setting_id=f"s{w}", task_variant="")
         for w in (512, 128, 64, 256)]
    )  # fmt: skip
    table = pivot(best_lr(summarize(rows)))
    assert table["model"].tolist() == [
        "mla@zoology-64",
        "mla@zoology-128",
        "mla@zoology-256",
        "mla@zoology-512",
    ]


def test_natural_sort_key_compares_numbers_as_numbers():
    from harness.analysis.labels import natural_sort_key

    names = ["kda@zoology-128", "kda@zoology-64", "kda", "kda@zoology-1024"]
    assert sorted(names, key=natural_sort_key) == [
        "kda",
        "kda@zoology-64",
        "kda@zoology-128",
        "kda@zoology-1024",
    ]


def test_training_curves_come_from_one_lr_per_configuration(tmp_path):
    # accuracy is best at lr 1e-3 and loss at lr 1e-2: the curves drawn beside the accuracy table are lr 1e-3's
    # alone, never the two trainings averaged into one line
    import json

    from harness.analysis.report import best_curves
    from harness.results.store import ResultStore

    store = ResultStore(tmp_path)
    store.cells.mkdir(parents=True)
    rows = []
    for lr, accuracy, loss in ((1e-3, 0.9, 0.5), (1e-2, 0.8, 0.1)):
        run_id = f"mla-{lr}"
        history = [dict(step=s, tokens=100 * s, train_loss=loss, valid_accuracy=accuracy) for s in (10, 20)]
        (store.cells / f"{run_id}.json").write_text(json.dumps({"history": history}))
        for metric, value in (("accuracy", accuracy), ("loss", loss)):
            rows.append(dict(row("mla", "mqar", "seq_len=64", lr, 0, value, metric=metric), run_id=run_id,
                             label="mla", setting_id="s1", preset="", task_variant=""))  # fmt: skip
    rows = pd.DataFrame(rows)
    best = best_lr(summarize(rows))
    assert sorted(best["lr"]) == [1e-3, 1e-2]  # the two metrics disagree
    curves = best_curves(rows, best, store, metric="accuracy")
    assert set(curves["lr"]) == {1e-3} and curves["valid_accuracy"].tolist() == [0.9, 0.9]
    assert set(best_curves(rows, best, store, metric="loss")["lr"]) == {1e-2}


def test_a_best_lr_at_the_end_of_the_grid_says_so():
    def table(scores):
        rows = pd.DataFrame([row("kda", "mqar", "seq_len=64", lr, 0, v) for lr, v in scores.items()])
        return pivot_markdown(best_lr(summarize(rows)))

    assert "(best of 3, the lowest)" in table({1e-4: 0.9, 1e-3: 0.5, 1e-2: 0.1})
    assert "(best of 3, the highest)" in table({1e-4: 0.1, 1e-3: 0.5, 1e-2: 0.9})
    assert "the lowest" not in table({1e-4: 0.5, 1e-3: 0.9, 1e-2: 0.1})  # inside the grid
    assert "the lowest" not in table(
        {1e-4: 1.0, 1e-3: 0.998, 1e-2: 0.1}
    )  # an inner lr as good: at the ceiling
    assert "the highest" not in table({1e-4: 0.0002, 1e-3: 0.0002, 1e-2: 0.0003})  # all at chance
    assert "the lowest" not in table({1e-4: 0.9, 1e-3: 0.5})  # two lrs: always at an end, nothing to say
