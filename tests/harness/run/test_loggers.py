"""Logging users already have, optional: TensorBoard runs named by cell label with per-step loss, the evaluation
curve, hyper-parameters and final metrics; a Weights & Biases run per cell (offline here); one-line errors when
a package is missing; and none of it changes a result row."""

import os
import subprocess
import sys

import pytest

from harness.errors import HarnessError
from harness.results.store import ResultStore
from harness.run.cell import CellOptions, run_cell
from harness.run.loggers import WandbOptions, require_tensorboard, require_wandb, run_name
from harness.run.sweep import plan_cells, run_cells
from tests.harness.run.sweeps import comparable

OVERRIDES = [
    "train.max_steps=4",
    "train.eval_every=2",
    "train.batch_size=8",
    "task.num_train=64",
    "task.num_test=16",
]


@pytest.fixture(scope="module")
def cell():
    (cell,) = plan_cells(["gdn"], "smoke", None, OVERRIDES, None, lrs=[3e-3])
    return cell


@pytest.fixture(scope="module")
def unlogged(cell):
    return run_cell(cell)


def test_missing_packages_are_one_line_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    with pytest.raises(HarnessError, match="pip install tensorboard"):
        require_tensorboard()
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(HarnessError, match="pip install wandb"):
        require_wandb()


def test_tensorboard_gets_per_step_loss_the_curve_hyperparameters_and_final_metrics(tmp_path, cell, unlogged):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    store = ResultStore(tmp_path)
    run_cells([cell], store, tensorboard=True)
    # one run per cell, named by its label and id
    (folder,) = (tmp_path / "tensorboard").iterdir()
    assert folder.name == run_name(cell) == f"gdn@tiny_mqar_lr=0.003_seed=0_{cell.id}"
    events = EventAccumulator(str(folder)).Reload()
    assert [e.step for e in events.Scalars("train_loss_step")] == [1, 2, 3, 4]
    assert [e.step for e in events.Scalars("valid_accuracy")] == [2, 4]
    assert {"train_loss", "valid_loss", "current_lr", "tokens_per_s"} <= set(events.Tags()["scalars"])
    rows = store.read()
    accuracy = rows[rows["metric"] == "accuracy"]
    final = {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}
    assert final["test/accuracy"] == pytest.approx(accuracy["value"].mean())
    for piece, value in zip(accuracy["slice"], accuracy["value"], strict=True):
        assert final[f"test/accuracy/{piece}"] == pytest.approx(value)
    # the hparams plugin: the cell's flattened config
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["train.lr"].number_value == pytest.approx(3e-3)
    assert hparams["model_name"].string_value == "gdn" and hparams["cell_id"].string_value == cell.id
    assert hparams["task.vocab_size"].number_value == 16
    # logging changes no measurement (the rows of run_cell are compared whole in the tests below)
    measured = sorted(zip(rows["slice"], rows["metric"], rows["value"], strict=True))
    assert measured == sorted((r["slice"], r["metric"], r["value"]) for r in unlogged[0])
    assert set(rows["run_id"]) == {cell.id}


def test_a_wandb_run_per_cell_offline(tmp_path, monkeypatch, cell, unlogged):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    rows, meta = run_cell(cell, CellOptions(wandb=WandbOptions(project="tests", dir=tmp_path)))
    assert comparable(rows) == comparable(unlogged[0])
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    assert any(run.glob("run-*.wandb"))


class FakeRun:
    def __init__(self, **init):
        self.init, self.logged, self.summary, self.exit_code = init, [], {}, None

    def log(self, values, step):
        self.logged.append((step, values))

    def finish(self, exit_code):
        self.exit_code = exit_code


def test_what_a_wandb_run_holds(monkeypatch, cell, unlogged):
    """wandb's own offline files are binary: a stand-in records what the harness hands it."""
    wandb = pytest.importorskip("wandb")
    runs = []
    monkeypatch.setattr(wandb, "init", lambda **init: runs.append(FakeRun(**init)) or runs[-1])
    rows, _ = run_cell(cell, CellOptions(wandb=WandbOptions(project="p")))
    (run,) = runs
    assert (
        run.init["name"] == f"gdn@tiny · mqar · lr=0.003 · seed=0 ({cell.id})" and run.init["project"] == "p"
    )
    assert run.init["config"]["train"]["lr"] == 3e-3 and run.init["config"]["cell_id"] == cell.id
    per_step = [step for step, values in run.logged if "train_loss_step" in values]
    assert per_step == [1, 2, 3, 4]
    assert [step for step, values in run.logged if "valid_accuracy" in values] == [2, 4]
    accuracy = [row["value"] for row in rows if row["metric"] == "accuracy"]
    assert run.summary["test/accuracy"] == pytest.approx(sum(accuracy) / len(accuracy))
    assert run.summary["steps"] == 4 and run.exit_code == 0


def test_a_logger_that_fails_does_not_fail_the_cell(monkeypatch, capsys, cell, unlogged):
    wandb = pytest.importorskip("wandb")

    def no_login(**_):
        raise RuntimeError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])")

    monkeypatch.setattr(wandb, "init", no_login)
    rows, _ = run_cell(cell, CellOptions(wandb=WandbOptions()))
    assert comparable(rows) == comparable(unlogged[0])
    assert "warning: W&B logging of gdn@tiny · mqar · lr=0.003 · seed=0 stopped (RuntimeError: api_key" in (
        capsys.readouterr().err
    )


def test_harness_run_logs_to_both(tmp_path, cell):
    pytest.importorskip("wandb")
    pytest.importorskip("tensorboard")
    sets = [arg for override in OVERRIDES for arg in ("--set", override)]
    command = [
        sys.executable,
        "-m",
        "harness.cli",
        "run",
        "--models",
        "gdn",
        "--suite",
        "smoke",
        "--lrs",
        "3e-3",
    ]
    out = tmp_path / "runs"
    env = dict(os.environ, WANDB_MODE="offline")
    result = subprocess.run(
        [*command, *sets, "--out", str(out), "--tensorboard", "--wandb", "--wandb-project", "tests"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "W&B: a run per cell in project tests (offline" in result.stdout
    assert [p.name for p in (out / "tensorboard").iterdir()] == [run_name(cell)]
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1
