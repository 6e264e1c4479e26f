"""Localisation tasks checked by independent solvers that read the rendered words: find the needles, look up
positions, copy, follow the assignment chains; then compare with the labels."""

import re

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.registry import TASKS
from tasks.base import IGNORE
from tasks.localization import CopyConfig, IndexLookupConfig, NIAHConfig, VariableTrackingConfig

from .checks import digest

NIAH, INDEX, COPY, TRACK = (TASKS.get(n) for n in ("niah", "index-lookup", "copy", "variable-tracking"))


def as_words(task, config, row: np.ndarray) -> list[str]:
    words = task.vocabulary(config)
    return [words[i] for i in row.tolist()]


def scored(task, config, labels: np.ndarray) -> dict[int, str]:
    words = task.vocabulary(config)
    return {int(t): words[labels[t]] for t in np.flatnonzero(labels != IGNORE)}


# ------------------------------------------------------------------------------------------------------- niah


def solve_niah(words: list[str]) -> tuple[dict[int, str], list[tuple[str, int, int]]]:
    """Expected labels by position, and the needles as (key, haystack tokens before it, position)."""
    needles, values_of = [], {}
    t = hay = 0
    while t < len(words) and words[t] != "?":
        if words[t].startswith("h"):
            hay, t = hay + 1, t + 1
            continue
        assert words[t].startswith("k") and words[t + 1] == ":"
        end = t + 2
        while end < len(words) and words[end].startswith("v"):
            end += 1
        needles.append((words[t], hay, t))
        values_of.setdefault(words[t], []).extend(words[t + 2 : end])
        t = end
    expected = {}
    while t < len(words):
        assert words[t] == "?"
        answer = values_of[words[t + 1]]
        for j, token in enumerate(answer):
            position = t + 1 + j
            if position < len(words):
                expected[position] = token
                if j + 1 < len(answer) and position + 1 < len(words):
                    # teacher forcing: the answer token is the next input
                    assert words[position + 1] == token
        t += 2 + len(answer)
    assert t == len(words) + 1  # the stream stops right before the last answer token
    return expected, needles


@pytest.mark.parametrize(
    "variant,needles,value_len",
    [("single", 1, 1), ("single", 1, 3), ("multi-key", 4, 2), ("multi-value", 3, 2), ("multi-query", 3, 1)],
)
def test_niah_labels_are_the_needle_values(variant, needles, value_len):
    config = NIAHConfig(
        variant=variant,
        num_needles=needles,
        value_len=value_len,
        key_vocab=16,
        value_vocab=16,
        haystack_vocab=16,
        test_lengths=(40, 77),
        depths=(0, 33, 100),
        num_test=60,
    )
    task = NIAH()
    slices = task.generate(config, "test", seed=5)
    assert [s.name for s in slices] == [f"seq_len={L},depth={d}" for L in (40, 77) for d in (0, 33, 100)]
    for piece in slices:
        seq_len, depth = (int(x) for x in re.findall(r"\d+", piece.name))
        assert piece.inputs.shape == (60, seq_len)
        for inputs, labels in zip(piece.inputs, piece.labels, strict=True):
            words = as_words(task, config, inputs)
            expected, found = solve_niah(words)
            assert scored(task, config, labels) == expected
            assert len(found) == needles
            keys = [key for key, _, _ in found]
            queries = [words[t + 1] for t, w in enumerate(words) if w == "?"]
            haystack = sum(w.startswith("h") for w in words)
            if variant == "multi-value":
                assert len(set(keys)) == 1 and queries == keys[:1]
            else:
                assert len(set(keys)) == needles
                # multi-query asks every key once; the others ask one
                assert sorted(queries) == (sorted(keys) if variant == "multi-query" else queries[:1])
                assert len(queries) == (needles if variant == "multi-query" else 1)
            # the target needle (the first queried) sits after depth% of the haystack; for multi-value one
            # of the needles with the key does
            target = round_half_up(depth * haystack / 100)
            assert any(key == queries[0] and before == target for key, before, _ in found)


def round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5 + 1e-9))


def test_niah_depth_zero_and_hundred_are_the_ends():
    config = NIAHConfig(
        key_vocab=8, value_vocab=8, haystack_vocab=8, test_lengths=(32,), depths=(0, 100), num_test=20
    )
    task = NIAH()
    first, last = task.generate(config, "test", 0)
    for row in first.inputs:
        # depth 0: `k : v` opens the inputs
        words = as_words(task, config, row)
        assert (
            words[0].startswith("k")
            and words[1] == ":"
            and words[2].startswith("v")
            and words[3].startswith("h")
        )
    for row in last.inputs:
        # depth 100: `k : v ? k` ends the inputs
        words = as_words(task, config, row)
        assert words[-4] == ":" and words[-2] == "?" and words[-5] == words[-1] and words[-6].startswith("h")


def test_niah_training_depths_spread_and_lengths_follow_train_lengths():
    config = NIAHConfig(
        key_vocab=8,
        value_vocab=8,
        haystack_vocab=8,
        train_lengths=(32, 48),
        test_lengths=(64,),
        num_train=400,
    )
    task = NIAH()
    train = task.generate(config, "train", 0)
    assert [(s.name, s.inputs.shape) for s in train] == [("seq_len=32", (200, 32)), ("seq_len=48", (200, 48))]
    colon = task.vocabulary(config).index(":")
    needle_at = [int(np.flatnonzero(row == colon)[0]) for row in train[0].inputs]
    assert min(needle_at) <= 3 and max(needle_at) >= 25  # 28 haystack tokens; uniform depth reaches both ends
    test = task.generate(config, "test", 0)
    assert {s.inputs.shape[1] for s in test} == {64} and len(test) == 5


# ---------------------------------------------------------------------------------------------- index-lookup


def solve_index_lookup(words: list[str]) -> dict[int, str]:
    data_len = next(t for t, w in enumerate(words) if w.startswith("@"))
    data = words[:data_len]
    expected, t = {}, data_len
    while t < len(words):
        if words[t] == "@":
            end = t + 1
            while end < len(words) and words[end].isdigit():
                end += 1
            position, t = int("".join(words[t + 1 : end])), end - 1
        else:
            position = int(words[t][1:])
        expected[t] = data[position]
        if t + 1 < len(words):
            assert words[t + 1] == data[position]  # teacher-forced answer
        t += 2
    return expected


@pytest.mark.parametrize("position_format", ["dedicated", "digits"])
def test_index_lookup_labels_are_the_tokens_at_the_named_positions(position_format):
    config = IndexLookupConfig(
        data_vocab=8,
        position_format=position_format,
        num_queries=3,
        train_lengths=(20,),
        test_lengths=(20, 150),
        num_test=100,
    )
    task = INDEX()
    slices = task.generate(config, "test", 1)
    assert [(s.name, s.inputs.shape) for s in slices] == [
        ("seq_len=20", (100, 20)),
        ("seq_len=150", (100, 150)),
    ]
    width = 3 if position_format == "digits" else 0  # positions up to 149 need three digits
    for piece in slices:
        seen_positions = set()
        for inputs, labels in zip(piece.inputs, piece.labels, strict=True):
            words = as_words(task, config, inputs)
            expected = solve_index_lookup(words)
            assert scored(task, config, labels) == expected and len(expected) == 3
            for t in (t for t, w in enumerate(words) if w == "@"):
                # exactly `width` digits after '@', then the answer (unless the inputs end there)
                digits = words[t + 1 : t + 2 + width]
                assert [w.isdigit() for w in digits] == [True] * width + [False] * (len(digits) - width)
            seen_positions |= {int(w[1:]) for w in words if w.startswith("@") and len(w) > 1}
        if position_format == "dedicated":
            data_len = piece.inputs.shape[1] + 1 - 3 * 2
            assert max(seen_positions) < data_len and len(seen_positions) > 10


def test_index_lookup_vocabulary_has_a_token_per_position():
    config = IndexLookupConfig(data_vocab=8, num_queries=2, train_lengths=(16,), test_lengths=(32,))
    words = INDEX().vocabulary(config)
    assert INDEX().vocab_size(config) == len(words) == len(set(words)) == 8 + 29
    assert words[-1] == "@28"


# ------------------------------------------------------------------------------------------------------ copy


def test_copy_labels_repeat_the_sequence_after_the_separator():
    config = CopyConfig(data_vocab=5, train_lengths=(8,), test_lengths=(8, 30), num_test=50)
    task = COPY()
    slices = task.generate(config, "test", 2)
    assert [(s.name, s.inputs.shape) for s in slices] == [("seq_len=8", (50, 8)), ("seq_len=30", (50, 30))]
    for piece in slices:
        for inputs, labels in zip(piece.inputs, piece.labels, strict=True):
            words = as_words(task, config, inputs)
            sep = words.index("|")
            source = words[:sep]
            assert sep == len(words) // 2 and "|" not in source
            assert words[sep + 1 :] == source[:-1]
            assert scored(task, config, labels) == {sep + j: w for j, w in enumerate(source)}


def test_copy_train_and_test_lengths_are_separate():
    config = CopyConfig(train_lengths=(16, 32), test_lengths=(64,), num_train=100, num_test=10)
    train, test = COPY().generate(config, "train", 0), COPY().generate(config, "valid", 0)
    assert [s.inputs.shape for s in train] == [(50, 16), (50, 32)]
    assert [s.inputs.shape for s in test] == [(10, 64)]


# ---------------------------------------------------------------------------------------- variable-tracking


def solve_variable_tracking(words: list[str]) -> tuple[dict[int, str], int]:
    """Expected label and the number of hops followed to reach a value."""
    assigned = {}
    for t in range(len(words) - 3):
        if words[t + 1] == "=" and words[t + 3] == ";":
            assert words[t] not in assigned  # every variable is assigned once
            rhs = words[t + 2]
            if rhs.startswith("X"):
                assert rhs in assigned  # a chain is written in order
            assigned[words[t]] = rhs
    assert words[-2] == "?"
    name, hops = words[-1], 0
    while assigned[name].startswith("X"):
        name, hops = assigned[name], hops + 1
    return {len(words) - 1: assigned[name]}, hops


def test_variable_tracking_labels_follow_the_chain():
    config = VariableTrackingConfig(
        num_chains=3,
        var_vocab=40,
        value_vocab=5,
        filler_vocab=6,
        train_lengths=(64,),
        test_lengths=(64, 100),
        train_hops=(1,),
        test_hops=(0, 2, 3),
        num_test=80,
    )
    task = TRACK()
    slices = task.generate(config, "test", 4)
    assert [s.name for s in slices] == [f"seq_len={L},hops={k}" for L in (64, 100) for k in (0, 2, 3)]
    for piece in slices:
        seq_len, hops = (int(x) for x in re.findall(r"\d+", piece.name))
        assert piece.inputs.shape == (80, seq_len)
        first_is_target = 0
        for inputs, labels in zip(piece.inputs, piece.labels, strict=True):
            words = as_words(task, config, inputs)
            expected, followed = solve_variable_tracking(words)
            assert scored(task, config, labels) == expected and followed == hops
            statements = [t for t in range(len(words) - 3) if words[t + 1] == "="]
            assert len(statements) == 3 * (hops + 1)
            values = [words[t + 2] for t in statements if words[t + 2].startswith("v")]
            assert len(values) == len(set(values)) == 3  # distinct values, one per chain
            first_is_target += words[statements[0] + 2] == expected[len(words) - 1]
        # the queried chain is not always the one written first
        assert 0 < first_is_target < 80


# ------------------------------------------------------------------------------------------------- all four

CONFIGS = [
    (
        NIAH,
        NIAHConfig(
            variant="multi-query", key_vocab=8, value_vocab=8, haystack_vocab=8, num_train=300, num_test=20
        ),
    ),
    (INDEX, IndexLookupConfig(num_train=300, num_test=20)),
    (COPY, CopyConfig(num_train=300, num_test=20)),
    (TRACK, VariableTrackingConfig(num_train=300, num_test=20)),
]


@pytest.mark.parametrize("task_class,config", CONFIGS)
def test_same_seed_same_data_and_splits_differ(task_class, config):
    task = task_class()
    assert digest(task.generate(config, "train", 0)) == digest(task.generate(config, "train", 0))
    assert digest(task.generate(config, "train", 0)) != digest(task.generate(config, "train", 1))
    assert digest(task.generate(config, "test", 0)) != digest(task.generate(config, "valid", 0))
    assert sum(len(s) for s in task.generate(config, "train", 0)) == 300


@pytest.mark.parametrize("task_class,config", CONFIGS)
def test_vocabulary_is_distinct_words_and_renders(task_class, config):
    task = task_class()
    words = task.vocabulary(config)
    assert len(words) == task.vocab_size(config) == len(set(words))
    assert all(w and " " not in w for w in words)
    for piece in task.generate(config, "test", 0):
        assert piece.inputs.min() >= 0 and piece.inputs.max() < len(words)
        assert piece.inputs.dtype == piece.labels.dtype == np.int64
        labelled = piece.labels[piece.labels != IGNORE]
        assert labelled.min() >= 0 and labelled.max() < len(words)
        text = task.render(config, piece.inputs[0])
        assert len(text.split(" ")) == piece.inputs.shape[1]


@pytest.mark.parametrize(
    "task_class,config,message",
    [
        (NIAH, NIAHConfig(variant="multi"), "unknown variant"),
        (NIAH, NIAHConfig(variant="multi-key", num_needles=1), "num_needles >= 2"),
        (NIAH, NIAHConfig(variant="multi-query", num_needles=8, key_vocab=4), "key_vocab >= 8"),
        (NIAH, NIAHConfig(value_len=3, test_lengths=(9,)), r"need seq_len >= 10"),
        (NIAH, NIAHConfig(depths=(0, 120)), "depths are percentages"),
        (NIAH, NIAHConfig(train_lengths=()), "at least one"),
        (INDEX, IndexLookupConfig(position_format="binary"), "unknown position_format"),
        (INDEX, IndexLookupConfig(num_queries=4, train_lengths=(7,)), "seq_len must be at least 8"),
        (COPY, CopyConfig(test_lengths=(64, 65)), "seq_len must be even"),
        (COPY, CopyConfig(data_vocab=1), "data_vocab must be at least 2"),
        (TRACK, VariableTrackingConfig(num_chains=4, value_vocab=3), "value_vocab >= 4"),
        (TRACK, VariableTrackingConfig(num_chains=2, test_hops=(9,), var_vocab=16), "var_vocab >= 20"),
        (
            TRACK,
            VariableTrackingConfig(num_chains=2, train_hops=(3,), test_hops=(3,), train_lengths=(33,)),
            "seq_len >= 34",
        ),
        (TRACK, VariableTrackingConfig(test_hops=(-1,)), "hops must be >= 0"),
    ],
)
def test_impossible_settings_are_rejected(task_class, config, message):
    with pytest.raises(HarnessError, match=message):
        task_class().validate(config)


@pytest.mark.parametrize(
    "task_class,config",
    [
        (NIAH, NIAHConfig(value_len=3, test_lengths=(10,), train_lengths=(10,), num_train=4, num_test=4)),
        (
            INDEX,
            IndexLookupConfig(num_queries=4, train_lengths=(8,), test_lengths=(8,), num_train=4, num_test=4),
        ),
        (
            TRACK,
            VariableTrackingConfig(
                num_chains=2,
                train_hops=(3,),
                test_hops=(3,),
                train_lengths=(34,),
                test_lengths=(34,),
                num_train=4,
                num_test=4,
            ),
        ),
    ],
)
def test_the_tightest_settings_generate(task_class, config):
    """Validation's bound is exact: the shortest accepted length fits (niah with one haystack token, the
    others with none to spare)."""
    for piece in task_class().generate(config, "train", 0):
        assert (piece.labels != IGNORE).any()
