"""Long-context localisation: does a mixer find and use positions (no positional encodings in MLA)?

Four tasks after RULER (Hsieh et al. 2024, "RULER: What's the Real Context Size of Your Long-Context Language
Models?") and the needle-in-a-haystack test (Kamradt 2023), with random tokens in place of natural text. Every
sequence is a token stream of seq_len + 1 tokens; inputs are its first seq_len tokens and labels[t] is
stream[t + 1] where that token is part of an answer (IGNORE elsewhere). Multi-token answers are therefore
teacher-forced: each answer token is also the next input, and the last answer token is never an input. Slices
name seq_len as the length of `inputs`.

`niah` — needles `k : v1 … vm` (key k, m value tokens, vocabularies of their own) in a haystack of random
tokens from a separate vocabulary; the stream ends with queries `? k` answered by the key's value tokens. Test
slices place the target needle (the queried one; the first queried in multi-query) after depth% of the
haystack tokens (rounded half up), so results draw as a depth × length heatmap; training draws the depth
uniformly. Variants (RULER's):
  single       one needle, one query.
  multi-key    the target plus num_needles - 1 distractor needles with other keys; only the target is queried.
  multi-value  num_needles needles with the same key, each with its own random value; the answer is every
               value, in the order the needles appear (RULER accepts any order; teacher forcing needs one).
  multi-query  num_needles needles with distinct keys, all queried, the target first and the rest in random
               order.
Needles other than the target sit at uniformly random points, so depth is exact for single and multi-key and
fixes only one needle of multi-value and multi-query. RULER draws every needle's depth at random; fixing the
target's is the Kamradt heatmap.

    single, seq_len 12, m = 2 ('.' = not scored):
    inputs  h7 k1 :  v7 v2 h6 h4 h5 h4 ?  k1 v7
    labels  .  .  .  .  .  .  .  .  .  .  v7 v2

    multi-query, seq_len 20, 2 needles, m = 1, depth 50 (k1, the target, follows 4 of 9 haystack tokens):
    inputs  h2 h4 h5 h4 k2 :  v2 k1 :  v7 h1 h6 h0 h1 h5 ?  k1 v7 ?  k2
    labels  .  .  .  .  .  .  .  .  .  .  .  .  .  .  .  .  v7 .  .  v2

`index-lookup` — random tokens x0 … x(n-1), then queries: the model must output x_i. A direct probe of
position: nothing but the token's place identifies it. Queries are written with position tokens (`@i`, one per
position; position_format 'dedicated'; positions beyond the longest training sequence keep untrained
embeddings) or with '@' followed by base-10 digit tokens, zero-padded to the width the longest seq_len needs
('digits'). Each of num_queries queries is followed by its answer (teacher-forced), so the sequence holds
n = seq_len + 1 - num_queries * (tokens of a query and its answer) tokens.

    dedicated, seq_len 9, 2 queries:
    inputs  t7 t5 t7 t0 t0 t2 @4 t0 @1
    labels  .  .  .  .  .  .  t0 .  t5

    digits, seq_len 16, 2 queries (two digits: positions reach 15):
    inputs  t7 t5 t7 t0 t0 t2 t4 t6 t7 @  0  8  t7 @  0  0
    labels  .  .  .  .  .  .  .  .  .  .  .  t7 .  .  .  t7

`copy` — n = seq_len / 2 random tokens (repeats allowed), a separator, then the same tokens again,
teacher-forced (Jelassi et al. 2024, "Repeat After Me"). Train and test lengths are separate to measure length
generalisation.

    seq_len 8:
    inputs  t3 t2 t3 t0 |  t3 t2 t3
    labels  .  .  .  .  t3 t2 t3 t0

`variable-tracking` — num_chains chains of assignments `X = Y ;`: the first of a chain gives a variable a
value (`X4 = v2 ;`), each of the `hops` after it copies the previous variable (`X9 = X4 ;`). Statements of
different chains interleave at random, keeping each chain's order, with random filler tokens in random gaps
between them. The stream ends `? X` naming the last variable of one chain, answered by that chain's value.
Chains have distinct variables and distinct values. RULER's variable tracking asks the reverse (all variables
holding a value); the forward query keeps one answer token and the same number of hops to follow.

    hops 1, 2 chains, seq_len 20:
    inputs  X1 =  v3 ;  X2 =  X1 ;  n2 n3 X8 =  v2 ;  X9 =  X8 ;  ?  X2
    labels  .  .  .  .  .  .  .  .  .  .  .  .  .  .  .  .  .  .  .  v3
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.errors import HarnessError
from harness.registry import TASKS

from .base import IGNORE, Slice, Task, TaskConfig, plan_examples, require_settings, split_seed
from .mqar import distinct_integers

# niah ------------------------------------------------------------------------------------------------------

NIAH_VARIANTS = ("single", "multi-key", "multi-value", "multi-query")


@dataclass(frozen=True, kw_only=True)
class NIAHConfig(TaskConfig):
    variant: str = "single"
    """One of single, multi-key, multi-value, multi-query (see the module docstring)."""
    num_needles: int = 4
    """Needles of the multi-* variants (multi-value: values of the one key); single always has one."""
    value_len: int = 1
    """Tokens per value."""
    key_vocab: int = 256
    """Key tokens."""
    value_vocab: int = 256
    """Value tokens."""
    haystack_vocab: int = 256
    """Haystack tokens, a vocabulary of their own."""
    train_lengths: tuple[int, ...] = (128, 256)
    """seq_len of the training mixture (needle depth uniform); examples split evenly between them."""
    test_lengths: tuple[int, ...] = (128, 256, 512, 1024)
    """seq_len of the test slices."""
    depths: tuple[int, ...] = (0, 25, 50, 75, 100)
    """Test depths: percent of the haystack tokens that precede the target needle."""
    num_test: int = 200
    """Test (and validation) examples per (seq_len, depth) slice."""


@TASKS.register("niah")
class NIAH(Task):
    """Needle in a haystack at depth d% of length L: single, multi-key, multi-value, multi-query."""

    Config = NIAHConfig
    version = "1"

    def setting_name(self, config: NIAHConfig) -> str:
        return f"variant={config.variant}"

    def validate(self, config: NIAHConfig) -> None:
        if config.variant not in NIAH_VARIANTS:
            raise HarnessError(
                f"niah: unknown variant '{config.variant}'; expected one of {', '.join(NIAH_VARIANTS)}"
            )
        if config.variant != "single" and config.num_needles < 2:
            raise HarnessError(
                f"niah: variant {config.variant} needs num_needles >= 2, got {config.num_needles}"
            )
        if config.value_len < 1 or min(config.key_vocab, config.value_vocab, config.haystack_vocab) < 1:
            raise HarnessError(
                "niah: value_len, key_vocab, value_vocab and haystack_vocab must be at least 1"
            )
        needles, keys, query_len = _niah_shape(config)
        if keys > config.key_vocab:
            raise HarnessError(f"niah: {keys} distinct keys need key_vocab >= {keys}, got {config.key_vocab}")
        require_settings("niah", config, "train_lengths", "test_lengths", "length")
        if not config.depths or not all(0 <= d <= 100 for d in config.depths):
            raise HarnessError(f"niah: depths are percentages in [0, 100], got {config.depths}")
        fixed = needles * (2 + config.value_len) + query_len
        for seq_len in {*config.train_lengths, *config.test_lengths}:
            if seq_len + 1 - fixed < 1:
                raise HarnessError(
                    f"niah: {needles} needle(s) of {2 + config.value_len} tokens and a query of {query_len}"
                    f" tokens need seq_len >= {fixed} to leave a haystack, got seq_len={seq_len}"
                )

    def vocab_size(self, config: NIAHConfig) -> int:
        return 2 + config.key_vocab + config.value_vocab + config.haystack_vocab

    def vocabulary(self, config: NIAHConfig) -> list[str]:
        return (
            [":", "?"]
            + [f"k{i}" for i in range(config.key_vocab)]
            + [f"v{i}" for i in range(config.value_vocab)]
            + [f"h{i}" for i in range(config.haystack_vocab)]
        )

    def generate(self, config: NIAHConfig, split: str, seed: int) -> list[Slice]:
        self.validate(config)
        rng = np.random.default_rng(split_seed(seed, split))
        if split == "train":
            plan = [
                (seq_len, None, n)
                for seq_len, n in plan_examples(
                    split, config.train_lengths, config.test_lengths, config.num_train, config.num_test
                )
            ]
        else:
            plan = [(seq_len, d, config.num_test) for seq_len in config.test_lengths for d in config.depths]
        slices = []
        for seq_len, depth, n in plan:
            inputs, labels = niah_examples(rng, n, seq_len, depth, config)
            name = f"seq_len={seq_len}" if depth is None else f"seq_len={seq_len},depth={depth}"
            slices.append(Slice(name, inputs, labels))
        return slices


def _niah_shape(config: NIAHConfig) -> tuple[int, int, int]:
    """(needles, distinct keys, query tokens) of a variant."""
    m, needles = config.value_len, config.num_needles
    return {
        "single": (1, 1, 2 + m),
        "multi-key": (needles, needles, 2 + m),
        "multi-value": (needles, 1, 2 + needles * m),
        "multi-query": (needles, needles, needles * (2 + m)),
    }[config.variant]


def niah_examples(
    rng: np.random.Generator, n: int, seq_len: int, depth: int | None, config: NIAHConfig
) -> tuple[np.ndarray, np.ndarray]:
    """n examples; the target needle (needle 0) follows depth% of the haystack (a uniform point if None)."""
    colon, query = 0, 1
    key_base, value_base = 2, 2 + config.key_vocab
    haystack_base = value_base + config.value_vocab
    m = config.value_len
    needles, num_keys, query_len = _niah_shape(config)
    haystack_len = seq_len + 1 - needles * (2 + m) - query_len
    rows = np.arange(n)[:, None]

    keys = distinct_integers(rng, n, num_keys, 0, config.key_vocab) + key_base  # (n, num_keys)
    keys = np.broadcast_to(keys, (n, needles)) if num_keys == 1 else keys  # (n, needles)
    values = rng.integers(0, config.value_vocab, size=(n, needles, m)) + value_base
    blocks = np.concatenate([keys[:, :, None], np.full((n, needles, 1), colon), values], axis=2)

    gaps = rng.integers(0, haystack_len + 1, size=(n, needles))  # haystack tokens before each needle
    if depth is not None:
        # rounded half up, in integers
        gaps[:, 0] = (depth * haystack_len + 50) // 100
    # needles in order of position; a random tie-break among needles in the same gap
    order = np.argsort(gaps + 0.5 * rng.random((n, needles)), axis=1)  # (n, needles)
    haystack = rng.integers(0, config.haystack_vocab, size=(n, haystack_len)) + haystack_base
    context = insert_blocks(haystack, blocks[rows, order], gaps[rows, order])

    # query blocks: '?', key, answer tokens
    if config.variant == "multi-value":
        asked = [(keys[:, 0], values[rows, order].reshape(n, needles * m))]
    elif config.variant == "multi-query":
        rest = np.argsort(rng.random((n, needles - 1)), axis=1) + 1
        asked_order = np.concatenate([np.zeros((n, 1), dtype=np.int64), rest], axis=1)  # target first
        asked = [
            (keys[np.arange(n), asked_order[:, j]], values[np.arange(n), asked_order[:, j]])
            for j in range(needles)
        ]
    else:
        asked = [(keys[:, 0], values[:, 0])]
    pieces, answer_mask = [context], [np.zeros(context.shape, dtype=bool)]
    for key, answer in asked:
        pieces.append(np.concatenate([np.full((n, 1), query), key[:, None], answer], axis=1))
        answer_mask.append(np.arange(2 + answer.shape[1]) >= 2)
    stream = np.concatenate(pieces, axis=1)
    mask = np.concatenate([np.broadcast_to(a, (n, a.shape[-1])) for a in answer_mask], axis=1)
    return shift(stream, mask)


# index-lookup ----------------------------------------------------------------------------------------------

POSITION_FORMATS = ("dedicated", "digits")


@dataclass(frozen=True, kw_only=True)
class IndexLookupConfig(TaskConfig):
    data_vocab: int = 64
    """Tokens of the random sequence."""
    position_format: str = "dedicated"
    """'dedicated': a token @i per position of the longest train or test sequence; 'digits': '@' then base-10
    digit tokens zero-padded to the width of the longest seq_len."""
    num_queries: int = 4
    """Queries per sequence, each followed by its answer (teacher-forced)."""
    train_lengths: tuple[int, ...] = (64, 128, 256)
    """seq_len of the training mixture; examples split evenly between them."""
    test_lengths: tuple[int, ...] = (64, 128, 256)
    """seq_len of the test slices (longer than training needs position_format 'digits' to make sense)."""


@TASKS.register("index-lookup")
class IndexLookup(Task):
    """Return the token at a queried position: a direct probe of position."""

    Config = IndexLookupConfig
    version = "1"

    def validate(self, config: IndexLookupConfig) -> None:
        if config.position_format not in POSITION_FORMATS:
            raise HarnessError(
                f"index-lookup: unknown position_format '{config.position_format}';"
                f" expected one of {', '.join(POSITION_FORMATS)}"
            )
        if config.data_vocab < 2 or config.num_queries < 1:
            raise HarnessError(
                f"index-lookup: need data_vocab >= 2 and num_queries >= 1, got {config.data_vocab}"
                f" and {config.num_queries}"
            )
        require_settings("index-lookup", config, "train_lengths", "test_lengths", "length")
        query_tokens = config.num_queries * self._query_len(config)
        for seq_len in {*config.train_lengths, *config.test_lengths}:
            if seq_len + 1 - query_tokens < 1:
                raise HarnessError(
                    f"index-lookup: {config.num_queries} queries take {query_tokens} tokens with their"
                    f" answers; seq_len must be at least {query_tokens} to leave a sequence,"
                    f" got seq_len={seq_len}"
                )

    def _digits(self, config: IndexLookupConfig) -> int:
        """Digits of the widest position: positions are below the longest seq_len."""
        return len(str(max(*config.train_lengths, *config.test_lengths) - 1))

    def _query_len(self, config: IndexLookupConfig) -> int:
        """Tokens of one query with its answer."""
        return 2 if config.position_format == "dedicated" else self._digits(config) + 2

    def _positions(self, config: IndexLookupConfig) -> int:
        """Position tokens of the 'dedicated' format: one per position of the longest sequence."""
        longest = max(*config.train_lengths, *config.test_lengths)
        return longest + 1 - config.num_queries * self._query_len(config)

    def vocab_size(self, config: IndexLookupConfig) -> int:
        return len(self.vocabulary(config))

    def vocabulary(self, config: IndexLookupConfig) -> list[str]:
        words = [f"t{i}" for i in range(config.data_vocab)]
        if config.position_format == "dedicated":
            return words + [f"@{i}" for i in range(self._positions(config))]
        return words + ["@"] + [str(d) for d in range(10)]

    def generate(self, config: IndexLookupConfig, split: str, seed: int) -> list[Slice]:
        self.validate(config)
        rng = np.random.default_rng(split_seed(seed, split))
        slices = []
        for seq_len, n in plan_examples(
            split, config.train_lengths, config.test_lengths, config.num_train, config.num_test
        ):
            inputs, labels = self._examples(rng, n, seq_len, config)
            slices.append(Slice(f"seq_len={seq_len}", inputs, labels))
        return slices

    def _examples(
        self, rng: np.random.Generator, n: int, seq_len: int, config: IndexLookupConfig
    ) -> tuple[np.ndarray, np.ndarray]:
        V, q = config.data_vocab, config.num_queries
        data_len = seq_len + 1 - q * self._query_len(config)
        data = rng.integers(0, V, size=(n, data_len))
        where = rng.integers(0, data_len, size=(n, q))
        answers = np.take_along_axis(data, where, axis=1)  # (n, q)
        if config.position_format == "dedicated":
            asks = (V + where)[:, :, None]  # (n, q, 1)
        else:
            width = self._digits(config)
            powers = 10 ** np.arange(width - 1, -1, -1)
            digits = where[:, :, None] // powers % 10 + V + 1  # (n, q, width)
            asks = np.concatenate([np.full((n, q, 1), V), digits], axis=2)
        queries = np.concatenate([asks, answers[:, :, None]], axis=2)  # (n, q, query_len)
        stream = np.concatenate([data, queries.reshape(n, -1)], axis=1)
        mask = np.zeros(stream.shape, dtype=bool)
        mask[:, data_len + queries.shape[2] - 1 :: queries.shape[2]] = True
        return shift(stream, mask)


# copy ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CopyConfig(TaskConfig):
    data_vocab: int = 32
    """Tokens of the random sequence (repeats allowed, so copying needs positions, not only bigrams)."""
    train_lengths: tuple[int, ...] = (64, 128)
    """seq_len of the training mixture (even: seq_len / 2 tokens are copied); examples split evenly."""
    test_lengths: tuple[int, ...] = (64, 128, 256, 512)
    """seq_len of the test slices; longer than training measures length generalisation."""
    num_test: int = 200
    """Test (and validation) examples per slice."""


@TASKS.register("copy")
class Copy(Task):
    """Copy a random sequence after a separator; test lengths beyond the training lengths."""

    Config = CopyConfig
    version = "1"

    def validate(self, config: CopyConfig) -> None:
        if config.data_vocab < 2:
            raise HarnessError(f"copy: data_vocab must be at least 2, got {config.data_vocab}")
        require_settings("copy", config, "train_lengths", "test_lengths", "length")
        for seq_len in {*config.train_lengths, *config.test_lengths}:
            if seq_len < 2 or seq_len % 2:
                raise HarnessError(
                    f"copy: seq_len must be even and >= 2 (n tokens, separator, n - 1 copied inputs),"
                    f" got seq_len={seq_len}"
                )

    def vocab_size(self, config: CopyConfig) -> int:
        return config.data_vocab + 1

    def vocabulary(self, config: CopyConfig) -> list[str]:
        return ["|"] + [f"t{i}" for i in range(config.data_vocab)]

    def generate(self, config: CopyConfig, split: str, seed: int) -> list[Slice]:
        self.validate(config)
        rng = np.random.default_rng(split_seed(seed, split))
        slices = []
        for seq_len, n in plan_examples(
            split, config.train_lengths, config.test_lengths, config.num_train, config.num_test
        ):
            half = seq_len // 2
            data = rng.integers(1, config.data_vocab + 1, size=(n, half))
            stream = np.concatenate([data, np.zeros((n, 1), dtype=np.int64), data], axis=1)
            mask = np.zeros(stream.shape, dtype=bool)
            mask[:, half + 1 :] = True
            slices.append(Slice(f"seq_len={seq_len}", *shift(stream, mask)))
        return slices


# variable-tracking -----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class VariableTrackingConfig(TaskConfig):
    num_chains: int = 3
    """Chains per sequence: the queried one and num_chains - 1 distractors."""
    var_vocab: int = 128
    """Variable names."""
    value_vocab: int = 64
    """Values."""
    filler_vocab: int = 64
    """Filler tokens between statements, a vocabulary of their own."""
    train_lengths: tuple[int, ...] = (128, 256)
    """seq_len of the training mixture."""
    test_lengths: tuple[int, ...] = (128, 256, 512, 1024)
    """seq_len of the test slices."""
    train_hops: tuple[int, ...] = (1, 2, 4)
    """Hops (variable-to-variable assignments per chain) of the training mixture."""
    test_hops: tuple[int, ...] = (1, 2, 4)
    """Hops of the test slices."""
    num_train: int = 20000
    """Training examples in all, split evenly over train_lengths x train_hops."""
    num_test: int = 200
    """Test (and validation) examples per (seq_len, hops) slice."""


@TASKS.register("variable-tracking")
class VariableTracking(Task):
    """Follow chains of assignments X = Y for k hops, among distractor chains."""

    Config = VariableTrackingConfig
    version = "1"

    def validate(self, config: VariableTrackingConfig) -> None:
        if config.num_chains < 1 or min(config.value_vocab, config.filler_vocab) < 1:
            raise HarnessError(
                "variable-tracking: num_chains, value_vocab and filler_vocab must be at least 1"
            )
        if config.value_vocab < config.num_chains:
            raise HarnessError(
                f"variable-tracking: {config.num_chains} chains with distinct values need"
                f" value_vocab >= {config.num_chains}, got {config.value_vocab}"
            )
        require_settings("variable-tracking", config, "train_lengths", "test_lengths", "length")
        require_settings("variable-tracking", config, "train_hops", "test_hops", "hop count")
        all_hops = {*config.train_hops, *config.test_hops}
        if min(all_hops) < 0:
            raise HarnessError(f"variable-tracking: hops must be >= 0, got {min(all_hops)}")
        variables = config.num_chains * (max(all_hops) + 1)
        if variables > config.var_vocab:
            raise HarnessError(
                f"variable-tracking: {config.num_chains} chains of {max(all_hops)} hops use {variables}"
                f" distinct variables; need var_vocab >= {variables}, got {config.var_vocab}"
            )
        need = 4 * variables + 2
        for seq_len in {*config.train_lengths, *config.test_lengths}:
            if seq_len < need:
                raise HarnessError(
                    f"variable-tracking: {config.num_chains} chains of {max(all_hops)} hops (4 tokens a"
                    f" statement) and the query need seq_len >= {need}, got seq_len={seq_len}"
                )

    def vocab_size(self, config: VariableTrackingConfig) -> int:
        return 3 + config.var_vocab + config.value_vocab + config.filler_vocab

    def vocabulary(self, config: VariableTrackingConfig) -> list[str]:
        return (
            ["=", ";", "?"]
            + [f"X{i}" for i in range(config.var_vocab)]
            + [f"v{i}" for i in range(config.value_vocab)]
            + [f"n{i}" for i in range(config.filler_vocab)]
        )

    def generate(self, config: VariableTrackingConfig, split: str, seed: int) -> list[Slice]:
        self.validate(config)
        rng = np.random.default_rng(split_seed(seed, split))
        train = [(L, k) for L in config.train_lengths for k in config.train_hops]
        test = [(L, k) for L in config.test_lengths for k in config.test_hops]
        slices = []
        for (seq_len, hops), n in plan_examples(split, train, test, config.num_train, config.num_test):
            inputs, labels = variable_tracking_examples(rng, n, seq_len, hops, config)
            slices.append(Slice(f"seq_len={seq_len},hops={hops}", inputs, labels))
        return slices


def variable_tracking_examples(
    rng: np.random.Generator, n: int, seq_len: int, hops: int, config: VariableTrackingConfig
) -> tuple[np.ndarray, np.ndarray]:
    """n examples; chain 0 is the one queried."""
    equals, semicolon, query = 0, 1, 2
    var_base = 3
    value_base = var_base + config.var_vocab
    filler_base = value_base + config.value_vocab
    C, S = config.num_chains, config.num_chains * (hops + 1)
    rows = np.arange(n)[:, None]

    variables = distinct_integers(rng, n, S, 0, config.var_vocab).reshape(n, C, hops + 1) + var_base
    values = distinct_integers(rng, n, C, 0, config.value_vocab) + value_base  # (n, C)
    # right-hand sides: the value, then the chain's previous variable
    rhs = np.concatenate([values[:, :, None], variables[:, :, :-1]], axis=2)  # (n, C, hops + 1)

    # A uniform interleaving that keeps each chain's order: shuffle the multiset of chain ids, then the j-th
    # occurrence of chain c is statement j of chain c.
    chain = np.repeat(np.arange(C), hops + 1)[np.argsort(rng.random((n, S)), axis=1)]  # (n, S)
    step = (np.cumsum(chain[:, :, None] == np.arange(C), axis=1) - 1)[rows, np.arange(S), chain]  # (n, S)
    blocks = np.stack(
        [
            variables[rows, chain, step],
            np.full((n, S), equals),
            rhs[rows, chain, step],
            np.full((n, S), semicolon),
        ],
        axis=2,
    )  # (n, S, 4)

    filler_len = seq_len - 4 * S - 2
    filler = rng.integers(0, config.filler_vocab, size=(n, filler_len)) + filler_base
    gaps = np.sort(rng.integers(0, filler_len + 1, size=(n, S)), axis=1)
    context = insert_blocks(filler, blocks, gaps)
    tail = np.stack([np.full(n, query), variables[:, 0, -1], values[:, 0]], axis=1)
    stream = np.concatenate([context, tail], axis=1)
    mask = np.zeros(stream.shape, dtype=bool)
    mask[:, -1] = True
    return shift(stream, mask)


# shared by the four tasks ----------------------------------------------------------------------------------


def insert_blocks(haystack: np.ndarray, blocks: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    """Blocks inserted into a haystack: block r follows gaps[:, r] haystack tokens (gaps nondecreasing in r).

    haystack (n, H), blocks (n, N, b), gaps (n, N) in [0, H] -> (n, H + N * b).
    """
    n, H = haystack.shape
    _, N, b = blocks.shape
    out = np.empty((n, H + N * b), dtype=np.int64)
    cols = (gaps + b * np.arange(N))[:, :, None] + np.arange(b)  # (n, N, b)
    rows = np.arange(n)[:, None, None]
    taken = np.zeros(out.shape, dtype=bool)
    taken[rows, cols] = True
    out[rows, cols] = blocks
    # boolean indexing walks row by row and every row has exactly H free places
    out[~taken] = haystack.ravel()
    return out


def shift(stream: np.ndarray, answer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inputs are stream[:, :-1]; labels[t] = stream[t + 1] where answer[:, t + 1], else IGNORE."""
    inputs = np.ascontiguousarray(stream[:, :-1], dtype=np.int64)
    labels = np.where(answer[:, 1:], stream[:, 1:], IGNORE).astype(np.int64)
    return inputs, labels
