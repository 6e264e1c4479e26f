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

Measured before it is wired into sweeps: `scripts/gpu/grid_step_speed.py` times G stacked models against one
cell's step on a GPU (tests/harness/run/test_grid_step.py checks on the CPU that stacked training is the G
trainings alone).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state

from harness.run.step_capture import scored_loss


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
        first = models[0]
        embeddings = {id(m.weight) for m in first.modules() if isinstance(m, nn.Embedding)}
        # the same two groups as harness.run.train.make_optimizer: matrices decay; vectors, embeddings and
        # parameters flagged _no_weight_decay do not
        self.decays = {
            name: p.dim() >= 2 and not getattr(p, "_no_weight_decay", False) and id(p) not in embeddings
            for name, p in first.named_parameters()
        }

    def losses(self, inputs: Tensor, positions: Tensor, targets: Tensor) -> Tensor:
        """(G,) training losses of the G models on one shared batch (inputs (B, T); positions, targets as
        `step_capture.scored_positions` makes them)."""

        def one(params, buffers):
            named = {f"model.{k}": v for k, v in params.items()} | {
                f"model.{k}": v for k, v in buffers.items()
            }
            return functional_call(self._template, named, (inputs, positions, targets))

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
        self.params, self.decays = stacked.params, stacked.decays
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
    def step(self, factor: Tensor | float) -> None:
        beta1, beta2 = self.betas
        self.steps += 1
        correction1 = 1 - torch.pow(beta1, self.steps)
        root_correction2 = torch.sqrt(1 - torch.pow(beta2, self.steps))
        lrs = self.lrs * factor  # (G,)
        for name, p in self.params.items():
            if p.grad is None:
                continue
            shape = (-1, *[1] * (p.dim() - 1))
            lr = lrs.view(shape)
            if self.decays[name] and self.weight_decay:
                p.mul_(1 - lr * self.weight_decay)
            m, v = self.exp_avg[name], self.exp_avg_sq[name]
            m.lerp_(p.grad, 1 - beta1)
            v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
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
) -> Tensor:
    """One step of all G models on one shared batch; returns their (G,) losses, detached, without a host read (a
    CUDA graph can record it). A model whose loss is not finite spoils only its own parameters: the models share
    no parameter, and clipping and AdamW work per model."""
    optimizer.zero_grad()
    losses = stacked.losses(inputs, positions, targets)
    losses.sum().backward()
    if grad_clip > 0:
        clip_per_model(stacked.params, grad_clip)
    optimizer.step(factor)
    return losses.detach()
