"""Several configurations of one architecture trained as one batched model: the training step of a grid.

A small cell (2 layers, 2 heads, a batch of 32-256 sequences) leaves most of a GPU idle even when its step is
replayed from a CUDA graph: its kernels launch 64-256 programs for 132 multiprocessors, and processes sharing a
GPU run their kernels in turns (results/step-speed-h200/). The cells of an lr grid of one architecture, though,
share every shape. Here G such models are stacked (`torch.func.stack_module_state`) and one step is
`torch.vmap`ped over the stack: each matrix product becomes one batched product for all G, and each recurrent
kernel launches once with the G models' heads side by side (the vmap rule of
`kernels.gated_delta_rule.chunk_triton.ChunkGatedDeltaRule`). The models share no parameter, so the gradient of
the summed losses is, for each model, its own gradient: one backward serves all G.

What stays per model, so that each trains as it would alone:
- its learning rate and schedule: `StackedAdamW` keeps one base lr per model (torch's AdamW takes one lr per
  parameter group, and here a parameter tensor holds all G models);
- its gradient clipping: the norm clipped is each model's own (`clip_per_model`);
- its initialisation: each model is built and seeded as its cell builds it, then stacked.
All G see the same batches, so a grid stacked this way must share its data (an lr grid of one seed does).

`harness run --stack-lrs` trains a sweep's lr grids this way (harness/run/stacked.py);
tests/harness/run/test_grid_step.py checks on the CPU that stacked training is the G trainings alone, and
`scripts/gpu/grid_step_speed.py` times G stacked models against one cell's step on a GPU (not yet run there).
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state
from torch.nn.attention import SDPBackend, sdpa_kernel

from harness.errors import warn
from harness.run.capture_gate import GATE
from harness.run.step_capture import MAX_GRAPHS, WARMUP_STEPS, abandon_pool, scored_loss, scored_positions
from harness.run.train import decay_groups


class _ScoredLoss(nn.Module):
    """`scored_loss` as a module's forward, so that `functional_call` can run it on stacked parameters."""

    def __init__(self, model: nn.Module, amp: torch.dtype | None):
        super().__init__()
        self.model, self.amp = model, amp

    def forward(self, inputs: Tensor, positions: Tensor, targets: Tensor) -> Tensor:
        return scored_loss(self.model, inputs, positions, targets, None, self.amp)


class StackedModels:
    """G models of one architecture (same config, any initialisation) as stacked tensors: `params[name]` is
    (G, *shape) for each parameter of the model, a leaf with its own gradient."""

    def __init__(self, models: list[nn.Module], amp: torch.dtype | None = None):
        if not models:
            raise ValueError("StackedModels needs at least one model")
        shapes = {tuple((n, p.shape) for n, p in m.named_parameters()) for m in models}
        if len(shapes) != 1:
            raise ValueError("stacked models must have the same parameters (one architecture, one size)")
        self.size = len(models)
        self.params, self.buffers = stack_module_state(models)
        # the stacked tensors stand in for every parameter and buffer: the template holds none of its own
        self._template = _ScoredLoss(copy.deepcopy(models[0]).to("meta"), amp)
        # decayed as harness.run.train.make_optimizer decays them
        self.decayed = {name for name, _ in decay_groups(models[0])[0]}

    def losses(self, inputs: Tensor, positions: Tensor, targets: Tensor) -> Tensor:
        """(G,) training losses of the G models on one shared batch (inputs (B, T); positions, targets as
        `step_capture.scored_positions` makes them)."""

        def one(params, buffers):
            named = {f"model.{k}": v for k, v in params.items()} | {
                f"model.{k}": v for k, v in buffers.items()
            }
            return functional_call(self._template, named, (inputs, positions, targets))

        # Attention under vmap takes the math path: on an H200 (torch 2.11) vmapped SDPA picked cuDNN's kernel,
        # whose gradients came back NaN, and the memory-efficient kernel refused the batched layout ('LSE is not
        # correctly aligned'); math matched a model trained alone (scripts/gpu/probe_stacked_mla.py).
        with sdpa_kernel([SDPBackend.MATH]):
            return torch.vmap(one, randomness="error")(self.params, self.buffers)

    def load_into(self, model: nn.Module, index: int) -> nn.Module:
        """Copy model `index`'s parameters and buffers into `model` (same architecture), e.g. to evaluate it."""
        state = {k: v[index].detach() for k, v in {**self.params, **self.buffers}.items()}
        model.load_state_dict(state)
        return model


def clip_per_model(params: dict[str, Tensor], max_norm: float) -> Tensor:
    """Scale each model's gradients so that its own global norm is at most `max_norm` (what
    `nn.utils.clip_grad_norm_` does for one model); returns the (G,) norms before clipping. No host read: it can be
    recorded in a CUDA graph."""
    grads = [p.grad for p in params.values() if p.grad is not None]
    squares = torch.stack([g.float().square().flatten(1).sum(1) for g in grads]).sum(0)  # (G,)
    norms = squares.sqrt()
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *[1] * (g.dim() - 1)).to(g.dtype))
    return norms


class StackedAdamW:
    """AdamW (decoupled weight decay, bias-corrected moments, as torch.optim.AdamW) over stacked parameters, with one
    base learning rate per model. `step(factor)` applies lr_g = base_lr_g * factor, the schedule's factor being the
    same for every model (the grid's cells share their schedule). Every quantity lives on the device (the step
    count too), so a step can be recorded in a CUDA graph; `factor` is then a device tensor refreshed before each
    replay."""

    def __init__(
        self,
        stacked: StackedModels,
        lrs: list[float],
        betas: tuple[float, float],
        weight_decay: float,
        eps: float = 1e-8,
    ):
        if len(lrs) != stacked.size:
            raise ValueError(f"one lr per stacked model: {stacked.size} models, {len(lrs)} lrs")
        first = next(iter(stacked.params.values()))
        self.params, self.decayed = stacked.params, stacked.decayed
        self.lrs = torch.tensor(lrs, dtype=torch.float32, device=first.device)
        self.betas, self.weight_decay, self.eps = betas, weight_decay, eps
        self.steps = torch.zeros((), dtype=torch.float32, device=first.device)
        self.exp_avg = {
            k: torch.zeros_like(p, memory_format=torch.preserve_format) for k, p in self.params.items()
        }
        self.exp_avg_sq = {k: torch.zeros_like(p) for k, p in self.params.items()}

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    @torch.no_grad()
    def step(self, factor: Tensor | float, active: Tensor | None = None) -> None:
        """One update of every model at lr base_lr * factor; with `active` ((G,) booleans on the device), only of
        the models marked True: the others keep their parameters (their gradients, perhaps not finite, are read
        as zeros, so that their moments stay finite too)."""
        beta1, beta2 = self.betas
        self.steps += 1
        correction1 = 1 - torch.pow(beta1, self.steps)
        root_correction2 = torch.sqrt(1 - torch.pow(beta2, self.steps))
        lrs = self.lrs * factor  # (G,)
        if active is not None:
            lrs = lrs * active
        for name, p in self.params.items():
            if p.grad is None:
                continue
            shape = (-1, *[1] * (p.dim() - 1))
            lr = lrs.view(shape)
            grad = p.grad if active is None else torch.where(active.view(shape), p.grad, 0.0)
            if name in self.decayed and self.weight_decay:
                p.mul_(1 - lr * self.weight_decay)
            m, v = self.exp_avg[name], self.exp_avg_sq[name]
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = v.sqrt().div_(root_correction2).add_(self.eps)
            p.sub_(lr / correction1 * m / denom)


def train_step(
    stacked: StackedModels,
    optimizer: StackedAdamW,
    inputs: Tensor,
    positions: Tensor,
    targets: Tensor,
    grad_clip: float,
    factor: Tensor | float,
    active: Tensor | None = None,
) -> Tensor:
    """One step of the G models on one shared batch; returns their (G,) losses, detached, without a host read (a
    CUDA graph can record it). With `active` ((G,) booleans on the device), only those models are updated, and
    a model whose loss is not finite is marked inactive from then on, before its update (as the one-cell trainer
    makes no update from a non-finite loss); the models share no parameter, so one model's non-finite loss
    spoils nothing of the others'."""
    optimizer.zero_grad()
    losses = stacked.losses(inputs, positions, targets)
    losses.sum().backward()
    if grad_clip > 0:
        clip_per_model(stacked.params, grad_clip)
    if active is not None:
        active &= torch.isfinite(losses.detach())
    optimizer.step(factor, active)
    return losses.detach()


class StackedStep:
    """`train_step` for CPU batches of any shape, eager or replayed from CUDA graphs (one per batch shape, as
    harness/run/step_capture.py's CapturedStep does for one model: static buffers per shape, WARMUP_STEPS eager
    steps on a side stream, then a capture; the lr factor and the active mask are device tensors the graphs
    read). Call it with (inputs, labels) of shape (B, T); it returns the (G,) losses on the device."""

    def __init__(
        self,
        stacked: StackedModels,
        optimizer: StackedAdamW,
        grad_clip: float,
        device: torch.device,
        graphs: bool,
    ):
        self.stacked, self.optimizer, self.grad_clip, self.device = stacked, optimizer, grad_clip, device
        self.graphs = graphs and device.type == "cuda"
        self.factor = torch.ones((), dtype=torch.float32, device=device)
        self.active = torch.ones(stacked.size, dtype=torch.bool, device=device)
        self.shapes: dict[tuple[int, ...], dict] = {}
        self.steps: Counter[str] = Counter()
        self.side = torch.cuda.Stream(device) if self.graphs else None
        # one memory pool for all shapes' graphs: they never run at the same time (as CapturedStep's)
        self.pool = torch.cuda.graph_pool_handle() if self.graphs else None

    def __call__(self, inputs: Tensor, labels: Tensor, factor: float) -> Tensor:
        GATE.checkpoint()  # another cell of this process may be capturing (capture_gate.py)
        positions, targets = scored_positions(torch.as_tensor(labels))
        batch = (torch.as_tensor(inputs), positions, targets)
        self.factor.fill_(factor)
        if not self.graphs:
            self.steps["eager"] += 1
            on_device = [t.to(self.device) for t in batch]
            return train_step(
                self.stacked, self.optimizer, *on_device, self.grad_clip, self.factor, self.active
            )
        key = (*batch[0].shape, len(positions))
        shape = self.shapes.get(key)
        if shape is None:
            shape = self.shapes[key] = dict(
                static=[torch.zeros_like(t, device=self.device) for t in batch], eager=0
            )
        for static, value in zip(shape["static"], batch, strict=True):
            static.copy_(value.pin_memory(), non_blocking=True)
        if "graph" not in shape and "eager_reason" not in shape and shape["eager"] >= WARMUP_STEPS:
            if len(self.shapes) > MAX_GRAPHS:
                shape["eager_reason"] = f"beyond {MAX_GRAPHS} captured batch shapes"
            else:
                self._capture(shape)
        if "graph" in shape:
            shape["graph"].replay()
            self.steps["graph"] += 1
            return shape["losses"].clone()
        shape["eager"] += 1
        self.steps[f"eager ({shape.get('eager_reason', 'warm-up')})"] += 1
        current = torch.cuda.current_stream(self.device)
        self.side.wait_stream(current)
        with torch.cuda.stream(self.side):
            losses = self._body(shape["static"])
        current.wait_stream(self.side)
        return losses

    def describe(self) -> str:
        """The paths the steps took, e.g. 'stacked (3 models) cuda-graph: 5 shapes, eager (warm-up): 10, graph: 2990'."""
        graphs = sum("graph" in shape for shape in self.shapes.values())
        parts = [f"{path}: {n}" for path, n in sorted(self.steps.items())]
        return (
            f"stacked ({self.stacked.size} models) "
            + (f"cuda-graph: {graphs} shapes, " if graphs else "")
            + ", ".join(parts)
        )

    def _capture(self, shape: dict) -> None:
        """Record the shape's step as a graph; if that fails (as CapturedStep: the shape trains eagerly, said once)."""
        current = torch.cuda.current_stream(self.device)
        try:
            with GATE.capturing():
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(
                    graph, pool=self.pool, stream=self.side, capture_error_mode="thread_local"
                ):
                    shape["losses"] = self._body(shape["static"])
                shape["graph"] = graph
                torch.cuda.empty_cache()  # the warm-up steps' activations, beside the graphs' pool
        except torch.cuda.OutOfMemoryError:
            raise  # the cells' result is 'oom', as eagerly
        except Exception as err:  # noqa: BLE001 - a shape that cannot be captured trains eagerly
            torch.cuda.set_stream(current)
            self.pool = abandon_pool(self.pool)
            shape["eager_reason"] = f"capture failed: {type(err).__name__}"
            warn(
                f"a stacked training step could not be captured ({type(err).__name__}: {err}); it runs eagerly"
            )

    def _body(self, static: list[Tensor]) -> Tensor:
        return train_step(self.stacked, self.optimizer, *static, self.grad_clip, self.factor, self.active)
