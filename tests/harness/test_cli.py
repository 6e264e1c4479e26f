"""End to end through the command line: a tiny run, resume, report, and one-line errors that write nothing."""

import subprocess
import sys

import pandas as pd
import pytest

# Small enough to finish in seconds; the real smoke budget is tested in test_smoke.py.
FAST = [
    "--set", "train.max_steps=12", "--set", "train.eval_every=6", "--set", "train.batch_size=16",
    "--set", "task.num_train=320", "--set", "task.num_test=32", "--lrs", "3e-3",
]  # fmt: skip


def harness(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, cwd=cwd
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("store")
    result = harness("run", "--models", "kda,mla,kimi", "--suite", "smoke", "--out", str(out), *FAST, cwd=out)
    assert result.returncode == 0, result.stderr
    return out, result


def test_run_writes_tidy_rows_and_prints_the_table(finished_run):
    out, result = finished_run
    assert "3 cell(s) run, 0 already" in result.stdout
    for model in ("kda", "mla", "kimi"):
        assert f"| {model}@tiny " in result.stdout
    cells = sorted((out / "cells").glob("*.jsonl"))
    assert len(cells) == 3
    rows = pd.concat(pd.read_json(path, lines=True) for path in cells)
    assert set(rows["status"]) == {"ok"}
    assert set(rows["metric"]) == {"accuracy", "sequence_accuracy", "loss"}
    assert set(rows["slice"]) == {"seq_len=64,pairs=2", "seq_len=64,pairs=4"}
    kernels = dict(zip(rows["model"], rows["kernel_impl"], strict=False))
    assert kernels == {"kda": "gdr:torch", "mla": "sdpa", "kimi": "gdr:torch+sdpa"}
    assert (rows["steps"] <= 12).all() and (rows["params"] > 0).all() and rows["git_commit"].notna().all()
    assert rows[rows["model"] == "kimi"]["layers"].iloc[0] == "kda,mla"
    assert (out / "report" / "smoke.csv").exists()


def test_rerun_skips_finished_cells(finished_run):
    out, _ = finished_run
    before = {p.name: p.read_bytes() for p in (out / "cells").iterdir()}
    again = harness("run", "--models", "kda,mla,kimi", "--suite", "smoke", "--out", str(out), *FAST, cwd=out)
    assert again.returncode == 0, again.stderr
    assert "0 cell(s) run, 3 already" in again.stdout
    assert {p.name: p.read_bytes() for p in (out / "cells").iterdir()} == before


def test_report_reads_the_store(finished_run):
    out, _ = finished_run
    result = harness("report", "--out", str(out), "--metric", "accuracy", cwd=out)
    assert result.returncode == 0, result.stderr
    assert "| mla@tiny " in result.stdout and "sequence_accuracy" not in result.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["run", "--models", "nosuch", "--suite", "smoke"], "unknown model 'nosuch'"),
        (
            ["run", "--models", "kda", "--suite", "smoke", "--set", "train.lr=abc"],
            "expected float, got 'abc'",
        ),
        (["run", "--models", "kda", "--suite", "smok"], "did you mean: smoke"),
        (
            ["run", "--models", "kda", "--suite", "smoke", "--set", "task.train_settings=16,8"],
            "need seq_len >= 32",
        ),
        (
            ["run", "--models", "kda", "--suite", "smoke", "--set", "model.mla.num_heads=4"],
            "no model of this run",
        ),
        (["run", "--models", "kda", "--suite", "smoke", "--scale", "huge"], "has no scale 'huge'"),
        (["report", "--out", "nowhere"], "no results store"),
        (
            ["run", "--models", "kda", "--suite", "smoke", "--stack-lrs", "--tensorboard"],
            "--stack-lrs does not log",
        ),
        (["run", "--models", "kda", "--suite", "lm", "--stack-lrs"], "packed document stream"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    result = harness(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_corrupt_store_is_reported_in_one_line(finished_run, tmp_path):
    out, _ = finished_run
    broken = tmp_path / "store"
    (broken / "cells").mkdir(parents=True)
    (broken / "cells" / "bad.jsonl").write_text("{not json")
    result = harness("report", "--out", str(broken), cwd=tmp_path)
    assert result.returncode == 2 and "damaged cell" in result.stderr and "bad.jsonl" in result.stderr
    assert result.stderr.count("\n") == 1


def test_list_shows_every_registered_name(tmp_path):
    result = harness("list", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in (
        "kda",
        "gdn",
        "mamba2",
        "mla",
        "mla-nope",
        "kimi",
        "gdn-h",
        "tiny",
        "kimi-synth",
        "mqar",
        "smoke",
    ):
        assert f"  {name} " in result.stdout, name
