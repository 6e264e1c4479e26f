"""Harness tasks as lm-eval tasks over local files, so that any causal LM can be scored on them with lm-eval.

What is exported is the task's (`Task.lm_eval_exports`); this module writes it in lm-eval's format. A folder
holds one YAML and one JSONL file per lm-eval task; pass it to lm-eval with `--include_path`.

'next-word' exports (the synthetic probes): each test slice becomes one lm-eval task,
`harness_<task>__<slice>` (e.g. `harness_mqar__seq_len_64_pairs_2`), and the task a group over its slices,
`harness_<task>` (in a checkpoint's own export; `harness export-tasks` puts the suite and scale in front, see
harness/run/export.py). The harness scores every labelled position p of an example under teacher forcing: the model
reads inputs[:p+1] and is right if its argmax is labels[p] (`accuracy`, per answer token). Here each labelled
position is one document: context = the text of inputs[:p+1], target = the word of labels[p], output_type
`loglikelihood`, and lm-eval's `acc` for that output type is 1 when the target is the greedy continuation. For a
word-level tokenizer (the harness's checkpoints) the target is one token, so lm-eval's `acc` over a slice is
exactly the harness's `accuracy` over the same examples (the group weights slices by their documents: pooled
token accuracy). For another model's tokenizer a word may be several tokens; `acc` then asks that all of them be
greedy.

'perplexity' exports (language modelling): one task, `harness_<task>`, output_type `loglikelihood_rolling` over
each document's text, scored as word and byte perplexity and bits per byte (comparable across tokenizers).

A folder stands alone: its YAMLs name their data files relative to themselves, so it can be moved or copied to
another machine. lm-eval hands `dataset_kwargs.data_files` to `datasets.load_dataset`, which would read a relative
path from the working directory; the one thing lm-eval resolves next to a YAML is a `!function`. So every task
YAML includes `harness_data.yaml`, whose `custom_dataset: !function harness_data.load` is `harness_data.py` of the
same folder: it reads the data files from its own folder (the standard library and `datasets` only, no harness).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tasks.base import LmEvalExport, Slice, Task

PREFIX = "harness_"

# What every task YAML of a folder includes (lm-eval resolves `include` and `!function` next to the YAML).
DATA_YAML = "harness_data.yaml"
DATA_MODULE = "harness_data.py"
_DATA_YAML_TEXT = """\
# Included by every task YAML of this folder: its documents are read by harness_data.py, next to this file,
# wherever the folder is (written by the harness's harness/integrations/lm_eval_export.py).
custom_dataset: !function harness_data.load
"""
_DATA_MODULE_TEXT = '''\
"""The data of the lm-eval tasks of this folder (written by the harness's harness/integrations/lm_eval_export.py).

lm-eval calls `load` with the task's `dataset_kwargs` and metadata; the data files are named relative to this
folder, so that it can be moved.
"""

from pathlib import Path

import datasets


def load(data_files, **metadata):
    here = Path(__file__).resolve().parent
    return datasets.load_dataset("json", data_files={split: str(here / name) for split, name in data_files.items()})
'''

# lm-eval's fields for each kind of export
NEXT_WORD = dict(
    output_type="loglikelihood",
    doc_to_text="{{context}}",
    # loglikelihood requests take no target_delimiter: the space that separates words is in the target
    doc_to_target=" {{target}}",
    metric_list=[{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
)
PERPLEXITY = dict(
    output_type="loglikelihood_rolling",
    doc_to_text="",
    doc_to_target="{{text}}",
    metric_list=[
        {"metric": "word_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False},
        {"metric": "byte_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False},
        {"metric": "bits_per_byte", "aggregation": "bits_per_byte", "higher_is_better": False},
    ],
)
KINDS = {"next-word": NEXT_WORD, "perplexity": PERPLEXITY}


def group_name(task_name: str) -> str:
    """'fuzzy-recall' -> 'harness_fuzzy_recall': the name of a checkpoint's own export (it holds one task config;
    `harness export-tasks` names a suite's exports so that they are unique, harness/run/export.py)."""
    return PREFIX + task_name.replace("-", "_")


def slice_task_name(group: str, slice_name: str) -> str:
    """('harness_mqar', 'seq_len=64,pairs=2') -> 'harness_mqar__seq_len_64_pairs_2'."""
    return f"{group}__{re.sub(r'[^0-9A-Za-z]+', '_', slice_name).strip('_')}"


def export_task(
    task: Task,
    task_name: str,
    config: Any,
    test_slices: list[Slice],
    out: str | Path,
    group: str | None = None,
) -> list[str]:
    """Write the task's lm-eval export under `out`; returns the names of what was written: the group (or the one
    task) first, then its tasks."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / DATA_YAML).write_text(_DATA_YAML_TEXT)
    (out / DATA_MODULE).write_text(_DATA_MODULE_TEXT)
    group = group or group_name(task_name)
    exports = task.lm_eval_exports(config, test_slices)
    whole = [export for export in exports if export.slice is None]
    if whole and len(exports) > 1:
        raise ValueError(f"{task_name}: an export of the whole task must be its only one")
    names = []
    for export in exports:
        name = group if export.slice is None else slice_task_name(group, export.slice)
        _write_task(out, name, export, dict(version=task.version, harness_task=task_name, **export.metadata))
        names.append(name)
    if whole:
        return names
    (out / f"{group}.yaml").write_text(_group_yaml(group, names, task.version))
    return [group, *names]


def _write_task(out: Path, name: str, export: LmEvalExport, metadata: dict[str, Any]) -> None:
    """An lm-eval task over the JSONL file of its documents (its test split), named relative to the folder. JSON is
    valid YAML: no YAML library needed, and no quoting surprises in names."""
    data = f"{name}.jsonl"
    (out / data).write_text("".join(json.dumps(doc) + "\n" for doc in export.documents))
    config = {
        "task": name,
        "include": DATA_YAML,
        "dataset_kwargs": {"data_files": {"test": data}},
        "test_split": "test",
        **KINDS[export.kind],
        "metadata": metadata,
    }
    (out / f"{name}.yaml").write_text(json.dumps(config, indent=1) + "\n")


def _group_yaml(group: str, names: list[str], version: str) -> str:
    config = {
        "group": group,
        "task": names,
        "aggregate_metric_list": [{"metric": "acc", "aggregation": "mean", "weight_by_size": True}],
        "metadata": {"version": version},
    }
    return json.dumps(config, indent=1) + "\n"
