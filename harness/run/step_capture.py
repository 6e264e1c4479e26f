"""The training step as CUDA graphs: forward, loss, backward, gradient clipping and the AdamW update recorded once
per batch shape and then replayed with one launch per step.

A small model's step (2 layers, a batch of 32-256 sequences) is hundreds of small kernels; launched one by one from
Python, with the loss read back every step, the launches and the waits are the step's cost and the GPU idles most
of the time. A graph needs fixed addresses, fixed shapes and no decision on the host inside the step, hence:

- each batch shape (B, T, and the number of scored positions rounded up to a power of two) gets its own static
  buffers, which every batch of that shape is copied into (from pinned memory, so the copy does not wait for the
  GPU);
- the LM head runs on the labelled positions only (as `training_loss` does); their count varies between batches,
  so the graph scores `capacity` positions, the padding ones labelled IGNORE, which cross-entropy leaves out of
  its mean;
- the learning rate is a device tensor, refreshed before each replay from what the schedule put in the optimizer;
- the loss stays on the device: `train` reads the losses of several steps at once. A non-finite loss cannot stop
  the step from the host, so it sets a sticky flag instead, which fused AdamW reads as `found_inf` (the hook that
  GradScaler uses) and skips its update from then on: the parameters stay those from before the first non-finite
  loss, where the eager loop stops.

Each shape's first WARMUP_STEPS batches run the same step eagerly on a side stream (Triton compiles and tunes,
AdamW creates its state, cuBLAS picks its kernels); the next batch of that shape is captured and replayed. Packed
documents (segment ids) have data-dependent shapes (document offsets read on the host) and always run eagerly, as
does a shape whose capture fails or one beyond MAX_GRAPHS; `describe()` says what ran, for the results. A capture
holds the process's capture gate (harness/run/capture_gate.py): the other cells of the process, under the streams
launcher, stand still meanwhile.

All graphs share one memory pool: they never run at the same time, and nothing allocated inside a graph has to
outlive its replay (parameters, optimizer state and the static buffers are allocated outside; the loss is copied
out after each replay).
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.errors import warn
from harness.run.capture_gate import GATE
from tasks.base import IGNORE

WARMUP_STEPS = 2
"""Eager steps of a shape before its capture (as models/decoding.py's GRAPH_WARMUP_STEPS)."""
MAX_GRAPHS = 32
"""Shapes captured at most; batches of further shapes run eagerly (tasks with many lengths)."""
MIN_CAPACITY = 64
"""Fewest scored positions a graph is made for (smaller counts round up to it)."""


def scored_loss(
    model: nn.Module,
    inputs: Tensor,
    positions: Tensor,
    targets: Tensor,
    segments: Tensor | None,
    amp: torch.dtype | None,
) -> Tensor:
    """`training_loss` with static shapes: mean cross-entropy at `positions` (flat indices into the B * T tokens),
    the padding ones with target IGNORE left out. The autocast cache is off: cast weights cached inside a graph
    would live in its memory pool past the replay."""
    with torch.autocast(
        inputs.device.type, dtype=amp or torch.float32, enabled=amp is not None, cache_enabled=False
    ):
        hidden = model.hidden_states(inputs, segment_ids=segments)  # (B, T, D)
        # index_select, not a boolean mask: a fixed output shape, and an index_add backward without host reads
        logits = model.lm_head(hidden.flatten(0, 1).index_select(0, positions))  # (capacity, V)
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE)


def scored_positions(labels: Tensor) -> tuple[Tensor, Tensor]:
    """(positions, targets) of the labelled tokens of a (B, T) CPU batch, padded to a power of two (at least
    MIN_CAPACITY) with position 0 and target IGNORE, so that batches of one task share a few shapes."""
    flat = labels.flatten()
    scored = (flat != IGNORE).nonzero().flatten()
    capacity = max(MIN_CAPACITY, 1 << max(0, len(scored) - 1).bit_length())
    positions = torch.zeros(capacity, dtype=torch.long)
    targets = torch.full((capacity,), IGNORE, dtype=torch.long)
    positions[: len(scored)] = scored
    targets[: len(scored)] = flat[scored]
    return positions, targets


@dataclass
class _Shape:
    """One batch shape: its static buffers, and its graph once captured."""

    inputs: Tensor  # (B, T)
    positions: Tensor  # (capacity,)
    targets: Tensor  # (capacity,)
    eager_steps: int = 0
    graph: torch.cuda.CUDAGraph | None = None
    loss: Tensor | None = None  # the graph's output, overwritten by every replay
    eager_reason: str | None = None  # why this shape is not captured


class CapturedStep:
    """The whole training step of `model`, replayed from CUDA graphs (module docstring). Call it with a CPU
    batch (inputs, labels, segments or None); it returns the step's loss as a 0-dim device tensor, without
    waiting for the GPU. `optimizer` must be a fused, capturable AdamW (`make_optimizer(..., capturable=True)`)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        grad_clip: float,
        amp: torch.dtype | None,
        device: torch.device,
    ):
        if not all(group.get("fused") and group.get("capturable") for group in optimizer.param_groups):
            raise ValueError("CapturedStep needs an AdamW made with fused=True and capturable=True")
        self.model, self.optimizer, self.grad_clip, self.amp, self.device = (
            model,
            optimizer,
            grad_clip,
            amp,
            device,
        )
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        # 1.0 once any loss was not finite: fused AdamW skips its update while found_inf is nonzero
        self.skip = torch.zeros((), dtype=torch.float32, device=device)
        optimizer.found_inf = self.skip
        # what the graphs read as the learning rate of each parameter group
        self.lrs = [torch.tensor(float(group["lr"]), device=device) for group in optimizer.param_groups]
        self.side = torch.cuda.Stream(device)
        self.pool = torch.cuda.graph_pool_handle()
        self.shapes: dict[tuple[int, int, int], _Shape] = {}
        self.steps: Counter[str] = Counter()  # steps per path: 'graph', or 'eager (why)'

    def __call__(self, inputs: Tensor, labels: Tensor, segments: Tensor | None) -> Tensor:
        GATE.checkpoint()  # another cell of this process may be capturing: no CUDA call of this one until it ends
        inputs, labels = torch.as_tensor(inputs), torch.as_tensor(labels)
        positions, targets = scored_positions(labels)
        if segments is not None:
            self.steps["eager (packed documents: their offsets are read on the host)"] += 1
            batch = [self._to_device(t) for t in (inputs, positions, targets, torch.as_tensor(segments))]
            return self._eager(*batch)
        shape = self._shape(inputs.shape, len(positions))
        for static, value in ((shape.inputs, inputs), (shape.positions, positions), (shape.targets, targets)):
            static.copy_(value.pin_memory(), non_blocking=True)
        if shape.graph is None and shape.eager_reason is None and shape.eager_steps >= WARMUP_STEPS:
            self._capture(shape)
        if shape.graph is None:
            shape.eager_steps += 1
            self.steps[
                "eager (warm-up)" if shape.eager_reason is None else f"eager ({shape.eager_reason})"
            ] += 1
            return self._eager(shape.inputs, shape.positions, shape.targets, None)
        for group, lr in zip(self.optimizer.param_groups, self.lrs, strict=True):
            lr.fill_(group["lr"])
        shape.graph.replay()
        self.steps["graph"] += 1
        return shape.loss.clone()  # the next replay overwrites the graph's output

    def describe(self) -> str:
        """The paths the steps took, e.g. 'cuda-graph: 2990 steps in 5 shapes, eager (warm-up): 10'."""
        graphs = sum(shape.graph is not None for shape in self.shapes.values())
        parts = [f"cuda-graph: {self.steps['graph']} steps in {graphs} shapes"]
        parts += [f"{path}: {n}" for path, n in sorted(self.steps.items()) if path != "graph"]
        return ", ".join(parts)

    def _to_device(self, tensor: Tensor) -> Tensor:
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def _shape(self, size: torch.Size, capacity: int) -> _Shape:
        key = (*size, capacity)
        if key not in self.shapes:
            empty = dict(dtype=torch.long, device=self.device)
            shape = _Shape(
                torch.zeros(size, **empty), torch.zeros(capacity, **empty), torch.zeros(capacity, **empty)
            )
            if len(self.shapes) >= MAX_GRAPHS:
                shape.eager_reason = f"beyond {MAX_GRAPHS} captured batch shapes"
            self.shapes[key] = shape
        return self.shapes[key]

    def _body(self, inputs: Tensor, positions: Tensor, targets: Tensor, segments: Tensor | None) -> Tensor:
        """One training step on device tensors, with no host read: what a graph records."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = scored_loss(self.model, inputs, positions, targets, segments, self.amp)
        loss.backward()
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        torch.maximum(self.skip, (~torch.isfinite(loss)).float(), out=self.skip)
        self.optimizer.step()
        return loss.detach()

    def _eager(self, inputs: Tensor, positions: Tensor, targets: Tensor, segments: Tensor | None) -> Tensor:
        # on the side stream the graphs are captured on (the warm-up that CUDA-graph capture of a backward wants)
        current = torch.cuda.current_stream(self.device)
        self.side.wait_stream(current)
        with torch.cuda.stream(self.side), warnings.catch_warnings():
            # AdamW warns that a capturable optimizer runs uncaptured: these few steps do, on purpose
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            loss = self._body(inputs, positions, targets, segments)
        # the side stream's memory (the loss) is reused by later side-stream work only, which waits for this
        current.wait_stream(self.side)
        return loss

    def _capture(self, shape: _Shape) -> None:
        """Record `shape`'s step as a graph; if that fails, the shape trains eagerly."""
        try:
            with GATE.capturing():
                graph, loss = self._record(shape)
                # The eager warm-up steps left their activations in the allocator's cache, beside the graphs' own
                # pool, which replays never give back: 12 packed kda@kimi-synth cells held 11.9 GiB each against a
                # peak of 7.9 allocated, and the twelfth ran out of memory (H200, 2026-12-02). Hand the cache back
                # while the gate is held: with the other cells standing still, its cudaFree lands in no capture of
                # theirs (torch.cuda.graph has already emptied the cache on entering, under the gate too).
                torch.cuda.empty_cache()
        except torch.cuda.OutOfMemoryError:
            raise  # the cell's result is 'oom', as eagerly
        except Exception as err:  # noqa: BLE001 - any failure to capture leaves this shape eager
            shape.eager_reason = f"capture failed: {type(err).__name__}"
            warn(
                f"the training step for batches of shape {tuple(shape.inputs.shape)} could not be captured as a "
                f"CUDA graph ({type(err).__name__}: {err}); those batches train eagerly"
            )
            return
        shape.graph, shape.loss = graph, loss

    def _record(self, shape: _Shape) -> tuple[torch.cuda.CUDAGraph, Tensor]:
        """The graph of one step on `shape`'s static buffers, and its loss output."""
        graph = torch.cuda.CUDAGraph()
        current = torch.cuda.current_stream(self.device)
        floats = [group["lr"] for group in self.optimizer.param_groups]
        for group, lr in zip(self.optimizer.param_groups, self.lrs, strict=True):
            group["lr"] = lr  # the graph reads the learning rate from the device
        try:
            # thread_local: CUDA refuses unsafe calls (a cudaMalloc, say) of this thread only, not of a thread
            # outside the capture gate (none in the harness); the other cells' calls the gate keeps out
            with torch.cuda.graph(graph, pool=self.pool, stream=self.side, capture_error_mode="thread_local"):
                loss = self._body(shape.inputs, shape.positions, shape.targets, None)
        except BaseException:
            # a capture_end that raises skips torch.cuda.graph's restoring of this thread's stream
            torch.cuda.set_stream(current)
            self.pool = abandon_pool(self.pool)
            raise
        finally:
            for group, lr in zip(self.optimizer.param_groups, floats, strict=True):
                group["lr"] = lr
        return graph, loss


def abandon_pool(pool: tuple[int, int]) -> tuple[int, int]:
    """After a failed capture into `pool`: end the caching allocator's recording into it, and return a fresh pool
    for later captures.

    torch 2.11 raises out of capture_end before it tells the allocator that the capture is over, and CUDAGraph's
    reset does not tell it either. While the allocator counts a capture under way, emptying its cache hands back
    nothing, for every thread of the process (the pool launcher's workers empty it between cells): hence the end
    of the recording. Ending it was not enough for the next capture into the same pool, though: on an H200 it
    still failed with 'beginAllocateToPool: already recording to mempool_id' (as every later shape of each cell
    did in results/packing-h200/), and a fresh pool captured. The graphs captured before keep the old pool alive
    for as long as they are used. Newer torch ends the recording itself before it raises."""
    # RuntimeError 'not currently recording': the failure came before the recording began, or torch ended it
    with contextlib.suppress(RuntimeError):
        torch._C._cuda_endAllocateToPool(torch.cuda.current_device(), pool)
    return torch.cuda.graph_pool_handle()
