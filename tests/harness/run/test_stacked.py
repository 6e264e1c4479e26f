"""`harness run --stack-lrs` (harness/run/stacked.py): cells that differ only in their lr, trained as one stacked
model, store what each stores when trained alone (the same histories, steps, statuses and slice rows, up to
float32 rounding), each member stopping early or diverging on its own; the Stacking launcher submits whole
stacks and hands every member back its own result."""

import pytest

import models.presets  # noqa: F401
import tasks  # noqa: F401
from harness.results.store import ResultStore
from harness.run.cell import CellOptions, environment_failure
from harness.run.launchers import InProcess, LaunchOptions, Pool, Stacking
from harness.run.stacked import CellStack, group_stacks
from harness.run.sweep import run_cells
from tests.harness.run.sweeps import small_cells


def stored(store, cells):
    out = {}
    for cell in cells:
        rows, meta = store.rows(cell.id), store.read_meta(cell.id)
        out[cell.id] = dict(
            status=rows[0]["status"],
            steps=rows[0]["steps"],
            values={(r["slice"], r["metric"]): r["value"] for r in rows},
            accuracy=[point["valid_accuracy"] for point in meta["history"]],
            stacked_with=meta.get("stacked_with"),
        )
    return out


def assert_same_as_alone(stacked, alone):
    assert stacked.keys() == alone.keys()
    for cell_id, got in stacked.items():
        want = alone[cell_id]
        assert (got["status"], got["steps"]) == (want["status"], want["steps"]), cell_id
        assert got["accuracy"] == pytest.approx(want["accuracy"], abs=2e-3), cell_id
        assert got["values"].keys() == want["values"].keys()
        for key, value in want["values"].items():
            assert got["values"][key] == pytest.approx(value, rel=1e-3, abs=2e-3, nan_ok=True), (cell_id, key)


@pytest.mark.parametrize("launcher", ["inprocess", "pool"])
def test_stacked_cells_store_what_each_stores_alone(tmp_path, launcher):
    # three lrs, one of them so large that it diverges at its first step; a target that lr 3e-3 reaches at its
    # first validation and 1e-3 only later: each member stops (or diverges) on its own
    extra = ("train.target_accuracy=0.28", "train.max_steps=48")
    cells = small_cells(lrs=(1e-3, 3e-3, 1e5), extra=extra)
    alone = ResultStore(tmp_path / "alone")
    run_cells(cells, alone)
    inner = InProcess() if launcher == "inprocess" else Pool(LaunchOptions(workers=1))
    together = ResultStore(tmp_path / "stacked")
    outcome = run_cells(cells, together, launcher=Stacking(inner, 3))
    assert outcome.ran == 3
    expected, got = stored(alone, cells), stored(together, cells)
    assert sorted(r["status"] for r in expected.values()) == ["diverged", "ok", "ok"]
    assert len({r["steps"] for r in expected.values()}) == 3  # they did stop at different steps
    assert_same_as_alone(got, expected)
    assert {r["stacked_with"] for r in got.values()} == {3}


class Recording:
    """A launcher that runs nothing: it records what it is given and answers with what the test puts in."""

    def __init__(self, slots):
        self.slots, self.submitted, self.answers = slots, [], []

    def submit(self, unit, options):
        self.submitted.append(unit)

    def wait(self, timeout):
        answers, self.answers = self.answers, []
        return answers

    def close(self):
        pass


def test_stacking_submits_whole_stacks_as_room_allows_and_splits_their_results():
    cells = small_cells(lrs=(1e-3, 3e-3), seeds=(0, 1))  # two stacks of two
    assert [len(group) for group in group_stacks(cells)] == [2, 2]
    inner = Recording(slots=1)
    stacking = Stacking(inner, 2)
    assert stacking.slots == 2
    for cell in cells:
        stacking.submit(cell, CellOptions())
    assert stacking.wait(0) == [] and len(inner.submitted) == 1  # room for one stack: the other waits
    first = inner.submitted[0]
    assert isinstance(first, CellStack) and {c.seed for c in first.cells} == {0}
    rows = [{"run_id": c.id, "status": "ok"} for c in first.cells]
    inner.answers = [(first, rows, {"stack": [{"history": [1]}, {"history": [2]}], "cells_at_once": 1})]
    finished = stacking.wait(0)
    assert [(cell, rows, meta) for cell, rows, meta in finished] == [
        (first.cells[0], [rows[0]], {"history": [1], "cells_at_once": 1}),
        (first.cells[1], [rows[1]], {"history": [2], "cells_at_once": 1}),
    ]
    assert len(inner.submitted) == 2 and {c.seed for c in inner.submitted[1].cells} == {1}
    # a stack that did not run to its end (its worker died) is no member's result: each runs again next time
    second = inner.submitted[1]
    inner.answers = [(second, *environment_failure("worker process died"))]
    finished = stacking.wait(0)
    assert [(cell, rows) for cell, rows, _ in finished] == [(c, []) for c in second.cells]
    assert all(meta["environment"] == "worker process died" for _, _, meta in finished)


def test_a_cell_whose_siblings_are_not_submitted_runs_alone():
    cells = small_cells(lrs=(1e-3, 3e-3))
    inner = Recording(slots=2)
    stacking = Stacking(inner, 2)
    stacking.submit(cells[0], CellOptions())
    stacking.wait(0)
    assert inner.submitted == [cells[0]]


def test_a_stack_is_named_as_its_cells_are():
    cells = small_cells(lrs=(1e-3, 3e-3))
    stack = CellStack(tuple(cells), (CellOptions(), CellOptions()))
    assert stack.label == "mla@tiny · mqar · lr=0.001,0.003 · seed=0 (stacked)"
    assert stack.id == f"{cells[0].id}+{cells[1].id}"
