"""The capture gate with plain threads (no CUDA): a capture starts only once every other registered thread stands at
a checkpoint, they resume after it, captures wanted at once take turns, and a thread that is not registered, has
left, raises or never stops holds no capture up for long. Each thread's "CUDA calls" are sleeps between
checkpoints, logged as spans; a capture must overlap none of another thread's spans. Every wait has a timeout, so
that a broken gate fails these tests instead of hanging them."""

import threading
import time

import numpy as np
import pytest
import torch

import models  # noqa: F401  (registers the mixers)
from harness.run import capture_gate
from harness.run.capture_gate import CaptureGate
from harness.run.evaluate import evaluate
from harness.run.train import TrainConfig, eager_step, make_optimizer
from models.backbone import LanguageModel
from models.presets import build_model_config
from tasks.base import IGNORE, Slice

JOIN_S = 10.0


class Cell(threading.Thread):
    """A registered thread that calls 'CUDA' for `span_s` at a time, with a checkpoint before each span, until
    `stop` is set. `started` is set at the start of every span."""

    def __init__(self, gate: CaptureGate, name: str, span_s: float = 0.02):
        super().__init__(name=name, daemon=True)
        self.gate, self.span_s = gate, span_s
        self.spans: list[tuple[float, float]] = []
        self.started, self.stop = threading.Event(), threading.Event()
        self.error: BaseException | None = None

    def run(self):
        try:
            with self.gate.registered(self.name):
                while not self.stop.is_set():
                    self.gate.checkpoint()
                    begin = time.monotonic()
                    self.started.set()
                    time.sleep(self.span_s)
                    self.spans.append((begin, time.monotonic()))
        except BaseException as err:  # noqa: BLE001 - the test reads it
            self.error = err

    def finish(self):
        self.stop.set()
        self.join(JOIN_S)
        assert not self.is_alive(), f"{self.name} did not finish"
        assert self.error is None, self.error


def capture(gate: CaptureGate, during=lambda: time.sleep(0.1)) -> tuple[float, float, float]:
    """Capture through `gate` from a thread of its own, `during` standing for the capture: the times it asked for
    the gate, got it, and let go. Fails, rather than hangs, if the gate never lets it through."""
    times, errors = [], []

    def run():
        try:
            requested = time.monotonic()
            with gate.capturing():
                began = time.monotonic()
                during()
                times.extend((requested, began, time.monotonic()))
        except BaseException as err:  # noqa: BLE001 - raised again in the test's thread
            errors.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(JOIN_S)
    assert not thread.is_alive(), "the capture did not get through the gate"
    if errors:
        raise errors[0]
    return tuple(times)


def outside(spans, began, ended):
    """Whether no span overlaps the capture (began, ended)."""
    return all(end <= began or start >= ended for start, end in spans)


def test_a_capture_starts_once_the_other_cells_stand_still_and_they_resume_after_it():
    gate = CaptureGate(wait_s=5)
    cells = [Cell(gate, f"cell-{i}", span_s=0.05) for i in range(3)]
    for cell in cells:
        cell.start()
    slow = Cell(gate, "slow", span_s=0.3)
    slow.start()
    assert slow.started.wait(JOIN_S)  # now in a span of 0.3 s: the capture must wait for its end
    requested, began, ended = capture(gate)
    time.sleep(0.2)
    for cell in [*cells, slow]:
        cell.finish()
        assert outside(cell.spans, began, ended), cell.name
        assert any(start >= ended for start, _ in cell.spans), f"{cell.name} did not resume"
    in_flight = next(end for start, end in slow.spans if start <= requested)
    assert began >= in_flight > requested


def test_cells_that_want_to_capture_at_once_take_turns():
    gate = CaptureGate(wait_s=2)  # a deadlock would end in TimeoutError, recorded below
    captures: list[tuple[str, float, float]] = []
    spans: dict[str, list[tuple[float, float]]] = {}
    errors: list[BaseException] = []
    together = threading.Barrier(3)

    def cell(name):
        spans[name] = []
        try:
            with gate.registered(name):
                for step in range(30):
                    gate.checkpoint()
                    begin = time.monotonic()
                    time.sleep(0.01)
                    spans[name].append((begin, time.monotonic()))
                    if step == 5:
                        together.wait(JOIN_S)
                        with gate.capturing():
                            began = time.monotonic()
                            time.sleep(0.05)
                            captures.append((name, began, time.monotonic()))
        except BaseException as err:  # noqa: BLE001 - asserted below
            errors.append(err)

    threads = [threading.Thread(target=cell, args=(f"cell-{i}",), daemon=True) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_S)
    assert not any(thread.is_alive() for thread in threads) and not errors, errors
    assert sorted(name for name, _, _ in captures) == ["cell-0", "cell-1", "cell-2"]
    ordered = sorted(captures, key=lambda capture: capture[1])
    assert all(
        first[2] <= second[1] for first, second in zip(ordered, ordered[1:], strict=False)
    )  # one at a time
    for name, began, ended in captures:
        for other, logged in spans.items():
            assert other == name or outside(logged, began, ended), (name, other)


def test_threads_not_registered_or_gone_are_not_waited_for_and_pass_checkpoints():
    gate = CaptureGate(wait_s=5)
    release = threading.Event()
    stranger = threading.Thread(target=release.wait, args=(JOIN_S,), daemon=True)  # never at a checkpoint
    stranger.start()

    def register_and_leave():
        with gate.registered("gone"):
            gate.checkpoint()

    gone = threading.Thread(target=register_and_leave, daemon=True)
    gone.start()
    gone.join(JOIN_S)
    passed = threading.Event()

    def unregistered_steps():
        gate.checkpoint()
        with gate.without_cuda():
            pass
        passed.set()

    def meanwhile():
        threading.Thread(target=unregistered_steps, daemon=True).start()
        assert passed.wait(JOIN_S)  # during the capture: a thread outside the gate does not stop

    requested, began, _ = capture(gate, during=meanwhile)
    assert began - requested < 1.0
    release.set()
    stranger.join(JOIN_S)


def test_a_cell_that_raises_leaves_the_gate():
    gate = CaptureGate(wait_s=5)
    busy, errors = threading.Event(), []

    def failing():
        try:
            with gate.registered("failing"):
                busy.set()
                time.sleep(0.2)
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
        except RuntimeError as err:
            errors.append(err)

    thread = threading.Thread(target=failing, daemon=True)
    thread.start()
    assert busy.wait(JOIN_S)
    requested, began, _ = capture(gate)
    thread.join(JOIN_S)
    assert errors and not thread.is_alive()
    assert 0.1 <= began - requested < 2.0  # for the failing cell's last stretch, not until the gate gives up


def test_a_capture_gives_up_on_a_cell_that_reaches_no_checkpoint():
    gate = CaptureGate(wait_s=0.3)
    stuck = Cell(gate, "kda@stuck", span_s=1.0)
    stuck.start()
    assert stuck.started.wait(JOIN_S)
    requested = time.monotonic()
    with pytest.raises(TimeoutError, match=r"kda@stuck did not reach a checkpoint within 0.3 s"):
        capture(gate, during=lambda: pytest.fail("captured while a cell was in a stretch of CUDA calls"))
    assert 0.3 <= time.monotonic() - requested < 1.2
    # the gate is free again: the cell goes on, and a later capture with time to wait waits for its checkpoint
    gate.wait_s = 5
    _, began, ended = capture(gate)
    stuck.finish()
    assert outside(stuck.spans, began, ended) and len(stuck.spans) >= 2


def test_a_stretch_without_cuda_is_not_waited_for_but_waits_for_the_capture_to_end():
    gate = CaptureGate(wait_s=5)
    inside, leave, left = threading.Event(), threading.Event(), []

    def loading_data():
        with gate.registered("loading"):
            with gate.without_cuda():
                inside.set()
                leave.wait(JOIN_S)
            left.append(time.monotonic())

    thread = threading.Thread(target=loading_data, daemon=True)
    thread.start()
    assert inside.wait(JOIN_S)

    def meanwhile():
        leave.set()
        time.sleep(0.2)
        assert not left  # it may not make CUDA calls again while the capture is under way

    requested, began, ended = capture(gate, during=meanwhile)
    thread.join(JOIN_S)
    assert began - requested < 1.0
    assert not thread.is_alive() and left[0] >= ended


def test_training_steps_and_evaluation_batches_pass_a_checkpoint(monkeypatch):
    calls = []
    monkeypatch.setattr(capture_gate.GATE, "checkpoint", lambda: calls.append(1))
    torch.manual_seed(0)
    model = LanguageModel(build_model_config("kda", "tiny", vocab_size=64))
    config = TrainConfig(eval_batch_size=4)
    inputs = torch.randint(64, (4, 16))
    eager_step(model, make_optimizer(model, config), config, inputs, inputs, None, None, torch.device("cpu"))
    assert len(calls) == 1
    labels = np.where(np.random.default_rng(0).random((10, 16)) < 0.3, 1, IGNORE)
    piece = Slice("all", np.random.default_rng(1).integers(64, size=(10, 16)), labels)
    evaluate(model, [piece], config, torch.device("cpu"))
    assert len(calls) == 1 + 3  # 10 examples in batches of 4
