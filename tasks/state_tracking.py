"""State tracking: parity, modular arithmetic and permutation composition, tested on longer sequences than trained.

Sources: Grazzi et al. 2025, "Unlocking state-tracking in linear RNNs through negative eigenvalues" (parity and
modular arithmetic, after Deletang et al. 2023; train lengths 3-40, test 40-256) and Merrill et al. 2024, "The
illusion of state in state-space models" (the word problem of S5, A5 and Z60, labelled at every position).
Results are reported as scaled accuracy (acc - chance) / (1 - chance), so every task defines `chance_accuracy`.

Every task makes one slice per sequence length, named 'seq_len=L'. The 'train' split spreads `num_train`
examples evenly over `train_lengths` (default every length 3..40); 'valid' and 'test' hold `num_test` examples at
each of `test_lengths` (default 40, 64, 128, 256: the test range 40-256 in a few fixed lengths, 40 being the longest
trained length as an in-distribution reference). Tagging tasks score every position of a test sequence, the
short prefixes included, as the sources do.

parity: bits 0/1; with `tagging` (default) the label at every position is the parity of the bits so far,
otherwise the bits end in '=' and only that position is scored with the parity of all bits. The vocabulary is
always 3 words ('0', '1', '='; docs/reference.md §3: vocab 3), so both modes share one embedding table. Labels reuse
the ids of '0' and '1'.

    inputs  1 0 1 1 0 0 1        (tagging)      inputs  1 0 1 1 =     (tagging=False)
    labels  1 1 0 1 1 1 0                       labels  . . . . 1

modular-arithmetic: an expression over the digits 0..m-1 (m = `modulus`, 5) with + - * (usual precedence: * before
+ and -, left to right) and, when `brackets`, round brackets; then '=', where the model must output the value mod m.
Only '=' is scored (so sequence accuracy equals accuracy). Whatever the brackets, an expression has odd length
(d digits, d - 1 operators, two tokens per bracket pair), so a sequence of odd seq_len starts with one pad '_'.
Expressions of the exact length are drawn token by token from the grammar, never choosing a token that could not
be completed in the tokens left: an operand slot opens a bracket with probability `bracket_probability` (when at
least 3 tokens remain beyond those needed to close), else holds a uniform digit; an operator slot closes an open
bracket with probability `bracket_probability` (always, when only the closing brackets fit), else holds a uniform
operator. (Deletang et al. split lengths recursively instead and allow unary minus; the grammar here is simpler.)
The vocabulary is the same with or without brackets: digits, '+', '-', '*', '(', ')', '=', '_'.

    inputs  _ 3 + 4 * ( 2 - 4 ) =       (m = 5, seq_len 11: 3 + 4 * (2 - 4) = -5 = 0 mod 5)
    labels  . . . . . . . . . . 0

permutation: the word problem of a group G (`group`: S5, A5 or Z60): every token is a uniformly drawn element of
G and the label at position t is the running product p_t. Permutations of {0..4} compose left to right: p_0 = g_0,
p_t(i) = g_t(p_{t-1}(i)), i.e. p_t = g_t ∘ ... ∘ g_0 (apply g_0 first). Element ids follow the lexicographic
order of the one-line notation (g(0) g(1) ... g(4)) among the group's permutations, so the identity is id 0; the
word of an element is that notation after 'p' (e.g. 'p10234' swaps 0 and 1). Z60 is the integers mod 60 under
addition, words 'z0'..'z59'. Token accuracy and whole-sequence accuracy are both reported by the harness.

    inputs  p10234 p02134 p10234        (S5)
    labels  p10234 p20134 p21034
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from harness.errors import HarnessError
from harness.registry import TASKS

from .base import IGNORE, Slice, Task, TaskConfig, plan_examples, require_settings, split_seed

TRAIN_LENGTHS = tuple(range(3, 41))
TEST_LENGTHS = (40, 64, 128, 256)


@dataclass(frozen=True, kw_only=True)
class ParityConfig(TaskConfig):
    train_lengths: tuple[int, ...] = TRAIN_LENGTHS
    """Sequence lengths of the training mixture (one slice each); examples split evenly between them."""
    test_lengths: tuple[int, ...] = TEST_LENGTHS
    """Sequence length of each test (and validation) slice."""
    tagging: bool = True
    """Label the parity of the prefix at every position; False: bits then '=', only '=' scored."""


@dataclass(frozen=True, kw_only=True)
class ModularArithmeticConfig(TaskConfig):
    train_lengths: tuple[int, ...] = TRAIN_LENGTHS
    """Sequence lengths (expression, '=' and any pad) of the training mixture; examples split evenly."""
    test_lengths: tuple[int, ...] = TEST_LENGTHS
    """Sequence length of each test (and validation) slice."""
    modulus: int = 5
    """Digits are 0..modulus-1 and the answer is the value mod modulus."""
    brackets: bool = False
    """Allow round brackets in the expressions."""
    bracket_probability: float = 0.25
    """With brackets: chance that an operand slot opens a bracket and that an operator slot closes an open one."""


@dataclass(frozen=True, kw_only=True)
class PermutationConfig(TaskConfig):
    train_lengths: tuple[int, ...] = TRAIN_LENGTHS
    """Sequence lengths of the training mixture (one slice each); examples split evenly between them."""
    test_lengths: tuple[int, ...] = TEST_LENGTHS
    """Sequence length of each test (and validation) slice."""
    group: str = "S5"
    """The group whose elements are composed: S5 (120 elements), A5 (60, the even permutations) or Z60."""


def validate_lengths(task: str, config, shortest: int, why: str) -> None:
    """The checks every state-tracking config shares: lengths and example counts."""
    require_settings(task, config, "train_lengths", "test_lengths", "length")
    too_short = [n for n in (*config.train_lengths, *config.test_lengths) if n < shortest]
    if too_short:
        raise HarnessError(f"{task}: seq_len must be >= {shortest} ({why}), got {min(too_short)}")


@TASKS.register("parity")
class Parity(Task):
    """Running parity of a bit string, at lengths beyond training."""

    Config = ParityConfig
    version = "1"

    def validate(self, config: ParityConfig) -> None:
        if config.tagging:
            validate_lengths("parity", config, 1, "at least one bit")
        else:
            validate_lengths("parity", config, 2, "at least one bit and '='")

    def vocab_size(self, config: ParityConfig) -> int:
        return 3

    def vocabulary(self, config: ParityConfig) -> list[str]:
        return ["0", "1", "="]

    def chance_accuracy(self, config: ParityConfig, slice_name: str) -> float:
        return 0.5

    def generate(self, config: ParityConfig, split: str, seed: int) -> list[Slice]:
        self.validate(config)
        rng = np.random.default_rng(split_seed(seed, split))
        slices = []
        for seq_len, n in plan_examples(
            split, config.train_lengths, config.test_lengths, config.num_train, config.num_test
        ):
            if config.tagging:
                inputs = rng.integers(0, 2, size=(n, seq_len))
                labels = np.cumsum(inputs, axis=1) % 2
            else:
                bits = rng.integers(0, 2, size=(n, seq_len - 1))
                inputs = np.concatenate([bits, np.full((n, 1), 2)], axis=1)
                labels = np.full((n, seq_len), IGNORE)
                labels[:, -1] = bits.sum(axis=1) % 2
            slices.append(Slice(f"seq_len={seq_len}", inputs.astype(np.int64), labels.astype(np.int64)))
        return slices


# Modular arithmetic tokens after the digits 0..m-1, as offsets from m.
PLUS, MINUS, TIMES, OPEN, CLOSE, EQUALS, PAD = range(7)
SYMBOLS = ["+", "-", "*", "(", ")", "=", "_"]


@TASKS.register("modular-arithmetic")
class ModularArithmetic(Task):
    """Value mod 5 of an expression with + - * (and brackets), at lengths beyond training."""

    Config = ModularArithmeticConfig
    version = "1"

    def validate(self, config: ModularArithmeticConfig) -> None:
        if config.modulus < 2:
            raise HarnessError(f"modular-arithmetic: modulus must be >= 2, got {config.modulus}")
        if not 0.0 <= config.bracket_probability <= 1.0:
            raise HarnessError(
                f"modular-arithmetic: bracket_probability must be in [0, 1], got {config.bracket_probability}"
            )
        validate_lengths("modular-arithmetic", config, 2, "at least one digit and '='")

    def vocab_size(self, config: ModularArithmeticConfig) -> int:
        return config.modulus + len(SYMBOLS)

    def vocabulary(self, config: ModularArithmeticConfig) -> list[str]:
        return [str(digit) for digit in range(config.modulus)] + SYMBOLS

    def chance_accuracy(self, config: ModularArithmeticConfig, slice_name: str) -> float:
        return 1.0 / config.modulus

    def generate(self, config: ModularArithmeticConfig, split: str, seed: int) -> list[Slice]:
        self.validate(config)
        rng = np.random.default_rng(split_seed(seed, split))
        m = config.modulus
        p_bracket = config.bracket_probability if config.brackets else 0.0
        slices = []
        for seq_len, n in plan_examples(
            split, config.train_lengths, config.test_lengths, config.num_train, config.num_test
        ):
            # an expression has odd length: one pad in front when seq_len - 1 is even
            pad = 1 - (seq_len - 1) % 2
            expressions = random_expressions(rng, n, seq_len - 1 - pad, m, p_bracket)
            inputs = np.concatenate(
                [np.full((n, pad), m + PAD), expressions, np.full((n, 1), m + EQUALS)], axis=1
            ).astype(np.int64)
            labels = np.full((n, seq_len), IGNORE, dtype=np.int64)
            labels[:, -1] = evaluate_expressions(expressions, m)
            slices.append(Slice(f"seq_len={seq_len}", inputs, labels))
        return slices


def random_expressions(
    rng: np.random.Generator, n: int, length: int, modulus: int, p_bracket: float
) -> np.ndarray:
    """(n, length) token ids of grammatical expressions (length odd), drawn left to right.

    With d brackets open and r tokens left (this one included), an operand slot can always be completed when
    r - d is odd, and an operator slot when r - d is even: the sampler keeps these parities and opens a bracket
    only when r >= d + 3 (the bracket, one digit, d + 1 closes), closing when r == d.
    """
    m = modulus
    out = np.empty((n, length), dtype=np.int64)
    depth = np.zeros(n, dtype=np.int64)
    want_operand = np.ones(n, dtype=bool)
    for position in range(length):
        left = length - position
        draw = rng.random(n)
        opens = want_operand & (left >= depth + 3) & (draw < p_bracket)
        closes = ~want_operand & (depth > 0) & ((left == depth) | (draw < p_bracket))
        digits = want_operand & ~opens
        operators = ~want_operand & ~closes
        token = np.where(digits, rng.integers(0, m, size=n), m + rng.integers(PLUS, TIMES + 1, size=n))
        token[opens], token[closes] = m + OPEN, m + CLOSE
        out[:, position] = token
        depth += opens.astype(np.int64) - closes
        want_operand = opens | operators
    return out


def evaluate_expressions(expressions: np.ndarray, modulus: int) -> np.ndarray:
    """(n,) values mod `modulus` of the expressions (n, length), by one stack machine per row.

    Per bracket depth: `total` of the finished additive terms, `product` of the current term and its `sign`.
    """
    m = modulus
    n, length = expressions.shape
    rows = np.arange(n)
    total = np.zeros((n, length // 2 + 2), dtype=np.int64)  # (n, depths)
    product = np.ones_like(total)
    sign = np.ones_like(total)
    depth = np.zeros(n, dtype=np.int64)
    for position in range(length):
        token = expressions[:, position]
        digit = token < m
        product[rows, depth] = np.where(digit, product[rows, depth] * token % m, product[rows, depth])
        additive = (token == m + PLUS) | (token == m + MINUS)
        total[rows, depth] = np.where(
            additive, (total[rows, depth] + sign[rows, depth] * product[rows, depth]) % m, total[rows, depth]
        )
        product[rows[additive], depth[additive]] = 1
        sign[rows[additive], depth[additive]] = np.where(token[additive] == m + MINUS, m - 1, 1)
        opens = token == m + OPEN
        depth += opens
        total[rows[opens], depth[opens]] = 0
        product[rows[opens], depth[opens]] = 1
        sign[rows[opens], depth[opens]] = 1
        closes = token == m + CLOSE
        inner = (total[rows, depth] + sign[rows, depth] * product[rows, depth]) % m
        depth -= closes
        product[rows[closes], depth[closes]] = product[rows[closes], depth[closes]] * inner[closes] % m
    return (total[rows, 0] + sign[rows, 0] * product[rows, 0]) % m


GROUPS = ("S5", "A5", "Z60")


def group_elements(group: str) -> tuple[list[str], np.ndarray]:
    """The words of the group's elements (in id order) and its table: table[a, b] = id of b ∘ a (a first)."""
    if group == "Z60":
        elements = np.arange(60)
        return [f"z{i}" for i in range(60)], (elements[:, None] + elements[None, :]) % 60
    perms = np.array(list(itertools.permutations(range(5))))  # (120, 5), lexicographic
    if group == "A5":
        inversions = (perms[:, :, None] > perms[:, None, :]) & np.triu(np.ones((5, 5), dtype=bool), 1)
        perms = perms[inversions.sum(axis=(1, 2)) % 2 == 0]
    code = perms @ 5 ** np.arange(5)  # (G,) a distinct integer per permutation
    id_of_code = np.full(5**5, -1)
    id_of_code[code] = np.arange(len(perms))
    # (b ∘ a)(i) = b(a(i)) for every pair: composed[a, b, i] = perms[b, perms[a, i]]
    composed = perms[np.arange(len(perms))[None, :, None], perms[:, None, :]]  # (G, G, 5)
    table = id_of_code[composed @ 5 ** np.arange(5)]
    return ["p" + "".join(map(str, p)) for p in perms.tolist()], table


@TASKS.register("permutation")
class Permutation(Task):
    """Running product of S5 / A5 elements at every position (state tracking)."""

    Config = PermutationConfig
    version = "1"

    def validate(self, config: PermutationConfig) -> None:
        if config.group not in GROUPS:
            raise HarnessError(
                f"permutation: unknown group '{config.group}'; choose one of {', '.join(GROUPS)}"
            )
        validate_lengths("permutation", config, 1, "at least one element")

    def vocab_size(self, config: PermutationConfig) -> int:
        return len(self.vocabulary(config))

    def vocabulary(self, config: PermutationConfig) -> list[str]:
        return group_elements(config.group)[0]

    def chance_accuracy(self, config: PermutationConfig, slice_name: str) -> float:
        return 1.0 / self.vocab_size(config)

    def generate(self, config: PermutationConfig, split: str, seed: int) -> list[Slice]:
        self.validate(config)
        rng = np.random.default_rng(split_seed(seed, split))
        _, table = group_elements(config.group)
        slices = []
        for seq_len, n in plan_examples(
            split, config.train_lengths, config.test_lengths, config.num_train, config.num_test
        ):
            inputs = rng.integers(0, len(table), size=(n, seq_len), dtype=np.int64)
            labels = np.empty_like(inputs)
            labels[:, 0] = inputs[:, 0]
            for t in range(1, seq_len):
                labels[:, t] = table[labels[:, t - 1], inputs[:, t]]
            slices.append(Slice(f"seq_len={seq_len}", inputs, labels))
        return slices
