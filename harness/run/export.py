"""`harness export-tasks`: a suite's tasks at a scale, with the test data a cell of the suite is scored on, as
lm-eval tasks (harness/integrations/lm_eval_export.py writes them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.integrations.lm_eval_export import export_task, group_name
from harness.registry import SUITES, TASKS
from harness.run.data import cell_data


def export_suite(suite_name: str, scale: str | None, out: str | Path, seed: int = 0) -> dict[str, Any]:
    """Export every task of a suite at a scale, as the harness evaluates it for `seed` (test examples that also
    occur in the training data dropped). Returns {group name: task config}."""
    suite = SUITES.get(suite_name)
    setting = suite.at(scale or next(iter(suite.scales)), suite_name)
    exported: dict[str, Any] = {}
    for task_name, config in setting.tasks:
        task = TASKS.get(task_name)()
        task.validate(config)
        index = 1
        while group_name(task_name, index) in exported:
            index += 1
        group = group_name(task_name, index)
        export_task(task, task_name, config, cell_data(task_name, config, seed).test, out, group)
        exported[group] = config
    return exported
