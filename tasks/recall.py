"""MAD recall and copying tasks (Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid Architectures"):
fuzzy recall, noisy recall, selective copying, generating the data MAD describes (deviations listed below).

**fuzzy-recall.** Keys are 1..k_max distinct tokens from a key vocabulary, values 1..v_max distinct tokens from a
disjoint value vocabulary, written `key value key value ...` (disjoint vocabularies mark where a key or a value
begins, so MAD uses no delimiter; `delimiter=True` puts one after every value). Keys repeat within a sequence and a
key keeps its value. The sequence ends with a query: a key of the context again, followed by its value. The
value tokens of every repeated key are scored, teacher-forced: the model reads the key's last token and must
emit the value's first token, reads that and must emit the second, and so on (MAD's `multi_query`, its default;
`score_repeats=False` scores only the final query). The sequence is padded at the front to seq_len. As in MAD,
training keys have 1..k_max tokens and valid/test keys all have k_max (`full_length_test_keys`).

Example (vocab 16: keys k0..k6, values v7..v14, pad `_`; seq_len 16, k_max = v_max = 2; '.' = not scored):

    inputs  _   k0  k2  v12 k4  v13 v12 k4  v13 v12 k0  k2  v12 k4  v13 v12
    labels  .   .   .   .   .   .   .   v13 v12 .   .   v12 .   v13 v12 .

(`k0 k2 -> v12` and `k4 -> v13 v12`; every occurrence after the first is scored, the last pair is the query.)
The final query repeats one of the context's pairs picked uniformly (MAD draws it from the same distribution as
every pair and inserts it into the context).

**noisy-recall.** MAD's in-context recall with noise: seq_len/2 two-token slots, each either a pair `key value`
(keys from [0, V/2), values from [V/2, V), one value per key within a sequence, keys drawn with repetition) or,
with probability `frac_noise`, two tokens from a separate noise vocabulary [V, V + noise_vocab_size). At least
one slot is a pair, and the last slot queries a key already seen (uniform over the distinct keys seen). At every
occurrence of a key but its first, the model reads the key and must emit its value (MAD's `multi_query`, its
default).

Example (V = 8: keys k0..k3, values v4..v7, noise n8..n11; seq_len 12, '.' = not scored):

    inputs  k2  v7  k1  v6  n11 n8  k2  v7  k1  v6  k1  v6
    labels  .   .   .   .   .   .   v7  .   v6  .   v6  .

**selective-copy.** `num_tokens` data tokens from [0, V-2) at random positions of a blank-filled context of
seq_len - num_tokens - 1 tokens, then a copy token; after it the model emits the data tokens in order. With
`teacher_forcing` (default) the data tokens follow the copy token in the inputs, one position behind the labels;
MAD itself fills the answer region with blanks (`teacher_forcing=False`).

Example (V = 6: data d0..d3, blank `_`, copy `>`; seq_len 12, 3 tokens, teacher-forced):

    inputs  _   _   d2  _   _   _   d1  d0  >   d2  d1  d0
    labels  .   .   .   .   .   .   .   .   d2  d1  d0  .

Deviations from the MAD code, each a documented choice: sequences are exactly seq_len tokens (MAD drops the last
token when it shifts inputs into targets); MAD draws the selective-copy blank positions so that the last data
token always sits right before the copy token (it inserts blanks only before existing tokens), here the data
positions are uniform over the context; MAD trains with a language-model loss on every next token and scores only
the answers, here training is on the scored positions unless `lm_loss_in_train` (recall tasks). MAD trains one
model per setting; a list of train settings trains one model on their mixture.

Metric: token accuracy over the labelled positions (the harness computes it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.errors import HarnessError
from harness.registry import TASKS

from .base import IGNORE, Slice, Task, TaskConfig, plan_examples, require_settings, split_seed


def ordered_distinct(
    rng: np.random.Generator, shape: tuple[int, ...], k: int, low: int, high: int
) -> np.ndarray:
    """(*shape, k) tuples of k distinct integers from [low, high), uniform over ordered tuples."""
    out = np.empty((*shape, k), dtype=np.int64)
    for i in range(k):
        draw = rng.integers(0, high - low - i, size=shape)
        # map the draw onto the i-th free integer: step past every integer already taken, smallest first
        taken = np.sort(out[..., :i], axis=-1)
        for s in range(i):
            draw += draw >= taken[..., s]
        out[..., i] = draw
    return out + low


def first_occurrence(ids: np.ndarray) -> np.ndarray:
    """(n, m) -> (n, m): for every entry, the column of the first entry of its row with the same id."""
    n, m = ids.shape
    order = np.argsort(ids, axis=1, kind="stable")  # equal ids keep their column order
    ordered = np.take_along_axis(ids, order, axis=1)
    starts = np.ones((n, m), dtype=bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(m), 0), axis=1)
    first = np.empty_like(order)
    np.put_along_axis(first, order, np.take_along_axis(order, group_start, axis=1), axis=1)
    return first


def next_token_labels(inputs: np.ndarray) -> np.ndarray:
    """A language-model loss on every position: label t is input t+1."""
    labels = np.full_like(inputs, IGNORE)
    labels[:, :-1] = inputs[:, 1:]
    return labels


# ---------------------------------------------------------------------------------------------- fuzzy recall


@dataclass(frozen=True, kw_only=True)
class FuzzyRecallConfig(TaskConfig):
    vocab_size: int = 16
    """All tokens: of the n = vocab_size - 1 (- 1 with a delimiter) plain ones, keys [0, n//2), values [n//2, n);
    then pad (and delimiter)."""
    max_key_len: int = 3
    """Most tokens in a key (MAD's k_motif_size); keys have 1..max_key_len distinct tokens."""
    max_value_len: int = 3
    """Most tokens in a value (MAD's v_motif_size); values have 1..max_value_len distinct tokens."""
    train_lengths: tuple[int, ...] = (128,)
    """seq_len of the training mixture; examples split evenly between them."""
    test_lengths: tuple[int, ...] = (128,)
    """seq_len of each test slice."""
    num_train: int = 12800
    """Training examples in all (MAD's baseline)."""
    full_length_test_keys: bool = True
    """Valid/test keys all have max_key_len tokens (MAD prompts at the maximum key size); training keys 1..max."""
    score_repeats: bool = True
    """Score the value of every repeated key in the context too (MAD's multi_query); False: only the final query."""
    delimiter: bool = False
    """Put a delimiter token after every context value (MAD has none: disjoint vocabularies mark the pairs)."""
    lm_loss_in_train: bool = False
    """Train on every next token, as MAD does (valid/test still score only the values)."""


@TASKS.register("fuzzy-recall")
class FuzzyRecall(Task):
    """Recall with multi-token keys and values (MAD)."""

    Config = FuzzyRecallConfig
    version = "1"

    @staticmethod
    def layout(config: FuzzyRecallConfig) -> tuple[int, int, int, int]:
        """(key vocabulary size, value vocabulary size, pad id, delimiter id); keys start at 0, values follow."""
        plain = config.vocab_size - 1 - int(config.delimiter)
        return plain // 2, plain - plain // 2, plain, plain + 1

    def validate(self, config: FuzzyRecallConfig) -> None:
        require_settings("fuzzy-recall", config, "train_lengths", "test_lengths", "seq_len")
        if config.max_key_len < 1 or config.max_value_len < 1:
            raise HarnessError(
                f"fuzzy-recall: max_key_len and max_value_len must be >= 1, got {config.max_key_len} and"
                f" {config.max_value_len}"
            )
        keys, values, _, _ = self.layout(config)
        if keys < config.max_key_len or values < config.max_value_len:
            raise HarnessError(
                f"fuzzy-recall: keys of {config.max_key_len} and values of {config.max_value_len} distinct tokens"
                f" need {keys} key and {values} value tokens to be at least that; raise vocab_size"
                f" (got {config.vocab_size})"
            )
        if (keys + 1) ** config.max_key_len >= 2**62:
            raise HarnessError("fuzzy-recall: too many possible keys to number in int64; lower max_key_len")
        pair = config.max_key_len + config.max_value_len + int(config.delimiter)
        for seq_len in {*config.train_lengths, *config.test_lengths}:
            if seq_len < 2 * pair:
                raise HarnessError(
                    f"fuzzy-recall: seq_len={seq_len} cannot hold a longest pair and its query; need >= {2 * pair}"
                )

    def vocab_size(self, config: FuzzyRecallConfig) -> int:
        return config.vocab_size

    def vocabulary(self, config: FuzzyRecallConfig) -> list[str]:
        keys, values, _, _ = self.layout(config)
        words = [f"k{i}" for i in range(keys)] + [f"v{i}" for i in range(keys, keys + values)] + ["_"]
        return words + [";"] if config.delimiter else words

    def generate(self, config: FuzzyRecallConfig, split: str, seed: int) -> list[Slice]:
        self.validate(config)
        rng = np.random.default_rng(split_seed(seed, split))
        full_keys = split != "train" and config.full_length_test_keys
        slices = []
        for seq_len, n in plan_examples(
            split, config.train_lengths, config.test_lengths, config.num_train, config.num_test
        ):
            inputs, labels = self.examples(config, rng, n, seq_len, full_keys)
            if split == "train" and config.lm_loss_in_train:
                labels = next_token_labels(inputs)
            slices.append(Slice(f"seq_len={seq_len}", inputs, labels))
        return slices

    def examples(
        self, config: FuzzyRecallConfig, rng: np.random.Generator, n: int, seq_len: int, full_keys: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        n_keys, n_values, pad, delimiter = self.layout(config)
        k_max, v_max, d = config.max_key_len, config.max_value_len, int(config.delimiter)
        k_min = k_max if full_keys else 1
        width = k_max + v_max + d  # longest pair
        # the context gets what is left after the longest possible final query; the rest is front padding
        budget = seq_len - k_max - v_max
        m = budget // (k_min + 1 + d) + 1  # more pairs than can fit

        key_len = rng.integers(k_min, k_max + 1, size=(n, m))
        value_len = rng.integers(1, v_max + 1, size=(n, m))
        key_tokens = ordered_distinct(rng, (n, m), k_max, 0, n_keys)  # (n, m, k_max)
        value_tokens = ordered_distinct(rng, (n, m), v_max, n_keys, n_keys + n_values)  # (n, m, v_max)

        # a key is its token tuple; number it in base n_keys + 1 with 0 for "no token" so lengths differ too
        present = np.arange(k_max) < key_len[..., None]
        key_id = (np.where(present, key_tokens + 1, 0) * (n_keys + 1) ** np.arange(k_max)).sum(-1)
        # (first occurrences of the kept pairs' keys are kept too: kept pairs are a prefix)
        first = first_occurrence(key_id)  # (n, m)
        repeated = first != np.arange(m)
        # every pair takes the value drawn for its key's first occurrence
        value_tokens = np.take_along_axis(value_tokens, first[..., None], axis=1)
        value_len = np.take_along_axis(value_len, first, axis=1)
        kept = np.cumsum(key_len + value_len + d, axis=1) <= budget  # a prefix of the pairs, never empty
        # drop the pairs no row keeps
        m = int(kept.sum(1).max())
        kept, repeated, key_len, value_len = kept[:, :m], repeated[:, :m], key_len[:, :m], value_len[:, :m]
        key_tokens, value_tokens = key_tokens[:, :m], value_tokens[:, :m]

        # the final query: one of the kept pairs, uniformly, appended as pair m (no delimiter after it)
        rows = np.arange(n)
        query = (rng.random(n) * kept.sum(1)).astype(np.int64)
        key_len = np.concatenate([key_len, key_len[rows, query, None]], axis=1)  # (n, m+1)
        value_len = np.concatenate([value_len, value_len[rows, query, None]], axis=1)
        key_tokens = np.concatenate([key_tokens, key_tokens[rows, query, None]], axis=1)
        value_tokens = np.concatenate([value_tokens, value_tokens[rows, query, None]], axis=1)
        kept = np.concatenate([kept, np.ones((n, 1), dtype=bool)], axis=1)
        scored = np.concatenate([repeated & config.score_repeats, np.ones((n, 1), dtype=bool)], axis=1)
        pair_len = key_len + value_len + d
        pair_len[:, -1] -= d

        # every pair laid out in a block of `width` slots: key, value, delimiter, unused
        slot = np.arange(width)
        k_len, v_len = key_len[..., None], value_len[..., None]  # (n, m+1, 1)
        tokens = np.where(
            slot < k_len,
            key_tokens[..., np.minimum(slot, k_max - 1)],
            np.take_along_axis(value_tokens, np.clip(slot - k_len, 0, v_max - 1), axis=-1),
        )  # (n, m+1, width)
        tokens = np.where(slot == k_len + v_len, delimiter, tokens)
        # teacher forcing: the key's last token and all but the last value token predict the next value token
        answers = np.take_along_axis(value_tokens, np.clip(slot - k_len + 1, 0, v_max - 1), axis=-1)
        answered = (slot >= k_len - 1) & (slot < k_len + v_len - 1) & scored[..., None]
        block_labels = np.where(answered, answers, IGNORE)
        used = (slot < pair_len[..., None]) & kept[..., None]

        # pack the used slots of each row to its end, after the padding
        used, tokens, block_labels = (a.reshape(n, -1) for a in (used, tokens, block_labels))
        position = np.cumsum(used, axis=1)
        position += seq_len - position[:, -1:] - 1
        row = np.broadcast_to(rows[:, None], used.shape)
        inputs = np.full((n, seq_len), pad, dtype=np.int64)
        labels = np.full((n, seq_len), IGNORE, dtype=np.int64)
        inputs[row[used], position[used]] = tokens[used]
        labels[row[used], position[used]] = block_labels[used]
        return inputs, labels


# ---------------------------------------------------------------------------------------------- noisy recall


@dataclass(frozen=True, kw_only=True)
class NoisyRecallConfig(TaskConfig):
    kv_vocab_size: int = 16
    """Key and value tokens: keys [0, V/2), values [V/2, V) (MAD's in-context recall vocabulary)."""
    noise_vocab_size: int = 16
    """Noise tokens, [V, V + noise_vocab_size) (MAD's noisy recall: vocab 32 of which 16 noise)."""
    train_settings: tuple[tuple[int, float], ...] = ((128, 0.2), (128, 0.4), (128, 0.6), (128, 0.8))
    """(seq_len, frac_noise) of the training mixture; examples split evenly between them."""
    test_settings: tuple[tuple[int, float], ...] = ((128, 0.2), (128, 0.4), (128, 0.6), (128, 0.8))
    """(seq_len, frac_noise) of each test slice; frac_noise is the chance that a two-token slot is noise."""
    num_train: int = 12800
    """Training examples in all (MAD's baseline, there for each setting alone)."""
    lm_loss_in_train: bool = False
    """Train on every next token, as MAD does (valid/test still score only the values)."""


@TASKS.register("noisy-recall")
class NoisyRecall(Task):
    """Key-value recall with noise tokens interleaved (MAD)."""

    Config = NoisyRecallConfig
    version = "1"

    def validate(self, config: NoisyRecallConfig) -> None:
        require_settings("noisy-recall", config, "train_settings", "test_settings", "(seq_len, frac_noise)")
        if config.kv_vocab_size < 2:
            raise HarnessError(
                f"noisy-recall: kv_vocab_size must be >= 2 (a key and a value), got {config.kv_vocab_size}"
            )
        for seq_len, frac_noise in {*config.train_settings, *config.test_settings}:
            if seq_len < 4 or seq_len % 2:
                raise HarnessError(
                    f"noisy-recall: seq_len must be even and >= 4 (a pair and its query), got {seq_len}"
                )
            if not 0 <= frac_noise < 1:
                raise HarnessError(f"noisy-recall: frac_noise must be in [0, 1), got {frac_noise}")
            if frac_noise > 0 and config.noise_vocab_size < 1:
                raise HarnessError(f"noisy-recall: frac_noise={frac_noise} needs noise_vocab_size >= 1")

    def vocab_size(self, config: NoisyRecallConfig) -> int:
        return config.kv_vocab_size + config.noise_vocab_size

    def vocabulary(self, config: NoisyRecallConfig) -> list[str]:
        half, kv = config.kv_vocab_size // 2, config.kv_vocab_size
        return (
            [f"k{i}" for i in range(half)]
            + [f"v{i}" for i in range(half, kv)]
            + [f"n{i}" for i in range(kv, kv + config.noise_vocab_size)]
        )

    def generate(self, config: NoisyRecallConfig, split: str, seed: int) -> list[Slice]:
        self.validate(config)
        rng = np.random.default_rng(split_seed(seed, split))
        slices = []
        for (seq_len, frac_noise), n in plan_examples(
            split, config.train_settings, config.test_settings, config.num_train, config.num_test
        ):
            inputs, labels = self.examples(config, rng, n, seq_len, frac_noise)
            if split == "train" and config.lm_loss_in_train:
                labels = next_token_labels(inputs)
            slices.append(Slice(f"seq_len={seq_len},frac_noise={frac_noise:g}", inputs, labels))
        return slices

    def examples(
        self, config: NoisyRecallConfig, rng: np.random.Generator, n: int, seq_len: int, frac_noise: float
    ) -> tuple[np.ndarray, np.ndarray]:
        n_keys, kv = config.kv_vocab_size // 2, config.kv_vocab_size
        slots = seq_len // 2
        rows = np.arange(n)
        keys = rng.integers(0, n_keys, size=(n, slots))
        value_of = rng.integers(n_keys, kv, size=(n, n_keys))  # one value per key and sequence
        noise = rng.random((n, slots)) < frac_noise
        noise[rows, rng.integers(0, slots - 1, size=n)] = False  # at least one pair in the context
        noise[:, -1] = False  # the last slot is the query

        # the query: a key seen in the context, uniform over the distinct ones seen
        context_ids = np.where(noise, n_keys + np.arange(slots), keys)[:, :-1]  # noise slots never match
        first = first_occurrence(context_ids) == np.arange(slots - 1)
        candidates = np.where(first & ~noise[:, :-1], rng.random((n, slots - 1)), -1.0)
        keys[:, -1] = keys[rows, candidates.argmax(1)]
        values = np.take_along_axis(value_of, keys, axis=1)

        pairs = np.stack([keys, values], axis=-1)  # (n, slots, 2)
        # (with no noise vocabulary no slot is noise and these draws go unused)
        noise_tokens = rng.integers(kv, kv + max(config.noise_vocab_size, 1), size=(n, slots, 2))
        inputs = np.where(noise[..., None], noise_tokens, pairs).reshape(n, seq_len)

        ids = np.where(noise, n_keys + np.arange(slots), keys)
        queried = ~noise & (first_occurrence(ids) != np.arange(slots))
        labels = np.full((n, seq_len), IGNORE, dtype=np.int64)
        labels[:, 0::2] = np.where(queried, values, IGNORE)
        return inputs, labels


# ---------------------------------------------------------------------------------------------- selective copy


@dataclass(frozen=True, kw_only=True)
class SelectiveCopyConfig(TaskConfig):
    vocab_size: int = 16
    """All tokens: data [0, V-2), blank V-2, copy V-1 (MAD's layout)."""
    train_settings: tuple[tuple[int, int], ...] = ((256, 16),)
    """(seq_len, num_tokens) of the training mixture; examples split evenly between them."""
    test_settings: tuple[tuple[int, int], ...] = ((256, 16),)
    """(seq_len, num_tokens) of each test slice."""
    num_train: int = 12800
    """Training examples in all (MAD's baseline)."""
    teacher_forcing: bool = True
    """After the copy token the inputs are the data tokens (one behind the labels); False: blanks, as in MAD."""


@TASKS.register("selective-copy")
class SelectiveCopy(Task):
    """Copy the few data tokens scattered among blanks, in order (MAD)."""

    Config = SelectiveCopyConfig
    version = "1"

    def validate(self, config: SelectiveCopyConfig) -> None:
        require_settings("selective-copy", config, "train_settings", "test_settings", "(seq_len, num_tokens)")
        if config.vocab_size < 3:
            raise HarnessError(
                f"selective-copy: vocab_size must be >= 3 (data, blank, copy), got {config.vocab_size}"
            )
        for seq_len, num_tokens in {*config.train_settings, *config.test_settings}:
            if num_tokens < 1 or seq_len < 2 * num_tokens + 2:
                raise HarnessError(
                    f"selective-copy: copying {num_tokens} tokens needs num_tokens >= 1 and seq_len >="
                    f" {2 * max(num_tokens, 1) + 2} (tokens, at least one blank, copy token, answer), got"
                    f" seq_len={seq_len}"
                )

    def vocab_size(self, config: SelectiveCopyConfig) -> int:
        return config.vocab_size

    def vocabulary(self, config: SelectiveCopyConfig) -> list[str]:
        return [f"d{i}" for i in range(config.vocab_size - 2)] + ["_", "<copy>"]

    def generate(self, config: SelectiveCopyConfig, split: str, seed: int) -> list[Slice]:
        self.validate(config)
        rng = np.random.default_rng(split_seed(seed, split))
        blank, copy = config.vocab_size - 2, config.vocab_size - 1
        slices = []
        for (seq_len, num_tokens), n in plan_examples(
            split, config.train_settings, config.test_settings, config.num_train, config.num_test
        ):
            context = seq_len - num_tokens - 1
            data = rng.integers(0, blank, size=(n, num_tokens))
            # num_tokens distinct context positions, uniformly, in increasing order
            where = np.sort(np.argpartition(rng.random((n, context)), num_tokens - 1, axis=1)[:, :num_tokens])
            inputs = np.full((n, seq_len), blank, dtype=np.int64)
            np.put_along_axis(inputs, where, data, axis=1)
            inputs[:, context] = copy
            labels = np.full((n, seq_len), IGNORE, dtype=np.int64)
            if config.teacher_forcing:
                inputs[:, context + 1 :] = data
                labels[:, context:-1] = data
            else:
                labels[:, context + 1 :] = data
            slices.append(Slice(f"seq_len={seq_len},num_tokens={num_tokens}", inputs, labels))
        return slices
