"""MQAR data checked by an independent solver: read the pairs, answer the queries, compare with the labels."""

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.registry import TASKS
from tasks.base import IGNORE
from tasks.mqar import MQARConfig, distinct_integers

from .checks import digest

MQAR = TASKS.get("mqar")


def solve(inputs: np.ndarray, pairs: int) -> dict[int, int]:
    """Answers by position: the value written right after the queried key in the context."""
    context = dict(zip(inputs[0 : 2 * pairs : 2].tolist(), inputs[1 : 2 * pairs : 2].tolist(), strict=True))
    answers = {}
    for position in range(2 * pairs, len(inputs)):
        token = int(inputs[position])
        if token in context and position % 2 == 0:
            answers.setdefault(position, context[token])
    return answers


@pytest.mark.parametrize("random_non_queries", [False, True])
def test_labels_are_the_values_of_the_queried_keys(random_non_queries):
    config = MQARConfig(
        vocab_size=64, test_settings=((32, 4), (64, 16)), num_test=200, random_non_queries=random_non_queries
    )
    for piece, (seq_len, pairs) in zip(
        MQAR().generate(config, "test", seed=3), config.test_settings, strict=True
    ):
        assert piece.name == f"seq_len={seq_len},pairs={pairs}"
        assert piece.inputs.shape == (200, seq_len)
        for inputs, labels in zip(piece.inputs, piece.labels, strict=True):
            keys, values = inputs[0 : 2 * pairs : 2], inputs[1 : 2 * pairs : 2]
            assert len(set(keys.tolist())) == pairs and len(set(values.tolist())) == pairs
            assert keys.min() >= 1 and keys.max() < 32 and values.min() >= 32 and values.max() < 64
            scored = np.flatnonzero(labels != IGNORE)
            assert len(scored) == pairs  # every key queried exactly once
            queried = inputs[scored]
            assert sorted(queried.tolist()) == sorted(keys.tolist())
            truth = solve(inputs, pairs)
            for position in scored:
                assert labels[position] == truth[position]
            if not random_non_queries:
                region = np.ones(seq_len, dtype=bool)
                region[: 2 * pairs] = False
                region[scored] = False
                assert (inputs[region] == 0).all()


def test_same_seed_same_data_and_splits_differ():
    config = MQARConfig(vocab_size=512, train_settings=((64, 4), (128, 8)), num_train=1000, num_test=100)
    task = MQAR()
    assert digest(task.generate(config, "train", 0)) == digest(task.generate(config, "train", 0))
    assert digest(task.generate(config, "train", 0)) != digest(task.generate(config, "train", 1))
    assert digest(task.generate(config, "test", 0)) != digest(task.generate(config, "valid", 0))
    train = task.generate(config, "train", 0)
    assert [len(s) for s in train] == [500, 500]


def test_gap_distribution_follows_power_a():
    """a = 0.01 puts most queries right after the context; a = 1 spreads them uniformly."""

    def mean_query_offset(power_a):
        config = MQARConfig(
            vocab_size=512, test_settings=((256, 8),), num_test=400, power_a=power_a, random_non_queries=False
        )
        (piece,) = MQAR().generate(config, "test", 0)
        return np.mean([np.flatnonzero(row != IGNORE).mean() - 16 for row in piece.labels])

    skewed, uniform = mean_query_offset(0.01), mean_query_offset(1.0)
    # uniform over 120 slots of 2 tokens: mean offset near 119
    assert 110 < uniform < 130
    assert skewed < 0.6 * uniform


@pytest.mark.parametrize(
    "settings,vocab,message",
    [(((16, 8),), 8192, "need seq_len >= 32"), (((64, 10),), 16, "distinct keys need vocab_size")],
)
def test_impossible_settings_are_rejected(settings, vocab, message):
    with pytest.raises(HarnessError, match=message):
        MQAR().validate(MQARConfig(vocab_size=vocab, train_settings=settings, test_settings=settings))


@pytest.mark.parametrize("n,k,low,high", [(1000, 8, 1, 20), (20000, 64, 4096, 8192)])
def test_distinct_integers(n, k, low, high):
    out = distinct_integers(np.random.default_rng(0), n, k, low, high)
    assert out.shape == (n, k) and out.min() >= low and out.max() < high
    assert all(len(set(row)) == k for row in out.tolist())


def test_text_rendering_uses_one_word_per_token():
    config = MQARConfig(
        vocab_size=16,
        train_settings=((16, 2),),
        test_settings=((16, 2),),
        num_test=1,
        random_non_queries=False,
    )
    task = MQAR()
    words = task.vocabulary(config)
    assert len(words) == 16 and len(set(words)) == 16 and words[0] == "_"
    (piece,) = task.generate(config, "test", 0)
    text = task.render(config, piece.inputs[0])
    assert len(text.split(" ")) == 16 and text.startswith("k")


def test_train_shares_split_the_mixture_as_zoology_does():
    # Zoology's mixture: 100K examples at (64, 4) and 20K at each other setting
    settings = ((64, 4), (128, 8), (256, 16), (256, 32), (256, 64))
    zoology = MQARConfig(vocab_size=512, train_settings=settings, train_shares=(5, 1, 1, 1, 1), num_train=900)
    assert [len(s) for s in MQAR().generate(zoology, "train", 0)] == [500, 100, 100, 100, 100]
    uneven = MQARConfig(vocab_size=512, train_settings=settings[:3], train_shares=(1, 1, 1), num_train=100)
    assert [len(s) for s in MQAR().generate(uneven, "train", 0)] == [34, 33, 33]  # every example is used
    with pytest.raises(HarnessError, match="one share above 0 per train setting"):
        MQAR().validate(MQARConfig(train_settings=settings, train_shares=(5, 1)))
    with pytest.raises(HarnessError, match="one share above 0 per train setting"):
        MQAR().validate(MQARConfig(train_settings=settings[:2], train_shares=(1, 0)))


def test_train_shares_left_unset_keep_the_ids_of_configs_stored_before_them():
    import tasks.base
    from harness.config import ADDED_LATER, config_hash, to_dict

    assert tasks.base.ADDED_LATER == ADDED_LATER

    even = MQARConfig(train_settings=((64, 4), (128, 8)))
    shared = MQARConfig(train_settings=((64, 4), (128, 8)), train_shares=(1, 1))
    assert "train_shares" not in to_dict(even, for_hash=True) and "train_shares" in to_dict(
        shared, for_hash=True
    )
    assert config_hash(even) != config_hash(shared)
