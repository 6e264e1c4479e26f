"""Palindrome, stack and multi-hop pointer chasing: the Kimi Linear report's synthetic tests, plus pointer chasing.

Palindrome and Stack follow the Kimi Linear technical report (Kimi Team 2025, synthetic tests; docs/reference.md §3),
which trains 2-layer models at total lengths 256/512/1024/2048 and states neither vocabulary nor push rate; those
are config fields here. Multi-hop is pointer chasing (k-hop lookups through a function table), as in RULER's
variable tracking. Every task is scored by token accuracy over its labelled positions; '.' below = not scored.

**palindrome** — n random symbols, the separator `|`, then the symbols reversed, teacher-forced (each reversed
symbol is also the next input). Total length 2n; every reversed symbol is scored. Symbols repeat freely.

    inputs  s3 s1 s7 |  s7 s1
    labels  .  .  .  s7 s1 s3

**stack** — `num_stacks` independent stacks, operations of three tokens `<push> id elem` and `<pop> id elem`. At
a pop the model must predict the popped element: the label sits on the `id` token and the element follows in the
inputs (teacher-forced). Each operation picks a stack uniformly; it is a push with probability `push_prob`, and
always a push when that stack is empty, so no stack is popped empty and the actual push rate is a little above
`push_prob`. Pushed elements are uniform over `num_elements`. A length that is not a multiple of 3 starts with
1 or 2 pad tokens `_`. Example with 2 stacks:

    inputs  <push> s0 e3 <push> s1 e0 <push> s0 e1 <pop> s0 e1 <pop> s0 e3
    labels  .      .  .  .      .  .  .      .  .  .     e1 .  .     e3 .

**multi-hop** — a function table over N nodes written as `a -> b` triples in shuffled order, then
`num_queries` queries `? start hop ... hop =` with k tokens after `start` (k-1 `hop` and a final `=`); the model
must output the node reached after k hops at `=`. The table is a uniformly random single cycle through the
example's N nodes (drawn from `num_nodes` node tokens), so k < N hops visit k+1 distinct nodes: an answer after
any other number of hops below N is wrong, and every node is a source and a target exactly once (no degree cues).
Intermediate nodes are NOT teacher-forced: fed back as inputs they would turn k hops into k one-hop lookups.
With `label_every_hop` the j-th token after `start` is labelled with the node after j hops (the inputs stay
`hop`), so the model must still carry the chase itself. N = (seq_len - queries·(k+2)) // 3; the remainder is
leading pad `_`. Example, N = 3, k = 2, one query:

    inputs  n4 -> n9 n2 -> n4 n9 -> n2 ?  n4 hop =
    labels  .  .  .  .  .  .  .  .  .  .  .  .   n2          (with label_every_hop: hop → n9, = → n2)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from harness.errors import HarnessError
from harness.registry import TASKS

from .base import IGNORE, Slice, Task, TaskConfig, plan_examples, require_settings, split_seed

# ---------------------------------------------------------------------------------------------------- palindrome


@dataclass(frozen=True, kw_only=True)
class PalindromeConfig(TaskConfig):
    vocab_size: int = 64
    """Token vocabulary: 0 is the separator `|`, symbols are drawn from [1, vocab_size)."""
    train_lengths: tuple[int, ...] = (128, 256)
    """Total sequence lengths (even: n symbols, separator, n-1 reversed inputs) of the training mixture."""
    test_lengths: tuple[int, ...] = (128, 256)
    """Total sequence length of each test slice (the report uses 256, 512, 1024, 2048)."""


@TASKS.register("palindrome")
class Palindrome(Task):
    """Reverse a random sequence after a separator (Kimi report)."""

    Config = PalindromeConfig
    version = "1"

    def validate(self, config: PalindromeConfig) -> None:
        require_settings("palindrome", config, "train_lengths", "test_lengths")
        for seq_len in {*config.train_lengths, *config.test_lengths}:
            if seq_len < 2 or seq_len % 2:
                raise HarnessError(
                    f"palindrome: seq_len must be even and >= 2 (n symbols, separator, n-1 reversed), got {seq_len}"
                )
        if config.vocab_size < 3:
            raise HarnessError(
                f"palindrome: vocab_size must be >= 3 (separator and at least 2 symbols), got {config.vocab_size}"
            )

    def vocab_size(self, config: PalindromeConfig) -> int:
        return config.vocab_size

    def vocabulary(self, config: PalindromeConfig) -> list[str]:
        return ["|"] + [f"s{i}" for i in range(1, config.vocab_size)]

    def generate(self, config: PalindromeConfig, split: str, seed: int) -> list[Slice]:
        self.validate(config)
        rng = np.random.default_rng(split_seed(seed, split))
        plan = plan_examples(
            split, config.train_lengths, config.test_lengths, config.num_train, config.num_test
        )
        slices = []
        for seq_len, n in plan:
            half = seq_len // 2
            symbols = rng.integers(1, config.vocab_size, size=(n, half))  # (n, half)
            reverse = symbols[:, ::-1]
            separator = np.zeros((n, 1), dtype=np.int64)
            inputs = np.concatenate([symbols, separator, reverse[:, : half - 1]], axis=1)
            labels = np.concatenate([np.full((n, half), IGNORE, dtype=np.int64), reverse], axis=1)
            slices.append(Slice(f"seq_len={seq_len}", inputs, labels))
        return slices


# --------------------------------------------------------------------------------------------------------- stack

STACK_PAD, PUSH, POP = 0, 1, 2


@dataclass(frozen=True, kw_only=True)
class StackConfig(TaskConfig):
    num_stacks: int = 64
    """Independent stacks (the report uses 64); stack ids are tokens s0 .. s{num_stacks-1}."""
    num_elements: int = 64
    """Distinct elements that can be pushed (tokens e0 ..); chance accuracy is 1/num_elements."""
    push_prob: float = 0.5
    """Probability that an operation on a non-empty stack is a push (on an empty stack it always is)."""
    train_lengths: tuple[int, ...] = (128, 256)
    """Total sequence lengths of the training mixture (3 tokens per operation, leading pad for the remainder)."""
    test_lengths: tuple[int, ...] = (128, 256)
    """Total sequence length of each test slice (the report uses 256, 512, 1024, 2048)."""


@TASKS.register("stack")
class Stack(Task):
    """64 independent stacks: predict the element each pop returns (Kimi report)."""

    Config = StackConfig
    version = "1"

    def validate(self, config: StackConfig) -> None:
        require_settings("stack", config, "train_lengths", "test_lengths")
        for seq_len in {*config.train_lengths, *config.test_lengths}:
            if seq_len < 6:
                raise HarnessError(
                    f"stack: seq_len must be >= 6 (a push and a pop of 3 tokens each), got {seq_len}"
                )
        if config.num_stacks < 1 or config.num_elements < 2:
            raise HarnessError(
                f"stack: need num_stacks >= 1 and num_elements >= 2, got {config.num_stacks} and "
                f"{config.num_elements}"
            )
        if not 0.0 < config.push_prob < 1.0:
            raise HarnessError(f"stack: push_prob must be in (0, 1), got {config.push_prob}")

    def vocab_size(self, config: StackConfig) -> int:
        return 3 + config.num_stacks + config.num_elements

    def vocabulary(self, config: StackConfig) -> list[str]:
        return (
            ["_", "<push>", "<pop>"]
            + [f"s{i}" for i in range(config.num_stacks)]
            + [f"e{i}" for i in range(config.num_elements)]
        )

    def chance_accuracy(self, config: StackConfig, slice_name: str) -> float:
        # pushed elements are uniform, so a popped element is uniform too
        return 1.0 / config.num_elements

    def generate(self, config: StackConfig, split: str, seed: int) -> list[Slice]:
        self.validate(config)
        rng = np.random.default_rng(split_seed(seed, split))
        plan = plan_examples(
            split, config.train_lengths, config.test_lengths, config.num_train, config.num_test
        )
        slices = []
        for seq_len, n in plan:
            inputs, labels = stack_examples(rng, n, seq_len, config)
            slices.append(Slice(f"seq_len={seq_len}", inputs, labels))
        return slices


def stack_examples(
    rng: np.random.Generator, n: int, seq_len: int, config: StackConfig
) -> tuple[np.ndarray, np.ndarray]:
    """n examples of seq_len tokens; the stacks are linked lists through the operations, simulated for all rows."""
    ops = seq_len // 3
    stack_ids = rng.integers(0, config.num_stacks, size=(n, ops))  # (n, ops)
    coin = rng.random((n, ops)) < config.push_prob  # (n, ops)
    pushed = rng.integers(0, config.num_elements, size=(n, ops))  # (n, ops) element if op t is a push
    rows = np.arange(n)
    # top[b, s]: the operation that pushed stack s's top element (-1: empty); below[b, t]: the top before push t
    top = np.full((n, config.num_stacks), -1, dtype=np.int64)
    below = np.full((n, ops), -1, dtype=np.int64)
    is_push = np.empty((n, ops), dtype=bool)
    element = np.empty((n, ops), dtype=np.int64)
    for t in range(ops):
        sid = stack_ids[:, t]
        current = top[rows, sid]  # (n,)
        push = coin[:, t] | (current < 0)
        popped = pushed[rows, np.maximum(current, 0)]
        below[:, t] = current
        top[rows, sid] = np.where(push, t, below[rows, np.maximum(current, 0)])
        is_push[:, t] = push
        element[:, t] = np.where(push, pushed[:, t], popped)

    first_stack, first_element = 3, 3 + config.num_stacks
    body = np.stack([np.where(is_push, PUSH, POP), first_stack + stack_ids, first_element + element], axis=2)
    body_labels = np.full((n, ops, 3), IGNORE, dtype=np.int64)
    body_labels[:, :, 1] = np.where(is_push, IGNORE, first_element + element)
    pad = seq_len - 3 * ops
    inputs = np.concatenate([np.full((n, pad), STACK_PAD, dtype=np.int64), body.reshape(n, 3 * ops)], axis=1)
    labels = np.concatenate(
        [np.full((n, pad), IGNORE, dtype=np.int64), body_labels.reshape(n, 3 * ops)], axis=1
    )
    return inputs, labels


# ----------------------------------------------------------------------------------------------------- multi-hop

HOP_PAD, ARROW, QUERY, HOP, ANSWER = 0, 1, 2, 3, 4
FIRST_NODE = 5


@dataclass(frozen=True, kw_only=True)
class MultiHopConfig(TaskConfig):
    num_nodes: int = 256
    """Node tokens n0 .. n{num_nodes-1}; each example's table uses N distinct ones (N set by seq_len and hops)."""
    train_settings: tuple[tuple[int, int], ...] = ((128, 1), (128, 2), (128, 4))
    """(seq_len, hops) of the training mixture; examples split evenly between them."""
    test_settings: tuple[tuple[int, int], ...] = ((128, 1), (128, 2), (128, 4))
    """(seq_len, hops) of each test slice."""
    num_queries: int = 4
    """Queries per example, each from a different start node."""
    label_every_hop: bool = False
    """Also score the node after each intermediate hop (at the `hop` tokens; not teacher-forced)."""


@TASKS.register("multi-hop")
class MultiHop(Task):
    """Pointer chasing: the node reached after k hops through a shuffled table."""

    Config = MultiHopConfig
    version = "1"

    def validate(self, config: MultiHopConfig) -> None:
        require_settings("multi-hop", config, "train_settings", "test_settings")
        if config.num_queries < 1:
            raise HarnessError(f"multi-hop: num_queries must be >= 1, got {config.num_queries}")
        for seq_len, hops in {*config.train_settings, *config.test_settings}:
            if hops < 1:
                raise HarnessError(f"multi-hop: hops must be >= 1, got {hops}")
            nodes = table_size(seq_len, hops, config.num_queries)
            least = max(hops + 1, config.num_queries)
            if nodes < least:
                need = 3 * least + config.num_queries * (hops + 2)
                raise HarnessError(
                    f"multi-hop: seq_len={seq_len} leaves a table of {max(nodes, 0)} nodes; {hops} hops and "
                    f"{config.num_queries} queries need {least}, so seq_len >= {need}"
                )
            if nodes > config.num_nodes:
                raise HarnessError(
                    f"multi-hop: seq_len={seq_len}, hops={hops} makes a table of {nodes} distinct nodes; "
                    f"raise num_nodes (now {config.num_nodes}) to at least {nodes}"
                )

    def vocab_size(self, config: MultiHopConfig) -> int:
        return FIRST_NODE + config.num_nodes

    def vocabulary(self, config: MultiHopConfig) -> list[str]:
        return ["_", "->", "?", "hop", "="] + [f"n{i}" for i in range(config.num_nodes)]

    def chance_accuracy(self, config: MultiHopConfig, slice_name: str) -> float:
        # every answer is one of the table's nodes other than the start, uniformly
        settings = dict(re.findall(r"(\w+)=(\d+)", slice_name))
        return 1.0 / (table_size(int(settings["seq_len"]), int(settings["hops"]), config.num_queries) - 1)

    def generate(self, config: MultiHopConfig, split: str, seed: int) -> list[Slice]:
        self.validate(config)
        rng = np.random.default_rng(split_seed(seed, split))
        plan = plan_examples(
            split, config.train_settings, config.test_settings, config.num_train, config.num_test
        )
        slices = []
        for (seq_len, hops), n in plan:
            inputs, labels = multi_hop_examples(rng, n, seq_len, hops, config)
            slices.append(Slice(f"seq_len={seq_len},hops={hops}", inputs, labels))
        return slices


def table_size(seq_len: int, hops: int, queries: int) -> int:
    """Nodes N in the table: 3 tokens per `a -> b`, what the queries leave."""
    return (seq_len - queries * (hops + 2)) // 3


def multi_hop_examples(
    rng: np.random.Generator, n: int, seq_len: int, hops: int, config: MultiHopConfig
) -> tuple[np.ndarray, np.ndarray]:
    q = config.num_queries
    nodes = table_size(seq_len, hops, q)
    # cycle[b, i] -> cycle[b, i+1 mod N]: a uniformly random single cycle through N distinct random node tokens
    cycle = FIRST_NODE + shuffled_rows(rng, n, config.num_nodes)[:, :nodes]  # (n, N)
    order = shuffled_rows(rng, n, nodes)  # (n, N) listing order of the table
    table = np.empty((n, nodes, 3), dtype=np.int64)
    table[:, :, 0] = np.take_along_axis(cycle, order, axis=1)
    table[:, :, 1] = ARROW
    table[:, :, 2] = np.take_along_axis(cycle, (order + 1) % nodes, axis=1)

    # q distinct positions on the cycle, in random order
    starts = np.argpartition(rng.random((n, nodes)), q - 1, axis=1)[:, :q]  # (n, q)
    reached = (starts[:, :, None] + np.arange(1, hops + 1)) % nodes  # (n, q, hops)
    answers = np.take_along_axis(cycle, reached.reshape(n, q * hops), axis=1).reshape(n, q, hops)
    queries = np.empty((n, q, hops + 2), dtype=np.int64)
    queries[:, :, 0] = QUERY
    queries[:, :, 1] = np.take_along_axis(cycle, starts, axis=1)
    queries[:, :, 2:] = HOP
    queries[:, :, -1] = ANSWER
    query_labels = np.full((n, q, hops + 2), IGNORE, dtype=np.int64)
    if config.label_every_hop:
        query_labels[:, :, 2:] = answers
    else:
        query_labels[:, :, -1] = answers[:, :, -1]

    pad = seq_len - 3 * nodes - q * (hops + 2)
    inputs = np.concatenate(
        [np.full((n, pad), HOP_PAD, dtype=np.int64), table.reshape(n, -1), queries.reshape(n, -1)], axis=1
    )
    labels = np.concatenate(
        [np.full((n, pad + 3 * nodes), IGNORE, dtype=np.int64), query_labels.reshape(n, -1)], axis=1
    )
    return inputs, labels


def shuffled_rows(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """(n, size): an independent uniformly random permutation of 0 .. size-1 in each row."""
    return rng.permuted(np.tile(np.arange(size), (n, 1)), axis=1)
