"""The README's main command, end to end: every mixer must learn the smoke MQAR (minutes on two CPU cores)."""

import subprocess
import sys

import pandas as pd
import pytest

MODELS = ("kda", "gdn", "mamba2", "mla")


@pytest.mark.slow
def test_smoke_suite_every_mixer_learns_recall(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "run",
            "--models",
            ",".join(MODELS),
            "--suite",
            "smoke",
            "--out",
            "runs",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    print(result.stdout)  # the table, for the CI log
    rows = pd.concat(pd.read_json(p, lines=True) for p in (tmp_path / "runs" / "cells").glob("*.jsonl"))
    accuracy = rows[rows["metric"] == "accuracy"].groupby("model")["value"].min()
    assert set(accuracy.index) == set(MODELS)
    assert (accuracy >= 0.9).all(), accuracy.to_dict()
