"""TensorBoard logging is optional: curves go there when asked and installed; a clear error when not installed."""

import sys

import pytest

from harness.errors import HarnessError
from harness.run.train import require_tensorboard


def test_missing_tensorboard_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    with pytest.raises(HarnessError, match="pip install tensorboard"):
        require_tensorboard()


def test_training_curve_goes_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from harness.run.cell import CellOptions, run_cell
    from harness.run.sweep import plan_cells

    overrides = [
        "train.max_steps=4",
        "train.eval_every=2",
        "train.batch_size=8",
        "task.num_train=64",
        "task.num_test=16",
    ]
    (cell,) = plan_cells(["gdn"], "smoke", None, overrides, None, lrs=[3e-3])
    rows, meta = run_cell(cell, CellOptions(log_dir=tmp_path / "tb"))
    assert rows[0]["status"] == "ok"
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert [e.step for e in events.Scalars("valid_accuracy")] == [2, 4]
    assert {"train_loss", "valid_loss", "current_lr"} <= set(events.Tags()["scalars"])
    assert [p["step"] for p in meta["history"]] == [2, 4] and "valid_loss" in meta["history"][0]
