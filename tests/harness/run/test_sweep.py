"""Sweeps: lr x seed grids, grid files, leases and resume, checkpoints, failures as data, status."""

import dataclasses
import math
import os
import time

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import models.presets  # noqa: F401
import tasks  # noqa: F401
from harness.cli import app, main
from harness.errors import HarnessError
from harness.registry import MIXERS
from harness.results.store import ResultStore
from harness.run.cell import CellOptions, run_cell
from harness.run.grid import load_grid
from harness.run.status import sweep_progress
from harness.run.sweep import Every, plan_cells, run_cells
from harness.run.train import Checkpointing, read_checkpoint, training_curve
from models.backbone import Mixer, ModelConfig
from tests.harness.run.sweeps import comparable, small_cells


@pytest.fixture(autouse=True)
def one_thread():
    # tiny models gain nothing from a second thread, and lose much on a busy machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_lrs_and_seeds_make_the_grid():
    cells = plan_cells(["kda", "mla"], "smoke", "tiny", seeds=[0, 1, 2], lrs=[1e-3, 3e-3])
    assert len(cells) == 2 * 2 * 3 and len({cell.id for cell in cells}) == 12
    assert {(c.train.lr, c.seed) for c in cells if c.model_name == "kda"} == {
        (lr, s) for lr in (1e-3, 3e-3) for s in (0, 1, 2)
    }
    default = plan_cells(["kda"], "recall", "small")
    assert {c.train.lr for c in default} == {3e-4, 1e-3, 3e-3} and {c.seed for c in default} == {0, 1, 2}
    with pytest.raises(HarnessError, match="must be positive"):
        plan_cells(["kda"], "smoke", lrs=[0.0])


def test_grid_file(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(
        'models = ["kda", "mla"]\nsuite = "smoke"\nlrs = [1e-3, 3e-3]\nseeds = [0, 1]\nparams = "150K"\n'
        '[set]\n"train.max_steps" = 10\ntask.test_settings = [[64, 2], [64, 4]]\n'
    )
    grid = load_grid(path)
    assert grid.models == ("kda", "mla") and grid.lrs == (1e-3, 3e-3) and grid.seeds == (0, 1)
    assert grid.set == ("train.max_steps=10", "task.test_settings=64,2;64,4")
    merged = grid.merged(seeds=(5,), set=("train.max_steps=20",), suite=None)
    assert merged.seeds == (5,) and merged.suite == "smoke" and merged.set[-1] == "train.max_steps=20"
    (tmp_path / "bad.toml").write_text('model = ["kda"]\n')
    with pytest.raises(HarnessError, match="unknown key 'model'; did you mean models"):
        load_grid(tmp_path / "bad.toml")
    (tmp_path / "bad2.toml").write_text('lrs = ["fast"]\n')
    with pytest.raises(HarnessError, match="'lrs' should be a list of positive numbers"):
        load_grid(tmp_path / "bad2.toml")


def test_grid_file_on_the_command_line(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text('models = "kda,mla"\nsuite = "smoke"\nlrs = [1e-3, 3e-3]\nparams = "150K"\n')
    result = CliRunner().invoke(
        app, ["run", "--grid", str(path), "--seeds", "0,1", "--out", str(tmp_path / "o"), "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.count(" todo ") == 8 and "sized to 150K non-embedding" in result.output
    assert "kda@tiny~150K: d_model" in result.output


def test_lease_is_exclusive_and_a_dead_holders_leftovers_go(tmp_path):
    store = ResultStore(tmp_path)
    lease = store.lease("c1", label="cell one")
    assert lease is not None and store.lease("c1") is None
    assert store.running()["c1"]["label"] == "cell one" and store.running()["c1"]["pid"] == os.getpid()
    lease.release(remove=False)  # as a killed holder: the lock file stays, unlocked
    assert store.running() == {}
    (store.cells / ".c1.jsonl.abc123.tmp").write_text("half a row")
    again = store.lease("c1")
    assert again is not None and not list(store.cells.glob("*.tmp"))
    store.write("c1", [dict(run_id="c1", status="ok")], {})
    again.release()
    assert not (store.cells / "c1.lock").exists() and store.done() == {"c1"}


def test_checkpoint_resume_ends_as_an_uninterrupted_run(tmp_path, monkeypatch):
    cell = small_cells(lrs=(3e-3,))[0]
    reference_rows, reference_meta = run_cell(cell)

    import harness.run.train

    saved = harness.run.train.save_checkpoint

    def save_then_die(path, *args):
        saved(path, *args)
        raise KeyboardInterrupt  # killed right after the checkpoint at step 5

    checkpointing = Checkpointing(tmp_path / "c.ckpt.safetensors", every_steps=5, every_s=None)
    monkeypatch.setattr(harness.run.train, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_cell(cell, CellOptions(checkpointing=checkpointing))
    _, header = read_checkpoint(tmp_path / "c.ckpt.safetensors")
    assert header["result"]["steps"] == 5
    monkeypatch.setattr(harness.run.train, "save_checkpoint", saved)
    rows, meta = run_cell(cell, CellOptions(checkpointing=checkpointing))
    assert comparable(rows) == comparable(reference_rows)
    assert training_curve(meta["history"]) == training_curve(reference_meta["history"])


def test_every_parses_steps_and_times():
    assert Every.parse("500") == Every(steps=500)
    assert Every.parse("10m") == Every(seconds=600) and Every.parse("30s") == Every(seconds=30)
    assert Every.parse("off") is None
    with pytest.raises(HarnessError, match="checkpoint-every"):
        Every.parse("often")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FaultConfig:
    fault: str = "nan"


class Faulty(Mixer):
    """A test-only mixer: NaN output, or an exception, from its third call on."""

    Config = FaultConfig

    def __init__(self, d_model, config, kernel_impl="auto"):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)
        self.fault, self.calls = config.fault, 0

    def forward(self, x):
        self.calls += 1
        if self.calls >= 3:
            if self.fault == "nan":
                return self.proj(x) * float("nan")
            if self.fault == "oom":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            raise ValueError("injected failure")
        return self.proj(x)

    def state_size(self, seq_len):
        return 0

    def kernel_name(self, device):
        return "test"


def test_nan_oom_and_exceptions_are_marked_and_the_sweep_goes_on(tmp_path, monkeypatch):
    monkeypatch.setitem(MIXERS._entries, "faulty", Faulty)
    good = small_cells(lrs=(3e-3,))[0]

    def faulty(fault):
        model = ModelConfig(
            vocab_size=16, d_model=16, layers=("faulty",), mixers={"faulty": FaultConfig(fault=fault)}
        )
        return dataclasses.replace(good, model_name=f"faulty-{fault}", model=model)

    cells = [faulty("nan"), good, faulty("error"), faulty("oom"), dataclasses.replace(good, seed=1)]
    store = ResultStore(tmp_path)
    outcome = run_cells(cells, store)
    assert (outcome.ran, outcome.skipped, outcome.unfinished) == (5, 0, {})
    rows = store.read()
    status = rows.groupby("model")["status"].agg(set).to_dict()
    assert status == {
        "faulty-nan": {"diverged"},
        "faulty-error": {"failed"},
        "faulty-oom": {"oom"},
        "mla": {"ok"},
    }
    errors = rows.drop_duplicates("run_id").set_index("model")["error"]
    assert (
        errors["faulty-error"] == "ValueError: injected failure" and "out of memory" in errors["faulty-oom"]
    )
    assert len(rows[rows["model"] == "mla"].drop_duplicates("run_id")) == 2
    report = CliRunner().invoke(app, ["report", "--out", str(tmp_path)])
    assert report.exit_code == 0, report.output
    assert "did not finish normally" in report.output
    for text in ("diverged", "oom", "ValueError: injected failure"):
        assert text in report.output


def test_a_rerun_skips_and_status_counts(tmp_path):
    cells = small_cells(lrs=(1e-3, 3e-3), seeds=(0, 1))
    store = ResultStore(tmp_path)
    assert run_cells(cells[:2], store).ran == 2
    assert run_cells(cells, store, launcher=None, poll_s=0.1).skipped == 2
    # one more planned cell, held by a live process: running; ETA from the finished cells' durations
    extra = small_cells(lrs=(1e-2,), seeds=(0, 1))
    from harness.run.sweep import record_plan

    record_plan(store, cells + extra)
    lease = store.lease(extra[0].id, label=extra[0].label)
    (sweep,) = [s for s in sweep_progress(tmp_path) if s["cells"] == 6]
    assert (sweep["done"], sweep["ok"], sweep["running"], sweep["remaining"]) == (4, 4, 1, 1)
    assert sweep["eta_s"] is not None and sweep["eta_s"] > 0
    assert sweep["running_cells"][0]["label"] == extra[0].label
    status = CliRunner().invoke(app, ["status", "--out", str(tmp_path)])
    assert status.exit_code == 0 and "running:" in status.output and extra[0].label in status.output
    lease.release()


def test_a_cell_held_elsewhere_is_waited_for_then_taken_over(tmp_path):
    cells = small_cells(lrs=(3e-3,))
    store = ResultStore(tmp_path)
    lease = store.lease(cells[0].id)
    started = time.time()
    import threading

    # the holder "dies" (releases without a result) after a moment: the sweep then runs the cell itself
    threading.Timer(1.0, lambda: lease.release(remove=False)).start()
    heard = []
    assert run_cells(cells, store, poll_s=0.2, on_wait=heard.append).ran == 1
    assert heard == [cells]
    assert time.time() - started >= 1.0 and store.done() == {cells[0].id}
    assert not math.isnan(store.read()["value"].astype(float).iloc[0])


def test_no_cell_starts_after_start_until_and_the_next_sweep_runs_the_rest(tmp_path):
    store = ResultStore(tmp_path)
    cells = small_cells(lrs=(1e-3, 2e-3, 3e-3))
    # in process, a cell runs to its end inside submit(): the first starts, the deadline passes meanwhile
    first = run_cells(cells, store, start_until=time.monotonic() + 0.05)
    assert (first.ran, first.not_started) == (1, 2)
    assert len(store.done()) == 1
    rest = run_cells(cells, store)
    assert (rest.ran, rest.skipped, rest.not_started) == (2, 1, 0)


def test_stop_starting_after_on_the_command_line(tmp_path):
    out = tmp_path / "runs"
    args = ["run", "--models", "mla", "--suite", "smoke", "--out", str(out), "--lrs", "1e-3,3e-3",
            "--set", "train.max_steps=4", "--set", "train.eval_every=2", "--set", "task.num_train=32",
            "--set", "task.num_test=8"]  # fmt: skip
    result = CliRunner().invoke(app, [*args, "--stop-starting-after", "0"])
    assert result.exit_code == 0, result.output
    assert "0 cell(s) run, 0 already in" in result.output and "2 not started" in result.output
    with pytest.raises(SystemExit) as bad:  # through the command's error boundary: one line, exit 2
        main([*args, "--stop-starting-after", "-1"])
    assert bad.value.code == 2
    assert not list(out.glob("cells/*.jsonl"))


def test_a_cell_whose_estimate_does_not_fit_before_the_deadline_is_left_for_the_next_sweep(tmp_path):
    store = ResultStore(tmp_path)
    cells = small_cells(lrs=(1e-3, 2e-3, 3e-3))
    # estimates: one fits, one would run past the deadline, one is unknown (it starts)
    wall_s = {cells[0].id: 1.0, cells[1].id: 1e6, cells[2].id: None}
    first = run_cells(cells, store, deadline=time.monotonic() + 3600, wall_s=wall_s)
    assert first.ran == 2 and first.would_not_fit == [cells[1].id]
    assert store.done() == {cells[0].id, cells[2].id}
    rest = run_cells(cells, store)
    assert (rest.ran, rest.skipped) == (1, 2)


def test_deadline_on_the_command_line(tmp_path):
    out = tmp_path / "runs"
    args = ["run", "--models", "mla", "--suite", "smoke", "--out", str(out), "--device", "cpu",
            "--set", "train.max_steps=4", "--set", "train.eval_every=2", "--set", "task.num_train=32",
            "--set", "task.num_test=8", "--set", "train.batch_size=8"]  # fmt: skip
    first = CliRunner().invoke(app, [*args, "--lrs", "1e-3"])
    assert first.exit_code == 0, first.output
    # the stored cell measures the shape of the lr 3e-3 cell: a deadline shorter than it leaves it for later
    # (--stop-starting-after, which would otherwise be half the deadline, is moved out of the way)
    late = ["--deadline", "0.01", "--stop-starting-after", "1000"]
    result = CliRunner().invoke(app, [*args, "--lrs", "1e-3,3e-3", *late])
    assert result.exit_code == 0, result.output
    assert "0 cell(s) run, 1 already in" in result.output
    assert "1 not started because their estimated time no longer fitted before --deadline" in result.output
    for bad in ("0", "-5", "inf"):
        with pytest.raises(SystemExit) as exit_:
            main([*args, "--lrs", "3e-3", "--deadline", bad])
        assert exit_.value.code == 2
    assert len(list(out.glob("cells/*.jsonl"))) == 1
