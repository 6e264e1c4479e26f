"""Launchers: the pool's GPU packing, and a small sweep through Ray on a local instance with the same results as
in-process. (The pool's results are compared with an in-process run in test_kill.py.)"""

import os
import queue
import signal

import pytest
import torch

import models.presets  # noqa: F401
import tasks  # noqa: F401
from harness.errors import HarnessError
from harness.results.store import ResultStore
from harness.run.launchers import LaunchOptions, Pool, make_launcher, visible_gpus
from harness.run.sweep import run_cells
from tests.harness.run.sweeps import comparable, small_cells


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as every Ray task (Ray sets OMP_NUM_THREADS=1 per one-CPU task)
    store = ResultStore(tmp_path_factory.mktemp("reference"))
    cells = small_cells(lrs=(1e-3, 3e-3), seeds=(0,))
    run_cells(cells, store)
    torch.set_num_threads(threads)
    return cells, store


def rows_by_cell(store):
    frame = store.read()
    return {run_id: comparable(group.to_dict("records")) for run_id, group in frame.groupby("run_id")}


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert visible_gpus() == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def test_pool_packs_cells_per_gpu_and_falls_back_to_cpu_workers(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    pool = Pool(LaunchOptions(cells_per_gpu=3))
    assert pool.slots == 6 and [w.device for w in pool._workers] == ["0", "1"] * 3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert Pool(LaunchOptions(workers=2)).slots == 2
    with pytest.raises(HarnessError, match="unknown launcher 'slurm'"):
        make_launcher("slurm")


@pytest.mark.slow
def test_ray_on_a_local_instance_equals_in_process(tmp_path, reference):
    pytest.importorskip("ray", reason="Ray is not installed (pip install ray)")
    cells, expected = reference
    store = ResultStore(tmp_path)
    launcher = make_launcher("ray", LaunchOptions(workers=2))  # a local instance with 2 CPUs
    assert launcher.slots == 2
    assert run_cells(cells, store, launcher=launcher).ran == len(cells)
    assert rows_by_cell(store) == rows_by_cell(expected)
    assert not list(store.cells.glob("*.lock")) and os.path.isdir(store.root / "sweeps")


@pytest.mark.slow
def test_a_pool_worker_that_dies_under_a_cell_hands_back_no_rows(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    pool = Pool(LaunchOptions(workers=1))
    cell = small_cells(lrs=(3e-3,), extra=("train.max_steps=100000",))[0]
    try:
        pool.submit(cell, None)
        worker = pool._workers[0]
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.join(timeout=30)
        (finished,) = pool.wait(timeout=10)
        # a failure of the machine, not a result: nothing to store, the next sweep runs the cell again
        assert finished[0] is cell and finished[1] == []
        assert finished[2]["environment"] == "worker process died while running the cell (signal 9)"
        assert worker.cell is None
    finally:
        pool.close()


class _AliveProcess:
    def is_alive(self):
        return True


def test_a_cell_out_of_gpu_memory_beside_others_runs_again_on_a_less_packed_gpu(monkeypatch):
    """The pool's bookkeeping with stand-in workers: results are put on its queue by hand. A cell whose rows say
    `oom` while others share its GPU is no result: it is queued again, first, and the GPU takes one cell fewer
    than were running; out of memory alone, it is the cell's result."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    pool = Pool(LaunchOptions(cells_per_gpu=3))
    inboxes = {}

    def start(worker):
        worker.process, worker.inbox = _AliveProcess(), queue.Queue()
        inboxes[worker.index] = worker.inbox

    monkeypatch.setattr(pool, "_start", start)
    pool._results = queue.Queue()
    a, b, c, d = small_cells(lrs=(1e-3, 2e-3, 3e-3, 4e-3), seeds=(0,))
    for cell in (a, b, c):
        pool.submit(cell, None)
    where = {w.cell.id: w.index for w in pool._workers if w.cell is not None}
    assert len(where) == 3 and pool.slots == 3

    def finish(cell, status):
        pool._results.put((where.pop(cell.id), [{"status": status}], {}))
        done = pool.wait(timeout=1)
        where.update({w.cell.id: w.index for w in pool._workers if w.cell is not None})
        return [(cell.id, rows[0]["status"]) for cell, rows, _ in done]

    assert finish(c, "oom") == []  # beside a and b: not a result
    assert pool.slots == 2 and c.id not in where  # waits, first in line
    pool.submit(d, None)
    assert finish(a, "ok") == [(a.id, "ok")]
    assert c.id in where and d.id not in where  # the retried cell went first
    assert finish(c, "oom") == []  # beside b again
    assert pool.slots == 1
    assert finish(b, "ok") == [(b.id, "ok")] and set(where) == {c.id}  # alone now
    assert finish(c, "oom") == [(c.id, "oom")]  # alone: its own result
    assert set(where) == {d.id}
    assert finish(d, "ok") == [(d.id, "ok")]


def test_each_result_says_how_many_cells_shared_its_gpu(monkeypatch):
    """With stand-in workers (as above): a cell's metadata records the most cells that ran at once on its GPU while
    it ran, itself included, so that its wall time is not taken for one of a cell alone (harness/run/cost.py)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    pool = Pool(LaunchOptions(cells_per_gpu=3))

    def start(worker):
        worker.process, worker.inbox = _AliveProcess(), queue.Queue()

    monkeypatch.setattr(pool, "_start", start)
    pool._results = queue.Queue()
    a, b, c, d = small_cells(lrs=(1e-3, 2e-3, 3e-3, 4e-3), seeds=(0,))

    def finish(cell):
        (index,) = [w.index for w in pool._workers if w.cell is not None and w.cell.id == cell.id]
        pool._results.put((index, [{"status": "ok"}], {"history": []}))
        ((done, _, meta),) = pool.wait(timeout=1)
        assert done.id == cell.id and meta["history"] == []
        return meta["cells_at_once"]

    pool.submit(a, None)
    pool.submit(b, None)
    assert finish(a) == 2
    pool.submit(c, None)  # beside b
    pool.submit(d, None)  # beside b and c: b has now shared with 3
    assert finish(b) == 3 and finish(c) == 3
    assert finish(d) == 3  # alone at the end, but not throughout
    pool.submit(a, None)
    assert finish(a) == 1


def test_in_process_cells_ran_alone(tmp_path):
    (cell,) = small_cells(lrs=(1e-3,), seeds=(0,))
    store = ResultStore(tmp_path)
    run_cells([cell], store, launcher=make_launcher("inprocess"))
    assert store.read_meta(cell.id)["cells_at_once"] == 1


def test_streams_runs_cells_side_by_side_with_the_results_of_one_at_a_time(tmp_path, reference, monkeypatch):
    # two cells in two threads of this process: every row as in process, one after the other (the model's
    # initialisation draws from torch's global generator under a lock, so neither cell's draws mix with the other's)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    cells, expected = reference
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        store = ResultStore(tmp_path)
        launcher = make_launcher("streams", LaunchOptions(cells_per_gpu=2))
        assert launcher.slots == 2
        assert run_cells(cells, store, launcher=launcher).ran == len(cells)
    finally:
        torch.set_num_threads(threads)
    assert rows_by_cell(store) == rows_by_cell(expected)
    assert {store.read_meta(cell.id)["cells_at_once"] for cell in cells} == {2}


def test_streams_reruns_a_cell_that_ran_out_of_memory_beside_others(monkeypatch, capsys):
    import threading
    import time

    import harness.run.launchers as launchers

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    a, b = small_cells(lrs=(1e-3, 3e-3), seeds=(0,))
    calls, release = [], threading.Event()

    def fake_run_cell(cell, options):
        calls.append(cell.id)
        if cell.id == b.id:
            release.wait(5)  # b runs until a has run out of memory beside it
            return [{"status": "ok"}], {}
        if calls.count(a.id) == 1:
            time.sleep(0.1)
            return [{"status": "oom"}], {}
        return [{"status": "ok"}], {}

    monkeypatch.setattr(launchers, "run_cell", fake_run_cell)
    streams = launchers.Streams(LaunchOptions(cells_per_gpu=2))
    streams.submit(a, None)
    streams.submit(b, None)
    assert streams.wait(timeout=2) == []  # a's oom is not its result: it waits for its turn again
    assert "ran out of GPU memory beside 1 other cell" in capsys.readouterr().err
    assert streams.slots == 1 and sorted(calls) == sorted([a.id, b.id])
    release.set()
    done = []
    while len(done) < 2:
        done += streams.wait(timeout=5)
    assert {cell.id for cell, _, _ in done} == {a.id, b.id} and calls.count(a.id) == 2
    assert all(rows == [{"status": "ok"}] for _, rows, _ in done)


def test_streams_cells_stand_still_while_another_captures(monkeypatch):
    # the launcher registers each cell's thread with the capture gate: a cell's CUDA calls (here sleeps between
    # checkpoints) stop while another cell of the process captures, and go on after it
    import threading
    import time

    import harness.run.launchers as launchers
    from harness.run.capture_gate import GATE

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    stepping, capturing = small_cells(lrs=(1e-3, 3e-3), seeds=(0,))
    spans, captures, started, captured = [], [], threading.Event(), threading.Event()

    def fake_run_cell(cell, options):
        if cell.id == stepping.id:
            for _ in range(500):
                GATE.checkpoint()
                begin = time.monotonic()
                started.set()
                time.sleep(0.01)
                spans.append((begin, time.monotonic()))
                if captured.is_set():
                    break
        else:
            assert started.wait(5)
            with GATE.capturing():
                began = time.monotonic()
                time.sleep(0.1)
                captures.append((began, time.monotonic()))
            captured.set()
        return [{"status": "ok"}], {}

    monkeypatch.setattr(launchers, "run_cell", fake_run_cell)
    streams = launchers.Streams(LaunchOptions(cells_per_gpu=2))
    streams.submit(stepping, None)
    streams.submit(capturing, None)
    done, deadline = [], time.monotonic() + 10
    while len(done) < 2 and time.monotonic() < deadline:
        done += streams.wait(timeout=1)
    assert [rows for _, rows, _ in done] == [[{"status": "ok"}]] * 2
    ((began, ended),) = captures
    assert all(end <= began or start >= ended for start, end in spans)
    assert any(start >= ended for start, _ in spans)  # it went on after the capture


def test_streams_refuses_several_gpus_and_a_failed_thread_is_no_result(monkeypatch, tmp_path):
    import harness.run.launchers as launchers

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(HarnessError, match="runs its cells on one GPU"):
        make_launcher("streams", LaunchOptions(cells_per_gpu=4))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")

    def broken(cell, options):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(launchers, "run_cell", broken)
    (cell,) = small_cells(lrs=(1e-3,), seeds=(0,))
    outcome = run_cells(
        [cell], ResultStore(tmp_path), launcher=launchers.Streams(LaunchOptions(cells_per_gpu=2))
    )
    assert outcome.ran == 0 and "illegal memory access" in outcome.unfinished[cell.id]
    assert not ResultStore(tmp_path).done()
