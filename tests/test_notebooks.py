"""The notebooks run top to bottom against the committed results (nbclient) and are committed without outputs."""

from pathlib import Path

import pytest

# optional dependencies (the dev extra): without them, as on a bare GPU image, these tests are skipped
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
from nbclient import NotebookClient  # noqa: E402
from nbclient.exceptions import CellExecutionError  # noqa: E402

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"overview.ipynb", "kimi_synthetic.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    book = nbformat.read(path, as_version=4)
    code = [c for c in book.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path):
    book = nbformat.read(path, as_version=4)
    # raises CellExecutionError, with the failing cell's traceback, on the first error
    NotebookClient(
        book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    images = sum("image/png" in o.get("data", {}) for c in book.cells for o in c.get("outputs", []))
    assert images >= 1


def test_a_notebook_runs_from_any_folder(tmp_path):
    book = nbformat.read(NOTEBOOKS[0].parent / "kimi_synthetic.ipynb", as_version=4)
    NotebookClient(
        book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    assert sum("image/png" in o.get("data", {}) for c in book.cells for o in c.get("outputs", [])) >= 1


def test_a_notebook_without_a_store_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_RESULTS", str(tmp_path / "nowhere"))
    book = nbformat.read(NOTEBOOKS[0].parent / "overview.ipynb", as_version=4)
    with pytest.raises(CellExecutionError, match="HARNESS_RESULTS names no results store at .*nowhere"):
        NotebookClient(
            book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        ).execute()
