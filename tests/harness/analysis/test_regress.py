"""`harness regress`: verdicts from the baseline's seed spread, and a sabotaged mixer is caught end to end."""

from pathlib import Path

import pandas as pd
import pytest
import torch.nn.functional as F

import tasks  # noqa: F401 - registers the suites
from harness.analysis.regress import Tolerance, compare, regress
from harness.errors import HarnessError

BASELINE = Path(__file__).parents[3] / "results" / "smoke-cpu"


def rows(values, model="kda", slice_="seq_len=64", metric="accuracy", status="ok"):
    return pd.DataFrame(
        [dict(model=model, task="mqar", task_setting="", slice=slice_, metric=metric, value=v, seed=i,
              higher_is_better=metric != "loss", status=status) for i, v in enumerate(values)]
    )  # fmt: skip


@pytest.mark.parametrize(
    "candidate,verdict",
    [(0.90, "ok"), (0.86, "ok"), (0.84, "REGRESSED"), (0.99, "better"), (None, "MISSING")],
)
def test_verdict_follows_the_seed_spread(candidate, verdict):
    baseline = rows([0.88, 0.90, 0.92])  # mean 0.90, std 0.02: bound 0.90 - max(2 * 0.02, 0.01) = 0.86
    got = rows([0.0]).iloc[0:0] if candidate is None else rows([candidate])
    table = compare(baseline, got, ["accuracy"], Tolerance(k=2, min_tolerance=0.01))
    assert table["verdict"].tolist() == [verdict]
    assert table["bound"].iloc[0] == pytest.approx(0.86)


def test_min_tolerance_and_lower_is_better():
    baseline = rows([1.0, 1.0], metric="loss")  # no spread: the floor applies, upwards for a loss
    table = compare(baseline, rows([1.04], metric="loss"), ["loss"], Tolerance(k=3, min_tolerance=0.03))
    assert table["verdict"].tolist() == ["REGRESSED"] and table["bound"].iloc[0] == pytest.approx(1.03)


def test_a_failed_candidate_cell_counts_as_missing():
    table = compare(rows([0.9, 0.9]), rows([None], status="failed"), ["accuracy"], Tolerance())
    assert table["verdict"].tolist() == ["MISSING"]


def test_sabotaged_attention_fails_the_regression_check(tmp_path, monkeypatch):
    """Zero MLA's queries (uniform causal attention: it can no longer look a key up): regress must fail on it.
    The intact code passing is CI's own `harness regress` run (scripts/test.sh)."""
    attention = F.scaled_dot_product_attention

    def sabotaged(q, k, v, *args, **kwargs):
        return attention(q * 0, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", sabotaged)
    # Cap training at 400 steps (the sabotaged model would use all 1500): intact MLA reaches the smoke target by
    # step 300 with the baseline's lr and seed, so the cap changes nothing for the code under test but CI time.
    passed, text, table = regress(
        BASELINE, tmp_path / "candidate", models=["mla"], overrides=("train.max_steps=400",)
    )
    print(text)
    assert not passed and set(table["verdict"]) == {"REGRESSED"}, text
    assert "REGRESSED" in text and "| mla@tiny " in text


def test_models_are_chosen_by_label_by_model_at_size_or_by_architecture(tmp_path):
    """The smoke baseline's gdn label names a field changed from today's preset ('gdn@tiny [model...]'): the
    model@size part alone still picks it; an unknown name is a one-line error listing what there is."""
    passed, text, table = regress(
        BASELINE, tmp_path / "candidate", models=["gdn@tiny"], overrides=("train.max_steps=1",)
    )
    assert set(table["model"].str.split(" ").str[0]) == {"gdn@tiny"}
    with pytest.raises(HarnessError, match="the baseline has no model foo@tiny; it has: "):
        regress(BASELINE, tmp_path / "other", models=["foo@tiny"])


def test_a_time_bound_leaves_out_the_configurations_that_trained_longer(tmp_path):
    """--longest-s: the smoke baseline's kda and mamba2 cells trained for 100-200 s, gdn and mla for under 80 s;
    with a bound of 100 s only the two short ones are rerun and compared, and the text names the others."""
    passed, text, table = regress(
        BASELINE, tmp_path / "candidate", overrides=("train.max_steps=1",), longest_s=100
    )
    assert {label.split(" ")[0] for label in table["model"]} == {"gdn@tiny", "mla@tiny"}
    assert (
        "(left out: longer than 100 s in the baseline: " in text
        and "kda@tiny" in text
        and "mamba2@tiny" in text
    )
    with pytest.raises(HarnessError, match="--longest-s 1: every chosen configuration"):
        regress(BASELINE, tmp_path / "other", longest_s=1)


def test_settled_only_leaves_out_what_was_still_improving(tmp_path, monkeypatch):
    """--settled-only: a configuration whose baseline cell was still improving when its steps ran out is left out
    (here every cell but mla's is made to look so); the text says which and why."""
    import harness.analysis.regress as module

    def improving(meta):
        return meta["config"]["model_name"] != "mla"

    monkeypatch.setattr(module, "cell_still_improving", improving)
    passed, text, table = regress(
        BASELINE, tmp_path / "candidate", overrides=("train.max_steps=1",), settled_only=True
    )
    assert {label.split(" ")[0] for label in table["model"]} == {"mla@tiny"}
    assert "(left out: still improving at the end of the baseline: " in text and "gdn@tiny" in text


def test_a_bad_time_bound_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    command = [
        sys.executable,
        "-m",
        "harness.cli",
        "regress",
        "--longest-s",
        "0",
        "--out",
        str(tmp_path / "x"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parents[3])
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "error: --longest-s must be a number of seconds > 0, got 0"
    assert not (tmp_path / "x").exists()
