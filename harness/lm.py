"""What a language-modelling cell reports besides the loss per test length (harness/cell.py calls this):

perplexity          exp(loss) at every test length (1x, 2x, 4x the training length)
unigram_loss        the same targets' cross-entropy under the training split's unigram distribution: the
                    loss of a model that ignores context (how far below it a model gets is what it learned)
loss_by_position    mean loss in equal bins of position at the longest test length (slice '...,positions=a-b')
tokens_per_s        training throughput (median over the evaluation intervals; evaluation excluded)
peak_memory_gib     peak CUDA memory allocated (the process's RSS on a CPU)
lm-eval scores      of the final checkpoint, through the lm-eval bridge, for the task's `lm_eval_tasks`
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.train import loss_by_position


def language_model_rows(
    model, task, cell, test_slices, metrics: dict, outcome, device: torch.device, options
) -> list[dict[str, Any]]:
    """Add perplexity and the unigram reference to `metrics` (per slice); return the other rows."""
    for piece in test_slices:
        measured = metrics[piece.name]
        measured["perplexity"] = math.exp(measured["loss"]) if math.isfinite(measured["loss"]) else math.inf
        measured["unigram_loss"] = task.unigram_loss(cell.task, piece)
    rows = position_rows(model, cell, max(test_slices, key=lambda p: p.inputs.shape[1]), device)
    rows += throughput_rows(outcome.history)
    if cell.task.lm_eval_tasks:
        rows += lm_eval_rows(model, task, cell, test_slices, outcome, metrics, device, options)
    return rows


def position_rows(model, cell, piece, device) -> list[dict[str, Any]]:
    losses = loss_by_position(model, piece, cell.train, device)
    length = len(losses)
    edges = np.linspace(0, length, cell.task.position_bins + 1).round().astype(int)
    rows = []
    for begin, end in zip(edges[:-1], edges[1:], strict=True):
        rows.append(
            dict(
                slice=f"{piece.name},positions={begin}-{end - 1}",
                metric="loss_by_position",
                value=float(np.nanmean(losses[begin:end])),
                higher_is_better=False,
                n=int((end - begin) * len(piece)),
                stderr=None,
            )
        )
    return rows


def throughput_rows(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # the first interval includes compilation and warm-up: left out when there are others
    points = history[1:] if len(history) > 1 else history
    if not points:
        return []
    rate = float(np.median([p["tokens_per_s"] for p in points]))
    memory = max(p["peak_memory_gib"] for p in history)
    return [
        dict(
            slice="train",
            metric="tokens_per_s",
            value=rate,
            higher_is_better=True,
            n=len(points),
            stderr=None,
        ),
        dict(
            slice="train", metric="peak_memory_gib", value=memory, higher_is_better=False, n=None, stderr=None
        ),
    ]


def lm_eval_rows(model, task, cell, test_slices, outcome, metrics, device, options) -> list[dict[str, Any]]:
    """Save the trained model as a checkpoint (into options.save_dir when given, else a temporary folder) and
    score it with lm-eval on the task's lm_eval_tasks."""
    from harness.checkpoint import save_checkpoint
    from harness.lm_eval_bridge import evaluate_checkpoint

    keep = options is not None and options.save_dir is not None
    folder = Path(options.save_dir) if keep else Path(tempfile.mkdtemp(prefix="harness-lm-"))
    try:
        checkpoint = save_checkpoint(model, cell, test_slices, folder, outcome, metrics)
        _, rows = evaluate_checkpoint(
            checkpoint,
            list(cell.task.lm_eval_tasks),
            device=str(device),
            batch_size=8,
        )
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    kept = (
        "task",
        "task_version",
        "num_fewshot",
        "slice",
        "metric",
        "value",
        "higher_is_better",
        "n",
        "stderr",
    )
    # lm-eval scores a task as a whole: slice "all" (a custom task exported with slices keeps its own)
    return [
        {key: row[key] for key in kept} | {"slice": row["slice"] or "all", "wall_s": row["wall_s"]}
        for row in rows
    ]


def corpus_documents(task, config, count: int, max_tokens: int) -> list[str]:
    """The text of `count` held-out documents (their first `max_tokens` tokens): the 'harness_lm' lm-eval task.
    The same long documents the perplexity slices read."""
    corpus = task.corpus(config)
    texts = []
    for doc in task.long_documents(corpus, config)[:count]:
        start = int(corpus.valid.starts[doc]) + 1  # after the end-of-text token that opens every document
        ids = np.asarray(corpus.valid.tokens[start : start + max_tokens]).tolist()
        texts.append(corpus.tokenizer.decode(ids))
    return texts
