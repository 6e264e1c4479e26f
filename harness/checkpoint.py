"""A trained cell saved as a transformers checkpoint: safetensors weights + config (`harness_lm`) + a word-level
tokenizer of the task's vocabulary (a corpus task's own tokenizer) + the cell's provenance + its test slices as
lm-eval tasks (a corpus task's held-out documents).

    DIR/model.safetensors, config.json, generation_config.json     AutoModelForCausalLM.from_pretrained(DIR)
    DIR/tokenizer.json, tokenizer_config.json                      AutoTokenizer.from_pretrained(DIR)
    DIR/harness.json                                               the cell, its training outcome and test slices
    DIR/lm_eval_tasks/                                             the cell's test examples for lm-eval

The tokenizer has one token per task word (same ids as the task) and then EOS and pad. Those two ids are added to
the model's vocabulary at save time with zero embeddings and -inf logits (they were never trained), so the saved
model predicts exactly what the trained one did.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.config import to_dict
from tasks.base import Slice

EOS, PAD = "<eos>", "<pad>"


def build_tokenizer(words: list[str]):
    """A PreTrainedTokenizerFast that splits on whitespace and maps word i of `words` to id i; EOS and pad follow."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate([*words, EOS, PAD])}
    if len(vocab) != len(words) + 2 or any(not w or any(c.isspace() for c in w) for w in words):
        raise ValueError(
            "a task vocabulary must be distinct, non-empty words without spaces, and not <eos>/<pad>"
        )
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS, pad_token=PAD, padding_side="left"
    )


def save_checkpoint(
    model, cell, test_slices: list[Slice], path: str | Path, outcome: Any = None, metrics: dict | None = None
) -> Path:
    """Save a trained LanguageModel of `cell` under `path` (see the module docstring)."""
    from harness.hf_model import HarnessForCausalLM
    from harness.lm_eval_tasks import export_corpus_task, export_task
    from harness.registry import TASKS

    path = Path(path)
    task = TASKS.get(cell.task_name)()
    if task.text_corpus:
        # a text corpus: its own tokenizer (end-of-text and pad are in the trained vocabulary already)
        tokenizer, added = task.tokenizer(cell.task), 0
        tasks = export_corpus_task(task, cell.task, path / "lm_eval_tasks")
    else:
        words = task.vocabulary(cell.task)
        if len(words) != model.config.vocab_size:
            raise ValueError(
                f"task {cell.task_name} has {len(words)} words but the model {model.config.vocab_size} tokens"
            )
        tokenizer, added = build_tokenizer(words), 2
        tasks = export_task(cell.task_name, cell.task, test_slices, path / "lm_eval_tasks")
    hf = HarnessForCausalLM.from_language_model(
        model, added_tokens=added, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    hf.save_pretrained(path)
    tokenizer.save_pretrained(path)
    provenance = dict(
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
    )
    (path / "harness.json").write_text(json.dumps(provenance, indent=1, default=str) + "\n")
    return path
