"""Corpus reading, tokenisation, packing and the lm task's slices, on small corpora written at test time."""

import json

import numpy as np
import pytest

from harness.errors import HarnessError
from tasks.base import IGNORE
from tasks.corpus import CorpusError, Tokenized, documents, in_validation, load_corpus, source_files
from tasks.lm import LanguageModelling, LMConfig, PackedStream, packed_example

WORDS = "the cat sat on a mat while dogs ran far away from home and birds sang in trees".split()  # noqa: SIM905


def write_corpus(folder, documents_count=60, words_per_doc=400, seed=0):
    """Text files of random sentences over a small vocabulary (a corpus made at test time, never committed)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(documents_count):
        words = rng.choice(WORDS, size=words_per_doc)
        (folder / f"doc{d:03d}.txt").write_text(" ".join(words) + "\n")
    return folder


def config(folder, **fields):
    defaults = dict(
        corpus=str(folder), tokenizer="bpe:300", seq_len=16, max_train_tokens=20000, max_valid_tokens=20000,
        valid_fraction=0.2, valid_sequences=8, eval_documents=4, eval_lengths=(1, 2, 4),
    )  # fmt: skip
    return LMConfig(**(defaults | fields))


def test_local_sources_read_text_jsonl_and_parquet(tmp_path):
    (tmp_path / "a.txt").write_text("hello world")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "one"}) + "\n" + json.dumps({"text": "two"}) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["three"]}), tmp_path / "c.parquet")
    docs = list(documents(str(tmp_path / "*.txt"))) + list(documents(str(tmp_path / "b.jsonl")))
    assert [text for _, text in docs] == ["hello world", "one", "two"]
    assert [t for _, t in documents(str(tmp_path / "c.parquet"), text_field="body")] == ["three"]
    with pytest.raises(CorpusError, match="no field 'text'"):
        list(documents(str(tmp_path / "c.parquet")))
    assert source_files("python-stdlib")  # the built-in corpus exists on every machine


def test_bad_sources_give_one_line_errors(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\0")
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    for source, message in [
        (str(tmp_path / "missing"), "names no files"),
        (str(tmp_path / "x.bin"), "cannot read files ending .bin"),
        (str(tmp_path / "broken.jsonl"), "cannot read"),
        ("hf:only-a-name", "hf:NAME:SPLIT"),
    ]:
        with pytest.raises(CorpusError, match=message) as err:
            list(documents(source))
        assert "\n" not in str(err.value)


def test_corpus_splits_by_document_and_every_document_starts_with_end_of_text(tmp_path):
    corpus = load_corpus(config(write_corpus(tmp_path / "c")))
    assert corpus.vocab_size == 300 and corpus.info["documents"]["valid"] > 0
    for split in (corpus.train, corpus.valid):
        assert (np.asarray(split.tokens)[split.starts[:-1]] == corpus.eot_id).all()
    valid_ids = [d for d, _ in documents(str(tmp_path / "c")) if in_validation(d, 0.2)]
    assert corpus.info["documents"]["valid"] == len(valid_ids)
    # the tokenizer is lossless on the text (byte-level BPE)
    text = (tmp_path / "c" / "doc000.txt").read_text()
    assert corpus.tokenizer.decode(corpus.tokenizer(text)["input_ids"]) == text


def test_packed_windows_never_predict_across_documents():
    data = Tokenized(np.arange(10, dtype=np.uint32), np.array([0, 4, 7, 10]))
    inputs, labels, segments = packed_example(data, 2, 8)
    assert inputs.tolist() == [2, 3, 4, 5, 6, 7]
    assert segments.tolist() == [0, 0, 1, 1, 1, 2]
    assert labels.tolist() == [3, IGNORE, 5, 6, IGNORE, 8]


def test_packed_stream_is_seeded_and_resumes_at_a_step():
    data = Tokenized(np.arange(1000, dtype=np.uint32), np.array([0, 300, 1000]))
    stream = PackedStream(data, seq_len=10, eot_id=0)
    first = [b[0] for _, b in zip(range(12), stream.batches(8, seed=3), strict=False)]
    again = [b[0] for _, b in zip(range(12), stream.batches(8, seed=3), strict=False)]
    resumed = [b[0] for _, b in zip(range(7), stream.batches(8, seed=3, skip=5), strict=False)]
    assert all((a == b).all() for a, b in zip(first, again, strict=True))
    assert all((a == b).all() for a, b in zip(first[5:], resumed, strict=True))
    # one epoch reads every window once
    epoch = np.concatenate(first[: stream.windows // 8])[:, 0]
    assert len(set(epoch.tolist())) == len(epoch)


def test_test_slices_are_prefixes_of_the_same_long_documents(tmp_path):
    task, cfg = LanguageModelling(), config(write_corpus(tmp_path / "c"))
    slices = task.generate(cfg, "test", 0)
    assert [s.name for s in slices] == ["seq_len=16", "seq_len=32", "seq_len=64"]
    assert (slices[2].inputs[:, :16] == slices[0].inputs).all() and (slices[0].labels != IGNORE).all()
    (valid,) = task.generate(cfg, "valid", 0)
    assert valid.segments is not None and valid.inputs.shape == (8, 16)
    # the unigram reference is the loss of predicting token frequencies
    assert 2.0 < task.unigram_loss(cfg, slices[0]) < np.log(300)


def test_impossible_settings_are_harness_errors(tmp_path):
    task = LanguageModelling()
    with pytest.raises(HarnessError, match="no validation document has the"):
        task.generate(config(write_corpus(tmp_path / "c", words_per_doc=20), eval_lengths=(1, 8)), "test", 0)
    with pytest.raises(HarnessError, match="bpe:N with N >= 260"):
        task.validate(config(tmp_path, tokenizer="bpe:12"))
    with pytest.raises(HarnessError, match="valid_fraction"):
        task.validate(config(tmp_path, valid_fraction=0.0))
    with pytest.raises(HarnessError, match="names no files"):  # before any cell runs
        task.validate(config(tmp_path / "missing"))


def test_a_datasets_source_streams_records(tmp_path):
    """hf:NAME:SPLIT through `datasets` (here a local folder of JSONL files: nothing is downloaded)."""
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"body": f"doc {i}"}) + "\n" for i in range(5)))
    docs = list(documents(f"hf:{folder}:train", text_field="body"))
    assert [text for _, text in docs] == [f"doc {i}" for i in range(5)]
    with pytest.raises(CorpusError, match="cannot open"):
        list(documents(f"hf:{tmp_path / 'missing'}:train"))


def test_a_hugging_face_tokenizer_by_path(tmp_path):
    """A tokenizer given by name or path (here one saved to disk: offline) instead of a BPE trained on the corpus."""
    folder = write_corpus(tmp_path / "c")
    trained = load_corpus(config(folder))
    trained.tokenizer.save_pretrained(tmp_path / "tok")
    corpus = load_corpus(config(folder, tokenizer=str(tmp_path / "tok")))
    assert corpus.vocab_size == trained.vocab_size
    assert np.array_equal(np.asarray(corpus.train.tokens), np.asarray(trained.train.tokens))
    with pytest.raises(HarnessError, match="cannot load tokenizer"):
        LanguageModelling().vocab_size(config(folder, tokenizer=str(tmp_path / "no-such-tokenizer")))
