"""State-tracking data checked by independent solvers: count the bits, evaluate the rendered expression with
Python, multiply the permutations written in the vocabulary."""

import itertools

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.registry import TASKS
from tasks.base import IGNORE
from tasks.state_tracking import ModularArithmeticConfig, ParityConfig, PermutationConfig

from .checks import digest

Parity = TASKS.get("parity")
ModularArithmetic = TASKS.get("modular-arithmetic")
Permutation = TASKS.get("permutation")


def test_parity_tags_every_position_with_the_prefix_parity():
    config = ParityConfig(test_lengths=(1, 7, 64), num_test=200)
    slices = Parity().generate(config, "test", seed=0)
    assert [s.name for s in slices] == ["seq_len=1", "seq_len=7", "seq_len=64"]
    for piece, seq_len in zip(slices, config.test_lengths, strict=True):
        assert piece.inputs.shape == (200, seq_len) and piece.inputs.dtype == np.int64
        assert set(np.unique(piece.inputs).tolist()) <= {0, 1}
        assert Parity().chance_accuracy(config, piece.name) == 0.5
        for bits, labels in zip(piece.inputs.tolist(), piece.labels.tolist(), strict=True):
            ones = 0
            for bit, label in zip(bits, labels, strict=True):
                ones += bit
                assert label == ones % 2


def test_parity_without_tagging_scores_only_the_end_token():
    config = ParityConfig(tagging=False, test_lengths=(2, 41), num_test=200)
    task = Parity()
    for piece in task.generate(config, "test", seed=1):
        words = task.vocabulary(config)
        assert (piece.inputs[:, -1] == words.index("=")).all()
        assert (piece.labels[:, :-1] == IGNORE).all()
        for bits, labels in zip(piece.inputs.tolist(), piece.labels.tolist(), strict=True):
            assert labels[-1] == bits[:-1].count(1) % 2
        # both answers occur
        assert set(piece.labels[:, -1].tolist()) == {0, 1}


def python_value(text: str, modulus: int) -> int:
    """The value of a rendered expression, by Python's own parser (same precedence, exact integers)."""
    # eval is safe here: only digits, operators, brackets and spaces, checked first
    assert set(text) <= set("0123456789+-*() ")
    return eval(text) % modulus


@pytest.mark.parametrize("brackets", [False, True])
@pytest.mark.parametrize("modulus", [5, 7])
def test_modular_arithmetic_answers_the_value_of_the_expression(brackets, modulus):
    config = ModularArithmeticConfig(
        test_lengths=(2, 3, 11, 40, 97, 128), num_test=100, brackets=brackets, modulus=modulus
    )
    task = ModularArithmetic()
    words = task.vocabulary(config)
    slices = task.generate(config, "test", seed=2)
    assert [s.name for s in slices] == [f"seq_len={n}" for n in config.test_lengths]
    max_depth = 0
    for piece, seq_len in zip(slices, config.test_lengths, strict=True):
        assert piece.inputs.shape == (100, seq_len)
        assert (piece.labels[:, :-1] == IGNORE).all()
        for ids, labels in zip(piece.inputs, piece.labels, strict=True):
            tokens = [words[i] for i in ids.tolist()]
            assert tokens[-1] == "="
            # one pad in front exactly when seq_len is odd (expressions have odd length)
            pads = seq_len % 2
            assert tokens[:pads] == ["_"] * pads and "_" not in tokens[pads:]
            expression = tokens[pads:-1]
            assert "=" not in expression
            assert all(int(t) < modulus for t in expression if t.isdigit())
            depth = 0
            for t in expression:
                depth += (t == "(") - (t == ")")
                assert depth >= 0
                max_depth = max(max_depth, depth)
            assert depth == 0
            if not brackets:
                assert expression[0::2] == [t for t in expression if t.isdigit()]
                assert all(t in "+-*" for t in expression[1::2])
            assert labels[-1] == python_value(" ".join(expression), modulus)
    if brackets:
        assert max_depth >= 3
    else:
        assert max_depth == 0


def test_modular_arithmetic_answers_are_spread_over_all_residues():
    """Chance accuracy 1/m assumes no answer dominates; every operator and digit occurs."""
    config = ModularArithmeticConfig(test_lengths=(64,), num_test=2000, brackets=True)
    task = ModularArithmetic()
    (piece,) = task.generate(config, "test", seed=3)
    counts = np.bincount(piece.labels[:, -1], minlength=5)
    assert len(counts) == 5 and counts.min() > 0.15 * 2000 and counts.max() < 0.25 * 2000
    assert set(np.unique(piece.inputs).tolist()) == set(range(11))  # everything but the pad
    assert task.chance_accuracy(config, piece.name) == pytest.approx(0.2)


def permutation_elements(group: str) -> list[tuple[int, ...]]:
    """The group's permutations of {0..4} in lexicographic order of their one-line notation."""
    perms = list(itertools.permutations(range(5)))
    if group == "A5":
        perms = [p for p in perms if sum(p[i] > p[j] for i in range(5) for j in range(i + 1, 5)) % 2 == 0]
    return perms


@pytest.mark.parametrize("group,order", [("S5", 120), ("A5", 60)])
def test_permutation_labels_are_running_products(group, order):
    config = PermutationConfig(group=group, test_lengths=(1, 9, 70), num_test=100)
    task = Permutation()
    words = task.vocabulary(config)
    elements = permutation_elements(group)
    assert task.vocab_size(config) == order == len(elements)
    assert words == ["p" + "".join(map(str, p)) for p in elements]
    assert task.chance_accuracy(config, "seq_len=9") == pytest.approx(1 / order)
    seen = set()
    for piece in task.generate(config, "test", seed=4):
        seen |= set(piece.inputs.ravel().tolist())
        for ids, labels in zip(piece.inputs.tolist(), piece.labels.tolist(), strict=True):
            state = tuple(range(5))
            for token, label in zip(ids, labels, strict=True):
                g = elements[token]
                # apply the earlier product first, then g: state(i) <- g(state(i))
                state = tuple(g[state[i]] for i in range(5))
                assert elements[label] == state
    assert seen == set(range(order))


def test_permutation_z60_adds_mod_60():
    config = PermutationConfig(group="Z60", test_lengths=(50,), num_test=50)
    task = Permutation()
    words = task.vocabulary(config)
    assert task.vocab_size(config) == 60 and task.chance_accuracy(config, "seq_len=50") == pytest.approx(
        1 / 60
    )
    (piece,) = task.generate(config, "test", seed=5)
    for ids, labels in zip(piece.inputs.tolist(), piece.labels.tolist(), strict=True):
        values = [int(words[i][1:]) for i in ids]
        assert [int(words[i][1:]) for i in labels] == [sum(values[: t + 1]) % 60 for t in range(len(values))]


def test_permutation_order_convention_is_g0_first():
    """Labels follow p_1 = g_1 ∘ g_0, not g_0 ∘ g_1: the two differ on many pairs, so a flip would fail."""
    config = PermutationConfig(test_lengths=(2,), num_test=500)
    task = Permutation()
    words = task.vocabulary(config)
    elements = permutation_elements("S5")
    (piece,) = task.generate(config, "test", seed=6)
    differ = 0
    for (x, y), (_, z) in zip(piece.inputs.tolist(), piece.labels.tolist(), strict=True):
        g0, g1 = elements[x], elements[y]
        assert elements[z] == tuple(g1[g0[i]] for i in range(5))
        differ += elements[z] != tuple(g0[g1[i]] for i in range(5))
    assert differ > 100
    # the module docstring's example: swap 0,1 then swap 1,2
    g0, g1 = elements[words.index("p10234")], elements[words.index("p02134")]
    assert "".join(str(g1[g0[i]]) for i in range(5)) == "20134"


TASK_CONFIGS = [
    (Parity, ParityConfig(num_train=1900, num_test=50)),
    (Parity, ParityConfig(num_train=1900, num_test=50, tagging=False)),
    (ModularArithmetic, ModularArithmeticConfig(num_train=1900, num_test=50, brackets=True)),
    (Permutation, PermutationConfig(num_train=1900, num_test=50, group="A5")),
]


@pytest.mark.parametrize("task,config", TASK_CONFIGS)
def test_same_seed_same_data_and_splits_differ(task, config):
    task = task()
    assert digest(task.generate(config, "train", 0)) == digest(task.generate(config, "train", 0))
    assert digest(task.generate(config, "train", 0)) != digest(task.generate(config, "train", 1))
    assert digest(task.generate(config, "test", 0)) != digest(task.generate(config, "valid", 0))


@pytest.mark.parametrize("task,config", TASK_CONFIGS)
def test_default_lengths_generalise_from_3_40_to_40_256(task, config):
    task = task()
    train = task.generate(config, "train", 0)
    assert [s.name for s in train] == [f"seq_len={n}" for n in range(3, 41)]
    assert [s.inputs.shape for s in train] == [(50, n) for n in range(3, 41)]
    test = task.generate(config, "test", 0)
    assert [s.name for s in test] == ["seq_len=40", "seq_len=64", "seq_len=128", "seq_len=256"]
    assert [s.inputs.shape for s in test] == [(50, n) for n in (40, 64, 128, 256)]
    for piece in train + test:
        assert piece.labels.dtype == np.int64
        scored = piece.labels[piece.labels != IGNORE]
        assert scored.size and scored.min() >= 0 and scored.max() < task.vocab_size(config)
        assert piece.inputs.min() >= 0 and piece.inputs.max() < task.vocab_size(config)


@pytest.mark.parametrize(
    "task,config,message",
    [
        (Parity, ParityConfig(test_lengths=(0,)), "seq_len must be >= 1"),
        (Parity, ParityConfig(tagging=False, train_lengths=(1, 2)), "seq_len must be >= 2"),
        (Parity, ParityConfig(test_lengths=()), "at least one length"),
        (Parity, ParityConfig(num_train=10), "without examples"),
        (ModularArithmetic, ModularArithmeticConfig(test_lengths=(1,)), "seq_len must be >= 2"),
        (ModularArithmetic, ModularArithmeticConfig(modulus=1), "modulus must be >= 2"),
        (ModularArithmetic, ModularArithmeticConfig(bracket_probability=1.5), "bracket_probability"),
        (Permutation, PermutationConfig(group="S6"), "unknown group 'S6'"),
        (Permutation, PermutationConfig(num_test=0), "num_test must be >= 1"),
    ],
)
def test_impossible_settings_are_rejected(task, config, message):
    with pytest.raises(HarnessError, match=message):
        task().validate(config)
    with pytest.raises(HarnessError, match=message):
        task().generate(config, "train", 0)


@pytest.mark.parametrize(
    "task,config,size,first",
    [
        (Parity, ParityConfig(test_lengths=(8,)), 3, "0"),
        (ModularArithmetic, ModularArithmeticConfig(test_lengths=(8,)), 12, "0"),
        (Permutation, PermutationConfig(test_lengths=(8,)), 120, "p01234"),
        (Permutation, PermutationConfig(test_lengths=(8,), group="A5"), 60, "p01234"),
        (Permutation, PermutationConfig(test_lengths=(8,), group="Z60"), 60, "z0"),
    ],
)
def test_vocabulary_has_one_distinct_word_per_token(task, config, size, first):
    task = task()
    words = task.vocabulary(config)
    assert task.vocab_size(config) == size == len(words) == len(set(words)) and words[0] == first
    assert all(w and " " not in w for w in words)
    (piece,) = task.generate(config, "test", 0)
    text = task.render(config, piece.inputs[0])
    assert len(text.split(" ")) == 8
