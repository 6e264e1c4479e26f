"""Scoring a model on slices under teacher forcing: token and sequence accuracy, loss, loss by position.

Only scored positions are scored: the LM head runs on the hidden states of labelled positions alone, at most
`HEAD_TOKENS` at a time. An MQAR example of 1024 tokens has 64 answers; a batch of 256 such examples with a
vocabulary of 8192 would otherwise make 256 x 1024 x 8192 logits (8.6 GB in float32) to read 16K of them, which
is what ran several cells sharing one GPU out of memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.run.capture_gate import GATE
from harness.run.device import autocast_dtype
from tasks.base import IGNORE, Slice

HEAD_TOKENS = 16384
"""Positions whose logits are made at once (16K x a 32K vocabulary in float32 is 2 GiB)."""


class EvalSettings(Protocol):
    """What scoring reads of a training config (harness.run.train.TrainConfig has both)."""

    eval_batch_size: int
    dtype: str


@dataclass
class Scored:
    """The scored positions of one chunk of a batch: where they are, what was asked, what the model said."""

    rows: Tensor  # (n,) example index within the batch
    columns: Tensor  # (n,) position within the example
    labels: Tensor  # (n,) target ids
    logits: Tensor  # (n, vocab) float32


@torch.no_grad()
def evaluate(
    model: nn.Module, slices: list[Slice], config: EvalSettings, device: torch.device
) -> dict[str, dict]:
    """Per slice: token accuracy over labelled positions, whole-sequence accuracy and mean loss, with counts."""
    model.eval()
    results = {}
    for piece in slices:
        if len(piece) == 0:
            # every test example of this slice also occurs in the training data (see data.drop_seen): no measurement
            nan = float("nan")
            results[piece.name] = dict(
                accuracy=nan, sequence_accuracy=nan, loss=nan, n_tokens=0, n_sequences=0
            )
            continue
        correct = total = sequences_right = loss_sum = 0.0
        for size, chunks in scored_batches(model, piece, config, device):
            hits_per_row = torch.zeros(size, device=device)
            scored_per_row = torch.zeros(size, device=device)
            for chunk in chunks:
                hits = (chunk.logits.argmax(-1) == chunk.labels).float()
                correct += hits.sum().item()
                total += len(chunk.labels)
                hits_per_row.index_add_(0, chunk.rows, hits)
                scored_per_row.index_add_(0, chunk.rows, torch.ones_like(hits))
                loss_sum += F.cross_entropy(chunk.logits, chunk.labels, reduction="sum").item()
            sequences_right += (hits_per_row == scored_per_row).sum().item()
        results[piece.name] = dict(
            accuracy=correct / max(total, 1),
            sequence_accuracy=sequences_right / len(piece),
            loss=loss_sum / max(total, 1),
            n_tokens=int(total),
            n_sequences=len(piece),
        )
    return results


def slice_batch(
    piece: Slice, start: int, end: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Examples start:end of a slice as tensors on `device`: inputs, labels, segment ids (or None)."""
    inputs = torch.from_numpy(piece.inputs[start:end]).to(device)
    labels = torch.from_numpy(piece.labels[start:end]).to(device)
    segments = None if piece.segments is None else torch.from_numpy(piece.segments[start:end]).to(device)
    return inputs, labels, segments


def scored_batches(
    model: nn.Module, piece: Slice, config: EvalSettings, device: torch.device
) -> Iterator[tuple[int, Iterator[Scored]]]:
    """Per batch of eval_batch_size examples: (batch size, its scored positions in chunks of HEAD_TOKENS), the
    model run under the training's autocast. A batch's chunks must be consumed before the next batch."""
    amp = autocast_dtype(config.dtype, device)
    for i in range(0, len(piece), config.eval_batch_size):
        GATE.checkpoint()  # another cell of this process may be capturing: no CUDA call of this one until it ends
        inputs, labels, segments = slice_batch(piece, i, i + config.eval_batch_size, device)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            hidden = model.hidden_states(inputs, segment_ids=segments)  # (B, T, D)
        yield len(inputs), _chunks(model, hidden, labels, amp, device)


def _chunks(model: nn.Module, hidden: Tensor, labels: Tensor, amp, device: torch.device) -> Iterator[Scored]:
    rows, columns = (labels != IGNORE).nonzero(as_tuple=True)
    for start in range(0, len(rows), HEAD_TOKENS):
        r, c = rows[start : start + HEAD_TOKENS], columns[start : start + HEAD_TOKENS]
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model.lm_head(hidden[r, c])
        yield Scored(r, c, labels[r, c], logits.float())


@torch.no_grad()
def loss_by_position(
    model: nn.Module, piece: Slice, config: EvalSettings, device: torch.device
) -> np.ndarray:
    """Mean loss at every position of a slice's examples (NaN where no example is scored): (T,) float64."""
    model.eval()
    T = piece.inputs.shape[1]
    total = torch.zeros(T, dtype=torch.float64, device=device)
    count = torch.zeros(T, dtype=torch.float64, device=device)
    for _, chunks in scored_batches(model, piece, config, device):
        for chunk in chunks:
            losses = F.cross_entropy(chunk.logits, chunk.labels, reduction="none").double()
            total.index_add_(0, chunk.columns, losses)
            count.index_add_(0, chunk.columns, torch.ones_like(losses))
    return (total / count).cpu().numpy()  # 0 / 0: NaN where nothing is scored
