import hashlib
import json

import pytest

from harness.errors import HarnessError
from harness.results.schema import COLUMNS
from harness.results.store import ResultStore


def rows(run_id, value):
    return [dict(run_id=run_id, task="mqar", slice="seq_len=64", metric="accuracy", value=value, status="ok")]


def test_write_then_read(tmp_path):
    store = ResultStore(tmp_path)
    store.write("a1", rows("a1", 0.5), {"config": {"x": 1}})
    store.write("b2", rows("b2", 0.9), {"config": {"x": 2}})
    frame = store.read()
    assert list(frame.columns[: len(COLUMNS)]) == COLUMNS
    assert sorted(frame["value"]) == [0.5, 0.9]
    assert store.has("a1") and not store.has("c3")
    meta = json.loads((tmp_path / "cells" / "a1.json").read_text())
    data = (tmp_path / "cells" / "a1.jsonl").read_bytes()
    assert meta == {"config": {"x": 1}, "result_rows": 1, "result_sha256": hashlib.sha256(data).hexdigest()}
    assert not list((tmp_path / "cells").glob("*.tmp")), "no temporary files left behind"


def test_results_are_never_overwritten(tmp_path):
    store = ResultStore(tmp_path)
    store.write("a1", rows("a1", 0.5), {})
    with pytest.raises(FileExistsError):
        store.write("a1", rows("a1", 0.1), {})
    assert store.read()["value"].tolist() == [0.5]


def test_corrupt_file_is_named(tmp_path):
    store = ResultStore(tmp_path)
    store.write("a1", rows("a1", 0.5), {})
    (tmp_path / "cells" / "zz.jsonl").write_text('{"run_id": "zz", "val')
    with pytest.raises(HarnessError, match=r"damaged cell .*zz.jsonl: its metadata zz.json is missing"):
        store.read()
    assert store.read(["a1"])["value"].tolist() == [0.5], "a damaged cell elsewhere does not stop a reader"
    assert store.done() == {"a1"} and list(store.damaged()) == ["zz"]


def test_a_cell_being_written_is_not_damaged(tmp_path):
    # between the two writes of a cell, its .jsonl has no metadata yet; its lease says it is being written
    store = ResultStore(tmp_path)
    lease = store.lease("zz")
    (tmp_path / "cells" / "zz.jsonl").write_text(json.dumps(rows("zz", 0.1)[0]) + "\n")
    assert store.damaged() == {} and store.done() == set() and store.read().empty
    lease.release(remove=False)
    assert list(store.damaged()) == ["zz"]


def test_legacy_cells_without_checksums_read_as_complete(tmp_path):
    store = ResultStore(tmp_path)
    store.cells.mkdir(parents=True)
    (store.cells / "old.json").write_text(json.dumps({"config": {}}))  # written before checksums existed
    (store.cells / "old.jsonl").write_text(json.dumps(rows("old", 0.7)[0]) + "\n")
    assert store.has("old") and store.read()["value"].tolist() == [0.7]
    (store.cells / "old.jsonl").write_text("")
    assert not store.has("old") and "old.jsonl: empty" in store.damaged()["old"]


def test_a_lease_sets_a_damaged_cell_aside_and_write_stores_it_anew(tmp_path, capsys):
    store = ResultStore(tmp_path)
    store.write("a1", rows("a1", 0.5), {})
    (store.cells / "a1.jsonl").write_text("")
    lease = store.lease("a1")
    assert sorted(p.name for p in (store.cells / "damaged").iterdir()) == ["a1.1.json", "a1.1.jsonl"]
    assert "a1.jsonl" in capsys.readouterr().err
    store.write("a1", rows("a1", 0.6), {})
    lease.release()
    assert store.read()["value"].tolist() == [0.6]


def test_empty_store_reads_as_empty_frame_with_columns(tmp_path):
    frame = ResultStore(tmp_path).read()
    assert frame.empty and list(frame.columns) == COLUMNS


def test_tidy_removes_what_finished_cells_left_and_nothing_else(tmp_path):
    store = ResultStore(tmp_path)
    store.write("a1", rows("a1", 0.5), {})
    names = (
        "a1.lock",
        "a1.ckpt",
        "a1.ckpt.safetensors",
        ".a1.jsonl.x7.tmp",
        "b2.lock",
        "b2.ckpt.safetensors",
    )
    for name in (*names, ".b2.json.y8.tmp"):
        (tmp_path / "cells" / name).write_text("")
    store.tidy()
    left = sorted(p.name for p in (tmp_path / "cells").iterdir())
    assert left == [".b2.json.y8.tmp", "a1.json", "a1.jsonl", "b2.ckpt.safetensors", "b2.lock"]


def test_a_checked_cell_may_hold_no_rows(tmp_path):
    # e.g. an lm-eval run whose tasks reported nothing: finished, with the count it recorded
    store = ResultStore(tmp_path)
    store.write("e1", [], {})
    assert store.has("e1") and store.rows("e1") == [] and store.damaged() == {}
