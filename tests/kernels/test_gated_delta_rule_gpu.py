"""The chunked PyTorch path on a CUDA device: bf16 inputs against the float64 recurrence on the CPU."""

import pytest
import torch

from kernels.gated_delta_rule import gated_delta_rule, gated_delta_rule_ref

from .test_gated_delta_rule import FAMILY, make_inputs, rel_rms, run_with_grads

pytestmark = pytest.mark.gpu

# Relative RMS error of bf16 inputs (float32 arithmetic inside) against float64.
BF16_TOLERANCE = {"output": 1e-2, "state": 1e-2, "grad": 2e-2}


@pytest.mark.parametrize("gate,delta", FAMILY)
def test_bf16_on_cuda_matches_float64_reference(gate, delta):
    cpu = make_inputs(2, 300, 4, 64, 64, gate, delta, dtype=torch.float64, seed=7)
    o_ref, s_ref, g_ref = run_with_grads(gated_delta_rule_ref, cpu, gate, delta)
    cuda = {
        name: None if x is None else x.detach().to("cuda", torch.bfloat16).requires_grad_(True)
        for name, x in cpu.items()
    }
    cuda["initial_state"] = cpu["initial_state"].detach().float().cuda().requires_grad_(True)
    cuda["g"] = cpu["g"].detach().float().cuda().requires_grad_(True)  # gates stay float32
    o, s, grads = run_with_grads(gated_delta_rule, cuda, gate, delta, impl="auto")
    assert o.dtype == torch.bfloat16 and o.is_cuda
    assert rel_rms(o.cpu(), o_ref) < BF16_TOLERANCE["output"]
    assert rel_rms(s.cpu(), s_ref) < BF16_TOLERANCE["state"]
    for name, grad in grads.items():
        assert torch.isfinite(grad).all(), name
        assert rel_rms(grad.cpu(), g_ref[name]) < BF16_TOLERANCE["grad"], name
