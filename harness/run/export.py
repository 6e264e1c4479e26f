"""`harness export-tasks`: a suite's tasks at a scale, with the test data a cell of the suite is scored on, as
lm-eval tasks (harness/integrations/lm_eval_export.py writes them).

Each task config becomes a folder OUT/<group>/ that stands alone: its lm-eval YAMLs, their documents, and the
tokenizer of the task's vocabulary (tokenizer.json, tokenizer_config.json), the one a harness checkpoint of the
task carries, so that a model trained elsewhere on the same vocabulary is scored on the same tokens. Group names
say what the data is, and two different exports never share one: harness_<suite>_<scale>_<task>, then, where the
suite has several configs of the task, the fields in which they differ (`..._niah_variant_multi_key`,
`..._mqar_test_settings_128_8`; test settings rather than training ones, as the export holds test data), then
`_seed<N>` for a seed other than 0 (the test examples that also occur in that seed's training data are dropped).
Should two configs still share a name, a short hash of the config tells them apart.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from harness.config import config_hash, to_dict
from harness.integrations.lm_eval_export import PREFIX, export_task
from harness.registry import SUITES, TASKS
from harness.run.data import cell_data


def export_suite(suite_name: str, scale: str | None, out: str | Path, seed: int = 0) -> dict[str, Any]:
    """Export every task of a suite at a scale under OUT/<group>/, as the harness evaluates it for `seed` (test
    examples that also occur in the training data dropped). Returns {group name: task config}."""
    suite = SUITES.get(suite_name)
    scale = scale or next(iter(suite.scales))
    setting = suite.at(scale, suite_name)
    names = export_names(suite_name, scale, setting.tasks, seed)
    for (task_name, config), group in zip(setting.tasks, names, strict=True):
        task = TASKS.get(task_name)()
        task.validate(config)
        folder = Path(out) / group
        export_task(task, task_name, config, cell_data(task_name, config, seed).test, folder, group)
        task.tokenizer(config).save_pretrained(folder)
    return {group: config for (_, config), group in zip(setting.tasks, names, strict=True)}


def export_names(suite: str, scale: str, tasks: tuple[tuple[str, Any], ...], seed: int) -> list[str]:
    """The group name of each (task name, config) of a suite at a scale (see the module docstring)."""
    names = []
    for task_name, config in tasks:
        name = f"{suite}_{scale}_{task_name}"
        others = [other for name_, other in tasks if name_ == task_name]
        if len(others) > 1:
            name += f"_{_differences(others)[others.index(config)]}"
        if seed:
            name += f"_seed{seed}"
        names.append(PREFIX + _identifier(name))
    counts = Counter(names)
    return [
        f"{name}_{config_hash(config)[:6]}" if counts[name] > 1 else name
        for name, (_, config) in zip(names, tasks, strict=True)
    ]


def _differences(configs: list[Any]) -> list[str]:
    """For configs of one task: the fields in which they differ, as 'key_value' text per config."""
    views = [to_dict(config) for config in configs]
    keys = [key for key in views[0] if len({json.dumps(view[key], default=str) for view in views}) > 1]
    if any(key.startswith("test") for key in keys):
        keys = [key for key in keys if not key.startswith("train")]
    return ["_".join(f"{key}_{view[key]}" for key in keys).lower() for view in views]


def _identifier(text: str) -> str:
    """'recall_tiny_fuzzy-recall' -> 'recall_tiny_fuzzy_recall': letters, digits and single underscores."""
    return re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_")
