"""Probe: attention's gradients under torch.vmap (how --stack-lrs trains G models as one), on CUDA.

    PYTHONPATH=. python scripts/gpu/probe_stacked_mla.py

1. Scaled-dot-product attention vmapped over 2 models against each model's own call, per SDPA backend, at
   mla@tiny's head shapes (query/key 48 wide, value 32, causal): the first backend-by-backend check found, on an
   H200 with torch 2.11, that the default choice (cuDNN) returned NaN gradients under vmap and the
   memory-efficient kernel refused the batched layout ('LSE is not correctly aligned'), while math matched.
   That check ran through StackedModels before it pinned the math path; this form of it has run on the CPU only.
2. One mla@tiny model's loss and gradients, plain against StackedModels (which takes the math path itself).
3. Ten stacked steps of three lrs, eager and replayed from a CUDA graph: the losses must fall, and stay finite.
"""

import copy

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import models.presets  # noqa: F401
from harness.run.grid_step import StackedAdamW, StackedModels, StackedStep
from harness.run.step_capture import scored_loss, scored_positions
from models.backbone import LanguageModel
from models.presets import build_model_config

dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.manual_seed(0)

# 1. vmapped attention, backend by backend
G, B, H, T = 2, 16, 4, 64
for dtype in (torch.bfloat16, torch.float32):
    q, k = (torch.randn(G, B, H, T, 48, device=dev, dtype=dtype) for _ in range(2))
    v = torch.randn(G, B, H, T, 32, device=dev, dtype=dtype)
    for backend in (
        SDPBackend.MATH,
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.CUDNN_ATTENTION,
        None,
    ):
        try:
            grads = []
            for batched in (True, False):
                inputs = [t.clone().requires_grad_() for t in (q, k, v)]
                with sdpa_kernel([backend]) if backend else torch.enable_grad():
                    if batched:
                        out = torch.vmap(
                            lambda a, b, c: F.scaled_dot_product_attention(a, b, c, is_causal=True)
                        )(*inputs)
                    else:
                        out = torch.stack(
                            [
                                F.scaled_dot_product_attention(*(t[g] for t in inputs), is_causal=True)
                                for g in range(G)
                            ]
                        )
                out.float().square().sum().backward()
                grads.append([t.grad.float() for t in inputs])
            worst = max((a - b).abs().max().item() for a, b in zip(*grads, strict=True))
            print(
                f"1. {dtype} backend={backend or 'default'}: worst gradient difference vmapped vs alone {worst:.3g}"
            )
        except Exception as err:  # noqa: BLE001 - a backend that refuses these shapes says so
            print(f"1. {dtype} backend={backend or 'default'}: {type(err).__name__}: {str(err)[:200]}")

# 2. StackedModels against the model alone
V = 64
model = LanguageModel(build_model_config("mla", "tiny", vocab_size=V)).to(dev)
inputs = torch.randint(V, (B, T))
labels = torch.where(torch.rand(B, T) < 0.2, inputs, -100)
positions, targets = scored_positions(labels)
on_dev = inputs.to(dev), positions.to(dev), targets.to(dev)
for amp in (torch.bfloat16, None):
    plain = copy.deepcopy(model)
    loss = scored_loss(plain, *on_dev, None, amp)
    loss.backward()
    stacked = StackedModels([copy.deepcopy(model), copy.deepcopy(model)], amp)
    losses = stacked.losses(*on_dev)
    losses.sum().backward()
    worst = max((stacked.params[n].grad[0] - p.grad).abs().max().item() for n, p in plain.named_parameters())
    nonfinite = [n for n in stacked.params if not torch.isfinite(stacked.params[n].grad).all()]
    print(
        f"2. amp={amp}: loss alone {loss.item():.5f}, stacked {losses.tolist()}, worst gradient difference "
        f"{worst:.3g}, non-finite gradients {nonfinite[:3]}"
    )

# 3. stacked steps, eager and graph
for graphs in (False, True):
    stacked = StackedModels([copy.deepcopy(model) for _ in range(3)], torch.bfloat16)
    step = StackedStep(stacked, StackedAdamW(stacked, [1e-3, 3e-3, 1e-2], (0.9, 0.95), 0.1), 1.0, dev, graphs)
    out = [step(inputs, labels, 1.0).tolist() for _ in range(10)]
    print(f"3. graphs={graphs}:", [[round(x, 3) for x in o] for o in out], step.describe())
