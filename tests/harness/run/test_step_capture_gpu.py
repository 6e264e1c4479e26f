"""The training step replayed from CUDA graphs, on a GPU: the same losses as the eager step (bf16 tolerance) over a
mixture of lengths, every shape captured, no update after a non-finite loss, packed documents eager; a failed
capture spoils no later one, and cells of the streams launcher (threads of one process) capture through the
capture gate."""

import re

import pytest
import torch

import models  # noqa: F401  (registers the mixers)
from harness.run.step_capture import WARMUP_STEPS, CapturedStep
from harness.run.train import TrainConfig, make_optimizer, train
from models.backbone import LanguageModel
from models.presets import build_model_config
from tasks.base import IGNORE, Slice

pytestmark = pytest.mark.gpu

VOCAB = 256
STEPS = 20


class StepLosses:
    """A RunLogger stand-in that keeps every step's training loss."""

    def __init__(self):
        self.losses = {}

    def log(self, step, values):
        if "train_loss_step" in values:
            self.losses[step] = values["train_loss_step"]


def mixture(seed=0) -> list[Slice]:
    """Two lengths (two batch shapes), every 8th token labelled (with the token before it)."""
    rng = torch.Generator().manual_seed(seed)
    slices = []
    for length in (64, 160):
        inputs = torch.randint(VOCAB, (96, length), generator=rng)
        labels = torch.full_like(inputs, IGNORE)
        labels[:, ::8] = inputs.roll(1, 1)[:, ::8]
        slices.append(Slice(f"seq_len={length}", inputs.numpy(), labels.numpy()))
    return slices


def run(arch: str, step_capture: str) -> tuple[dict[int, float], str, LanguageModel]:
    torch.manual_seed(0)
    model = LanguageModel(build_model_config(arch, "tiny", vocab_size=VOCAB))
    config = TrainConfig(
        max_steps=STEPS, batch_size=32, eval_every=STEPS, warmup_steps=5, lr=3e-3, step_capture=step_capture
    )
    logger = StepLosses()
    valid = mixture(seed=1)[:1]
    result = train(model, mixture(), valid, config, seed=0, device=torch.device("cuda"), logger=logger)
    assert result.steps == STEPS and not result.diverged
    return logger.losses, result.step_path, model


@pytest.mark.parametrize("arch", ["kda", "gdn", "mamba2", "mla", "kimi"])
def test_captured_steps_give_the_eager_losses(arch):
    eager, path, _ = run(arch, "off")
    captured, path, _ = run(arch, "graph")
    assert path.startswith("cuda-graph: ") and " in 2 shapes" in path, path
    assert f"eager (warm-up): {2 * WARMUP_STEPS}" in path, path
    steps = sorted(eager)
    assert sorted(captured) == steps
    got, want = torch.tensor([captured[s] for s in steps]), torch.tensor([eager[s] for s in steps])
    assert torch.isfinite(got).all()
    # bf16 autocast and fused vs foreach AdamW: equal to rounding, which grows slowly over the steps
    torch.testing.assert_close(got, want, rtol=3e-2, atol=3e-2)
    assert want[-1] < want[0]  # it trained


def test_no_update_after_a_non_finite_loss():
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = LanguageModel(build_model_config("kda", "tiny", vocab_size=VOCAB)).to(device)
    optimizer = make_optimizer(model, TrainConfig(), capturable=True)
    step = CapturedStep(model, optimizer, grad_clip=1.0, amp=torch.bfloat16, device=device)
    inputs = torch.randint(VOCAB, (8, 64))
    labels = torch.where(torch.rand(8, 64) < 0.2, inputs, IGNORE)
    for _ in range(WARMUP_STEPS + 1):  # the last one is captured and replayed
        assert torch.isfinite(step(inputs, labels, None))
    assert step.steps["graph"] == 1
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    weight = model.lm_head.weight
    original = weight[0, 0].item()
    with torch.no_grad():
        weight[0, 0] = float("nan")  # the loss is NaN
    assert not torch.isfinite(step(inputs, labels, None))
    # a finite loss later (the NaN taken out again) still makes no update: the run diverged
    with torch.no_grad():
        weight[0, 0] = original
    assert torch.isfinite(step(inputs, labels, None))
    torch.cuda.synchronize()
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name]), name


def test_packed_documents_train_eagerly():
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = LanguageModel(build_model_config("kda", "tiny", vocab_size=VOCAB)).to(device)
    optimizer = make_optimizer(model, TrainConfig(), capturable=True)
    step = CapturedStep(model, optimizer, grad_clip=1.0, amp=torch.bfloat16, device=device)
    inputs = torch.randint(VOCAB, (4, 64))
    segments = torch.arange(64).div(20, rounding_mode="floor").expand(4, 64).contiguous()
    for _ in range(4):
        assert torch.isfinite(step(inputs, inputs, segments))
    assert "eager (packed documents" in step.describe() and step.steps["graph"] == 0


def test_after_a_failed_capture_the_next_shape_still_captures(monkeypatch):
    """A capture that fails leaves its shape eager and ends the allocator's recording into the graphs' pool: the
    next shape captures into the same pool (torch 2.11 left the pool recording, and every later capture failed with
    'already recording to mempool_id': results/packing-h200/), and emptying the cache hands memory back again."""
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = LanguageModel(build_model_config("kda", "tiny", vocab_size=VOCAB)).to(device)
    optimizer = make_optimizer(model, TrainConfig(), capturable=True)
    step = CapturedStep(model, optimizer, grad_clip=1.0, amp=torch.bfloat16, device=device)
    body, failed = step._body, []

    def body_that_waits_for_the_gpu_once(*args):
        loss = body(*args)
        if torch.cuda.is_current_stream_capturing() and not failed:
            failed.append(True)
            loss.item()  # a wait for the GPU, which a capture does not allow: this capture fails
        return loss

    monkeypatch.setattr(step, "_body", body_that_waits_for_the_gpu_once)
    for length in (64, 96):
        inputs = torch.randint(VOCAB, (8, length))
        labels = torch.where(torch.rand(8, length) < 0.2, inputs, IGNORE)
        for _ in range(WARMUP_STEPS + 2):  # warm-up, then a capture and its replay, then a replay
            assert torch.isfinite(step(inputs, labels, None))
    path = step.describe()
    assert failed and "eager (capture failed: " in path and " in 1 shapes" in path, path
    assert step.steps["graph"] == 2
    spare = torch.empty(2**28, dtype=torch.uint8, device=device)
    del spare  # 256 MiB in the cache
    reserved = torch.cuda.memory_reserved(device)
    torch.cuda.empty_cache()
    assert torch.cuda.memory_reserved(device) < reserved  # no capture is counted as under way any more


def test_cells_of_the_streams_launcher_capture_their_steps(tmp_path):
    """Four cells as threads of one process, each on a CUDA stream of its own, capture their batch shapes: the
    capture gate keeps each cell's CUDA calls out of the others' captures (before it, 12 such cells failed every
    capture: results/packing-h200/)."""
    from harness.results.store import ResultStore
    from harness.run.launchers import LaunchOptions, make_launcher
    from harness.run.sweep import run_cells
    from tests.harness.run.sweeps import small_cells

    cells = small_cells(lrs=(1e-3, 3e-3), seeds=(0, 1))
    store = ResultStore(tmp_path)
    outcome = run_cells(cells, store, launcher=make_launcher("streams", LaunchOptions(cells_per_gpu=4)))
    assert outcome.ran == len(cells)
    for cell in cells:
        row, meta = store.rows(cell.id)[0], store.read_meta(cell.id)
        assert row["status"] == "ok", (row.get("error"), meta.get("traceback"))
        path = meta["train_step"]
        captured = re.match(r"cuda-graph: \d+ steps in (\d+) shapes", path)
        assert captured and int(captured.group(1)) >= 1 and "capture failed" not in path, path
