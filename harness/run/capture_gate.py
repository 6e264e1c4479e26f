"""The capture gate: while one thread of this process captures a CUDA graph, the other cell threads stand still.

The streams launcher (harness/run/launchers.py) runs several cells as threads of one process. A capture records the
work its thread puts on one stream, and on an H200 every one of 12 such cells failed to capture
(results/packing-h200/), despite `capture_error_mode="thread_local"`. The likely cause: some CUDA calls of another
thread break a capture under way whatever that mode says, and `torch.cuda.graph` itself opens with a device-wide
synchronisation and an emptying of the allocator's cache (a cudaFree); cells that start together capture at about
the same time, so one cell's opening lands in another's capture. A capture under this gate first waits until
every other registered thread has stopped at a checkpoint, a point where it has no CUDA call in flight, and those
threads stay there until the capture ends: for as long as it lasts the capturing thread is the only one of the
cells that calls CUDA, as in a process of one cell.

- A cell thread registers for its lifetime: `with GATE.registered(label): ...` (the streams launcher does).
- It passes `GATE.checkpoint()` often: at the top of each training step (CapturedStep, eager_step) and of each
  evaluation batch (harness/run/evaluate.py). With no capture waiting, a checkpoint is one attribute read.
- Where it makes no CUDA call for a while (generating the cell's data), it says so:
  `with GATE.without_cuda(): ...`; a capture need not wait for it there, and on leaving it waits for a capture
  under way.
- A capture runs inside `with GATE.capturing(): ...`: one capture at a time, and a thread waiting for its turn to
  capture counts as stopped, so several threads that want to capture at once take turns instead of waiting for
  each other.

Threads that never registered (a pool worker, a single cell, the sweep's own thread) pass checkpoints at once and
are not waited for, so outside the streams launcher nothing changes. Unregistered threads' own CUDA calls are not
held back either; in the harness the sweep's thread makes none while cells run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

CAPTURE_WAIT_S = 60.0
"""How long a capture waits for the other cells to stop before it gives up (its batch shape then trains eagerly).
The usual wait is one step or one evaluation batch of each other cell, milliseconds; a cell that needs longer is in
a long stretch with no checkpoint (an lm-eval run, say), and stalling the capturing cell for all of it would cost
more than one shape's graph. A limit rather than no limit also means that a cell stuck elsewhere cannot hang the
others' captures."""


class CaptureGate:
    """Lets one thread capture a CUDA graph while every other registered thread stands at a checkpoint (module
    docstring). One per process (`GATE`); tests make their own."""

    def __init__(self, wait_s: float = CAPTURE_WAIT_S):
        self.wait_s = wait_s
        self._changed = threading.Condition()
        self._cells: dict[int, str] = {}
        """Registered threads (by thread id) and their names for messages."""
        self._stopped: set[int] = set()
        """Registered threads standing at a checkpoint, in a stretch without CUDA, or waiting for their turn to
        capture: none of them calls CUDA until it leaves."""
        self._capturing: int | None = None
        """The thread whose turn it is: waiting for the others to stop, or capturing."""

    @contextmanager
    def registered(self, name: str) -> Iterator[None]:
        """Make this thread one whose CUDA calls captures wait out, for the block; it leaves the gate however the
        block ends, so that no capture waits for a thread that is gone."""
        me = threading.get_ident()
        with self._changed:
            self._cells[me] = name
        try:
            yield
        finally:
            with self._changed:
                del self._cells[me]
                self._stopped.discard(me)
                self._changed.notify_all()  # a capture waiting for this thread waits no more

    def checkpoint(self) -> None:
        """Stand still here while another thread captures. Call only where this thread has no CUDA work half
        issued (between steps, between batches)."""
        if self._capturing is None:  # the common case, read without the lock: at worst one step late
            return
        with self.without_cuda():
            pass

    @contextmanager
    def without_cuda(self) -> Iterator[None]:
        """A stretch in which this thread makes no CUDA call: captures need not wait for it to reach a checkpoint.
        On leaving, it waits for a capture under way to end."""
        me = threading.get_ident()
        if me not in self._cells:  # only this thread adds or removes itself: no lock needed to read it
            yield
            return
        with self._changed:
            self._stopped.add(me)
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                while self._capturing not in (None, me):
                    self._changed.wait()
                self._stopped.discard(me)

    @contextmanager
    def capturing(self) -> Iterator[None]:
        """Hold the gate for one capture: wait for the turn, then for every other registered thread to stop; they
        stand still until the block ends. TimeoutError if some have not stopped within `wait_s`: nothing is
        captured then, and the others go on."""
        me = threading.get_ident()
        registered = me in self._cells
        with self._changed:
            if registered:  # while waiting for its turn, this thread is no reason for another capture to wait
                self._stopped.add(me)
                self._changed.notify_all()
            while self._capturing is not None:
                self._changed.wait()
            self._capturing = me
            self._stopped.discard(me)
            deadline = time.monotonic() + self.wait_s
            while busy := self._busy(me):
                left = deadline - time.monotonic()
                if left <= 0:
                    self._capturing = None
                    self._changed.notify_all()
                    raise TimeoutError(
                        f"{', '.join(sorted(busy))} did not reach a checkpoint within {self.wait_s:g} s"
                    )
                self._changed.wait(left)
        try:
            yield
        finally:
            with self._changed:
                self._capturing = None
                self._changed.notify_all()

    def _busy(self, me: int) -> list[str]:
        """The registered threads other than `me` that may be calling CUDA now (call with the lock held)."""
        return [name for ident, name in self._cells.items() if ident != me and ident not in self._stopped]


GATE = CaptureGate()
"""This process's gate: the streams launcher's cells register with it, CapturedStep captures through it."""
