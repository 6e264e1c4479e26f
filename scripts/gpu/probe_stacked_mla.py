"""Probe: one mla@tiny model's loss and gradients on CUDA, plain against vmapped (StackedModels), per SDPA backend."""

import copy

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import models.presets  # noqa
from harness.run.grid_step import StackedAdamW, StackedModels, StackedStep
from harness.run.step_capture import scored_loss, scored_positions
from models.backbone import LanguageModel
from models.presets import build_model_config

dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.manual_seed(0)
V, B, T = 64, 16, 64
model = LanguageModel(build_model_config("mla", "tiny", vocab_size=V)).to(dev)
inputs = torch.randint(V, (B, T))
labels = torch.where(torch.rand(B, T) < 0.2, inputs, -100)
positions, targets = scored_positions(labels)
inputs, positions, targets = inputs.to(dev), positions.to(dev), targets.to(dev)
for amp in (torch.bfloat16, None):
    plain = copy.deepcopy(model)
    loss = scored_loss(plain, inputs, positions, targets, None, amp)
    loss.backward()
    grads = {n: p.grad for n, p in plain.named_parameters()}
    for backend in (
        None,
        SDPBackend.MATH,
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.CUDNN_ATTENTION,
    ):
        try:
            stacked = StackedModels([copy.deepcopy(model), copy.deepcopy(model)], amp)
            ctx = sdpa_kernel([backend]) if backend else torch.enable_grad()
            with ctx:
                losses = stacked.losses(inputs, positions, targets)
                losses.sum().backward()
            worst = max((stacked.params[n].grad[0] - g).abs().max().item() for n, g in grads.items())
            nonfinite = [n for n in grads if not torch.isfinite(stacked.params[n].grad).all()]
            print(
                f"amp={amp} backend={backend}: plain loss {loss.item():.5f}, stacked {losses.tolist()}, "
                f"worst grad diff {worst:.3g}, non-finite grads {nonfinite[:3]}"
            )
        except Exception as err:
            print(f"amp={amp} backend={backend}: {type(err).__name__}: {str(err)[:300]}")
# a few stacked steps, eager and graph
for graphs in (False, True):
    stacked = StackedModels([copy.deepcopy(model) for _ in range(3)], torch.bfloat16)
    opt = StackedAdamW(stacked, [1e-3, 3e-3, 1e-2], (0.9, 0.95), 0.1)
    step = StackedStep(stacked, opt, 1.0, dev, graphs=graphs)
    out = [step(inputs.cpu(), labels, 1.0).tolist() for _ in range(10)]
    print(f"graphs={graphs}:", [[round(x, 3) for x in o] for o in out], step.describe())
