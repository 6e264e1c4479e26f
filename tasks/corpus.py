"""Text corpora for language modelling: documents from local files or a `datasets` source, a tokenizer (a BPE
trained on the corpus, or a Hugging Face tokenizer), and the tokenised corpus cached on disk.

Sources (`LMConfig.corpus`):

    python-stdlib        the .py files of this Python's standard library: on every machine, offline
    python-packages      the same plus every installed package's .py files (hundreds of MB in a GPU image)
    PATH | DIR | GLOB    local .txt .md .rst .py .jsonl .json .parquet files (a folder: all of those in it)
    hf:NAME[:CONFIG]:SPLIT   a `datasets` source, streamed (offline: from the local datasets cache)

Each file is one document (JSONL/JSON/parquet: one per record, its `text_field`). A document is assigned to the
validation split by a hash of its id (path or record number), so the split does not move when the corpus grows.
Tokens of a split are one stream: every document begins with the end-of-text token, which acts as its BOS.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import os
import shutil
import sys
import sysconfig
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from tasks.base import cache_root

EOT = "<|endoftext|>"
PAD = "<|pad|>"
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py")
RECORD_SUFFIXES = (".jsonl", ".json", ".parquet")
# A BPE is trained on the first training documents: at most this many characters, and at most this many per
# training token of the budget (about 3-4 characters make a token; more text than the budget reads is wasted).
BPE_TRAINING_CHARS = 50_000_000
BPE_CHARS_PER_TOKEN = 4


class CorpusError(ValueError):
    """A corpus or tokenizer that cannot be used; the message says what to change."""


@dataclass(frozen=True)
class Tokenized:
    """One split of a corpus as one token stream; document d is tokens[starts[d]:starts[d + 1]]."""

    tokens: np.ndarray  # (N,) uint32
    starts: np.ndarray  # (D + 1,) int64, starts[-1] == N

    def document_ids(self, begin: int, end: int) -> np.ndarray:
        """Document index of every token in tokens[begin:end]."""
        return np.searchsorted(self.starts, np.arange(begin, end), side="right") - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)


@dataclass(frozen=True)
class Corpus:
    train: Tokenized
    valid: Tokenized
    tokenizer: Any  # a transformers PreTrainedTokenizerFast
    info: dict[str, Any]
    """Provenance: source, files, documents, bytes, content hash, tokenizer."""

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @cached_property
    def unigram_log_probs(self) -> np.ndarray:
        """log p(token) over the training split, add-one smoothed: (vocab,)."""
        counts = np.bincount(np.asarray(self.train.tokens), minlength=self.vocab_size) + 1.0
        return np.log(counts / counts.sum())

    @property
    def eot_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.tokenizer.eos_token)


# ---------------------------------------------------------------------------------------------------------------
# documents


@lru_cache(maxsize=8)
def source_files(source: str) -> tuple[Path, ...]:
    """The files of a local source, sorted (so the corpus is the same on every run); listed once per process."""
    if source in ("python-stdlib", "python-packages"):
        roots = [Path(sysconfig.get_paths()["stdlib"])]
        if source == "python-packages":
            roots += [Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
        files = {p for root in roots for p in root.rglob("*.py")}
        if source == "python-stdlib":
            files = {p for p in files if "site-packages" not in p.parts}
        return tuple(sorted(files))
    path = Path(source).expanduser()
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES + RECORD_SUFFIXES and p.is_file()]
    elif path.is_file():
        files = [path]
    else:
        files = [Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()]
    if not files:
        raise CorpusError(
            f"corpus '{source}' names no files; give a file, folder or glob of {', '.join(TEXT_SUFFIXES + RECORD_SUFFIXES)}"
            " files, 'python-stdlib', 'python-packages' or hf:NAME:SPLIT"
        )
    unknown = sorted({p.suffix for p in files} - set(TEXT_SUFFIXES + RECORD_SUFFIXES))
    if unknown:
        raise CorpusError(f"corpus '{source}': cannot read files ending {', '.join(unknown)}")
    return tuple(sorted(files))


def documents(source: str, text_field: str = "text") -> Iterator[tuple[str, str]]:
    """(document id, text) of every document of a source, in a fixed order."""
    if source.startswith("hf:"):
        yield from _hf_documents(source, text_field)
        return
    for path in source_files(source):
        if path.suffix in TEXT_SUFFIXES:
            text = path.read_bytes().decode("utf-8", errors="replace")
            if text.strip():
                yield str(path), text
            continue
        for number, record in enumerate(_records(path)):
            if text_field not in record:
                raise CorpusError(
                    f"{path}: record {number} has no field '{text_field}' (set task.text_field)"
                )
            if str(record[text_field]).strip():
                yield f"{path}#{number}", str(record[text_field])


def _records(path: Path) -> Iterator[dict]:
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq  # slow to import; only parquet sources need it

            yield from pq.read_table(path).to_pylist()
        elif path.suffix == ".jsonl":
            with path.open() as f:
                yield from (json.loads(line) for line in f if line.strip())
        else:
            data = json.loads(path.read_text())
            yield from data if isinstance(data, list) else [data]
    except (json.JSONDecodeError, OSError, ValueError) as err:
        raise CorpusError(f"cannot read {path}: {str(err).splitlines()[0]}") from None


def _hf_documents(source: str, text_field: str) -> Iterator[tuple[str, str]]:
    parts = source.removeprefix("hf:").split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise CorpusError(f"a datasets source is hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT, got '{source}'")
    name, config, split = (parts[0], None, parts[1]) if len(parts) == 2 else parts
    try:
        import datasets  # slow to import; only hf: sources need it

        stream = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as err:  # noqa: BLE001 - offline, missing or misnamed: one message
        raise CorpusError(f"cannot open {source}: {str(err).splitlines()[0]}") from None
    for number, record in enumerate(stream):
        if text_field not in record:
            raise CorpusError(f"{source}: records have no field '{text_field}' (set task.text_field)")
        if str(record[text_field]).strip():
            yield f"{name}/{split}#{number}", str(record[text_field])


def in_validation(doc_id: str, valid_fraction: float) -> bool:
    """Whether a document belongs to the validation split: a stable hash of its id."""
    return zlib.crc32(doc_id.encode()) % 10_000 < valid_fraction * 10_000


def source_fingerprint(source: str) -> str:
    """Cheap identity of a local source's current contents (paths, sizes, modification times); for datasets
    sources, the name (their cache is versioned by datasets)."""
    if source.startswith("hf:"):
        return source
    digest = hashlib.sha256()
    for path in source_files(source):
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------
# tokenizers


def train_bpe(texts: Iterator[str], vocab_size: int):
    """A byte-level BPE of `vocab_size` tokens (end-of-text and pad included) trained on `texts`."""
    # slow to import; only corpus tasks need tokenizers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOT, pad_token=PAD, bos_token=EOT)


def load_tokenizer(name: str):
    """A Hugging Face tokenizer by name or path (offline: a local path or the local hub cache)."""
    from transformers import AutoTokenizer  # slow to import; only corpus tasks need it

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as err:  # noqa: BLE001 - not found, offline, not a tokenizer: one message
        raise CorpusError(
            f"cannot load tokenizer '{name}': {str(err).splitlines()[0][:200]} (use bpe:N to train one on the corpus)"
        ) from None
    if tokenizer.eos_token is None:
        raise CorpusError(f"tokenizer '{name}' has no end-of-text token; documents need one to be separated")
    return tokenizer


def bpe_vocab_size(spec: str) -> int | None:
    """'bpe:4096' -> 4096; None for a tokenizer name."""
    if not spec.startswith("bpe:"):
        return None
    try:
        size = int(spec.removeprefix("bpe:"))
    except ValueError:
        size = 0
    if size < 260:
        raise CorpusError(
            f"tokenizer '{spec}': give bpe:N with N >= 260 (the 256 bytes and the special tokens)"
        )
    return size


# ---------------------------------------------------------------------------------------------------------------
# the tokenised corpus


def corpus_key(config: Any) -> str:
    fields = dict(
        corpus=config.corpus,
        text_field=config.text_field,
        tokenizer=config.tokenizer,
        max_train_tokens=config.max_train_tokens,
        max_valid_tokens=config.max_valid_tokens,
        valid_fraction=config.valid_fraction,
        fingerprint=source_fingerprint(config.corpus),
        format=1,
    )
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@lru_cache(maxsize=4)
def load_corpus(config: Any) -> Corpus:
    """The tokenised corpus of an LM config: from the cache ($HARNESS_CACHE) when there, else built and stored.
    Once per process and config: the cache key stats every file of the source, which is slow for large trees."""
    root = cache_root()
    folder = None if root is None else root / f"corpus-{corpus_key(config)}"
    if folder is not None and (folder / "info.json").exists():
        return _read(folder)
    corpus = build_corpus(config)
    if folder is not None:
        _write(corpus, folder)
    return corpus


def build_corpus(config: Any) -> Corpus:
    """Read the documents, make the tokenizer, tokenise both splits up to their token budgets."""
    docs = documents(config.corpus, config.text_field)
    bpe_size = bpe_vocab_size(config.tokenizer)
    pending: list[tuple[str, str]] = []
    if bpe_size is not None:
        # the BPE learns from the first training documents; they are kept for tokenising afterwards
        chars, enough = 0, min(BPE_TRAINING_CHARS, BPE_CHARS_PER_TOKEN * config.max_train_tokens)
        for doc_id, text in docs:
            pending.append((doc_id, text))
            if not in_validation(doc_id, config.valid_fraction):
                chars += len(text)
                if chars >= enough:
                    break
        training_texts = (t for d, t in pending if not in_validation(d, config.valid_fraction))
        tokenizer = train_bpe(training_texts, bpe_size)
    else:
        tokenizer = load_tokenizer(config.tokenizer)
    eot = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    budgets = {"train": config.max_train_tokens, "valid": config.max_valid_tokens}
    streams: dict[str, list[np.ndarray]] = {"train": [], "valid": []}
    counts = {"train": 0, "valid": 0}
    info = dict(corpus=config.corpus, documents={"train": 0, "valid": 0}, bytes=0)
    digest = hashlib.sha256()

    def split_of(doc_id: str) -> str:
        return "valid" if in_validation(doc_id, config.valid_fraction) else "train"

    def add(batch: list[tuple[str, str]]) -> None:
        encoded = tokenizer(
            [text for _, text in batch], add_special_tokens=False, return_attention_mask=False
        )["input_ids"]
        for (doc_id, text), ids in zip(batch, encoded, strict=True):
            split = split_of(doc_id)
            if counts[split] >= budgets[split]:
                continue
            ids = np.asarray([eot, *ids], dtype=np.uint32)[: budgets[split] - counts[split]]
            streams[split].append(ids)
            counts[split] += len(ids)
            info["documents"][split] += 1
            info["bytes"] += len(text.encode())
            digest.update(doc_id.encode() + b"\0" + text.encode())

    batch: list[tuple[str, str]] = []
    for doc_id, text in itertools.chain(pending, docs):
        if all(counts[s] >= budgets[s] for s in counts):
            break
        if counts[split_of(doc_id)] >= budgets[split_of(doc_id)]:
            continue
        batch.append((doc_id, text))
        if len(batch) >= 64:  # encoded together (in parallel), then the budgets are checked again
            add(batch)
            batch = []
    if batch:
        add(batch)
    splits = {}
    for split, arrays in streams.items():
        if not arrays:
            raise CorpusError(
                f"corpus '{config.corpus}' gave no {split} documents; it needs more documents"
                + (" or a larger valid_fraction" if split == "valid" else "")
            )
        lengths = np.array([len(a) for a in arrays])
        splits[split] = Tokenized(np.concatenate(arrays), np.concatenate([[0], np.cumsum(lengths)]))
    info.update(
        tokens={s: int(counts[s]) for s in counts},
        content_sha256=digest.hexdigest(),
        tokenizer=config.tokenizer,
        vocab_size=len(tokenizer),
    )
    return Corpus(splits["train"], splits["valid"], tokenizer, info)


def _write(corpus: Corpus, folder: Path) -> None:
    """Write beside the final place and rename, so that a crash never leaves a half-written corpus."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        for split in ("train", "valid"):
            data = getattr(corpus, split)
            np.save(tmp / f"{split}_tokens.npy", data.tokens)
            np.save(tmp / f"{split}_starts.npy", data.starts)
        corpus.tokenizer.save_pretrained(tmp / "tokenizer")
        (tmp / "info.json").write_text(json.dumps(corpus.info, indent=1) + "\n")
        os.replace(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "info.json").exists():  # another process may have written it first
            raise


def _read(folder: Path) -> Corpus:
    from transformers import PreTrainedTokenizerFast  # slow to import; only corpus tasks need it

    splits = {
        split: Tokenized(
            np.load(folder / f"{split}_tokens.npy", mmap_mode="r"), np.load(folder / f"{split}_starts.npy")
        )
        for split in ("train", "valid")
    }
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder / "tokenizer")
    info = json.loads((folder / "info.json").read_text())
    return Corpus(splits["train"], splits["valid"], tokenizer, info)
