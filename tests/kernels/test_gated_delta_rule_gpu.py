"""The kernels on a CUDA device: bf16 inputs against float64 computations of the same (bf16-rounded) inputs."""

import pytest
import torch

from kernels.gated_delta_rule import chunk_gated_delta_rule_torch, gated_delta_rule, gated_delta_rule_ref

from .test_gated_delta_rule import (
    FAMILY,
    make_fused_option_inputs,
    make_inputs,
    rel_rms,
    run_with_grads,
    unfused_ref,
)

pytestmark = pytest.mark.gpu

# Relative RMS error of bf16 inputs (float32 arithmetic inside, float32 gates and states), by what is compared.
BF16_TOLERANCE = {
    "output": 5e-3,
    "state": 5e-3,
    "q": 8e-3,
    "k": 8e-3,
    "v": 8e-3,
    "initial_state": 8e-3,
    "g": 2e-2,
    "beta": 2e-2,
    "A_log": 2e-2,
    "dt_bias": 2e-2,
}


def on_cuda(cpu_inputs):
    """bf16 q, k, v, beta on the GPU (gates and states float32), and float64 copies of exactly those values."""
    low, high = {}, {}
    for name, x in cpu_inputs.items():
        if x is None:
            low[name] = high[name] = None
            continue
        dtype = torch.bfloat16 if name in ("q", "k", "v", "beta") else torch.float32
        x = x.detach().to("cuda", dtype)
        low[name] = x.clone().requires_grad_(True)
        high[name] = x.double().requires_grad_(True)
    return low, high


def assert_within_table(result, reference):
    o, s, grads = result
    o_ref, s_ref, g_ref = reference
    assert rel_rms(o, o_ref) < BF16_TOLERANCE["output"], rel_rms(o, o_ref)
    assert rel_rms(s, s_ref) < BF16_TOLERANCE["state"], rel_rms(s, s_ref)
    for name, grad in grads.items():
        assert torch.isfinite(grad).all(), name
        assert rel_rms(grad, g_ref[name]) < BF16_TOLERANCE[name], (name, rel_rms(grad, g_ref[name]))


@pytest.mark.parametrize("gate,delta", FAMILY)
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_bf16_matches_float64_at_small_odd_shapes(gate, delta, impl):
    cpu = make_inputs(2, 300, 4, 64, 64, gate, delta, dtype=torch.float64, seed=7)
    low, high = on_cuda(cpu)
    ref = run_with_grads(
        gated_delta_rule_ref, {n: None if x is None else x.cpu() for n, x in high.items()}, gate, delta
    )
    result = run_with_grads(gated_delta_rule, low, gate, delta, impl=impl)
    assert result[0].dtype == torch.bfloat16 and result[0].is_cuda
    assert_within_table([result[0].cpu(), result[1].cpu(), {n: g.cpu() for n, g in result[2].items()}], ref)


@pytest.mark.parametrize("gate,delta", FAMILY)
def test_triton_bf16_at_real_shapes(gate, delta):
    """16 heads of 128, an odd length; float64 chunked PyTorch on the GPU is the reference."""
    cpu = make_inputs(2, 1000, 16, 128, 128, gate, delta, dtype=torch.float32, seed=8)
    low, high = on_cuda(cpu)
    ref = run_with_grads(chunk_gated_delta_rule_torch, high, gate, delta)
    result = run_with_grads(gated_delta_rule, low, gate, delta, impl="triton")
    assert_within_table(result, ref)


@pytest.mark.parametrize("delta", [True, False])
@pytest.mark.parametrize("version", ["v2", "v3"])
def test_triton_per_channel_gates_on_both_sides_of_the_diagonal_span(delta, version):
    """Real head size; half the heads forget fast in half their channels (about -12.5 per token: v3's diagonal
    blocks take the exact loop there, the matrix product elsewhere); the previous kernels (v2) as well."""
    from kernels.gated_delta_rule.chunk_triton import kernels_version

    cpu = make_inputs(1, 333, 4, 128, 128, "channel", delta, dtype=torch.float32, seed=11)
    g = cpu["g"].detach().clone()
    g[:, :, ::2, ::2] = -13.0 + torch.rand(
        g[:, :, ::2, ::2].shape, generator=torch.Generator().manual_seed(2)
    )
    cpu["g"] = g
    low, high = on_cuda(cpu)
    ref = run_with_grads(chunk_gated_delta_rule_torch, high, "channel", delta)
    with kernels_version(version):
        result = run_with_grads(gated_delta_rule, low, "channel", delta, impl="triton")
    assert_within_table(result, ref)


@pytest.mark.parametrize("gate,delta", FAMILY)
def test_triton_varlen_on_cuda(gate, delta):
    lengths = [100, 1, 300, 77, 64]
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device="cuda")
    cpu = make_inputs(
        1, sum(lengths), 4, 128, 128, gate, delta, dtype=torch.float32, seed=9, states=len(lengths)
    )
    low, high = on_cuda(cpu)
    ref = run_with_grads(chunk_gated_delta_rule_torch, high, gate, delta, cu_seqlens=cu_seqlens)
    result = run_with_grads(gated_delta_rule, low, gate, delta, impl="triton", cu_seqlens=cu_seqlens)
    assert_within_table(result, ref)


@pytest.mark.parametrize("gate,delta", FAMILY)
def test_triton_decode_steps_continue_a_prefill(gate, delta):
    cpu = make_inputs(4, 70, 16, 128, 128, gate, delta, dtype=torch.float32, seed=10)
    low, high = on_cuda(cpu)
    with torch.no_grad():
        o_ref, s_ref = chunk_gated_delta_rule_torch(**high, gate=gate, delta=delta, output_final_state=True)
        pieces, state = [], low["initial_state"]
        for start, end in [(0, 64), (64, 65), (65, 66), (66, 70)]:
            step = {n: x[:, start:end] for n, x in low.items() if x is not None and n != "initial_state"}
            o, state = gated_delta_rule(
                **step, initial_state=state, gate=gate, delta=delta, output_final_state=True, impl="triton"
            )
            pieces.append(o)
    assert rel_rms(torch.cat(pieces, dim=1), o_ref) < BF16_TOLERANCE["output"]
    assert rel_rms(state, s_ref) < BF16_TOLERANCE["state"]


@pytest.mark.parametrize("gate", ["channel", "scalar"])
def test_triton_fused_qk_l2norm_and_gate_activation_bf16(gate):
    """Raw q, k and the gate's raw input with A_log, dt_bias (KDA, GDN as the models call the op)."""
    cpu = make_fused_option_inputs(2, 300, 4, 64, 64, gate, True, dtype=torch.float64, seed=11)
    low, high = on_cuda(cpu)
    ref = run_with_grads(
        unfused_ref, {n: None if x is None else x.cpu() for n, x in high.items()}, gate, True
    )
    result = run_with_grads(gated_delta_rule, low, gate, True, impl="triton", use_qk_l2norm=True)
    assert {"A_log", "dt_bias"} <= set(result[2])
    assert_within_table([result[0].cpu(), result[1].cpu(), {n: g.cpu() for n, g in result[2].items()}], ref)


@pytest.mark.parametrize("gate, delta", FAMILY)
def test_triton_vmap_over_stacked_models_on_cuda(gate, delta):
    """Four stacked models' heads in one launch (harness/run/grid_step.py) give each model's own output and
    gradients, at the synthetic suites' head size (bf16: the same kernels, other heads; agreement to rounding)."""
    torch.manual_seed(0)
    G, B, T, H, K = 4, 4, 300, 2, 128
    shape = (G, B, T, H, K) if gate == "channel" else (G, B, T, H)
    inputs = dict(
        q=torch.randn(G, B, T, H, K),
        k=torch.randn(G, B, T, H, K),
        v=torch.randn(G, B, T, H, K),
        g=torch.randn(shape),
        beta=torch.rand(G, B, T, H) if delta else None,
        A_log=torch.randn(G, H),
    )
    inputs = {
        n: None
        if x is None
        else x.to("cuda", torch.bfloat16 if n in "qkv" else torch.float32).requires_grad_(True)
        for n, x in inputs.items()
    }
    names = [n for n, x in inputs.items() if x is not None]

    def op(*xs):
        kw = dict(zip(names, xs, strict=True))
        return gated_delta_rule(**kw, gate=gate, delta=delta, impl="triton", use_qk_l2norm=True)[0]

    o = torch.vmap(op)(*[inputs[n] for n in names])
    o.float().square().sum().backward()
    stacked = {n: inputs[n].grad.clone() for n in names}
    for n in names:
        inputs[n].grad = None
    for i in range(G):
        o_i = op(*[inputs[n][i] for n in names])
        assert rel_rms(o[i], o_i) < 1e-3
        o_i.float().square().sum().backward()
    for n in names:
        assert rel_rms(stacked[n], inputs[n].grad) < 1e-3, n
