"""`harness compare-stores`: two runs of the same cells agree; a store with a value changed, a cell missing or a
status changed does not, and says where."""

import math
import shutil

import pytest
import torch
from typer.testing import CliRunner

import models.presets  # noqa: F401
import tasks  # noqa: F401
from harness.cli import app
from harness.results.compare import compare_stores
from harness.results.store import ResultStore
from harness.run.sweep import run_cells
from tests.harness.run.sweeps import small_cells


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same two cells run twice, in process, one thread: on the CPU the rows are the same bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cells = small_cells(lrs=(1e-3, 3e-3), seeds=(0,))
    roots = [tmp_path_factory.mktemp(name) for name in ("a", "b")]
    for root in roots:
        run_cells(cells, ResultStore(root))
    torch.set_num_threads(threads)
    return roots


def rewrite(root, cell_id, change):
    """Replace a cell's rows with `change(rows)`, checksum and all (as a run that measured otherwise would)."""
    store = ResultStore(root)
    rows, meta = store.rows(cell_id), store.read_meta(cell_id)
    for suffix in (".jsonl", ".json"):
        (store.cells / f"{cell_id}{suffix}").unlink()
    store.write(cell_id, change(rows), {k: v for k, v in meta.items() if not k.startswith("result_")})


def test_two_runs_of_the_same_cells_agree(two_runs):
    a, b = two_runs
    comparison = compare_stores(a, b)
    assert comparison.agree and len(comparison.both) == 2 and not comparison.only_a + comparison.only_b
    assert len(comparison.matched) > 0 and comparison.matched["diff"].max() == 0
    result = CliRunner().invoke(app, ["compare-stores", str(a), str(b)])
    assert result.exit_code == 0 and result.output.rstrip().endswith("the stores agree")


def test_a_perturbed_store_differs_and_says_where(two_runs, tmp_path):
    a, b = two_runs
    c = tmp_path / "c"
    shutil.copytree(b, c)
    first, second = sorted(ResultStore(c).done())

    def nudge(rows):
        # the first measurement a bit off, the second not a number
        measured = [row for row in rows if row["metric"] is not None]
        measured[0]["value"] += 0.25
        measured[1]["value"] = math.nan
        return rows

    rewrite(c, first, nudge)
    comparison = compare_stores(a, c, tolerance=0.1)
    assert not comparison.agree
    (worst, other) = comparison.differing
    assert worst.run_id == first and other.run_id == first
    assert worst.diff == math.inf and other.diff == pytest.approx(0.25)  # the largest first
    assert comparison.matched["diff"].max() == math.inf
    # within a tolerance that covers the nudge, only the NaN differs
    assert len(compare_stores(a, c, tolerance=0.3).differing) == 1

    # a cell missing, and another's status changed
    (ResultStore(c).cells / f"{first}.jsonl").unlink()
    (ResultStore(c).cells / f"{first}.json").unlink()
    rewrite(c, second, lambda rows: [dict(row, status="diverged") for row in rows])
    comparison = compare_stores(a, c)
    assert comparison.only_a == [first] and comparison.status == {second: ("ok", "diverged")}
    result = CliRunner().invoke(app, ["compare-stores", str(a), str(c)])
    assert result.exit_code == 1
    assert f"only in {a}: {first}" in result.output and result.output.rstrip().endswith("the stores differ")


def test_duplicated_measurements_and_a_missing_store(two_runs, tmp_path):
    a, b = two_runs
    c = tmp_path / "c"
    shutil.copytree(b, c)
    cell_id = sorted(ResultStore(c).done())[0]
    rewrite(c, cell_id, lambda rows: rows + rows[-1:])
    assert len(compare_stores(a, c).duplicated) == 1 and not compare_stores(a, c).agree
    result = CliRunner().invoke(app, ["compare-stores", str(a), str(tmp_path / "nothing")])
    assert result.exit_code != 0
