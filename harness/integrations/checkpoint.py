"""A trained cell saved as a transformers checkpoint: safetensors weights + config (`harness_lm`) + the task's
tokenizer + the cell's provenance + its test slices as lm-eval tasks.

    DIR/model.safetensors, config.json, generation_config.json     AutoModelForCausalLM.from_pretrained(DIR)
    DIR/configuration_harness.py, modeling_harness.py              what trust_remote_code=True loads (they import
                                                                   the installed harness; remote_code.py)
    DIR/tokenizer.json, tokenizer_config.json                      AutoTokenizer.from_pretrained(DIR)
    DIR/harness.json                                               the cell, its training outcome and test slices
    DIR/lm_eval_tasks/                                             the task's lm-eval export (Task.lm_eval_exports)

The tokenizer is the task's (`Task.tokenizer`). The synthetic tasks' word-level tokenizer has one token per task
word (same ids as the task) and then EOS and pad: those two ids are added to the model's vocabulary at save time
with zero embeddings and -inf logits (they were never trained), so the saved model predicts exactly what the
trained one did.

With trust_remote_code=True the folder loads where the harness was never imported: `lm_eval --model hf
--model_args pretrained=DIR,trust_remote_code=True --tasks harness_mqar --include_path DIR/lm_eval_tasks`,
`AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`, `pipeline("text-generation", model=DIR,
trust_remote_code=True)`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.config import to_dict
from harness.integrations.hf_model import HarnessForCausalLM
from harness.integrations.lm_eval_export import export_task
from harness.registry import TASKS
from tasks.base import Slice


def save_checkpoint(
    model,
    cell,
    test_slices: list[Slice],
    path: str | Path,
    outcome: Any = None,
    metrics: dict | None = None,
    provenance: dict | None = None,
) -> Path:
    """Save a trained LanguageModel of `cell` under `path` (see the module docstring). `provenance`: the columns
    the cell's result rows share (model, preset, params, ...), kept in harness.json for `harness eval`."""
    path = Path(path)
    task = TASKS.get(cell.task_name)()
    tokenizer = task.tokenizer(cell.task)
    # ids the tokenizer has beyond the model's vocabulary (the word-level tokenizer's EOS and pad)
    added = max(0, len(tokenizer) - model.config.vocab_size)
    tasks = export_task(task, cell.task_name, cell.task, test_slices, path / "lm_eval_tasks")
    hf = HarnessForCausalLM.from_language_model(
        model, added_tokens=added, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    hf.save_pretrained(path)
    tokenizer.save_pretrained(path)
    record = dict(
        cell_id=cell.id,
        label=cell.label,
        cell=to_dict(cell),
        params=model.num_params(),
        non_embedding_params=model.num_params(non_embedding=True),
        kernel_impl=model.kernel_names(next(model.parameters()).device),
        steps=getattr(outcome, "steps", None),
        tokens_seen=getattr(outcome, "tokens_seen", None),
        test_metrics=metrics,
        lm_eval_tasks=tasks,
        row=provenance,
    )
    (path / "harness.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    return path
