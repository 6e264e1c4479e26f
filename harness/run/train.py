"""Training of one model on one task's data: AdamW, warmup + cosine (or warmup-stable-decay), gradient clipping,
early stop on held-out validation accuracy, bf16 autocast on CUDA, a progress bar, and mid-training checkpoints
that a killed run resumes from (on the CPU the resumed run ends exactly as an uninterrupted one).

A checkpoint is one safetensors file: the tensors (model, optimizer state, RNG states) in its body, everything
else (step, schedule, optimizer settings, the TrainResult with its history) as JSON in its header. Nothing in it
is code, so loading a checkpoint from a shared store cannot run anything (pickle, which torch.save uses, can). A
checkpoint that cannot be read or does not fit the model is moved aside and the cell trains from scratch.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import safetensors
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from harness.config import ADDED_LATER
from harness.errors import warn
from harness.results.store import atomic_write, set_aside
from harness.run.capture_gate import GATE
from harness.run.device import autocast_dtype, peak_memory_gib
from harness.run.evaluate import evaluate
from harness.run.loggers import EVALUATION_FIELDS, RunLogger
from harness.run.step_capture import CapturedStep
from tasks.base import IGNORE, Slice, TrainingStream

SCHEDULES = ("cosine", "wsd")
STEP_CAPTURES = ("auto", "off", "graph")
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
# History fields that measure the machine, not the training: they differ between two runs of the same cell.
MACHINE_FIELDS = ("tokens_per_s", "peak_memory_gib")
READ_EVERY = 64
"""Steps whose losses a captured run keeps on the GPU before reading them back (and checking them)."""


def training_curve(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A history without its MACHINE_FIELDS: what a resumed run must reproduce exactly."""
    return [{k: v for k, v in point.items() if k not in MACHINE_FIELDS} for point in history]


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices (not on norms, biases, embeddings or gate parameters)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    warmup_steps: int = 100
    """Linear warmup from 0 to lr."""
    min_lr_ratio: float = 0.1
    """The schedule ends at lr * min_lr_ratio at max_steps."""
    schedule: Literal["cosine", "wsd"] = field(default="cosine", metadata=ADDED_LATER)
    """After warmup: 'cosine' (decay over all remaining steps) or 'wsd' (warmup-stable-decay: constant lr, then a
    linear decay over the last `decay_fraction` of the steps)."""
    decay_fraction: float = field(default=0.2, metadata=ADDED_LATER)
    """Share of max_steps that the 'wsd' schedule spends decaying."""
    max_steps: int = 2000
    """Optimizer steps unless early stopping ends training first."""
    batch_size: int = 64
    """Sequences per step."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    eval_every: int = 200
    """Steps between validation evaluations (and early-stop checks)."""
    target_accuracy: float | None = 0.99
    """Stop once validation accuracy reaches this (see `target_on`); None trains for max_steps."""
    target_on: Literal["mean", "every"] = field(default="mean", metadata=ADDED_LATER)
    """What must reach `target_accuracy`: the mean over validation slices, or every slice (a capacity sweep whose
    claim is per slice: a mean can reach it while the hardest slice is still below)."""
    eval_batch_size: int = 256
    """Sequences per evaluation batch."""
    device: str = "auto"
    """'auto' (CUDA if available, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    """Autocast dtype on CUDA: 'bf16', 'fp16' or 'fp32'. CPU always trains in fp32."""
    step_capture: Literal["auto", "off", "graph"] = field(default="auto", metadata=ADDED_LATER)
    """How a training step runs on CUDA: 'graph' replays it from CUDA graphs, one per batch shape
    (harness/run/step_capture.py: several times faster for small models, whose eager step is launch-bound),
    'off' runs it eagerly, 'auto' is 'graph' on CUDA. The CPU always runs eagerly."""

    def __post_init__(self):
        # every setting that can be wrong is refused here, so that a sweep never stores rows of an impossible run
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got '{self.schedule}'")
        if self.step_capture not in STEP_CAPTURES:
            raise ValueError(
                f"step_capture must be one of {', '.join(STEP_CAPTURES)}, got '{self.step_capture}'"
            )
        if self.dtype not in ("bf16", "fp16", "fp32"):
            raise ValueError(f"dtype must be one of bf16, fp16, fp32, got '{self.dtype}'")
        if not DEVICE.fullmatch(self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got '{self.device}'")
        for name in ("max_steps", "batch_size", "eval_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be at least 0, got {self.warmup_steps}")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        for name in ("weight_decay", "grad_clip"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if not all(0 <= beta < 1 for beta in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {self.betas}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 < self.decay_fraction <= 1:
            raise ValueError(f"decay_fraction must be in (0, 1], got {self.decay_fraction}")
        if self.target_on not in ("mean", "every"):
            raise ValueError(f"target_on must be 'mean' or 'every', got '{self.target_on}'")
        if self.target_accuracy is not None and not 0 <= self.target_accuracy <= 1:
            raise ValueError(f"target_accuracy must be in [0, 1] or none, got {self.target_accuracy}")


@dataclass
class TrainResult:
    steps: int = 0
    tokens_seen: int = 0
    diverged: bool = False
    wall_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    loss_sum: float = 0.0
    loss_count: int = 0
    """Training loss summed over the steps since the last history point (kept here so that a checkpoint has it)."""
    step_path: str = "eager"
    """How the steps ran: 'eager', or the CUDA-graph paths with their step counts (CapturedStep.describe)."""


@dataclass(frozen=True)
class Checkpointing:
    """Where and how often `train` saves its state. Not part of a cell's config: it changes no result."""

    path: Path
    """The checkpoint file (safetensors, written atomically; resumed from when present and readable)."""
    every_steps: int | None = None
    """Save every this many optimizer steps."""
    every_s: float | None = 600.0
    """Save when this many seconds of training passed since the last save (long cells only)."""

    def due(self, step: int, since_save_s: float) -> bool:
        by_steps = self.every_steps is not None and step % self.every_steps == 0
        by_time = self.every_s is not None and since_save_s >= self.every_s
        return by_steps or by_time


def train(
    model: nn.Module,
    train_slices: Sequence[Slice] | TrainingStream,
    valid_slices: list[Slice],
    config: TrainConfig,
    seed: int,
    device: torch.device,
    description: str = "",
    checkpointing: Checkpointing | None = None,
    logger: RunLogger | None = None,
) -> TrainResult:
    """Train in place; returns step count, tokens seen, divergence and the validation history.

    Every `eval_every` steps the history gets one point: step, tokens, mean training loss since the last point,
    validation loss and accuracy (means over slices), the current lr, training throughput since the last point
    (tokens/s, evaluation excluded) and peak memory so far (GiB: CUDA allocations, or the process's RSS on a CPU).
    With `logger` (TensorBoard, W&B: harness/run/loggers.py), every step's loss and every history point go there
    too; the caller finishes it. With `checkpointing`, the model, optimizer, schedule, RNG states, step and
    history are saved now and then, and a run that finds a checkpoint continues from it (the batch order is
    replayed from the seed); a checkpoint that cannot be used is moved to a `damaged/` folder beside it and
    training starts from step 1.
    """
    result = TrainResult()
    start = time.perf_counter()
    model.to(device).train()
    graphs = uses_graphs(config, device)
    optimizer = make_optimizer(model, config, capturable=graphs)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
    first = 1
    if checkpointing is not None and checkpointing.path.exists():
        first = resume(checkpointing.path, model, optimizer, schedule, result) + 1
    if hasattr(train_slices, "batches"):  # a TrainingStream
        batches = train_slices.batches(config.batch_size, seed, skip=first - 1)
    else:
        batches = batch_stream(train_slices, config.batch_size, seed, skip=first - 1)
    amp = autocast_dtype(config.dtype, device)
    captured = CapturedStep(model, optimizer, config.grad_clip, amp, device) if graphs else None
    bar = tqdm(
        total=config.max_steps,
        initial=first - 1,
        desc=description,
        unit="step",
        mininterval=1.0,
        dynamic_ncols=True,
        # tqdm reads TQDM_DISABLE once, when it is imported; pool and Ray workers set it later
        disable=os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes"),
    )
    last_save = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    window_start, window_tokens = time.perf_counter(), 0
    # steps taken whose losses are still on the device: (step, loss, tokens); the eager step reads each at once
    pending: list[tuple[int, torch.Tensor, int]] = []
    for step in range(first, config.max_steps + 1):
        inputs, labels, segments = next(batches)
        if captured is None:
            loss = eager_step(model, optimizer, config, inputs, labels, segments, amp, device)
        else:
            loss = captured(inputs, labels, segments)
        schedule.step()
        tokens = math.prod(inputs.shape)  # a numpy array (corpus streams) or a tensor
        pending.append((step, loss, tokens))
        window_tokens += tokens
        evaluating = step % config.eval_every == 0 or step == config.max_steps
        saving = checkpointing is not None and checkpointing.due(step, time.perf_counter() - last_save)
        read = captured is None or evaluating or saving or len(pending) >= READ_EVERY
        if read and not settle(pending, result, logger, bar):
            result.diverged = True
            bar.set_postfix_str("diverged: non-finite loss")
            break
        if evaluating:
            tokens_per_s = window_tokens / max(time.perf_counter() - window_start, 1e-9)
            metrics = evaluate(model, valid_slices, config, device)
            train_loss = result.loss_sum / result.loss_count
            point = history_point(step, result.tokens_seen, train_loss, metrics, schedule.get_last_lr()[0],
                                  tokens_per_s, device)  # fmt: skip
            result.history.append(point)
            result.loss_sum, result.loss_count = 0.0, 0
            if logger is not None:
                logger.log(step, {key: point[key] for key in EVALUATION_FIELDS})
            accuracy = point["valid_accuracy"]
            bar.set_postfix(loss=f"{point['train_loss']:.3f}", valid_acc=f"{accuracy:.3f}")
            model.train()
            window_start, window_tokens = time.perf_counter(), 0
            if config.target_accuracy is not None and reached(metrics, config):
                break
        if saving:
            result.wall_s += time.perf_counter() - start
            start = last_save = time.perf_counter()
            save_checkpoint(checkpointing.path, model, optimizer, schedule, result)
    bar.close()
    result.step_path = "eager" if captured is None else captured.describe()
    result.wall_s += time.perf_counter() - start
    return result


def history_point(
    step: int,
    tokens: int,
    train_loss: float,
    metrics: dict,
    lr: float,
    tokens_per_s: float,
    device: torch.device,
) -> dict[str, Any]:
    """One point of a training history (TrainResult.history; the cost model and the reports read these fields):
    validation loss and accuracy are the means over the validation slices' `metrics`."""
    return dict(
        step=step,
        tokens=tokens,
        train_loss=train_loss,
        valid_loss=float(np.nanmean([m["loss"] for m in metrics.values()])),
        valid_accuracy=float(np.nanmean([m["accuracy"] for m in metrics.values()])),
        current_lr=lr,
        tokens_per_s=tokens_per_s,
        peak_memory_gib=peak_memory_gib(device),
    )


def reached(metrics: dict[str, dict[str, float]], config: TrainConfig) -> bool:
    """Whether a validation's per-slice metrics meet the early stop: the mean accuracy over slices, or every
    slice's (`config.target_on`), at least `config.target_accuracy`."""
    accuracies = [m["accuracy"] for m in metrics.values()]
    if config.target_on == "every":
        return all(a >= config.target_accuracy for a in accuracies)
    return float(np.nanmean(accuracies)) >= config.target_accuracy


def uses_graphs(config: TrainConfig, device: torch.device) -> bool:
    """Whether `train` replays its steps from CUDA graphs: step_capture 'auto' or 'graph' on CUDA. 'graph' on
    a CPU says so and trains eagerly."""
    if config.step_capture == "off":
        return False
    if device.type != "cuda":
        if config.step_capture == "graph":
            warn(f"step_capture='graph' needs CUDA; training on {device} runs the eager step")
        return False
    return True


def eager_step(
    model: nn.Module, optimizer, config: TrainConfig, inputs, labels, segments, amp, device: torch.device
) -> torch.Tensor:
    """One training step, launched op by op; returns the loss. A non-finite loss makes no update (and ends
    training when `settle` reads it)."""
    GATE.checkpoint()  # another cell of this process may be capturing: no CUDA call of this one until it ends
    inputs, labels, segments = (
        None if t is None else torch.as_tensor(t).to(device, non_blocking=True)
        for t in (inputs, labels, segments)
    )
    loss = training_loss(model, inputs, labels, segments, amp)
    if torch.isfinite(loss):
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
    return loss.detach()


def settle(pending: list, result: TrainResult, logger: RunLogger | None, bar) -> bool:
    """Read back the losses of the `pending` steps (one wait for the GPU) and count those steps as done, in order;
    False at the first non-finite loss: that step made no update, nor did any after it (see step_capture.py)."""
    losses = torch.stack([loss for _, loss, _ in pending]).tolist()
    steps = [(step, tokens) for step, _, tokens in pending]
    pending.clear()
    for (step, tokens), value in zip(steps, losses, strict=True):
        if not math.isfinite(value):
            return False
        result.steps = step
        result.tokens_seen += tokens
        result.loss_sum, result.loss_count = result.loss_sum + value, result.loss_count + 1
        if logger is not None:
            logger.log(step, {"train_loss_step": value})
        bar.update(1)
    return True


def training_loss(model: nn.Module, inputs, labels, segments, amp: torch.dtype | None) -> torch.Tensor:
    """Mean cross-entropy over the labelled positions. The LM head runs on those positions alone: MQAR at length
    1024 scores 64 of them, and the head over all 1024 (a V 8192 float32 logit each, with its gradient) was most
    of a step's memory and time on the GPU."""
    with torch.autocast(inputs.device.type, dtype=amp or torch.float32, enabled=amp is not None):
        hidden = model.hidden_states(inputs, segment_ids=segments)  # (B, T, D)
        scored = labels != IGNORE
        logits = model.lm_head(hidden[scored])  # (n, V)
    return F.cross_entropy(logits.float(), labels[scored])


CHECKPOINT_FORMAT = "harness-train-checkpoint/1"
# AdamW settings that choose how it computes, not what: a resumed run keeps its own
OPTIMIZER_IMPLEMENTATION = ("foreach", "fused", "capturable", "differentiable")


class CheckpointError(Exception):
    """A checkpoint that cannot be read, or that does not belong to the model being trained."""


def save_checkpoint(path: Path, model: nn.Module, optimizer, schedule, result: TrainResult) -> None:
    """Everything `train` needs to continue after `result.steps` steps, as one safetensors file written
    atomically (a crash leaves the previous checkpoint or this one, never a mixture)."""
    tensors = {f"model/{name}": value for name, value in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    plain = {}  # optimizer state values that are not tensors (none for AdamW today)
    for index, values in optimizer_state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer/{index}/{key}"] = value
            else:
                plain[f"{index}/{key}"] = value
    tensors["rng/torch"] = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    tensors |= {f"rng/cuda/{i}": state for i, state in enumerate(cuda_rng)}
    header = dict(
        format=CHECKPOINT_FORMAT,
        param_groups=optimizer_state["param_groups"],
        optimizer_values=plain,
        schedule=schedule.state_dict(),
        result=vars(result),
        cuda_devices=len(cuda_rng),
    )
    # copies on the CPU: safetensors wants contiguous tensors that share no memory (tied embeddings do)
    tensors = {name: value.detach().to("cpu", copy=True).contiguous() for name, value in tensors.items()}
    data = safetensors.torch.save(tensors, metadata={"harness": json.dumps(header)})
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(path, data)
    except OSError as err:
        # a full disk shows at the temporary file, or at no file (fsync): name the checkpoint
        raise OSError(err.errno, err.strerror, str(path)) from err


def resume(path: Path, model: nn.Module, optimizer, schedule, result: TrainResult) -> int:
    """Continue from the checkpoint at `path`: returns the step it was taken after, or 0 (start from scratch)
    when it cannot be used; such a checkpoint is moved aside, and nothing of it is applied."""
    try:
        return load_checkpoint(path, model, optimizer, schedule, result)
    except CheckpointError as err:
        aside = set_aside(path)
        warn(f"checkpoint {path} cannot be used ({err}); moved to {aside}, training this cell from step 1")
        return 0


def load_checkpoint(path: Path, model: nn.Module, optimizer, schedule, result: TrainResult) -> int:
    """Restore a checkpoint written by `save_checkpoint`; returns the step it was taken after. Raises
    CheckpointError, before changing anything, if the file cannot be read or does not fit `model`."""
    tensors, header = read_checkpoint(path)
    model_state = {name.removeprefix("model/"): t for name, t in tensors.items() if name.startswith("model/")}
    expected = model.state_dict()
    if model_state.keys() != expected.keys():
        raise CheckpointError("its model has other parameters")
    for name, value in expected.items():
        if model_state[name].shape != value.shape or model_state[name].dtype != value.dtype:
            raise CheckpointError(
                f"parameter {name} is {tuple(model_state[name].shape)}, expected {tuple(value.shape)}"
            )
    groups = header["param_groups"]
    try:
        same_groups = [len(g["params"]) for g in groups] == [len(g["params"]) for g in optimizer.param_groups]
    except (TypeError, KeyError):
        same_groups = False
    if not same_groups:
        raise CheckpointError("its optimizer has other parameter groups")
    params = [param for group in optimizer.param_groups for param in group["params"]]
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *header["optimizer_values"].items()]:
        if name.startswith("model/") or name.startswith("rng/"):
            continue
        index, _, key = name.removeprefix("optimizer/").partition("/")
        if not index.isdigit() or int(index) >= len(params):
            raise CheckpointError(f"optimizer state {name} belongs to no parameter")
        if torch.is_tensor(value) and value.dim() and value.shape != params[int(index)].shape:
            raise CheckpointError(f"optimizer state {name} does not fit its parameter")
        state.setdefault(int(index), {})[key] = value
    if header["schedule"].keys() != schedule.state_dict().keys():
        raise CheckpointError("its lr schedule has other fields")
    for key, value in header["result"].items():
        default = getattr(result, key, None)
        if default is None or not isinstance(
            value, int | float if isinstance(default, float) else type(default)
        ):
            raise CheckpointError(f"training field {key}={value!r} is not one of this version")

    # everything checked: apply
    model.load_state_dict(model_state)
    # JSON has no tuples: AdamW's betas come back as a list. The implementation stays this run's: a checkpoint of
    # the eager step resumes on the captured one, and the other way round
    groups = [
        {k: tuple(v) if k == "betas" else v for k, v in group.items()}
        | {k: current[k] for k in OPTIMIZER_IMPLEMENTATION if k in current}
        for group, current in zip(groups, optimizer.param_groups, strict=True)
    ]
    optimizer.load_state_dict(dict(state=state, param_groups=groups))
    schedule.load_state_dict(header["schedule"])
    for key, value in header["result"].items():
        setattr(result, key, value)
    torch.set_rng_state(tensors["rng/torch"])
    if header["cuda_devices"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[f"rng/cuda/{i}"] for i in range(header["cuda_devices"])])
    return result.steps


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the JSON header of a checkpoint file; CheckpointError if it is not one."""
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
            header = json.loads((f.metadata() or {})["harness"])
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open is no dict
    except (OSError, ValueError, KeyError, TypeError, safetensors.SafetensorError) as err:
        # ValueError covers JSON errors; a truncated or foreign file shows as any of these
        raise CheckpointError(f"not a readable checkpoint: {type(err).__name__}: {err}") from None
    if not isinstance(header, dict) or header.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"not a checkpoint of format {CHECKPOINT_FORMAT}")
    kinds = dict(param_groups=list, optimizer_values=dict, schedule=dict, result=dict, cuda_devices=int)
    if not all(isinstance(header.get(key), kind) for key, kind in kinds.items()):
        raise CheckpointError("incomplete checkpoint")
    if "rng/torch" not in tensors or tensors["rng/torch"].dtype != torch.uint8:
        raise CheckpointError("no random number generator state")
    return tensors, header


def decay_groups(model: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """The model's named parameters as (decayed, not decayed): matrices decay; vectors (norm weights, biases),
    embeddings and flagged gate parameters do not. In AdamW's group order (embeddings last among the not
    decayed), which a checkpoint's optimizer state follows."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        flagged = getattr(param, "_no_weight_decay", False)
        (decay if param.dim() >= 2 and not flagged else no_decay).append((name, param))
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    no_decay += [(name, p) for name, p in decay if id(p) in embeddings]
    decay = [(name, p) for name, p in decay if id(p) not in embeddings]
    return decay, no_decay


def make_optimizer(model: nn.Module, config: TrainConfig, capturable: bool = False) -> torch.optim.AdamW:
    """AdamW over the model's parameters in two groups (`decay_groups`). `capturable`: the fused CUDA
    implementation, which a CUDA graph can record (CapturedStep); otherwise PyTorch's default for the device."""
    decay, no_decay = ([p for _, p in group] for group in decay_groups(model))
    groups = [dict(params=decay, weight_decay=config.weight_decay), dict(params=no_decay, weight_decay=0.0)]
    if capturable:
        return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=True, capturable=True)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warmup to 1, then cosine decay to min_lr_ratio at max_steps ('cosine'), or constant until the last
    decay_fraction of the steps and a linear decay to min_lr_ratio over them ('wsd')."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    floor = config.min_lr_ratio
    if config.schedule == "wsd":
        decay_start = max(
            config.warmup_steps, config.max_steps - round(config.decay_fraction * config.max_steps)
        )
        progress = min(1.0, max(0, step - decay_start) / max(1, config.max_steps - decay_start))
        return 1 - (1 - floor) * progress
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def batch_stream(slices: list[Slice], batch_size: int, seed: int, skip: int = 0):
    """Endless shuffled batches; each batch comes from one slice, so no padding is needed for mixed lengths.
    The first `skip` batches are passed over without being built (to resume at a step)."""
    rng = np.random.default_rng(seed)
    data = [
        (
            torch.from_numpy(s.inputs),
            torch.from_numpy(s.labels),
            None if s.segments is None else torch.from_numpy(s.segments),
        )
        for s in slices
    ]
    while True:
        epoch = []
        for index, (inputs, _, _) in enumerate(data):
            order = rng.permutation(len(inputs))
            epoch += [
                (index, order[i : i + batch_size]) for i in range(0, len(order) - batch_size + 1, batch_size)
            ]
        if not epoch:
            raise ValueError(f"no slice holds a full batch of {batch_size} training examples")
        for position in rng.permutation(len(epoch)):
            if skip:
                skip -= 1
                continue
            index, rows = epoch[position]
            inputs, labels, segments = data[index]
            yield inputs[rows], labels[rows], None if segments is None else segments[rows]
