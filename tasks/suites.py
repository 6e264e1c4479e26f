"""Suites: named sets of task settings with training budgets, at named scales.

A suite at a scale fixes the model size, the task configs, the training settings (overrides of the
trainer's defaults), the learning rates and the seeds. Scale changes sizes, steps and lengths, never the
task definition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.registry import SUITES, HarnessError

from .mqar import MQARConfig


@dataclass(frozen=True, kw_only=True)
class SuiteScale:
    model_size: str
    """Size preset of every model (see `harness list`)."""
    tasks: tuple[tuple[str, Any], ...]
    """(task name, task config) pairs."""
    train: dict[str, Any] = field(default_factory=dict)
    """Overrides of the trainer's defaults (TrainConfig fields)."""
    lrs: tuple[float, ...] = (1e-3,)
    """Learning rates to run (the best is reported)."""
    seeds: tuple[int, ...] = (0,)
    """Seeds to run."""


@dataclass(frozen=True, kw_only=True)
class Suite:
    description: str
    scales: dict[str, SuiteScale]

    def at(self, scale: str, suite_name: str) -> SuiteScale:
        if scale not in self.scales:
            raise HarnessError(
                f"suite '{suite_name}' has no scale '{scale}'; it has: {', '.join(self.scales)}"
            )
        return self.scales[scale]


# Smoke: an MQAR that every architecture learns on two CPU cores in a few minutes. Zoology's smallest grid point
# (V 8192, L 64, 4 pairs) is out of reach there: measured at tiny size with 800 steps, vocabulary 64 and 4 or 8
# pairs, kda, gdn and mla reach 0.95-0.99 but mamba2 stays near 0.2 (it learns which values occur, not which key
# they belong to). With 7 keys, 8 values and 2 or 4 pairs it reaches 0.97 in about 1300 steps. The task
# definition is Zoology's; only its sizes are small.
_SMOKE_MQAR = MQARConfig(
    vocab_size=16,
    train_settings=((64, 2), (64, 4)),
    test_settings=((64, 2), (64, 4)),
    num_train=20000,
    num_test=256,
)

SUITES.add(
    "smoke",
    Suite(
        description="MQAR at tiny size: is every mixer wired up and able to learn recall?",
        scales={
            "tiny": SuiteScale(
                model_size="tiny",
                tasks=(("mqar", _SMOKE_MQAR),),
                train=dict(max_steps=1500, batch_size=32, eval_every=100, target_accuracy=0.97),
                lrs=(3e-3,),
            ),
            "small": SuiteScale(
                model_size="small",
                tasks=(("mqar", MQARConfig(num_train=100000)),),
                train=dict(max_steps=10000, batch_size=64, eval_every=500, target_accuracy=0.99),
                lrs=(1e-3,),
            ),
        },
    ),
)
