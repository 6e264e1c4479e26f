"""`--stack-lrs` on a GPU: three lrs of kda and of mla trained as stacked models replayed from CUDA graphs store
what each cell stores trained alone (bf16: up to rounding, which a few hundred steps carry on), and say that they
ran stacked and captured."""

import pytest
import torch

import models.presets  # noqa: F401
import tasks  # noqa: F401
from harness.results.store import ResultStore
from harness.run.launchers import InProcess, Stacking
from harness.run.sweep import run_cells
from tests.harness.run.sweeps import small_cells

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("model", ["kda", "mla"])
def test_stacked_cells_on_cuda_store_what_each_stores_alone(tmp_path, model):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cells = small_cells(
        lrs=(1e-3, 3e-3, 1e-2), models=(model,), extra=("train.device=cuda", "train.max_steps=64")
    )
    alone, together = ResultStore(tmp_path / "alone"), ResultStore(tmp_path / "stacked")
    run_cells(cells, alone)
    run_cells(cells, together, launcher=Stacking(InProcess(), 3))
    for cell in cells:
        want, got = alone.rows(cell.id), together.rows(cell.id)
        assert want[0]["status"] == "ok", (want[0].get("error"), alone.read_meta(cell.id).get("traceback"))
        assert got[0]["status"] == "ok", (got[0].get("error"), together.read_meta(cell.id).get("traceback"))
        meta = together.read_meta(cell.id)
        assert meta["stacked_with"] == 3 and "cuda-graph" in meta["train_step"], meta["train_step"]
        accuracy = {r["slice"]: r["value"] for r in want if r["metric"] == "accuracy"}
        for row in (r for r in got if r["metric"] == "accuracy"):
            assert row["value"] == pytest.approx(accuracy[row["slice"]], abs=0.05), (cell.label, row["slice"])
