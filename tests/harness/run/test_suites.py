"""Every suite at every scale resolves into valid cells (task settings possible, models buildable)."""

import pytest

import models.presets  # noqa: F401
import tasks  # noqa: F401
from harness.registry import SUITES, TASKS
from harness.run.sweep import plan_cells

SUITE_SCALES = [(name, scale) for name, suite in SUITES.items() for scale in suite.scales]


@pytest.mark.parametrize("suite,scale", SUITE_SCALES)
def test_suite_plans_valid_cells(suite, scale):
    cells = plan_cells(["kda", "mla"], suite, scale)
    assert cells and all(cell.scale == scale for cell in cells)
    for cell in cells:
        TASKS.get(cell.task_name)().validate(cell.task)


def test_the_issue_suites_exist_with_three_scales():
    for name in ("recall", "localization", "reasoning", "kimi"):
        assert set(SUITES.get(name).scales) == {"tiny", "small", "paper"}
    kimi = SUITES.get("kimi").scales["paper"]
    assert kimi.model_size == "kimi-synth" and kimi.lrs == (5e-5, 1e-4, 5e-4, 1e-3)
    assert {task for task, _ in kimi.tasks} == {"palindrome", "mqar", "stack"}


def test_a_task_of_a_suite_can_have_its_own_training_budget():
    # the kimi suite's small scale trains MQAR at a larger batch than palindrome and stack (its plateau needs it)
    cells = plan_cells(["kda", "mla"], "kimi", "small")
    batches = {(cell.task_name, cell.model_name): cell.train.batch_size for cell in cells}
    assert {batches["mqar", m] for m in ("kda", "mla")} == {128}
    assert {batches[t, m] for t in ("palindrome", "stack") for m in ("kda", "mla")} == {32}
    assert {cell.train.max_steps for cell in cells} == {3000}
    # an explicit --set still wins over the suite's per-task budget
    cells = plan_cells(["kda"], "kimi", "small", overrides=["train.batch_size=16"])
    assert {cell.train.batch_size for cell in cells} == {16}
