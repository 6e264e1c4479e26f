"""Language modelling on a text corpus: packed training sequences, validation loss, and perplexity at the training
length and beyond it.

Training: the training split's token stream cut into windows of seq_len + 1 tokens, shuffled every epoch; a
window may hold several documents, kept apart by segment ids (each mixer resets at a boundary), and the token
that begins the next document is never a target of the one before.

Validation (`valid`, tracked during training): windows of seq_len tokens packed from validation documents.

Test (`test`): perplexity at every length in `eval_lengths` (multiples of seq_len). Every length reads the same
validation documents, those of at least max(eval_lengths) * seq_len + 1 tokens, from their first token: the slice
at 1x is the start of the slice at 4x, so the tokens beyond the training length are the only difference. A model
that extrapolates keeps its loss falling with position past seq_len; one that does not breaks there (the
per-position losses show where).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.errors import HarnessError
from harness.registry import TASKS

from .base import IGNORE, DataSize, LmEvalExport, Slice, Task, TrainedModel
from .corpus import Corpus, CorpusError, Tokenized, bpe_vocab_size, load_corpus, source_files


@dataclass(frozen=True, kw_only=True)
class LMConfig:
    corpus: str = "python-stdlib"
    """Text source: 'python-stdlib', 'python-packages', a file/folder/glob, or hf:NAME[:CONFIG]:SPLIT (tasks/corpus.py)."""
    text_field: str = "text"
    """Field holding the text in JSONL/JSON/parquet records and datasets sources."""
    tokenizer: str = "bpe:4096"
    """'bpe:N' trains a byte-level BPE of N tokens on the training documents; else a Hugging Face name or path."""
    seq_len: int = 256
    """Training sequence length (tokens per window)."""
    max_train_tokens: int = 4_000_000
    """Training tokens taken from the corpus (the stream batches are cut from; an epoch is one pass)."""
    max_valid_tokens: int = 1_000_000
    """Validation tokens taken from the corpus."""
    valid_fraction: float = 0.05
    """Share of documents held out for validation and test (chosen by a hash of the document id)."""
    valid_sequences: int = 64
    """Windows of seq_len packed validation tokens scored every eval_every steps."""
    eval_lengths: tuple[int, ...] = (1, 2, 4)
    """Test lengths as multiples of seq_len: perplexity at the training length and beyond it."""
    eval_documents: int = 32
    """Validation documents long enough for the longest test length that are scored at every length."""
    position_bins: int = 16
    """Per-position loss at the longest test length is reported in this many equal bins."""
    lm_eval_tasks: tuple[str, ...] = field(default=())
    """lm-eval tasks scored on the final checkpoint through the lm-eval bridge ('harness_lm' = bits per byte on
    held-out documents of this corpus; standard names need their data in the local datasets cache)."""
    lm_eval_documents: int = 32
    """Held-out documents in the 'harness_lm' lm-eval task."""


class PackedStream:
    """Training batches from a token stream: windows of seq_len + 1 tokens, an epoch a shuffled pass over them."""

    def __init__(self, data: Tokenized, seq_len: int, eot_id: int):
        self.data, self.seq_len, self.eot_id = data, seq_len, eot_id
        self.windows = (len(data.tokens) - 1) // seq_len

    def window(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        begin = index * self.seq_len
        return packed_example(self.data, begin, begin + self.seq_len)

    def batches(self, batch_size: int, seed: int, skip: int = 0) -> Iterator[tuple[np.ndarray, ...]]:
        if self.windows < batch_size:
            raise ValueError(
                f"the training split has {self.windows} windows of {self.seq_len} tokens, fewer than a batch of {batch_size}"
            )
        rng = np.random.default_rng(seed)
        while True:
            order = rng.permutation(self.windows)
            for first in range(0, self.windows - batch_size + 1, batch_size):
                if skip:
                    skip -= 1
                    continue
                examples = [self.window(i) for i in order[first : first + batch_size]]
                yield tuple(np.stack(parts) for parts in zip(*examples, strict=True))


def packed_example(data: Tokenized, begin: int, end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """inputs tokens[begin:end], targets the next tokens, segment ids; a target in another document is IGNORE."""
    tokens = np.asarray(data.tokens[begin : end + 1], dtype=np.int64)
    docs = data.document_ids(begin, end + 1)
    labels = np.where(docs[1:] == docs[:-1], tokens[1:], IGNORE)
    return tokens[:-1], labels, docs[:-1]


@TASKS.register("lm")
class LanguageModelling(Task):
    Config = LMConfig
    version = "1"
    cache_slices = False  # the tokenised corpus is cached (tasks/corpus.py); slices are cut from it quickly

    def validate(self, config: LMConfig) -> None:
        if config.seq_len < 8:
            raise HarnessError(f"lm: seq_len must be at least 8, got {config.seq_len}")
        if not config.eval_lengths or min(config.eval_lengths) < 1:
            raise HarnessError(
                f"lm: eval_lengths are positive multiples of seq_len, got {config.eval_lengths}"
            )
        if not 0 < config.valid_fraction < 1:
            raise HarnessError(f"lm: valid_fraction must be in (0, 1), got {config.valid_fraction}")
        for name in (
            "max_train_tokens",
            "max_valid_tokens",
            "valid_sequences",
            "eval_documents",
            "position_bins",
        ):
            if getattr(config, name) < 1:
                raise HarnessError(f"lm: {name} must be at least 1, got {getattr(config, name)}")
        try:
            bpe_vocab_size(config.tokenizer)
            if not config.corpus.startswith("hf:"):
                source_files(
                    config.corpus
                )  # a local source that names no readable files fails before training
        except CorpusError as err:
            raise HarnessError(f"lm: {err}") from None
        if any(not name.strip() for name in config.lm_eval_tasks):
            raise HarnessError("lm: lm_eval_tasks holds an empty name")
        if config.lm_eval_tasks and importlib.util.find_spec("lm_eval") is None:
            raise HarnessError(
                "lm: lm_eval_tasks are scored with lm-eval, which is not installed: pip install -e '.[lm]' "
                "(or --set task.lm_eval_tasks=[] to train without it)"
            )

    def data_size(self, config: LMConfig) -> DataSize:
        return DataSize(
            train_tokens=config.max_train_tokens,
            eval_tokens=config.max_valid_tokens,
            train_len=config.seq_len,
            eval_len=config.seq_len * max(config.eval_lengths),
        )

    def corpus(self, config: LMConfig) -> Corpus:
        try:
            return load_corpus(config)
        except CorpusError as err:
            raise HarnessError(f"lm: {err}") from None

    def vocab_size(self, config: LMConfig) -> int:
        # a BPE's size is its spec (planning a sweep then reads no corpus); a trained one never exceeds it
        bpe = bpe_vocab_size(config.tokenizer)
        return bpe if bpe is not None else self.corpus(config).vocab_size

    def tokenizer(self, config: LMConfig):
        """The Hugging Face tokenizer of this corpus (saved with checkpoints)."""
        return self.corpus(config).tokenizer

    def training_stream(self, config: LMConfig, seed: int) -> PackedStream:
        corpus = self.corpus(config)
        return PackedStream(corpus.train, config.seq_len, corpus.eot_id)

    def generate(self, config: LMConfig, split: str, seed: int) -> list[Slice]:
        corpus = self.corpus(config)
        if split == "train":
            stream = self.training_stream(config, seed)
            count = min(stream.windows, 1024)  # a sample: training reads the stream (training_stream)
            examples = [stream.window(i) for i in range(count)]
            return [Slice(f"seq_len={config.seq_len}", *map(np.stack, zip(*examples, strict=True)))]
        if split == "valid":
            return [self._validation_windows(corpus, config)]
        return self._test_slices(corpus, config)

    def _validation_windows(self, corpus: Corpus, config: LMConfig) -> Slice:
        L = config.seq_len
        count = min(config.valid_sequences, (len(corpus.valid.tokens) - 1) // L)
        if count < 1:
            raise HarnessError(
                f"lm: the validation split has fewer than {L + 1} tokens; raise valid_fraction"
            )
        # spread over the whole split (many documents, some windows straddling two), not its first document
        begins = np.linspace(0, len(corpus.valid.tokens) - L - 1, count).astype(int)
        examples = [packed_example(corpus.valid, b, b + L) for b in begins]
        inputs, labels, segments = map(np.stack, zip(*examples, strict=True))
        return Slice(f"seq_len={L},packed", inputs, labels, segments)

    def long_documents(self, corpus: Corpus, config: LMConfig) -> np.ndarray:
        """Indices of the validation documents scored at every test length (long enough for the longest)."""
        need = max(config.eval_lengths) * config.seq_len + 1
        long = np.flatnonzero(corpus.valid.lengths() >= need)
        if len(long) == 0:
            raise HarnessError(
                f"lm: no validation document has the {need} tokens the longest test length needs; lower eval_lengths"
                " or seq_len, raise valid_fraction, or use a corpus with longer documents"
            )
        return long[: config.eval_documents]

    def _test_slices(self, corpus: Corpus, config: LMConfig) -> list[Slice]:
        docs = self.long_documents(corpus, config)
        slices = []
        for multiple in sorted(set(config.eval_lengths)):
            length = multiple * config.seq_len
            starts = corpus.valid.starts[docs]
            tokens = np.stack(
                [np.asarray(corpus.valid.tokens[s : s + length + 1], dtype=np.int64) for s in starts]
            )
            slices.append(Slice(f"seq_len={length}", tokens[:, :-1], tokens[:, 1:].copy()))
        return slices

    def unigram_loss(self, config: LMConfig, piece: Slice) -> float:
        """Cross-entropy (nats) of the slice's targets under the training split's unigram distribution (add-one
        smoothed): the loss of a model that ignores context."""
        targets = piece.labels[piece.labels != IGNORE]
        return float(-self.corpus(config).unigram_log_probs[targets].mean())

    def slice_metrics(self, config: LMConfig, piece: Slice, measured: dict[str, float]) -> dict[str, float]:
        loss = measured["loss"]
        return dict(
            perplexity=math.exp(loss) if math.isfinite(loss) else math.inf,
            unigram_loss=self.unigram_loss(config, piece),
        )

    def extra_rows(
        self, config: LMConfig, trained: TrainedModel, test_slices: list[Slice]
    ) -> list[dict[str, Any]]:
        longest = max(test_slices, key=lambda piece: piece.inputs.shape[1])
        rows = position_rows(trained.loss_by_position(longest), longest, config.position_bins)
        rows += throughput_rows(trained.history)
        if config.lm_eval_tasks:
            # lm-eval scores a task as a whole: slice "all" (a task exported with slices keeps its own)
            rows += [row | {"slice": row["slice"] or "all"} for row in trained.lm_eval(config.lm_eval_tasks)]
        return rows

    def lm_eval_exports(self, config: LMConfig, test_slices: list[Slice]) -> list[LmEvalExport]:
        """Held-out documents (the first 4 x seq_len tokens of those the perplexity slices read), scored by
        rolling loglikelihood: bits per byte and byte perplexity compare across tokenizers."""
        texts = self.held_out_texts(config, config.lm_eval_documents, max_tokens=4 * config.seq_len)
        return [
            LmEvalExport(None, "perplexity", [dict(text=text) for text in texts], dict(corpus=config.corpus))
        ]

    def held_out_texts(self, config: LMConfig, count: int, max_tokens: int) -> list[str]:
        """The text of `count` held-out documents (their first `max_tokens` tokens)."""
        corpus = self.corpus(config)
        texts = []
        for doc in self.long_documents(corpus, config)[:count]:
            start = int(corpus.valid.starts[doc]) + 1  # after the end-of-text token that opens every document
            ids = np.asarray(corpus.valid.tokens[start : start + max_tokens]).tolist()
            texts.append(corpus.tokenizer.decode(ids))
        return texts

    def vocabulary(self, config: LMConfig) -> list[str]:
        tokenizer = self.tokenizer(config)
        return tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))

    def render(self, config: LMConfig, ids: np.ndarray) -> str:
        return self.tokenizer(config).decode(ids.tolist())

    def setting_name(self, config: LMConfig) -> str:
        return f"corpus={config.corpus},tokenizer={config.tokenizer}"


def position_rows(losses: np.ndarray, piece: Slice, bins: int) -> list[dict[str, Any]]:
    """Per-position losses (T,) of a slice averaged in `bins` equal bins of position."""
    edges = np.linspace(0, len(losses), bins + 1).round().astype(int)
    return [
        dict(
            slice=f"{piece.name},positions={begin}-{end - 1}",
            metric="loss_by_position",
            value=float(np.nanmean(losses[begin:end])),
            higher_is_better=False,
            n=int((end - begin) * len(piece)),
            stderr=None,
        )
        for begin, end in zip(edges[:-1], edges[1:], strict=True)
    ]


def throughput_rows(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Training tokens/s (median over the evaluation intervals) and peak memory, from the training curve."""
    # the first interval includes compilation and warm-up: left out when there are others
    points = history[1:] if len(history) > 1 else history
    if not points:
        return []
    rate = float(np.median([p["tokens_per_s"] for p in points]))
    memory = max(p["peak_memory_gib"] for p in history)
    return [
        dict(
            slice="train",
            metric="tokens_per_s",
            value=rate,
            higher_is_better=True,
            n=len(points),
            stderr=None,
        ),
        dict(
            slice="train", metric="peak_memory_gib", value=memory, higher_is_better=False, n=None, stderr=None
        ),
    ]
