"""KDA and GDN hand the L2 norm of q, k and the forget gate's activation to the kernel op (fused options): their
outputs and gradients are those of the unfused computation they did before, on every kernel path."""

import os

import pytest
import torch
import torch.nn.functional as F

from kernels.gated_delta_rule import gated_delta_rule
from models.gdn import GDN, GDNConfig
from models.kda import KDA, KDAConfig

from .checks import perturb_parameters, randn, rel_rms

D_MODEL, H, K = 16, 2, 8


def unfused_forward(mixer, x, attention_mask=None):
    """The mixer's forward as it was before the fusion: q, k normalised and g activated here, then the op."""
    B, T, _ = x.shape
    keep = None if attention_mask is None else attention_mask.bool()
    if keep is not None:
        x = x.masked_fill(~keep[..., None], 0)
    q, k, v, beta = mixer.inputs(x)
    q, k = F.normalize(q, dim=-1, eps=1e-6), F.normalize(k, dim=-1, eps=1e-6)
    g = mixer.forget_gate(x)
    if keep is not None:
        beta = beta.masked_fill(~keep[..., None], 0)
        g = g.masked_fill(~keep.view(B, T, *[1] * (g.dim() - 2)), 0)
    o, _ = gated_delta_rule(
        q, k, v, g, beta, gate=mixer.gate, impl=mixer.kernel_impl, chunk_size=mixer.config.chunk_size
    )
    o = mixer.o_norm(o) * mixer.output_gate(x).view(B, T, H, K)
    return mixer.o_proj(o.reshape(B, T, H * K))


def make(name, kernel_impl, dtype):
    torch.manual_seed(0)
    if name == "kda":
        mixer = KDA(D_MODEL, KDAConfig(num_heads=H, head_dim=K, chunk_size=16), kernel_impl=kernel_impl)
    else:
        mixer = GDN(D_MODEL, GDNConfig(num_heads=H, head_dim=K, chunk_size=16), kernel_impl=kernel_impl)
    mixer = mixer.to(dtype)
    with torch.no_grad():
        perturb_parameters(mixer, seed=1)
    return mixer


@pytest.mark.parametrize("name", ["kda", "gdn"])
@pytest.mark.parametrize("kernel_impl", ["torch", "triton"])
def test_fused_inputs_give_the_unfused_outputs_and_gradients(name, kernel_impl):
    if kernel_impl == "triton" and not (
        torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
    ):
        pytest.skip("Triton needs CUDA or the interpreter")
    device = "cuda" if torch.cuda.is_available() and kernel_impl == "triton" else "cpu"
    mixer = make(name, kernel_impl, torch.float32).to(device)
    x = randn(2, 21, D_MODEL).float().to(device)
    mask = torch.ones(2, 21, dtype=torch.long, device=device)
    mask[1, :4] = 0  # left padding
    results = []
    for forward in (mixer, lambda x, attention_mask: unfused_forward(mixer, x, attention_mask)):
        mixer.zero_grad()
        y = forward(x, attention_mask=mask)
        y.square().sum().backward()
        results.append((y.detach(), {n: p.grad.clone() for n, p in mixer.named_parameters()}))
    (y, grads), (y_ref, grads_ref) = results
    # same math: the same outputs on the PyTorch path (gradients to float32 rounding: the pads' gates are masked
    # at another step), float32 rounding apart in the kernels
    assert rel_rms(y, y_ref) <= (0 if kernel_impl == "torch" else 1e-5)
    for n in grads_ref:
        assert rel_rms(grads[n], grads_ref[n]) <= 1e-5, n
