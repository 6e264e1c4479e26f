"""Synthetic tasks as lm-eval tasks over local files, so that any causal LM can be scored on them with lm-eval.

Each test slice of a task becomes one lm-eval task, `harness_<task>__<slice>` (e.g.
`harness_mqar__seq_len_64_pairs_2`), and each task a group over its slices, `harness_<task>`. A folder holds
one YAML and one JSONL file per slice and one YAML per group; pass it to lm-eval with `--include_path`.

Scoring. The harness scores every labelled position p of an example under teacher forcing: the model reads
inputs[:p+1] and is right if its argmax is labels[p] (`accuracy`, per answer token). Here each labelled position is
one document: context = the text of inputs[:p+1], target = the word of labels[p], output_type `loglikelihood`, and
lm-eval's `acc` for that output type is 1 when the target is the greedy continuation. For a word-level tokenizer
(the harness's checkpoints) the target is one token, so lm-eval's `acc` over a slice is exactly the harness's
`accuracy` over the same examples (the group weights slices by their documents: pooled token accuracy). For
another model's tokenizer a word may be several tokens; `acc` then asks that all of them be greedy.
The data files are named by absolute path: export again after moving the folder.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.registry import TASKS
from tasks.base import IGNORE, Slice

PREFIX = "harness_"


def group_name(task_name: str, index: int = 1) -> str:
    """'mqar' -> 'harness_mqar'; a second config of the same task in one export gets '_2', and so on."""
    name = PREFIX + task_name.replace("-", "_")
    return name if index == 1 else f"{name}_{index}"


def slice_task_name(group: str, slice_name: str) -> str:
    """('harness_mqar', 'seq_len=64,pairs=2') -> 'harness_mqar__seq_len_64_pairs_2'."""
    return f"{group}__{re.sub(r'[^0-9A-Za-z]+', '_', slice_name).strip('_')}"


def documents(task_name: str, config: Any, piece: Slice) -> Iterator[dict[str, Any]]:
    """One document per labelled position of every example of the slice."""
    task = TASKS.get(task_name)()
    words = task.vocabulary(config)
    for example, (inputs, labels) in enumerate(zip(piece.inputs, piece.labels, strict=True)):
        for position in (labels != IGNORE).nonzero()[0].tolist():
            yield dict(
                context=task.render(config, inputs[: position + 1]),
                target=words[labels[position]],
                example=example,
                position=position,
            )


def export_task(
    task_name: str, config: Any, slices: list[Slice], out: str | Path, group: str | None = None
) -> list[str]:
    """Write the slices of one task as lm-eval tasks under `out`; returns the group's name and its tasks' names."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    group = group or group_name(task_name)
    version = TASKS.get(task_name).version
    names = []
    for piece in slices:
        name = slice_task_name(group, piece.name)
        data = out / f"{name}.jsonl"
        data.write_text("".join(json.dumps(doc) + "\n" for doc in documents(task_name, config, piece)))
        metadata = dict(version=version, harness_task=task_name, slice=piece.name)
        (out / f"{name}.yaml").write_text(_task_yaml(name, data, metadata))
        names.append(name)
    (out / f"{group}.yaml").write_text(_group_yaml(group, names, version))
    return [group, *names]


def _local_task_yaml(name: str, data: Path, **fields: Any) -> str:
    """An lm-eval task over the JSONL file `data` (its test split); `fields` add the prompt, output type and
    metrics. JSON is valid YAML: no YAML library needed, and no quoting surprises in paths or slice names."""
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        **fields,
    }
    return json.dumps(config, indent=1) + "\n"


def _task_yaml(name: str, data: Path, metadata: dict[str, str]) -> str:
    return _local_task_yaml(
        name,
        data,
        output_type="loglikelihood",
        doc_to_text="{{context}}",
        # loglikelihood requests take no target_delimiter: the space that separates words is in the target
        doc_to_target=" {{target}}",
        metric_list=[{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        metadata=metadata,
    )


def _group_yaml(group: str, names: list[str], version: str) -> str:
    config = {
        "group": group,
        "task": names,
        "aggregate_metric_list": [{"metric": "acc", "aggregation": "mean", "weight_by_size": True}],
        "metadata": {"version": version},
    }
    return json.dumps(config, indent=1) + "\n"


def export_suite(suite_name: str, scale: str | None, out: str | Path, seed: int = 0) -> dict[str, Any]:
    """Export the test slices of every task of a suite at a scale, as the harness evaluates them for `seed`
    (test examples that also occur in the training data dropped). Returns {group name: task config}."""
    from harness.cell import drop_seen
    from harness.data import task_data
    from harness.registry import SUITES

    suite = SUITES.get(suite_name)
    setting = suite.at(scale or next(iter(suite.scales)), suite_name)
    exported: dict[str, Any] = {}
    for task_name, config in setting.tasks:
        TASKS.get(task_name)().validate(config)
        index = 1
        while group_name(task_name, index) in exported:
            index += 1
        group = group_name(task_name, index)
        task = TASKS.get(task_name)()
        if task.text_corpus:  # its held-out documents, scored as perplexity
            export_corpus_task(task, config, out, group)
        else:
            test = drop_seen(
                task_data(task_name, config, "test", seed), task_data(task_name, config, "train", seed)
            )
            export_task(task_name, config, test, out, group)
        exported[group] = config
    return exported


def export_corpus_task(task, config: Any, out: str | Path, name: str = "harness_lm") -> list[str]:
    """Held-out documents of a corpus task (tasks/lm.py) as one lm-eval perplexity task: output_type
    `loglikelihood_rolling` over each document's text, scored as word and byte perplexity and bits per byte
    (comparable across tokenizers)."""
    from harness.lm import corpus_documents

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    texts = corpus_documents(task, config, config.lm_eval_documents, max_tokens=4 * config.seq_len)
    data = out / f"{name}.jsonl"
    data.write_text("".join(json.dumps(dict(text=text)) + "\n" for text in texts))
    spec = _local_task_yaml(
        name,
        data,
        output_type="loglikelihood_rolling",
        doc_to_text="",
        doc_to_target="{{text}}",
        metric_list=[
            {"metric": "word_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False},
            {"metric": "byte_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False},
            {"metric": "bits_per_byte", "aggregation": "bits_per_byte", "higher_is_better": False},
        ],
        metadata=dict(version=task.version, harness_task="lm", corpus=config.corpus),
    )
    (out / f"{name}.yaml").write_text(spec)
    return [name]
