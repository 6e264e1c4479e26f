"""What every task provides: a config dataclass, a deterministic generator of token ids and labels, and slices.

A task's data is a list of `Slice`s, one per task setting (e.g. sequence length 64 with 4 key-value pairs).
Labels are -100 wherever the model is not scored, as in PyTorch's cross-entropy.

A task owns everything that differs about it, through hooks with defaults that fit the synthetic probes:

    training_stream   training batches for data too large for slices (a text corpus); default: the 'train' slices
    slice_metrics     metrics of a test slice beyond accuracy and loss; default: chance-corrected accuracy
    extra_rows        measurements that are not one slice's metric (loss by position, throughput, lm-eval)
    tokenizer         the tokenizer saved with a checkpoint; default: one word per token id
    lm_eval_exports   the task as lm-eval documents; default: every labelled position of every test slice

Tasks know nothing of models or of the harness beyond its registry and errors: what a hook needs of the trained
model comes in through the `TrainedModel` protocol below, which the harness implements.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np

from harness.errors import HarnessError

# Metadata of a task-config field added after results were stored: left out of config hashes while it holds its
# default, so that cells planned before it existed keep their ids (harness.config.ADDED_LATER, spelt out here
# because tasks do not import the harness's config module; a test checks the two agree).
ADDED_LATER = {"hash_when_default": False}

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


@dataclass(frozen=True, kw_only=True)
class TaskConfig:
    """The fields every synthetic task's config shares (a task's config subclasses it and may change defaults)."""

    num_train: int = 20000
    """Training examples in all, split evenly between the train settings."""
    num_test: int = 500
    """Test (and validation) examples per slice."""


def require_settings(task: str, config: TaskConfig, train: str, test: str, what: str = "setting") -> None:
    """The checks every synthetic task shares: the config's `train` and `test` fields (e.g. train_lengths and
    test_lengths) each name at least one setting, and the example counts leave no slice empty."""
    if not getattr(config, train) or not getattr(config, test):
        raise HarnessError(f"{task}: {train} and {test} must each name at least one {what}")
    if config.num_train < len(getattr(config, train)):
        raise HarnessError(
            f"{task}: num_train={config.num_train} leaves some of the {len(getattr(config, train))} {train}"
            f" without examples; raise num_train or name fewer {train}"
        )
    if config.num_test < 1:
        raise HarnessError(f"{task}: num_test must be >= 1, got {config.num_test}")


@dataclass(frozen=True)
class DataSize:
    """How much data a task config makes: what the memory estimate made when a sweep is planned reads."""

    train_tokens: int
    """Tokens of all training examples (or of the corpus a training stream cuts its batches from)."""
    eval_tokens: int
    """Tokens of all validation and test examples."""
    train_len: int
    """The longest training sequence: a training batch holds batch_size of them."""
    eval_len: int
    """The longest sequence scored in evaluation."""


def settings_size(config: Any) -> DataSize | None:
    """The DataSize of a synthetic task's config from the fields they share: num_train, num_test, and
    train_settings/test_settings of (seq_len, ...) or train_lengths/test_lengths. None if it has neither."""
    lengths = []
    for split in ("train", "test"):
        if hasattr(config, f"{split}_settings"):
            lengths.append([setting[0] for setting in getattr(config, f"{split}_settings")])
        elif hasattr(config, f"{split}_lengths"):
            lengths.append(list(getattr(config, f"{split}_lengths")))
        else:
            return None
    train, test = lengths
    if not train or not test:
        return None
    return DataSize(
        train_tokens=config.num_train * max(train),
        eval_tokens=2 * config.num_test * sum(test),  # validation and test slices
        train_len=max(train),
        eval_len=max(test),
    )


# One training batch: token ids (B, T), target ids (B, T) with IGNORE where unscored, and document ids (B, T) that
# tell packed documents apart (None: each row is one sequence).
Batch = tuple[np.ndarray, np.ndarray, np.ndarray | None]


class TrainingStream(Protocol):
    """Training data too large to hold as slices (a tokenised corpus) makes its own batches."""

    def batches(self, batch_size: int, seed: int, skip: int = 0) -> Iterator[Batch]:
        """Endless batches, the same for the same seed; the first `skip` are passed over (to resume at a step)."""


class TrainedModel(Protocol):
    """What a task's `extra_rows` may ask of a cell's trained model; the harness provides it (harness/run/cell.py)."""

    history: list[dict[str, Any]]
    """The training curve: one dict per evaluation (step, tokens, train_loss, ..., tokens_per_s, peak_memory_gib)."""

    def loss_by_position(self, piece: Slice) -> np.ndarray:
        """Mean loss at every position of the slice's examples: (T,) float64, NaN where nothing is scored."""

    def lm_eval(self, task_names: Sequence[str]) -> list[dict[str, Any]]:
        """Scores of the model saved as a checkpoint, by lm-eval, for `task_names` (the checkpoint's own exported
        tasks are found): dicts with task, task_version, num_fewshot, slice, metric, value, higher_is_better, n,
        stderr, wall_s."""


@dataclass(frozen=True)
class LmEvalExport:
    """Documents of one lm-eval task made from a harness task (see harness/integrations/lm_eval_export.py)."""

    slice: str | None
    """The test slice they come from; None: the task as a whole (one lm-eval task, no group)."""
    kind: Literal["next-word", "perplexity"]
    """'next-word': documents {context, target}, scored right when the target word is the greedy continuation
    (the harness's accuracy); 'perplexity': documents {text}, scored by rolling loglikelihood."""
    documents: list[dict[str, Any]]
    metadata: dict[str, Any] = field(default_factory=dict)
    """Recorded in the task's metadata (with the task's version)."""


class Task:
    """Base class of a registered task. Subclasses set `Config`, `version` and implement `generate`,
    `vocab_size` and `vocabulary`; the hooks below have defaults that fit the synthetic probes."""

    Config: ClassVar[type]
    version: ClassVar[str]
    """Bumped whenever the generated data or the metric changes; recorded with every result."""
    cache_slices: ClassVar[bool] = True
    """Cache generated slices on disk (harness/run/data.py); False for tasks that keep their own cache."""

    def validate(self, config: Any) -> None:
        """Raise harness.errors.HarnessError if the settings are impossible."""

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

    def data_size(self, config: Any) -> DataSize | None:
        """How much data `config` makes, for the memory estimate at planning; None: unknown (not estimated).
        Default: read from the fields the synthetic tasks share (`settings_size`)."""
        return settings_size(config)

    def chance_accuracy(self, config: Any, slice_name: str) -> float | None:
        """Token accuracy of guessing, for chance-corrected accuracy (acc - chance) / (1 - chance); None: not
        reported. State-tracking tasks define it."""
        return None

    # ---- hooks: what differs between tasks, each with the default of the synthetic probes

    def training_stream(self, config: Any, seed: int) -> TrainingStream | None:
        """Training batches made by the task itself (data too large for slices); None: train on the 'train'
        slices, and drop test examples that also occur in them."""
        return None

    def slice_metrics(self, config: Any, piece: Slice, measured: dict[str, float]) -> dict[str, float]:
        """Metrics of a test slice beyond accuracy, sequence_accuracy and loss (already in `measured`), each named
        in harness/results/metrics.py; 'chance' is an input of scaled_accuracy's standard error, not a metric."""
        chance = self.chance_accuracy(config, piece.name)
        if chance is None:
            return {}
        return dict(chance=chance, scaled_accuracy=(measured["accuracy"] - chance) / (1 - chance))

    def extra_rows(
        self, config: Any, trained: TrainedModel, test_slices: list[Slice]
    ) -> list[dict[str, Any]]:
        """Measurements that are not one test slice's metric: dicts with slice, metric, value, higher_is_better, n,
        stderr (and task, task_version, num_fewshot, wall_s where they differ from the cell's)."""
        return []

    def tokenizer(self, config: Any):
        """The transformers tokenizer saved with a checkpoint. Default: one word of `vocabulary` per token id, then
        an end-of-sequence and a pad token that the model never saw (see harness/integrations/checkpoint.py)."""
        words = self.vocabulary(config)
        if len(words) != self.vocab_size(config):
            raise ValueError(
                f"the vocabulary has {len(words)} words but the task {self.vocab_size(config)} tokens"
            )
        return word_level_tokenizer(words)

    def lm_eval_exports(self, config: Any, test_slices: list[Slice]) -> list[LmEvalExport]:
        """The task as lm-eval documents. Default: one 'next-word' task per test slice, one document per labelled
        position: context = the text of inputs[:p+1], target = the word of labels[p]."""
        words = self.vocabulary(config)
        exports = []
        for piece in test_slices:
            documents = [
                dict(
                    context=self.render(config, inputs[: position + 1]),
                    target=words[labels[position]],
                    example=example,
                    position=position,
                )
                for example, (inputs, labels) in enumerate(zip(piece.inputs, piece.labels, strict=True))
                for position in (labels != IGNORE).nonzero()[0].tolist()
            ]
            exports.append(LmEvalExport(piece.name, "next-word", documents, dict(slice=piece.name)))
        return exports


EOS, PAD = "<eos>", "<pad>"


def word_level_tokenizer(words: list[str]):
    """A transformers PreTrainedTokenizerFast that splits on whitespace and maps word i of `words` to id i; EOS
    and pad follow as ids len(words) and len(words) + 1.

    Every token decodes as its word with one space before it, the convention of GPT-2's tokens: decoding the
    continuation of a prompt gives " v12 v9", which joins the prompt with its space (transformers'
    text-generation pipeline appends the decoded new tokens to the prompt as they are). Decoding a whole text
    gives it with one leading space: `decode(encode(text)) == " " + text`, and encoding that again gives the
    same ids."""
    # slow to import, and only checkpoints need a tokenizer
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate([*words, EOS, PAD])}
    if len(vocab) != len(words) + 2 or any(not w or any(c.isspace() for c in w) for w in words):
        raise ValueError(
            "a task vocabulary must be distinct, non-empty words without spaces, and not <eos>/<pad>"
        )
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # each token's text gets a space in front ("^" matches once, at the start of the token)
    tokenizer.decoder = decoders.Replace(Regex("^"), " ")
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="left",
        # transformers' clean-up would glue punctuation words such as '?' to the word before them
        clean_up_tokenization_spaces=False,
    )


def plan_examples(
    split: str,
    train: Sequence,
    test: Sequence,
    num_train: int,
    num_test: int,
    shares: Sequence[float] | None = None,
) -> list[tuple[Any, int]]:
    """(setting, number of examples) of every slice of a split: the training mixture splits num_train between the
    train settings, evenly or in proportion to `shares` (the counts add up to num_train); valid and test get
    num_test examples per test setting."""
    if split != "train":
        return [(setting, num_test) for setting in test]
    shares = [1.0] * len(train) if shares is None else shares
    exact = np.asarray(shares, dtype=float) / float(sum(shares)) * num_train
    counts = np.floor(exact).astype(int)
    # the largest remainders get the examples left over, ties to the first settings (even shares: the first
    # num_train % len(train) settings get one more, as the mixtures stored before shares existed)
    for i in np.argsort(counts - exact, kind="stable")[: num_train - counts.sum()]:
        counts[i] += 1
    return [(setting, int(n)) for setting, n in zip(train, counts, strict=True)]


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
