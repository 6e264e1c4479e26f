"""Palindrome, stack and multi-hop data checked by independent solvers: reverse the prefix, simulate the stacks,
follow the pointers; then compare with the labels."""

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.registry import TASKS
from tasks.base import IGNORE
from tasks.reasoning import MultiHopConfig, PalindromeConfig, StackConfig

from .checks import digest

PALINDROME, STACK, MULTI_HOP = TASKS.get("palindrome"), TASKS.get("stack"), TASKS.get("multi-hop")


def words(task, config, ids) -> list[str]:
    """Solvers read the rendered text, so they depend on the vocabulary, not on the generator's token layout."""
    text = task().render(config, ids)
    return text.split(" ") if text else []


# ---------------------------------------------------------------------------------------------------- palindrome


def test_palindrome_labels_are_the_prefix_reversed():
    config = PalindromeConfig(vocab_size=8, test_lengths=(2, 10, 64), num_test=100)
    slices = PALINDROME().generate(config, "test", seed=1)
    assert [s.name for s in slices] == ["seq_len=2", "seq_len=10", "seq_len=64"]
    for piece, seq_len in zip(slices, config.test_lengths, strict=True):
        assert piece.inputs.shape == (100, seq_len) and piece.inputs.dtype == np.int64
        for ids, labels in zip(piece.inputs, piece.labels, strict=True):
            text = words(PALINDROME, config, ids)
            sep = text.index("|")
            assert sep == seq_len // 2 and text.count("|") == 1
            target = text[:sep][::-1]
            # teacher forcing: after the separator the inputs are the answer so far
            assert text[sep + 1 :] == target[:-1]
            scored = np.flatnonzero(labels != IGNORE)
            assert scored.tolist() == list(range(sep, seq_len))
            assert words(PALINDROME, config, labels[scored]) == target


def test_palindrome_symbols_cover_the_vocabulary():
    config = PalindromeConfig(vocab_size=8, test_lengths=(64,), num_test=50)
    (piece,) = PALINDROME().generate(config, "test", seed=0)
    prefix = piece.inputs[:, :32]
    assert set(np.unique(prefix).tolist()) == set(range(1, 8))


# --------------------------------------------------------------------------------------------------------- stack


def solve_stacks(text: list[str]) -> tuple[dict[int, str], int]:
    """Simulate the stacks: {position of the id token of each pop: popped element}, and the number of pushes."""
    start = len(text) % 3
    assert all(word == "_" for word in text[:start])
    stacks: dict[str, list[str]] = {}
    answers, pushes = {}, 0
    for position in range(start, len(text), 3):
        op, stack_id, element = text[position : position + 3]
        assert stack_id.startswith("s") and element.startswith("e")
        if op == "<push>":
            stacks.setdefault(stack_id, []).append(element)
            pushes += 1
        else:
            assert op == "<pop>"
            assert stacks.get(stack_id), "popped an empty stack"
            answers[position + 1] = stacks[stack_id].pop()
            assert element == answers[position + 1], "teacher-forced element is not the popped one"
    return answers, pushes


def test_stack_labels_are_the_popped_elements():
    config = StackConfig(num_stacks=4, num_elements=8, test_lengths=(6, 64, 200), num_test=100)
    slices = STACK().generate(config, "test", seed=2)
    assert [s.name for s in slices] == ["seq_len=6", "seq_len=64", "seq_len=200"]
    pops = 0
    for piece, seq_len in zip(slices, config.test_lengths, strict=True):
        assert piece.inputs.shape == (100, seq_len)
        for ids, labels in zip(piece.inputs, piece.labels, strict=True):
            answers, _ = solve_stacks(words(STACK, config, ids))
            scored = np.flatnonzero(labels != IGNORE)
            assert scored.tolist() == sorted(answers)
            assert words(STACK, config, labels[scored]) == [answers[p] for p in scored]
            pops += len(answers)
    assert pops > 1000


def test_stack_push_prob_sets_the_push_rate():
    def push_rate(push_prob):
        config = StackConfig(num_stacks=2, test_lengths=(300,), num_test=50, push_prob=push_prob)
        (piece,) = STACK().generate(config, "test", seed=0)
        return np.mean([solve_stacks(words(STACK, config, ids))[1] / 100 for ids in piece.inputs])

    # forced pushes on empty stacks lift the rate a little above push_prob
    assert 0.5 < push_rate(0.5) < 0.6
    assert 0.8 <= push_rate(0.8) < 0.85


def test_stack_64_stacks_at_report_length():
    config = StackConfig(test_lengths=(2048,), num_test=20)
    (piece,) = STACK().generate(config, "test", seed=0)
    used = {w for ids in piece.inputs for w in words(STACK, config, ids) if w.startswith("s")}
    assert len(used) == 64
    for ids, labels in zip(piece.inputs, piece.labels, strict=True):
        answers, _ = solve_stacks(words(STACK, config, ids))
        assert len(answers) > 100 and (labels != IGNORE).sum() == len(answers)
    assert STACK().chance_accuracy(config, piece.name) == 1 / 64


# ----------------------------------------------------------------------------------------------------- multi-hop


def solve_pointers(text: list[str], hops: int) -> dict[int, str]:
    """Read the `a -> b` table, follow each query's pointers: {position: node after the hops so far}."""
    table = {}
    position = text.count("_")
    assert text[:position] == ["_"] * position
    while text[position] != "?":
        source, arrow, target = text[position : position + 3]
        assert arrow == "->" and source not in table
        table[source] = target
        position += 3
    assert sorted(table) == sorted(table.values()), "not a permutation of the table's nodes"
    answers = {}
    while position < len(text):
        mark, node, *steps = text[position : position + hops + 2]
        assert mark == "?" and steps == ["hop"] * (hops - 1) + ["="]
        seen = {node}
        for j in range(hops):
            node = table[node]
            assert node not in seen, "the chase revisits a node"
            seen.add(node)
            answers[position + 2 + j] = node
        position += hops + 2
    return answers


@pytest.mark.parametrize("every_hop", [False, True])
def test_multi_hop_labels_follow_the_pointers(every_hop):
    settings = ((20, 1), (64, 3), (100, 8))
    config = MultiHopConfig(
        num_nodes=40, test_settings=settings, num_queries=2, label_every_hop=every_hop, num_test=100
    )
    slices = MULTI_HOP().generate(config, "test", seed=4)
    assert [s.name for s in slices] == [f"seq_len={L},hops={k}" for L, k in settings]
    for piece, (seq_len, hops) in zip(slices, settings, strict=True):
        assert piece.inputs.shape == (100, seq_len)
        for ids, labels in zip(piece.inputs, piece.labels, strict=True):
            text = words(MULTI_HOP, config, ids)
            answers = solve_pointers(text, hops)
            if not every_hop:
                answers = {p: a for p, a in answers.items() if text[p] == "="}
            scored = np.flatnonzero(labels != IGNORE)
            assert scored.tolist() == sorted(answers)
            assert words(MULTI_HOP, config, labels[scored]) == [answers[p] for p in scored]
            starts = [text[p + 1] for p, w in enumerate(text) if w == "?"]
            assert len(starts) == 2 and len(set(starts)) == 2


def test_multi_hop_tables_vary_and_chance():
    config = MultiHopConfig(test_settings=((128, 2),), num_test=200)
    (piece,) = MULTI_HOP().generate(config, "test", seed=0)
    # N = (128 - 4 * 4) // 3 = 37 nodes, 1 pad token
    assert MULTI_HOP().chance_accuracy(config, piece.name) == pytest.approx(1 / 36)
    assert (piece.inputs[:, 0] == 0).all() and (piece.inputs[:, 1] != 0).all()
    nodes = piece.inputs[:, 1 : 1 + 3 * 37 : 3]
    assert len(np.unique(nodes)) == 256  # every node token is used somewhere
    answers = piece.labels[piece.labels != IGNORE]
    assert len(answers) == 200 * 4


# ------------------------------------------------------------------------------------------------------- all tasks

CASES = [
    (PALINDROME, PalindromeConfig(train_lengths=(32, 64), num_train=300, num_test=40)),
    (STACK, StackConfig(train_lengths=(32, 64), num_train=300, num_test=40)),
    (MULTI_HOP, MultiHopConfig(train_settings=((64, 1), (96, 2)), num_train=300, num_test=40)),
]


@pytest.mark.parametrize("task,config", CASES, ids=["palindrome", "stack", "multi-hop"])
def test_same_seed_same_data_and_splits_differ(task, config):
    t = task()
    assert digest(t.generate(config, "train", 0)) == digest(t.generate(config, "train", 0))
    assert digest(t.generate(config, "train", 0)) != digest(t.generate(config, "train", 1))
    assert digest(t.generate(config, "test", 0)) != digest(t.generate(config, "valid", 0))
    train = t.generate(config, "train", 0)
    assert [len(s) for s in train] == [150, 150]
    lengths = [s[0] for s in config.train_settings] if task is MULTI_HOP else list(config.train_lengths)
    assert [s.inputs.shape[1] for s in train] == lengths
    assert [s.name.split(",")[0] for s in train] == [f"seq_len={L}" for L in lengths]
    test = t.generate(config, "test", 0)
    assert [len(s) for s in test] == [40] * len(test)
    assert all((s.labels != IGNORE).any(axis=1).all() for s in train + test if task is not STACK)


@pytest.mark.parametrize("task,config", CASES, ids=["palindrome", "stack", "multi-hop"])
def test_vocabulary_and_rendering(task, config):
    t = task()
    vocab = t.vocabulary(config)
    assert len(vocab) == t.vocab_size(config) == len(set(vocab))
    assert all(word and " " not in word for word in vocab)
    for piece in t.generate(config, "valid", 0):
        assert piece.inputs.min() >= 0 and piece.inputs.max() < t.vocab_size(config)
        scored = piece.labels[piece.labels != IGNORE]
        assert scored.min() >= 0 and scored.max() < t.vocab_size(config)
        assert len(t.render(config, piece.inputs[0]).split(" ")) == piece.inputs.shape[1]


@pytest.mark.parametrize(
    "task,config,message",
    [
        (PALINDROME, PalindromeConfig(test_lengths=(63,)), "seq_len must be even"),
        (PALINDROME, PalindromeConfig(vocab_size=2), "vocab_size must be >= 3"),
        (PALINDROME, PalindromeConfig(train_lengths=()), "at least one setting"),
        (STACK, StackConfig(train_lengths=(5,)), "seq_len must be >= 6"),
        (STACK, StackConfig(push_prob=1.0), "push_prob must be in"),
        (STACK, StackConfig(num_elements=1), "num_elements >= 2"),
        (MULTI_HOP, MultiHopConfig(test_settings=((128, 0),)), "hops must be >= 1"),
        (MULTI_HOP, MultiHopConfig(test_settings=((30, 4),)), r"seq_len >= 39"),
        (MULTI_HOP, MultiHopConfig(test_settings=((2048, 2),)), "raise num_nodes"),
        (MULTI_HOP, MultiHopConfig(num_queries=0), "num_queries must be >= 1"),
    ],
)
def test_impossible_settings_are_rejected(task, config, message):
    with pytest.raises(HarnessError, match=message):
        task().validate(config)
    with pytest.raises(HarnessError, match=message):
        task().generate(config, "test", 0)


def test_report_lengths_generate():
    """The report's longest setting (2048 tokens) is reachable by raising the sizes, not by changing the task."""
    configs = [
        (PALINDROME, PalindromeConfig(train_lengths=(2048,), num_train=200)),
        (STACK, StackConfig(train_lengths=(2048,), num_train=200)),
        (MULTI_HOP, MultiHopConfig(num_nodes=1024, train_settings=((2048, 8),), num_train=200)),
    ]
    for task, config in configs:
        (piece,) = task().generate(config, "train", 0)
        assert piece.inputs.shape == (200, 2048)
        assert (piece.labels != IGNORE).any(axis=1).all()
