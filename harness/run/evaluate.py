"""Scoring a model on slices under teacher forcing: token and sequence accuracy, loss, loss by position."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.run.device import autocast_dtype
from tasks.base import IGNORE, Slice


class EvalSettings(Protocol):
    """What scoring reads of a training config (harness.run.train.TrainConfig has both)."""

    eval_batch_size: int
    dtype: str


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
        for labels, logits in scored_batches(model, piece, config, device):
            scored = labels != IGNORE
            hits = (logits.argmax(-1) == labels) & scored
            correct += hits.sum().item()
            total += scored.sum().item()
            sequences_right += (hits.sum(1) == scored.sum(1)).sum().item()
            loss_sum += F.cross_entropy(
                logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum"
            ).item()
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
) -> Iterator[tuple[Tensor, Tensor]]:
    """(labels, logits) of a slice in batches of eval_batch_size, under the training's autocast."""
    amp = autocast_dtype(config.dtype, device)
    for i in range(0, len(piece), config.eval_batch_size):
        inputs, labels, segments = slice_batch(piece, i, i + config.eval_batch_size, device)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(inputs) if segments is None else model(inputs, segment_ids=segments)
        yield labels, logits


@torch.no_grad()
def loss_by_position(
    model: nn.Module, piece: Slice, config: EvalSettings, device: torch.device
) -> np.ndarray:
    """Mean loss at every position of a slice's examples (NaN where no example is scored): (T,) float64."""
    model.eval()
    total = np.zeros(piece.inputs.shape[1])
    count = np.zeros(piece.inputs.shape[1])
    for labels, logits in scored_batches(model, piece, config, device):
        losses = F.cross_entropy(
            logits.float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none"
        )  # (B, T), 0 where ignored
        total += losses.sum(0).double().cpu().numpy()
        count += (labels != IGNORE).sum(0).cpu().numpy()
    with np.errstate(invalid="ignore"):
        return total / count
