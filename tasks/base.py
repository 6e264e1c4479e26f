"""What every task provides: a config dataclass, a deterministic generator of token ids and labels, and slices.

A task's data is a list of `Slice`s, one per task setting (e.g. sequence length 64 with 4 key-value pairs).
Labels are -100 wherever the model is not scored, as in PyTorch's cross-entropy.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

IGNORE = -100


@dataclass(frozen=True)
class Slice:
    name: str
    """Setting these examples share, as 'key=value,...' (e.g. 'seq_len=64,pairs=4'); one row per slice in results."""
    inputs: np.ndarray  # (n, L) int64 token ids
    labels: np.ndarray  # (n, L) int64 target ids, IGNORE where not scored
    segments: np.ndarray | None = None
    """(n, L) document ids of packed text: a token sees only earlier tokens of its own document. None: each example
    is one sequence."""

    def __post_init__(self):
        if self.inputs.shape != self.labels.shape or self.inputs.ndim != 2:
            raise ValueError(
                f"slice {self.name}: inputs {self.inputs.shape} and labels {self.labels.shape} differ"
            )
        if self.segments is not None and self.segments.shape != self.inputs.shape:
            raise ValueError(f"slice {self.name}: segments {self.segments.shape} and inputs differ")

    def __len__(self) -> int:
        return len(self.inputs)


class Task:
    """Base class of a registered task. Subclasses set `Config`, `version` and implement `generate`."""

    Config: ClassVar[type]
    version: ClassVar[str]
    """Bumped whenever the generated data or the metric changes; recorded with every result."""
    cache_slices: ClassVar[bool] = True
    """Cache generated slices on disk (harness/data.py); False for tasks that keep their own cache."""
    text_corpus: ClassVar[bool] = False
    """A language-modelling task over a text corpus (tasks/lm.py): it provides `training_stream(config, seed)`
    (training batches too large for slices), `tokenizer(config)` (saved with checkpoints) and `unigram_loss`, and
    is reported with perplexity and exported to lm-eval as held-out documents."""

    def validate(self, config: Any) -> None:
        """Raise harness.registry.HarnessError if the settings are impossible."""

    def vocab_size(self, config: Any) -> int:
        raise NotImplementedError

    def generate(self, config: Any, split: str, seed: int) -> list[Slice]:
        """The examples of one split ('train', 'valid' or 'test'), the same for the same (config, split, seed)."""
        raise NotImplementedError

    def vocabulary(self, config: Any) -> list[str]:
        """One word per token id (no spaces inside a word): how the task reads as text, e.g. for lm-eval."""
        raise NotImplementedError

    def render(self, config: Any, ids: np.ndarray) -> str:
        """Token ids as text over `vocabulary`, words separated by single spaces."""
        words = self.vocabulary(config)
        return " ".join(words[i] for i in ids.tolist())

    def setting_name(self, config: Any) -> str:
        """What tells this config apart from others of the same task within one suite ('' if nothing needs to),
        e.g. NIAH's 'variant=multi-key'; recorded as the `task_setting` column so reports keep them apart."""
        return ""

    def chance_accuracy(self, config: Any, slice_name: str) -> float | None:
        """Token accuracy of guessing, for chance-corrected accuracy (acc - chance) / (1 - chance); None: not
        reported. State-tracking tasks define it."""
        return None


def plan_examples(
    split: str, train: Sequence, test: Sequence, num_train: int, num_test: int
) -> list[tuple[Any, int]]:
    """(setting, number of examples) of every slice of a split: the training mixture splits num_train evenly
    between the train settings; valid and test get num_test examples per test setting."""
    if split == "train":
        parts = np.array_split(np.arange(num_train), len(train))
        return [(setting, len(part)) for setting, part in zip(train, parts, strict=True)]
    return [(setting, num_test) for setting in test]


def split_seed(seed: int, split: str) -> int:
    """Independent random streams for train, valid and test from one seed."""
    return int(
        np.random.SeedSequence([seed, {"train": 0, "valid": 1, "test": 2}[split]]).generate_state(1)[0]
    )


def cache_root() -> Path | None:
    """Where generated task data is cached: $HARNESS_CACHE, default ~/.cache/harness/data; None for
    HARNESS_CACHE=off (generate in memory every time)."""
    setting = os.environ.get("HARNESS_CACHE", "")
    if setting.lower() == "off":
        return None
    return Path(setting) if setting else Path.home() / ".cache" / "harness" / "data"
