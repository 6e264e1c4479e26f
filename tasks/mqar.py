"""Multi-query associative recall (MQAR; Arora et al. 2023, Zoology), generated as Zoology does.

N distinct keys from [1, V/2) and values from [V/2, V) are written as pairs `k1 v1 ... kN vN`; then every key is
queried once, in random order, at even offsets of the query region, the gap before each query drawn with
p(i) ∝ a·i^(a-1) (a = 0.01 favours short gaps; a = 1 is uniform). The model must emit the key's value at the
query position. All other query-region tokens are filler: 0, or random tokens when `random_non_queries`.

Example (V = 16, L = 16, N = 2; filler shown as 0, '.' = not scored):

    inputs  3 12  5  9  0  0  5  0  3  0  0  0  0  0  0  0
    labels  .  .  .  .  .  .  9  .  12 .  .  .  .  .  .  .

Accuracy is the fraction of queries answered right (Zoology's metric). Mixed-setting training matters: a model
trained only at one long length can score 0 (docs/reference.md §3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from harness.errors import HarnessError
from harness.registry import TASKS

from .base import ADDED_LATER, IGNORE, Slice, Task, TaskConfig, plan_examples, require_settings, split_seed


@dataclass(frozen=True, kw_only=True)
class MQARConfig(TaskConfig):
    vocab_size: int = 8192
    """Token vocabulary: keys from [1, V/2), values from [V/2, V), 0 is filler."""
    train_settings: tuple[tuple[int, int], ...] = ((64, 4), (128, 8), (256, 16))
    """(seq_len, num_pairs) of the training mixture; examples split evenly between them unless `train_shares`."""
    train_shares: tuple[float, ...] | None = field(default=None, metadata=ADDED_LATER)
    """Relative shares of num_train per train setting (Zoology's mixture: 5, 1, 1, 1, 1 for 100K at (64, 4) and
    20K at each other setting); None splits evenly."""
    test_settings: tuple[tuple[int, int], ...] = ((64, 4), (128, 8), (256, 16))
    """(seq_len, num_pairs) of each test slice."""
    power_a: float = 0.01
    """Gap distribution p(i) ∝ a·i^(a-1) over query slots; 1.0 is uniform."""
    random_non_queries: bool = True
    """Fill the query region's empty slots with random tokens instead of 0 (Zoology's default)."""


@TASKS.register("mqar")
class MQAR(Task):
    Config = MQARConfig
    version = "1"

    def validate(self, config: MQARConfig) -> None:
        require_settings("mqar", config, "train_settings", "test_settings", "(seq_len, pairs)")
        shares = config.train_shares
        if shares is not None and (
            len(shares) != len(config.train_settings) or not all(x > 0 for x in shares)
        ):
            raise HarnessError(
                f"mqar: train_shares needs one share above 0 per train setting ({len(config.train_settings)}),"
                f" got {list(shares)}"
            )
        for seq_len, pairs in {*config.train_settings, *config.test_settings}:
            if pairs < 1 or 4 * pairs > seq_len:
                raise HarnessError(
                    f"mqar: {pairs} pairs need seq_len >= {4 * max(pairs, 1)} (key, value, query and gap per pair),"
                    f" got seq_len={seq_len}"
                )
            if pairs > config.vocab_size // 2 - 1:
                raise HarnessError(
                    f"mqar: {pairs} distinct keys need vocab_size >= {2 * (pairs + 1)}, got {config.vocab_size}"
                )

    def vocab_size(self, config: MQARConfig) -> int:
        return config.vocab_size

    def vocabulary(self, config: MQARConfig) -> list[str]:
        half = config.vocab_size // 2
        return ["_"] + [f"k{i}" for i in range(1, half)] + [f"v{i}" for i in range(half, config.vocab_size)]

    def generate(self, config: MQARConfig, split: str, seed: int) -> list[Slice]:
        self.validate(config)
        rng = np.random.default_rng(split_seed(seed, split))
        plan = plan_examples(
            split, config.train_settings, config.test_settings, config.num_train, config.num_test,
            shares=config.train_shares,
        )  # fmt: skip
        slices = []
        for (seq_len, pairs), n in plan:
            inputs, labels = mqar_examples(rng, n, seq_len, pairs, config.vocab_size, config.power_a)
            if config.random_non_queries:
                filler = inputs == 0
                inputs[filler] = rng.integers(0, config.vocab_size, size=int(filler.sum()))
            slices.append(Slice(f"seq_len={seq_len},pairs={pairs}", inputs, labels))
        return slices


def mqar_examples(
    rng: np.random.Generator, n: int, seq_len: int, pairs: int, vocab_size: int, power_a: float
) -> tuple[np.ndarray, np.ndarray]:
    """n examples of length seq_len with `pairs` key-value pairs; filler tokens are 0."""
    key_vocab = vocab_size // 2
    keys = distinct_integers(rng, n, pairs, low=1, high=key_vocab)  # (n, pairs)
    values = distinct_integers(rng, n, pairs, low=key_vocab, high=vocab_size)  # (n, pairs)
    context = np.empty((n, 2 * pairs), dtype=np.int64)
    context[:, 0::2], context[:, 1::2] = keys, values

    # Query slots are the even offsets of the query region; draw `pairs` distinct slots per example, weighted by
    # p(i) ∝ a·i^(a-1), without replacement (Gumbel top-k gives exactly sequential weighted draws).
    slots = (seq_len - 2 * pairs) // 2
    log_p = np.log(power_a) + (power_a - 1) * np.log(np.arange(1, slots + 1))
    scores = log_p + rng.gumbel(size=(n, slots))
    gaps = np.argpartition(-scores, pairs - 1, axis=1)[:, :pairs]  # (n, pairs)

    query = np.zeros((n, seq_len - 2 * pairs), dtype=np.int64)
    np.put_along_axis(query, 2 * gaps, keys, axis=1)
    inputs = np.concatenate([context, query], axis=1)
    labels = np.full((n, seq_len), IGNORE, dtype=np.int64)
    np.put_along_axis(labels, 2 * pairs + 2 * gaps, values, axis=1)
    return inputs, labels


def distinct_integers(rng: np.random.Generator, n: int, k: int, low: int, high: int) -> np.ndarray:
    """(n, k) integers from [low, high), distinct within each row, uniformly over such rows."""
    span = high - low
    if n * span <= 20_000_000 or 4 * k >= span:
        # small ranges: a random permutation per row
        return rng.random((n, span)).argsort(axis=1)[:, :k] + low
    # large ranges: draw with replacement and redraw rows that repeat a number (rare when k*k << span)
    out = rng.integers(low, high, size=(n, k))
    while True:
        ordered = np.sort(out, axis=1)
        repeats = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
        if not repeats.any():
            return out
        out[repeats] = rng.integers(low, high, size=(int(repeats.sum()), k))
