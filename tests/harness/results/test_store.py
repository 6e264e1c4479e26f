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
    assert json.loads((tmp_path / "cells" / "a1.json").read_text()) == {"config": {"x": 1}}
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
    with pytest.raises(HarnessError, match=r"corrupt result file .*zz.jsonl \(line 1\)"):
        store.read()


def test_empty_store_reads_as_empty_frame_with_columns(tmp_path):
    frame = ResultStore(tmp_path).read()
    assert frame.empty and list(frame.columns) == COLUMNS


def test_tidy_removes_what_finished_cells_left_and_nothing_else(tmp_path):
    store = ResultStore(tmp_path)
    store.write("a1", rows("a1", 0.5), {})
    for name in ("a1.lock", "a1.ckpt", ".a1.jsonl.x7.tmp", "b2.lock", "b2.ckpt", ".b2.json.y8.tmp"):
        (tmp_path / "cells" / name).write_text("")
    store.tidy()
    left = sorted(p.name for p in (tmp_path / "cells").iterdir())
    assert left == [".b2.json.y8.tmp", "a1.json", "a1.jsonl", "b2.ckpt", "b2.lock"]
