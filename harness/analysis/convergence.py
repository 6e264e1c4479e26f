"""Whether a cell was still learning when its training budget ran out.

A low score can mean "this model cannot" or "this model had not yet": on MQAR at a large vocabulary, recurrent models
sit on a loss plateau for thousands of steps and then learn the task within a few hundred. The report marks the
numbers of cells that ran all their steps while their curve was still moving, so that a reader does not take a
budget's verdict for the architecture's.

The rule, over the last quarter of a cell's steps (from the last history point at or before 3/4 of its final step
to its final point): validation accuracy rose by at least ACCURACY_GAIN, or the loss fell by at least LOSS_FALL of
its value and by at least LOSS_FALL_NATS (the second keeps a converged loss of 0.010 -> 0.009 from counting). The
loss is the validation loss, the training loss where a cell recorded none. A cell that stopped before its
max_steps (early stop at its target accuracy) is not marked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

ACCURACY_GAIN = 0.01
LOSS_FALL = 0.01
LOSS_FALL_NATS = 0.02
MARK = "↑"
LEGEND = (
    f"{MARK}: still improving when its steps ran out (over the last quarter of its steps validation accuracy rose by"
    f" {ACCURACY_GAIN:g} or more, or loss fell by {LOSS_FALL:.0%} and {LOSS_FALL_NATS:g} nats or more):"
    " a longer training may change its numbers"
)


def _number(point: dict[str, Any], key: str) -> float | None:
    value = point.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def still_improving(history: Sequence[dict[str, Any]], max_steps: int | None = None) -> bool | None:
    """True when the curve in `history` (points with step, valid_accuracy, valid_loss or train_loss) was still
    moving at its end by the module's rule; False when it had flattened or the cell stopped early; None when the
    history is too short to tell (fewer than three points)."""
    points = [p for p in history if _number(p, "step") is not None]
    if len(points) < 3:
        return None
    last = points[-1]
    end = _number(last, "step")
    if max_steps and end < max_steps:
        return False  # stopped before its budget: it met its target (or was stopped), not cut short
    earlier = [p for p in points[:-1] if _number(p, "step") <= 0.75 * end]
    if not earlier:
        return None
    ref = earlier[-1]
    acc_then, acc_now = _number(ref, "valid_accuracy"), _number(last, "valid_accuracy")
    if acc_then is not None and acc_now is not None and acc_now - acc_then >= ACCURACY_GAIN:
        return True
    key = (
        "valid_loss"
        if _number(ref, "valid_loss") is not None and _number(last, "valid_loss") is not None
        else "train_loss"
    )
    loss_then, loss_now = _number(ref, key), _number(last, key)
    if loss_then is not None and loss_now is not None:
        fall = loss_then - loss_now
        return fall >= LOSS_FALL_NATS and fall >= LOSS_FALL * abs(loss_then)
    return False


def cell_still_improving(meta: dict[str, Any]) -> bool | None:
    """`still_improving` for a stored cell's metadata (its `history` and its config's train.max_steps)."""
    history = meta.get("history")
    if not isinstance(history, list):
        return None
    train = (meta.get("config") or {}).get("train") or {}
    max_steps = train.get("max_steps") if isinstance(train.get("max_steps"), int) else None
    return still_improving([p for p in history if isinstance(p, dict)], max_steps)
