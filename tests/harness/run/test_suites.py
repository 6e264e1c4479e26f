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
