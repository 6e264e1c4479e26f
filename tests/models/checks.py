"""Checks and reference building blocks shared by the mixer tests.

The references here are written from the papers' equations, not from `models/`, so that a model test compares
two independent computations.
"""

import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.plugins import load_plugins
from harness.registry import MIXERS
from models.presets import build_model_config

# Relative RMS error allowed between a float64 model and a reference written in the test. The models compute
# their norms and gates in float32 whatever the input dtype, so agreement stops near 1e-7; a wrong formula is
# off by far more than 1e-5.
MODEL_TOLERANCE = 1e-5


def rel_rms(x: Tensor, ref: Tensor) -> float:
    x, ref = x.double(), ref.double()
    return ((x - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-30)).item()


@torch.no_grad()
def perturb_parameters(module: nn.Module, seed: int, scale: float = 0.2) -> None:
    """Add noise to every parameter, so that norm weights are not 1 and biases not 0: a reference that left
    one of them out would then disagree with the module."""
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def causal_conv_ref(x: Tensor, conv: nn.Conv1d, silu: bool = True) -> Tensor:
    """Depthwise causal convolution: y_t = sum_j w_j x_{t-W+1+j} (+ bias), zeros before the first token."""
    W, T = conv.kernel_size[0], x.shape[1]
    weight = conv.weight[:, 0]  # (C, W)
    padded = F.pad(x, (0, 0, W - 1, 0))  # (B, W - 1 + T, C)
    y = sum(weight[:, j] * padded[:, j : j + T] for j in range(W))
    if conv.bias is not None:
        y = y + conv.bias
    return F.silu(y) if silu else y


def l2_normalize(x: Tensor, eps: float = 1e-6) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt() * weight


def assert_causal(fn, x: Tensor, changed: Tensor, t: int) -> None:
    """fn's outputs before position t do not depend on inputs at t and later, while those after do."""
    assert torch.equal(x[:, :t], changed[:, :t]) and not torch.equal(x[:, t:], changed[:, t:])
    with torch.no_grad():
        y, y_changed = fn(x), fn(changed)
    torch.testing.assert_close(y_changed[:, :t], y[:, :t], rtol=0, atol=1e-12)
    # the test would pass vacuously if the changed tokens could not reach any output
    assert (y_changed[:, t:] - y[:, t:]).abs().max() > 1e-6


def assert_every_parameter_gets_a_finite_gradient(module: nn.Module, x: Tensor) -> None:
    y = module(x)
    cotangent = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=y.dtype)
    (y * cotangent).sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        # a parameter that cannot change the output is dead weight (or a wiring bug)
        assert p.grad.abs().max() > 0, f"{name} has an all-zero gradient"


def randn(*shape, seed: int = 1) -> Tensor:
    """float64 normal noise from its own generator."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def delta_rule_inputs_ref(inputs: nn.Module, x: Tensor, H: int, K: int, negative_eigenvalues: bool):
    """KDA's and GDN's q, k, v, beta from a DeltaRuleInputs module's weights (Kimi report, Eq. 10)."""
    B, T, _ = x.shape
    q = l2_normalize(causal_conv_ref(x @ inputs.q_proj.weight.T, inputs.q_conv.conv).view(B, T, H, K))
    k = l2_normalize(causal_conv_ref(x @ inputs.k_proj.weight.T, inputs.k_conv.conv).view(B, T, H, K))
    v = causal_conv_ref(x @ inputs.v_proj.weight.T, inputs.v_conv.conv).view(B, T, H, K)
    beta = torch.sigmoid(x @ inputs.b_proj.weight.T)  # (B, T, H)
    return q, k, v, (2 * beta if negative_eigenvalues else beta)


def supports_decoding(mixer_cls) -> bool:
    """Whether a mixer takes a decoding state (models/backbone.py: a new mixer may be trained before it does)."""
    return "state" in inspect.signature(mixer_cls.forward).parameters


def contract_models() -> list[str]:
    """Model tokens that cover every registered mixer, plugins' included (one mixer in every layer), and the
    presets whose layers mix or configure mixers otherwise (mla-nope, kimi)."""
    load_plugins()
    return sorted({*MIXERS.names(), "mla-nope", "kimi"})


def decoding_models() -> list:
    """contract_models, those whose mixers cannot decode yet marked to skip the decoding tests."""
    params = []
    for token in contract_models():
        layers = build_model_config(token, "tiny", vocab_size=8).layers
        missing = [name for name in dict.fromkeys(layers) if not supports_decoding(MIXERS.get(name))]
        marks = [pytest.mark.skip(reason=f"{', '.join(missing)} takes no decoding state")] if missing else []
        params.append(pytest.param(token, marks=marks))
    return params
