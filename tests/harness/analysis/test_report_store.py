"""The report on real stores: one row per trained configuration, sizes and settings in the labels, the values
pooled counted; any store (lm-eval rows of other models, read-only) reported; the raw rows exported."""

import os
import stat
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from harness.analysis.report import best_lr, pivot, summarize, write_report
from harness.cli import app
from harness.plugins import load_plugins
from harness.results.store import ResultStore
from harness.run.sweep import plan_cells, run_cells

load_plugins()
FAST = ["train.max_steps=2", "train.eval_every=1", "task.num_train=256", "task.num_test=32"]


def run(store, models, overrides=(), seeds=(0,)):
    cells = plan_cells(models, "smoke", "tiny", [*FAST, *overrides], seeds=list(seeds), lrs=[3e-3])
    run_cells(cells, store)
    return cells


@pytest.fixture(scope="module")
def mixed_store(tmp_path_factory):
    """kda at two sizes, kda@tiny with two step budgets (seeds 0 and 1 of one, seed 0 of the other: seed 0
    repeated across configurations), and kimi beside kda:mla=1:1 (one model under two names)."""
    store = ResultStore(tmp_path_factory.mktemp("mixed"))
    run(store, ["kda@tiny", "kda@kimi-synth"], seeds=(0, 1))
    run(store, ["kda@tiny"], overrides=["train.max_steps=3"])
    run(store, ["kimi", "kda:mla=1:1"])
    return store


def test_every_row_is_one_trained_configuration_with_its_counts(mixed_store):
    rows = mixed_store.read()
    assert rows["setting_id"].notna().all()
    table = pivot(best_lr(summarize(rows, mixed_store)))
    table = table[table["metric"] == "accuracy"].set_index("model")
    # every row trained 2 or 3 steps where the suite plans 1500: each says which (the settings all rows share,
    # the data size, are said once above the table)
    kimi_synth = "kda@kimi-synth [train.max_steps=2]"
    assert set(table.index) == {
        "kda@tiny [train.max_steps=2]",
        "kda@tiny [train.max_steps=3]",
        kimi_synth,
        "kimi@tiny [train.max_steps=2]",
        "kda:mla=1:1@tiny [train.max_steps=2]",
    }
    assert table.loc["kda@tiny [train.max_steps=2]", "seeds"] == 2
    assert table.loc["kda@tiny [train.max_steps=3]", "seeds"] == 1
    assert table.loc[kimi_synth, "seeds"] == 2 and table.loc[kimi_synth, "values"] == 2
    assert table.loc[kimi_synth, "params"] > 10 * table.loc["kda@tiny [train.max_steps=2]", "params"]
    assert table.loc["kda@tiny [train.max_steps=3]", "steps_max"] == 3


def test_the_report_warns_of_one_model_under_two_names(mixed_store):
    text = write_report(mixed_store.read(), mixed_store, None, "all")
    assert (
        "warning: kda:mla=1:1@tiny [train.max_steps=2] and kimi@tiny [train.max_steps=2] are the same model"
        in text
    )
    assert "| kda@kimi-synth [train.max_steps=2] " in text and "| kda@tiny [train.max_steps=3] " in text
    # what every row does otherwise than the suite, once above the table
    assert (
        "Not smoke · tiny's settings, in every row: task.num_test=32 (the suite's: 256), task.num_train=256"
        in text
    )


def test_a_store_with_lm_eval_rows_of_another_model(tmp_path):
    store = ResultStore(tmp_path)
    common = dict(suite="lm-eval", model="some-hf-model", dtype="float32", device="cpu", status="ok", value=0.5,
                  num_fewshot=0, task_version="1", higher_is_better=True)  # fmt: skip
    store.write(
        "ev1",
        [
            dict(common, run_id="ev1", task="harness_mqar", slice=None, metric="acc", n=40, stderr=0.1),
            dict(
                common, run_id="ev1", task="harness_mqar__seq_len_64", slice="seq_len=64", metric="acc", n=40
            ),
            dict(common, run_id="ev1", task="hellaswag", metric="acc_norm", value=0.3),
        ],
        {"checkpoint": "/elsewhere/some-hf-model", "tasks": ["harness_mqar"]},
    )
    text = write_report(store.read(), store, tmp_path / "report", "all", metric="acc,acc_norm")
    # whole-task scores (a group, no slice) are the column 'all', never 'nan'
    assert "| some-hf-model " in text and "nan" not in text and "| all " in text
    assert "all" in pd.read_csv(tmp_path / "report" / "all_pivot.csv").columns
    assert "### lm-eval · hellaswag (v1) · acc_norm" in text


def test_a_read_only_store_is_reported_without_writing_to_it(mixed_store, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in mixed_store.root.rglob("*")}
    modes = {p: p.stat().st_mode for p in [mixed_store.root, *mixed_store.root.rglob("*")]}
    for path in modes:
        path.chmod(stat.S_IMODE(modes[path]) & ~0o222)
    try:
        result = CliRunner().invoke(
            app,
            ["report", "--out", str(mixed_store.root), "--report-dir", str(tmp_path / "r"), "--no-figures"],
        )
    finally:
        for path, mode in modes.items():
            path.chmod(stat.S_IMODE(mode))
    assert result.exit_code == 0, result.output
    assert "kda@kimi-synth" in result.output and (tmp_path / "r" / "all_pivot.csv").exists()
    assert {p: p.stat().st_mtime_ns for p in mixed_store.root.rglob("*")} == before


def test_an_unwritable_default_report_folder_prints_the_tables_only(mixed_store, monkeypatch):
    # root may write anywhere, so an unwritable store is simulated: os.access says no
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if mode == os.W_OK else real(path, mode))
    result = CliRunner().invoke(app, ["report", "--out", str(mixed_store.root), "--no-figures"])
    assert result.exit_code == 0 and "pass --report-dir DIR" in result.output
    assert not (mixed_store.root / "report").exists()


@pytest.mark.parametrize("format_", ["parquet", "csv"])
def test_export_writes_the_raw_rows_and_curves(mixed_store, tmp_path, format_):
    result = CliRunner().invoke(
        app, ["export", "--store", str(mixed_store.root), "--out", str(tmp_path), "--format", format_]
    )
    assert result.exit_code == 0, result.output
    read = pd.read_parquet if format_ == "parquet" else pd.read_csv
    rows, curves = read(tmp_path / f"rows.{format_}"), read(tmp_path / f"curves.{format_}")
    assert len(rows) == len(mixed_store.read()) and rows["setting_id"].notna().all()
    assert {"label", "value", "metric", "seed"} <= set(rows.columns)
    assert set(curves["run_id"]) == set(rows["run_id"]) and curves["step"].notna().all()


def test_export_refuses_an_unknown_format(mixed_store, tmp_path):
    command = [
        sys.executable,
        "-m",
        "harness.cli",
        "export",
        "--store",
        str(mixed_store.root),
        "--format",
        "xlsx",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert (
        result.returncode == 2
        and result.stderr.strip() == "error: --format must be parquet or csv, got 'xlsx'"
    )
    assert not list(tmp_path.iterdir())


def test_a_model_that_is_not_its_preset_says_so_even_alone(tmp_path):
    """A variant with no sibling in its table (its only other configuration lives in another store) is labelled
    with the model fields that differ from its preset, so that it cannot pass for the preset."""
    store = ResultStore(tmp_path)
    run(store, ["gdn@tiny"], overrides=["model.gdn.output_gate=sigmoid"])
    run(store, ["kda@tiny"])
    table = pivot(best_lr(summarize(store.read(), store)))
    labels = set(table[table["metric"] == "accuracy"]["model"])
    assert labels == {"gdn@tiny [model.mixers.gdn.output_gate=sigmoid]", "kda@tiny"}


def test_a_setting_off_the_suite_is_named_where_no_sibling_shows_it(tmp_path):
    """A configuration trained longer than its suite plans, alone in its table (the variant of a store whose
    baseline lives elsewhere), cannot pass for the suite's protocol: the table says what all its rows changed; where
    rows differ, each row's label says its own value."""
    store = ResultStore(tmp_path)
    run(store, ["kda@tiny"])
    alone = write_report(store.read(), store, None, "all")
    assert "| kda@tiny " in alone  # one row: its settings are the table's
    assert (
        "in every row: task.num_test=32 (the suite's: 256)" in alone
        and "train.max_steps=2 (the suite's: 1500)" in alone
    )
    run(store, ["gdn@tiny"], overrides=["train.max_steps=3"])
    both = pivot(best_lr(summarize(store.read(), store)))
    labels = set(both[both["metric"] == "accuracy"]["model"])
    assert labels == {"kda@tiny [train.max_steps=2]", "gdn@tiny [train.max_steps=3]"}
