"""MAD fuzzy recall, noisy recall and selective copying, checked by independent solvers: read the token stream
as a person would (split it into keys, values and noise, or find the data tokens), answer, compare with the labels."""

import itertools

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.registry import TASKS
from tasks.base import IGNORE
from tasks.recall import (
    FuzzyRecallConfig,
    NoisyRecallConfig,
    SelectiveCopyConfig,
    first_occurrence,
    ordered_distinct,
)

from .checks import digest

FUZZY = TASKS.get("fuzzy-recall")()
NOISY = TASKS.get("noisy-recall")()
COPY = TASKS.get("selective-copy")()


# ---------------------------------------------------------------------------------------------- fuzzy recall


def read_pairs(tokens: list[int], n_keys: int, pad: int, delimiter: int | None):
    """Split a fuzzy-recall sequence into (key, value, position of the value's first token, delimited) after the
    leading pad: a key is a run of key tokens, the value the run of value tokens after it."""
    i = 0
    while tokens[i] == pad:
        i += 1
    assert pad not in tokens[i:], "pad only at the front"
    pairs = []
    while i < len(tokens):
        start = i
        while i < len(tokens) and tokens[i] < n_keys:
            i += 1
        key = tuple(tokens[start:i])
        value_start = i
        while i < len(tokens) and n_keys <= tokens[i] < pad:
            i += 1
        value = tuple(tokens[value_start:i])
        assert key and value, f"a pair must have a key and a value: {tokens}"
        delimited = i < len(tokens) and tokens[i] == delimiter
        i += delimited
        pairs.append((key, value, value_start, delimited))
    return pairs, tokens.index(pairs[0][0][0])


def solve_fuzzy(tokens: list[int], config: FuzzyRecallConfig, test: bool) -> list[int]:
    """The labels a reader of the sequence expects: values of repeated keys and of the final query."""
    plain = config.vocab_size - 1 - config.delimiter
    n_keys, pad = plain // 2, plain
    pairs, pad_len = read_pairs(tokens, n_keys, pad, pad + 1 if config.delimiter else None)
    k_max, v_max = config.max_key_len, config.max_value_len
    assert pad_len < 2 * (k_max + v_max + config.delimiter), "the context fills the sequence"
    expected = [IGNORE] * len(tokens)
    memory = {}
    for index, (key, value, value_start, delimited) in enumerate(pairs):
        last = index == len(pairs) - 1
        assert len(set(key)) == len(key) and len(set(value)) == len(value)
        assert 1 <= len(key) <= k_max and 1 <= len(value) <= v_max
        if test and config.full_length_test_keys:
            assert len(key) == k_max
        assert delimited == (config.delimiter and not last)
        if key in memory:
            assert memory[key] == value, "a key keeps its value"
            if config.score_repeats or last:
                # teacher-forced: from the key's last token on, each position predicts the next value token
                expected[value_start - 1 : value_start - 1 + len(value)] = value
        else:
            assert not last, "the final query asks for a key of the context"
            memory[key] = value
    return expected


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"delimiter": True},
        {"score_repeats": False},
        {"max_key_len": 2, "max_value_len": 4, "vocab_size": 12},
    ],
)
def test_fuzzy_labels_are_the_values_of_repeated_keys(changes):
    config = FuzzyRecallConfig(
        train_lengths=(32, 64), test_lengths=(64, 128), num_train=400, num_test=200, **changes
    )
    for split in ("train", "test"):
        slices = FUZZY.generate(config, split, seed=5)
        lengths = config.train_lengths if split == "train" else config.test_lengths
        assert [s.name for s in slices] == [f"seq_len={n}" for n in lengths]
        key_lengths = set()
        for piece, seq_len in zip(slices, lengths, strict=True):
            assert piece.inputs.shape == (len(piece), seq_len) and piece.inputs.dtype == np.int64
            for inputs, labels in zip(piece.inputs.tolist(), piece.labels.tolist(), strict=True):
                assert labels == solve_fuzzy(inputs, config, test=split == "test")
                plain = config.vocab_size - 1 - config.delimiter
                pairs, _ = read_pairs(inputs, plain // 2, plain, plain + 1)
                key_lengths.update(len(key) for key, *_ in pairs)
        if split == "train":
            assert key_lengths == set(range(1, config.max_key_len + 1))


def test_fuzzy_scores_repeats_in_context_and_lm_loss_option():
    config = FuzzyRecallConfig(train_lengths=(128,), num_train=200, num_test=200, lm_loss_in_train=True)
    (test,) = FUZZY.generate(config, "test", 0)
    scored_per_row = (test.labels != IGNORE).sum(1)
    assert scored_per_row.min() >= 1 and scored_per_row.max() > 3  # some rows query context repeats too
    (train,) = FUZZY.generate(config, "train", 0)
    assert (train.labels[:, :-1] == train.inputs[:, 1:]).all() and (train.labels[:, -1] == IGNORE).all()


# ---------------------------------------------------------------------------------------------- noisy recall


def solve_noisy(tokens: list[int], config: NoisyRecallConfig) -> tuple[list[int], int]:
    """Expected labels and the number of noise slots, reading the sequence two tokens at a time."""
    n_keys, kv = config.kv_vocab_size // 2, config.kv_vocab_size
    expected = [IGNORE] * len(tokens)
    memory, noise_slots = {}, 0
    for position in range(0, len(tokens), 2):
        first, second = tokens[position], tokens[position + 1]
        last = position == len(tokens) - 2
        if first >= kv:
            assert second >= kv and not last, "noise fills whole slots, never the query slot"
            noise_slots += 1
            continue
        assert first < n_keys and n_keys <= second < kv
        if first in memory:
            assert memory[first] == second
            expected[position] = second
        else:
            assert not last, "the final query asks for a key of the context"
            memory[first] = second
    return expected, noise_slots


def test_noisy_labels_are_the_values_of_repeated_keys_and_noise_has_its_fraction():
    settings = ((64, 0.2), (128, 0.8), (32, 0.0))
    config = NoisyRecallConfig(train_settings=settings, test_settings=settings, num_train=300, num_test=400)
    for split in ("train", "valid"):
        slices = NOISY.generate(config, split, seed=2)
        assert [s.name for s in slices] == [
            "seq_len=64,frac_noise=0.2",
            "seq_len=128,frac_noise=0.8",
            "seq_len=32,frac_noise=0",
        ]
        for piece, (seq_len, frac_noise) in zip(slices, settings, strict=True):
            assert piece.inputs.shape == (len(piece), seq_len)
            noise = 0
            for inputs, labels in zip(piece.inputs.tolist(), piece.labels.tolist(), strict=True):
                expected, noise_slots = solve_noisy(inputs, config)
                assert labels == expected
                assert noise_slots <= seq_len // 2 - 2  # a pair in the context and the query
                noise += noise_slots
            if split == "valid":
                context_slots = seq_len // 2 - 1
                # each context slot is noise with probability frac_noise, bar the one kept as a pair
                assert noise / (len(piece) * context_slots) == pytest.approx(
                    frac_noise * (context_slots - 1) / context_slots, abs=0.02
                )


def test_noisy_lm_loss_option_changes_only_training():
    config = NoisyRecallConfig(num_train=100, num_test=10, lm_loss_in_train=True)
    train = NOISY.generate(config, "train", 0)
    assert all((s.labels[:, :-1] == s.inputs[:, 1:]).all() for s in train)
    test = NOISY.generate(config, "test", 0)
    assert all((s.labels != IGNORE).mean() < 0.5 for s in test)


# ---------------------------------------------------------------------------------------------- selective copy


@pytest.mark.parametrize("teacher_forcing", [True, False])
def test_selective_copy_labels_are_the_data_tokens_in_order(teacher_forcing):
    settings = ((256, 16), (64, 8))
    config = SelectiveCopyConfig(
        train_settings=settings,
        test_settings=settings,
        num_train=200,
        num_test=300,
        teacher_forcing=teacher_forcing,
    )
    blank, copy = config.vocab_size - 2, config.vocab_size - 1
    for split in ("train", "test"):
        slices = COPY.generate(config, split, 0)
        assert [s.name for s in slices] == ["seq_len=256,num_tokens=16", "seq_len=64,num_tokens=8"]
        for piece, (seq_len, num_tokens) in zip(slices, settings, strict=True):
            assert piece.inputs.shape == (len(piece), seq_len)
            last_data_next_to_copy = 0
            for inputs, labels in zip(piece.inputs.tolist(), piece.labels.tolist(), strict=True):
                at = inputs.index(copy)
                assert at == seq_len - num_tokens - 1 and inputs.count(copy) == 1
                data = [t for t in inputs[:at] if t != blank]
                assert len(data) == num_tokens
                last_data_next_to_copy += inputs[at - 1] != blank
                if teacher_forcing:
                    assert inputs[at + 1 :] == data
                    assert labels == [IGNORE] * at + data + [IGNORE]
                else:
                    assert inputs[at + 1 :] == [blank] * num_tokens
                    assert labels == [IGNORE] * (at + 1) + data
            # data positions are uniform over the context, not packed against the copy token
            assert last_data_next_to_copy < 0.5 * len(piece)


# ---------------------------------------------------------------------------------------------- all three


CASES = [
    (FUZZY, FuzzyRecallConfig(train_lengths=(64, 128), test_lengths=(128, 256), num_train=300, num_test=50)),
    (NOISY, NoisyRecallConfig(train_settings=((64, 0.2), (64, 0.6)), num_train=300, num_test=50)),
    (COPY, SelectiveCopyConfig(train_settings=((128, 8), (256, 16)), num_train=300, num_test=50)),
]


@pytest.mark.parametrize("task,config", CASES)
def test_same_seed_same_data_and_splits_differ(task, config):
    assert digest(task.generate(config, "train", 0)) == digest(task.generate(config, "train", 0))
    assert digest(task.generate(config, "test", 7)) == digest(task.generate(config, "test", 7))
    assert digest(task.generate(config, "train", 0)) != digest(task.generate(config, "train", 1))
    assert digest(task.generate(config, "test", 0)) != digest(task.generate(config, "valid", 0))
    assert [len(s) for s in task.generate(config, "train", 0)] == [150, 150]


@pytest.mark.parametrize("task,config", CASES)
def test_vocabulary_covers_every_token_and_renders(task, config):
    words = task.vocabulary(config)
    assert len(words) == task.vocab_size(config) == len(set(words))
    assert all(word and " " not in word for word in words)
    for piece in task.generate(config, "test", 0):
        assert piece.inputs.min() >= 0 and piece.inputs.max() < task.vocab_size(config)
        labelled = piece.labels[piece.labels != IGNORE]
        assert labelled.min() >= 0 and labelled.max() < task.vocab_size(config)
        text = task.render(config, piece.inputs[0])
        assert len(text.split(" ")) == piece.inputs.shape[1]


@pytest.mark.parametrize(
    "task,config,message",
    [
        (FUZZY, FuzzyRecallConfig(test_lengths=(11,)), "seq_len=11 cannot hold"),
        (FUZZY, FuzzyRecallConfig(vocab_size=6), "raise vocab_size"),
        (FUZZY, FuzzyRecallConfig(max_value_len=0), "must be >= 1"),
        (FUZZY, FuzzyRecallConfig(train_lengths=()), "at least one seq_len"),
        (NOISY, NoisyRecallConfig(test_settings=((127, 0.2),)), "even and >= 4"),
        (NOISY, NoisyRecallConfig(test_settings=((128, 1.0),)), r"frac_noise must be in \[0, 1\)"),
        (NOISY, NoisyRecallConfig(noise_vocab_size=0), "needs noise_vocab_size >= 1"),
        (NOISY, NoisyRecallConfig(kv_vocab_size=1), "kv_vocab_size must be >= 2"),
        (COPY, SelectiveCopyConfig(test_settings=((33, 16),)), "seq_len >= 34"),
        (COPY, SelectiveCopyConfig(train_settings=((64, 0),)), "num_tokens >= 1"),
        (COPY, SelectiveCopyConfig(vocab_size=2), "vocab_size must be >= 3"),
    ],
)
def test_impossible_settings_are_rejected(task, config, message):
    with pytest.raises(HarnessError, match=message):
        task.validate(config)
    with pytest.raises(HarnessError):
        task.generate(config, "test", 0)


def test_smallest_settings_work():
    FUZZY.generate(FuzzyRecallConfig(test_lengths=(12,), num_test=20), "test", 0)
    NOISY.generate(NoisyRecallConfig(test_settings=((4, 0.5),), num_test=20), "test", 0)
    (piece,) = COPY.generate(SelectiveCopyConfig(test_settings=((34, 16),), num_test=20), "test", 0)
    assert ((piece.inputs[:, :17] == 14).sum(1) == 1).all()  # one blank among the data


# ---------------------------------------------------------------------------------------------- helpers


def test_ordered_distinct_is_uniform_over_ordered_tuples():
    draws = ordered_distinct(np.random.default_rng(0), (24000,), 2, low=3, high=7)
    counts = {pair: 0 for pair in itertools.permutations(range(3, 7), 2)}
    for pair in map(tuple, draws.tolist()):
        counts[pair] += 1  # KeyError on a repeated or out-of-range token
    assert min(counts.values()) > 0.9 * 2000 and max(counts.values()) < 1.1 * 2000


def test_first_occurrence_matches_a_loop():
    ids = np.random.default_rng(0).integers(0, 5, size=(50, 20))
    first = first_occurrence(ids)
    for row, out in zip(ids.tolist(), first.tolist(), strict=True):
        assert out == [row.index(x) for x in row]
