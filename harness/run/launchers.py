"""Launchers: where a sweep's cells run. The sweep (harness/run/sweep.py) holds every cell's lease and writes every
result; a launcher only runs cells and hands back (rows, meta).

    inprocess   one cell at a time in this process (default)
    pool        worker processes on this machine: `cells_per_gpu` per visible GPU, each worker pinned to its GPU
                with CUDA_VISIBLE_DEVICES; on a machine without GPUs, `workers` CPU processes
    streams     `cells_per_gpu` cells at once in this process, each in its own thread and CUDA stream, on one GPU:
                a GPU runs the kernels of different processes in turns (one process's context at a time), but
                those of one process's streams side by side, so small cells that leave most of it idle can fill
                it together. The cells share one process: a crash in native code or a CUDA error that breaks
                the context ends all of them (they are not stored and run again next time), their Python
                work shares one interpreter lock, and while one captures a CUDA graph the others wait at their
                next training step or evaluation batch (harness/run/capture_gate.py).
    ray         tasks on a Ray cluster (`address`: an existing cluster such as 'auto' or 'ray://head:10001';
                None starts a local Ray instance). Every node needs this harness installed at the same commit.

Each finished cell's metadata says how many cells ran at once on its device while it ran (`cells_at_once`, the
most at any moment, itself included; pool, streams and inprocess), since a cell's wall time on a shared GPU is no time of
the cell alone (harness/run/cost.py reads it).

Cells packed on one GPU share its memory. A pool worker hands its cached GPU memory back after every cell (the next
cell on that worker must not find it taken), and a cell that runs out of GPU memory while other cells share its GPU
is not a result either: the pool runs it again, first in line, and from then on packs fewer cells on that GPU (one
fewer than were running), down to one; only a cell that runs out of memory alone is stored as `oom`.

A worker that dies while running a cell (killed, out of host memory, a crash in native code) is a failure of the
machine, not a result: the cell is not stored (`environment_failure`), the sweep goes on with a fresh worker, and
the next sweep runs the cell again. If the sweep process itself is killed, the
pool's workers notice and exit, and Ray ends the tasks of a driver that is gone: no orphan keeps writing.
"""

from __future__ import annotations

import gc
import itertools
import multiprocessing
import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from harness.errors import HarnessError, warn
from harness.plugins import load_plugins, loaded_modules
from harness.registry import LAUNCHERS
from harness.run.capture_gate import GATE
from harness.run.cell import Cell, CellOptions, environment_failure, run_cell
from harness.run.stacked import CellStack, group_stacks, run_stack

Finished = tuple[Cell, list[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True, kw_only=True)
class LaunchOptions:
    cells_per_gpu: int = 1
    """Cells run at once on each GPU (pool, ray)."""
    workers: int | None = None
    """Pool: number of worker processes (default: GPUs x cells_per_gpu, or cells_per_gpu on the CPU);
    ray: CPUs of a local instance."""
    ray_address: str | None = None
    """Address of an existing Ray cluster ('auto', 'ray://head:10001'); None starts a local instance."""


class Launcher(Protocol):
    slots: int
    """How many cells may run at once."""

    def submit(self, cell: Cell, options: CellOptions) -> None:
        """Start a cell (only called while fewer than `slots` cells are running)."""

    def wait(self, timeout: float) -> list[Finished]:
        """Cells finished since the last call; waits up to `timeout` seconds for at least one."""

    def close(self) -> None:
        """Stop workers; cells still running are abandoned (their leases are released by the sweep)."""


@LAUNCHERS.register("inprocess")
class InProcess:
    """One cell at a time, in this process."""

    def __init__(self, options: LaunchOptions | None = None):
        self.slots = 1
        self._finished: list[Finished] = []

    def submit(self, cell: Cell, options: CellOptions) -> None:
        rows, meta = run_unit(cell, options)
        self._finished.append((cell, rows, (meta | {"cells_at_once": 1}) if rows else meta))

    def wait(self, timeout: float) -> list[Finished]:
        finished, self._finished = self._finished, []
        return finished

    def close(self) -> None:
        pass


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [part.strip() for part in listed.split(",") if part.strip() and part.strip() != "-1"]
    return [str(i) for i in range(torch.cuda.device_count())]


@LAUNCHERS.register("pool")
class Pool:
    """Worker processes on this machine: `cells_per_gpu` on each visible GPU, or `workers` on the CPU."""

    def __init__(self, options: LaunchOptions | None = None):
        options = options or LaunchOptions()
        cells_per_gpu, workers = options.cells_per_gpu, options.workers
        if cells_per_gpu < 1:
            raise HarnessError(f"--cells-per-gpu must be at least 1, got {cells_per_gpu}")
        gpus = visible_gpus()
        # GPUs interleaved, so that a sweep smaller than the pool still spreads over all of them
        devices: list[str | None] = [gpu for _ in range(cells_per_gpu) for gpu in gpus] if gpus else []
        if workers is not None:
            if workers < 1:
                raise HarnessError(f"--workers must be at least 1, got {workers}")
            devices = [gpus[i % len(gpus)] for i in range(workers)] if gpus else [None] * workers
        elif not gpus:
            devices = [None] * cells_per_gpu
        # CPU threads per worker: the cores shared out, unless OMP_NUM_THREADS says otherwise
        threads = os.environ.get("OMP_NUM_THREADS", "")
        self._threads = int(threads) if threads.isdigit() else max(1, (os.cpu_count() or 1) // len(devices))
        self._context = multiprocessing.get_context("spawn")
        self._results = self._context.Queue()
        self._workers = [_Worker(index, device) for index, device in enumerate(devices)]
        self._limit = {device: devices.count(device) for device in devices if device is not None}
        """Cells at once on each GPU: its workers, lowered when a cell runs out of memory beside others."""
        self._queue: deque[tuple[Cell, CellOptions]] = deque()
        """Cells handed to the pool and not on a worker yet (one run again after running out of memory first)."""

    @property
    def slots(self) -> int:
        cpu_workers = sum(1 for w in self._workers if w.device is None)
        return cpu_workers + sum(self._limit.values())

    def submit(self, cell: Cell, options: CellOptions) -> None:
        self._queue.append((cell, options))
        self._dispatch()

    def wait(self, timeout: float) -> list[Finished]:
        finished = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                index, rows, meta = self._results.get(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
            except queue.Empty:
                pass
            else:
                worker = self._workers[index]
                if not self._ran_out_beside_others(worker, rows):
                    finished.append((worker.cell, rows, meta | {"cells_at_once": worker.most_at_once}))
                worker.cell = worker.options = None
                self._dispatch()
                continue
            for worker in self._workers:
                if worker.cell is not None and not worker.process.is_alive():
                    # its result may still be in the queue if it put it just before dying
                    try:
                        index, rows, meta = self._results.get(timeout=0.5)
                        done = self._workers[index]
                        finished.append((done.cell, rows, meta | {"cells_at_once": done.most_at_once}))
                        done.cell = None
                        continue
                    except queue.Empty:
                        pass
                    code = worker.process.exitcode
                    cause = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                    message = f"worker process died while running the cell ({cause})"
                    finished.append((worker.cell, *environment_failure(message)))
                    worker.cell = worker.options = None
            self._dispatch()
            if finished or time.monotonic() >= deadline:
                return finished

    def close(self) -> None:
        self._queue.clear()
        for worker in self._workers:
            if worker.process is not None and worker.process.is_alive():
                if worker.cell is None:
                    worker.inbox.put(None)
                    worker.process.join(timeout=5)
                if worker.process.is_alive():
                    worker.process.terminate()
                    worker.process.join(timeout=5)

    def _dispatch(self) -> None:
        """Put queued cells on idle workers, as far as each GPU's limit allows."""
        while self._queue:
            worker = next((w for w in self._workers if w.cell is None and self._room(w.device)), None)
            if worker is None:
                return
            cell, options = self._queue.popleft()
            if worker.process is None or not worker.process.is_alive():
                self._start(worker)
            neighbours = [w for w in self._workers if w.cell is not None and w.device == worker.device]
            worker.shared = bool(neighbours) and worker.device is not None
            worker.most_at_once = len(neighbours) + 1
            for other in neighbours:
                other.shared = worker.shared or other.shared
                other.most_at_once = max(other.most_at_once, worker.most_at_once)
            worker.cell, worker.options = cell, options
            worker.inbox.put((cell, options))

    def _room(self, device: str | None) -> bool:
        if device is None:
            return True
        return (
            sum(1 for w in self._workers if w.cell is not None and w.device == device) < self._limit[device]
        )

    def _ran_out_beside_others(self, worker: _Worker, rows: list[dict[str, Any]]) -> bool:
        """A cell that ran out of GPU memory while other cells shared its GPU: queue it again, first, and pack
        fewer cells on that GPU from now on. True if so (the result is not the cell's)."""
        if not (worker.shared and rows and rows[0].get("status") == "oom"):
            return False
        running = sum(1 for w in self._workers if w.cell is not None and w.device == worker.device)
        self._limit[worker.device] = max(1, min(self._limit[worker.device], running - 1))
        self._queue.appendleft((worker.cell, worker.options))
        warn(
            f"{worker.cell.label} ran out of GPU memory beside {running - 1} other cell(s) on GPU "
            f"{worker.device}: it runs again, and that GPU now takes at most {self._limit[worker.device]} "
            "cell(s) at once"
        )
        return True

    def _start(self, worker: _Worker) -> None:
        worker.inbox = self._context.Queue()
        worker.process = self._context.Process(
            target=_pool_worker,
            args=(
                worker.index,
                worker.device,
                self._threads,
                worker.inbox,
                self._results,
                os.getpid(),
                loaded_modules(),
            ),
            daemon=True,
            name=f"harness-worker-{worker.index}",
        )
        worker.process.start()


class _Worker:
    def __init__(self, index: int, device: str | None):
        self.index, self.device = index, device
        self.process: Any = None
        self.inbox: Any = None
        self.cell: Cell | None = None
        self.options: CellOptions | None = None
        self.shared = False
        """Another cell ran on this worker's GPU at some time during its current cell."""
        self.most_at_once = 1
        """The most cells (this one included) that ran at once on this worker's device during its current cell."""


def _pool_worker(index, device, threads, inbox, results, parent_pid, plugins) -> None:
    if device is not None:
        # before anything touches CUDA: this worker sees its one GPU as cuda:0
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    os.environ["TQDM_DISABLE"] = "1"  # the sweep prints a line per finished cell instead
    # tqdm's default lock is a multiprocessing semaphore, which a killed worker leaves behind (the resource
    # tracker then warns when the sweep exits); a thread lock is all one worker needs
    tqdm.set_lock(threading.RLock())
    _exit_with_parent(parent_pid)
    load_plugins(plugins)
    torch.set_num_threads(threads)
    while (job := inbox.get()) is not None:
        cell, options = job
        rows, meta = run_unit(cell, options)
        if device is not None and torch.cuda.is_initialized():
            # the caching allocator would keep this cell's peak (and its graphs' pools) for this process: the
            # other cells on the GPU, and this worker's next one, need it
            gc.collect()
            torch.cuda.empty_cache()
        results.put((index, rows, meta))


def _exit_with_parent(parent_pid: int) -> None:
    """Exit as soon as the sweep process is gone (e.g. killed), so that no orphan keeps training."""

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


@LAUNCHERS.register("streams")
class Streams:
    """`cells_per_gpu` cells at once in this process, each in a thread of its own with its own CUDA stream (on a
    CPU machine, threads alone). One GPU: with several visible, pin one with CUDA_VISIBLE_DEVICES or use the pool."""

    def __init__(self, options: LaunchOptions | None = None):
        options = options or LaunchOptions()
        if options.cells_per_gpu < 1:
            raise HarnessError(f"--cells-per-gpu must be at least 1, got {options.cells_per_gpu}")
        if len(visible_gpus()) > 1:
            raise HarnessError(
                "--launcher streams runs its cells on one GPU and this process sees "
                f"{len(visible_gpus())}: set CUDA_VISIBLE_DEVICES to one of them, or use --launcher pool"
            )
        self._limit = options.cells_per_gpu
        """Cells at once, lowered when a cell runs out of memory beside others (as the pool does)."""
        self._queue: deque[tuple[Cell, CellOptions]] = deque()
        self._running: dict[int, _Running] = {}
        self._results: queue.Queue = queue.Queue()
        self._keys = itertools.count()

    @property
    def slots(self) -> int:
        return self._limit

    def submit(self, cell: Cell, options: CellOptions) -> None:
        self._queue.append((cell, options))
        self._dispatch()

    def wait(self, timeout: float) -> list[Finished]:
        # every thread puts its result, whatever happens to its cell: block for the first, take what else is there
        finished = []
        try:
            key, rows, meta = self._results.get(timeout=timeout)
            while True:
                done = self._running.pop(key)
                if not self._ran_out_beside_others(done, rows):
                    finished.append((done.cell, rows, meta | {"cells_at_once": done.most_at_once}))
                key, rows, meta = self._results.get_nowait()
        except queue.Empty:
            pass
        self._dispatch()
        return finished

    def close(self) -> None:
        # threads cannot be stopped: cells still running are abandoned (daemon threads end with the process)
        self._queue.clear()

    def _dispatch(self) -> None:
        while self._queue and len(self._running) < self._limit:
            cell, options = self._queue.popleft()
            record = _Running(cell, options, shared=bool(self._running), most_at_once=len(self._running) + 1)
            for other in self._running.values():
                other.shared = True
                other.most_at_once = max(other.most_at_once, record.most_at_once)
            key = next(self._keys)
            self._running[key] = record
            threading.Thread(
                target=_cell_on_own_stream,
                args=(key, cell, options, self._results),
                daemon=True,
                name=f"harness-cell-{key}",
            ).start()

    def _ran_out_beside_others(self, done: _Running, rows: list[dict[str, Any]]) -> bool:
        if not (done.shared and rows and rows[0].get("status") == "oom"):
            return False
        running = len(self._running) + 1
        self._limit = max(1, min(self._limit, running - 1))
        self._queue.appendleft((done.cell, done.options))
        warn(
            f"{done.cell.label} ran out of GPU memory beside {running - 1} other cell(s): it runs again, and "
            f"this process now runs at most {self._limit} cell(s) at once"
        )
        return True


@dataclass(kw_only=False)
class _Running:
    cell: Cell
    options: CellOptions
    shared: bool
    """Another cell ran in this process at some time during this one."""
    most_at_once: int


def _cell_on_own_stream(key: int, cell: Cell, options: CellOptions, results: queue.Queue) -> None:
    """Run a cell in this thread, its CUDA work on a stream of its own (the current stream is per thread). The
    thread is registered with the capture gate throughout: while another cell captures a CUDA graph, this one
    stands still at its next checkpoint (harness/run/capture_gate.py)."""
    try:
        with GATE.registered(cell.label):
            if torch.cuda.is_available() and str(_device_of(cell)) != "cpu":
                stream = torch.cuda.Stream()
                with torch.cuda.stream(stream):
                    rows, meta = run_unit(cell, options)
                stream.synchronize()
            else:
                rows, meta = run_unit(cell, options)
    except BaseException as err:  # noqa: BLE001 - run_cell records the cell's own failures; this is the thread's
        rows, meta = environment_failure(f"the cell's thread failed: {type(err).__name__}: {err}")
    results.put((key, rows, meta))


@LAUNCHERS.register("ray")
class Ray:
    """Cells as Ray tasks: 1/cells_per_gpu of a GPU each where the cluster has GPUs, else one CPU each."""

    def __init__(self, options: LaunchOptions | None = None):
        options = options or LaunchOptions()
        address, cells_per_gpu, workers = options.ray_address, options.cells_per_gpu, options.workers
        try:
            import ray  # optional: only --launcher ray needs it
        except ImportError:
            raise HarnessError("--launcher ray needs Ray installed: pip install ray") from None
        self._ray = ray
        if not ray.is_initialized():
            # a local instance (address None) gets as many CPUs as --workers asks, else all of this machine's
            ray.init(
                address=address,
                num_cpus=workers if address is None else None,
                include_dashboard=False,
                log_to_driver=False,
            )
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if gpus:
            options = dict(num_gpus=1 / cells_per_gpu, num_cpus=1)
            self.slots = gpus * cells_per_gpu
        else:
            options = dict(num_cpus=1)
            self.slots = max(1, int(resources.get("CPU", 1)))
        self._task = ray.remote(_ray_run_cell).options(**options, max_retries=0)
        self._pending: dict[Any, Cell] = {}

    def submit(self, cell: Cell, options: CellOptions) -> None:
        self._pending[self._task.remote(cell, options, loaded_modules())] = cell

    def wait(self, timeout: float) -> list[Finished]:
        if not self._pending:
            return []
        ready, _ = self._ray.wait(list(self._pending), num_returns=1, timeout=timeout)
        finished = []
        for ref in ready:
            cell = self._pending.pop(ref)
            try:
                rows, meta = self._ray.get(ref)
            except Exception as err:  # noqa: BLE001 - a lost task runs again next time, the sweep goes on
                message = f"Ray task failed: {type(err).__name__}: {err}".splitlines()[0][:500]
                rows, meta = environment_failure(message)
            finished.append((cell, rows, meta))
        return finished

    def close(self) -> None:
        for ref in self._pending:
            self._ray.cancel(ref, force=True)
        self._pending.clear()
        self._ray.shutdown()


def _ray_run_cell(cell: Cell, options: CellOptions, plugins: list[str]):
    os.environ["TQDM_DISABLE"] = "1"
    load_plugins(plugins)
    return run_unit(cell, options)


def make_launcher(name: str, options: LaunchOptions | None = None) -> Launcher:
    """The launcher a name on the command line stands for (unknown name: a one-line error)."""
    return LAUNCHERS.get(name)(options)


def run_unit(
    unit: Cell | CellStack, options: CellOptions | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """What a launcher runs: `run_cell` for a cell; for a stack of cells (`harness run --stack-lrs`), `run_stack`
    with every member's rows in one list (each row names its cell: run_id) and the members' metadata, in order,
    under 'stack' (`Stacking` hands each cell its own)."""
    if isinstance(unit, CellStack):
        results = run_stack(unit)
        return [row for rows, _ in results for row in rows], {"stack": [meta for _, meta in results]}
    return run_cell(unit, options)


def _device_of(unit: Cell | CellStack) -> str:
    return (unit.cells[0] if isinstance(unit, CellStack) else unit).train.device


class Stacking:
    """Any launcher, with the cells that differ only in their lr run as one stacked model (harness/run/stacked.py).

    The sweep submits cells one at a time; this holds them until it is asked for results (the sweep asks once it
    has submitted all it can), groups those of one stack key into a CellStack, and submits each group to the
    launcher underneath as one unit; a finished stack is handed back as one finished cell per member. Its slots
    are the launcher's times the largest stack, so that a stack's members can all be submitted at once; cells
    whose siblings were not submitted with them (finished before, held by another sweep) run as a smaller stack."""

    def __init__(self, inner: Launcher, stack_size: int):
        self.inner, self.stack_size = inner, max(1, stack_size)
        self.slots = inner.slots * self.stack_size
        self._held: list[tuple[Cell, CellOptions]] = []
        self._running = 0

    def submit(self, cell: Cell, options: CellOptions) -> None:
        self._held.append((cell, options))

    def wait(self, timeout: float) -> list[Finished]:
        self._release()
        finished = []
        for unit, rows, meta in self.inner.wait(timeout):
            self._running -= 1
            finished += self._split(unit, rows, meta) if isinstance(unit, CellStack) else [(unit, rows, meta)]
        self._release()
        return finished

    def close(self) -> None:
        self._held.clear()
        self.inner.close()

    def _release(self) -> None:
        """Submit the held cells, stacked, as far as the launcher underneath has room; keep the rest."""
        options = {cell.id: opts for cell, opts in self._held}
        kept: list[Cell] = []
        for group in group_stacks([cell for cell, _ in self._held]):
            if self._running >= self.inner.slots:
                kept += group
            elif len(group) == 1:
                self.inner.submit(group[0], options[group[0].id])
                self._running += 1
            else:
                self.inner.submit(CellStack(tuple(group), tuple(options[c.id] for c in group)), None)
                self._running += 1
        self._held = [(cell, options[cell.id]) for cell in kept]

    @staticmethod
    def _split(stack: CellStack, rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[Finished]:
        shared = {k: v for k, v in meta.items() if k != "stack"}
        members = meta.get("stack")
        if members is None:  # the unit did not run to its end (its worker died): no member's result
            return [(cell, [], dict(meta)) for cell in stack.cells]
        finished = []
        for cell, member in zip(stack.cells, members, strict=True):
            own = [row for row in rows if row.get("run_id") == cell.id]
            finished.append((cell, own, (member | shared) if own else member))
        return finished
