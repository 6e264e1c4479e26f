"""Every metric the harness reports, in one table: its direction, how its standard error is estimated, whether it
is bounded to [0, 1] (figures fix the axis), and whether the report prints it by default.

A cell's per-slice metrics are written in the order of this table; a metric computed anywhere (the trainer, a
task's `slice_metrics` or `extra_rows`, lm-eval) that is not in it is an error, not a silently dropped value.
Adding a metric is one entry here plus its computation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Values of a slice's measurements that are inputs of other metrics, not metrics themselves.
AUXILIARY = ("n_tokens", "n_sequences", "chance")


def binomial_stderr(measured: dict[str, Any], value: float, n: int) -> float | None:
    """sqrt(p (1 - p) / n) over scored tokens: a lower bound (tokens of one sequence are not independent)."""
    return math.sqrt(value * (1 - value) / n) if n else None


def scaled_binomial_stderr(measured: dict[str, Any], value: float, n: int) -> float | None:
    """The accuracy's binomial standard error, scaled as the accuracy is: / (1 - chance)."""
    p = measured["accuracy"]
    return math.sqrt(p * (1 - p) / n) / (1 - measured["chance"]) if n else None


@dataclass(frozen=True, kw_only=True)
class MetricSpec:
    name: str
    higher_is_better: bool
    count: str | None = None
    """Which count is the row's n: 'n_tokens' or 'n_sequences' of the slice; None: the computation gives it."""
    stderr: Callable[[dict[str, Any], float, int], float | None] | None = None
    """Standard error of one cell's value from the slice's measurements; None: not estimated."""
    bounded: bool = False
    """In [0, 1] (accuracies): figures draw it on a fixed 0-1 axis."""
    log_scale: bool = False
    """Drawn on a log axis (perplexities)."""
    shown: bool = False
    """Printed by `harness report` unless --metric names others."""
    source: str = "harness"
    """'harness' (computed here) or 'lm-eval' (its scores; direction as lm-eval reports it)."""


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        # per slice, in this order in a cell's rows
        MetricSpec(
            name="accuracy", higher_is_better=True, count="n_tokens", stderr=binomial_stderr, bounded=True,
            shown=True,
        ),
        MetricSpec(
            name="sequence_accuracy", higher_is_better=True, count="n_sequences", stderr=binomial_stderr,
            bounded=True,
        ),
        MetricSpec(
            name="scaled_accuracy", higher_is_better=True, count="n_tokens", stderr=scaled_binomial_stderr,
            bounded=True,
        ),
        MetricSpec(name="loss", higher_is_better=False, count="n_tokens"),
        MetricSpec(name="perplexity", higher_is_better=False, count="n_tokens", log_scale=True, shown=True),
        MetricSpec(name="unigram_loss", higher_is_better=False, count="n_tokens", shown=True),
        # rows of their own (Task.extra_rows)
        MetricSpec(name="loss_by_position", higher_is_better=False),
        MetricSpec(name="tokens_per_s", higher_is_better=True, shown=True),
        MetricSpec(name="peak_memory_gib", higher_is_better=False, shown=True),  # also the bench's, per case
        # `harness bench models` (harness/run/bench_models.py; docs/efficiency.md): one row per case, counted in
        # what was timed (tokens of a prompt, decode steps, training steps)
        MetricSpec(name="prefill_ms", higher_is_better=False, log_scale=True),
        MetricSpec(name="prefill_tokens_per_s", higher_is_better=True, log_scale=True),
        MetricSpec(name="decode_ms_per_token", higher_is_better=False, log_scale=True),
        MetricSpec(name="decode_tokens_per_s", higher_is_better=True, log_scale=True),
        MetricSpec(name="decode_floor_ms", higher_is_better=False, log_scale=True),
        MetricSpec(name="floor_fraction", higher_is_better=True),
        MetricSpec(name="cache_bytes", higher_is_better=False, log_scale=True),
        MetricSpec(name="train_tokens_per_s", higher_is_better=True, log_scale=True),
        # lm-eval's, as its tasks report them
        MetricSpec(name="acc", higher_is_better=True, bounded=True, shown=True, source="lm-eval"),
        MetricSpec(name="bits_per_byte", higher_is_better=False, shown=True, source="lm-eval"),
        MetricSpec(name="byte_perplexity", higher_is_better=False, log_scale=True, source="lm-eval"),
        MetricSpec(name="word_perplexity", higher_is_better=False, log_scale=True, source="lm-eval"),
    )
}  # fmt: skip

SLICE_METRICS = tuple(name for name, spec in METRICS.items() if spec.count is not None)
"""The metrics measured on a test slice, in the order a cell's rows list them."""


def metric_spec(name: str) -> MetricSpec | None:
    """The table's entry for a metric; lm-eval metrics may carry a filter suffix ('acc,strict-match'). None: a
    metric the table does not know (an lm-eval task's own; its rows say its direction)."""
    return METRICS.get(name) or METRICS.get(str(name).split(",")[0])


def default_metrics() -> tuple[str, ...]:
    """What `harness report` prints when --metric names nothing."""
    return tuple(name for name, spec in METRICS.items() if spec.shown)


def is_bounded(name: str) -> bool:
    spec = metric_spec(name)
    return spec is not None and spec.bounded
