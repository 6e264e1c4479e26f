"""The chunked PyTorch path against the token-by-token specification, on awkward shapes."""

import pytest
import torch
import torch.nn.functional as F

from kernels.gated_delta_rule import (
    apply_input_options,
    chunk_gated_delta_rule_torch,
    gated_delta_rule,
    gated_delta_rule_ref,
)

# Relative RMS error allowed, by the dtype the compared implementation computes in.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5}

FAMILY = [("channel", True), ("scalar", True), ("scalar", False), ("channel", False)]  # KDA, GDN, SSD, GLA


def rel_rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    return ((x - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def make_inputs(B, T, H, K, V, gate, delta, dtype=torch.float64, seed=0, states=None):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    inputs = {
        "q": randn(B, T, H, K),
        "k": F.normalize(randn(B, T, H, K), dim=-1),
        "v": randn(B, T, H, V),
        # log-decays between about -4 and 0: strong enough to test the stable pairwise decays
        "g": F.logsigmoid(randn(B, T, H, *([K] if gate == "channel" else [])) * 2),
        "beta": torch.rand(B, T, H, generator=gen, dtype=dtype) if delta else None,
        "initial_state": randn(states or B, H, K, V),
    }
    for x in inputs.values():
        if x is not None:
            x.requires_grad_(True)
    return inputs


def make_fused_option_inputs(B, T, H, K, V, gate, delta, dtype=torch.float64, seed=0):
    """Inputs for use_qk_l2norm=True and the fused gate activation: raw q and k of varied norms, the gate's raw
    input (one token at -inf: g = 0 there, a padded token), A_log and dt_bias as the models initialise them."""
    inputs = {
        n: None if x is None else x.detach()
        for n, x in make_inputs(B, T, H, K, V, gate, delta, dtype, seed).items()
    }
    gen = torch.Generator().manual_seed(seed + 1)
    inputs["q"] = inputs["q"] * 3
    inputs["k"] = (
        torch.randn(B, T, H, K, generator=gen, dtype=dtype) * torch.rand(B, T, H, 1, generator=gen) * 2
    )
    inputs["g"] = torch.randn(inputs["g"].shape, generator=gen, dtype=dtype)
    inputs["g"][:, T // 2] = float("-inf")
    inputs["A_log"] = torch.empty(H, dtype=dtype).uniform_(1, 16, generator=gen).log()
    # softplus(dt_bias) in about [1e-3, 0.13], as the models initialise it
    inputs["dt_bias"] = torch.empty(H * K if gate == "channel" else H, dtype=dtype).uniform_(
        -7, -2, generator=gen
    )
    for x in inputs.values():
        if x is not None:
            x.requires_grad_(True)
    return inputs


def unfused_ref(q, k, v, g, beta=None, *, A_log, dt_bias, **kwargs):
    """The float64 recurrence after the fused options' math (L2 norm of q and k, gate activation), unfused."""
    q, k, g = apply_input_options(q, k, g, use_qk_l2norm=True, A_log=A_log, dt_bias=dt_bias)
    return gated_delta_rule_ref(q, k, v, g, beta, **kwargs)


def run_with_grads(fn, inputs, gate, delta, **kwargs):
    o, s = fn(**inputs, gate=gate, delta=delta, output_final_state=True, **kwargs)
    gen = torch.Generator().manual_seed(123)
    # random cotangents so that every gradient path is exercised
    # (drawn in float64 on the CPU, so that every device and dtype gets the same cotangents)
    d_o = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device, o.dtype)
    d_s = torch.randn(s.shape, generator=gen, dtype=torch.float64).to(s.device, s.dtype)
    loss = (o * d_o).sum() + (s * d_s).sum()
    names = [n for n, x in inputs.items() if x is not None]
    grads = torch.autograd.grad(loss, [inputs[n] for n in names])
    return o, s, dict(zip(names, grads, strict=True))


@pytest.mark.parametrize("gate,delta", FAMILY)
@pytest.mark.parametrize("T,chunk_size", [(1, 16), (37, 16), (63, 64), (100, 32)])
def test_chunked_equals_recurrent_with_gradients(gate, delta, T, chunk_size):
    inputs = make_inputs(2, T, 3, 12, 7, gate, delta)
    o_ref, s_ref, g_ref = run_with_grads(gated_delta_rule_ref, inputs, gate, delta)
    o, s, grads = run_with_grads(chunk_gated_delta_rule_torch, inputs, gate, delta, chunk_size=chunk_size)
    tol = TOLERANCE[torch.float64]
    assert rel_rms(o, o_ref) < tol
    assert rel_rms(s, s_ref) < tol
    assert set(grads) == set(g_ref)
    for name in grads:
        assert rel_rms(grads[name], g_ref[name]) < tol, name


@pytest.mark.parametrize("gate,delta", FAMILY)
def test_fused_options_on_the_torch_path_equal_the_same_math_by_hand(gate, delta):
    inputs = make_fused_option_inputs(2, 37, 2, 12, 7, gate, delta)
    o_ref, s_ref, g_ref = run_with_grads(unfused_ref, inputs, gate, delta)
    o, s, grads = run_with_grads(gated_delta_rule, inputs, gate, delta, impl="torch", use_qk_l2norm=True)
    assert rel_rms(o, o_ref) < TOLERANCE[torch.float64]
    assert rel_rms(s, s_ref) < TOLERANCE[torch.float64]
    for name in grads:
        assert rel_rms(grads[name], g_ref[name]) < TOLERANCE[torch.float64], name


@pytest.mark.parametrize("gate,delta", FAMILY)
def test_float32_inputs_match_float64_reference(gate, delta):
    inputs = make_inputs(1, 50, 2, 16, 16, gate, delta, dtype=torch.float32, seed=1)
    o_ref, s_ref = gated_delta_rule_ref(**inputs, gate=gate, delta=delta, output_final_state=True)
    o, s = gated_delta_rule(**inputs, gate=gate, delta=delta, output_final_state=True, impl="torch")
    assert o.dtype == torch.float32
    assert rel_rms(o, o_ref) < TOLERANCE[torch.float32]
    assert rel_rms(s, s_ref) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("gate,delta", FAMILY)
@pytest.mark.parametrize("fn", [gated_delta_rule_ref, chunk_gated_delta_rule_torch])
def test_state_carried_across_split_equals_one_pass(gate, delta, fn):
    inputs = make_inputs(2, 45, 2, 8, 6, gate, delta, seed=2)
    o_full, s_full = fn(**inputs, gate=gate, delta=delta, output_final_state=True)
    split = 19
    first = {n: (x[:, :split] if x is not None and n != "initial_state" else x) for n, x in inputs.items()}
    second = {n: (x[:, split:] if x is not None and n != "initial_state" else x) for n, x in inputs.items()}
    o1, s1 = fn(**first, gate=gate, delta=delta, output_final_state=True)
    second["initial_state"] = s1
    o2, s2 = fn(**second, gate=gate, delta=delta, output_final_state=True)
    assert rel_rms(torch.cat([o1, o2], dim=1), o_full) < 1e-10
    assert rel_rms(s2, s_full) < 1e-10


@pytest.mark.parametrize("delta", [True, False])
def test_channel_gate_equal_across_channels_is_scalar_gate(delta):
    scalar = make_inputs(2, 40, 2, 8, 5, "scalar", delta, seed=3)
    channel = dict(scalar, g=scalar["g"][..., None].expand(-1, -1, -1, 8))
    o_s, s_s = chunk_gated_delta_rule_torch(**scalar, gate="scalar", delta=delta, output_final_state=True)
    o_c, s_c = chunk_gated_delta_rule_torch(**channel, gate="channel", delta=delta, output_final_state=True)
    assert rel_rms(o_c, o_s) < 1e-12
    assert rel_rms(s_c, s_s) < 1e-12


def test_delta_off_is_gated_linear_attention():
    """o_t = sum_{j<=t} (q_t * prod_{j<s<=t} a_s) . k_j v_j, computed as one masked quadratic form."""
    B, T, H, K, V = 2, 30, 2, 6, 4
    inputs = make_inputs(B, T, H, K, V, "channel", False, seed=4)
    q, k, v, g = (inputs[n].detach() for n in "qkvg")
    G = g.cumsum(1)  # (B, T, H, K)
    decay = (G[:, :, None] - G[:, None, :]).exp()  # (B, T_i, T_j, H, K); only i >= j is used
    scores = torch.einsum("bihk,bjhk,bijhk->bhij", q * K**-0.5, k, decay)
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), 0)
    expected = torch.einsum("bhij,bjhv->bihv", scores, v)
    o, _ = chunk_gated_delta_rule_torch(q, k, v, g, gate="channel", delta=False, chunk_size=8)
    assert rel_rms(o, expected) < 1e-12


@pytest.mark.parametrize("gate,delta", FAMILY)
def test_varlen_batch_equals_sequences_one_by_one(gate, delta):
    lengths = [5, 33, 1, 20]
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    packed = make_inputs(1, sum(lengths), 2, 8, 6, gate, delta, seed=5, states=len(lengths))
    o, s = gated_delta_rule(**packed, gate=gate, delta=delta, output_final_state=True, cu_seqlens=cu_seqlens)
    for n, (start, end) in enumerate(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist(), strict=True)):
        one = {
            name: (x[n : n + 1] if name == "initial_state" else x[:, start:end]) if x is not None else None
            for name, x in packed.items()
        }
        o_ref, s_ref = gated_delta_rule_ref(**one, gate=gate, delta=delta, output_final_state=True)
        assert rel_rms(o[:, start:end], o_ref) < 1e-10
        assert rel_rms(s[n : n + 1], s_ref) < 1e-10


def test_strong_channel_decay_does_not_overflow():
    inputs = make_inputs(1, 128, 1, 8, 8, "channel", True, dtype=torch.float32, seed=6)
    g = torch.full_like(inputs["g"], -30.0)  # exp(cumsum) would underflow to 0 and 1/exp to inf
    o, s = chunk_gated_delta_rule_torch(
        **dict(inputs, g=g), gate="channel", output_final_state=True, chunk_size=64
    )
    assert torch.isfinite(o).all() and torch.isfinite(s).all()


def test_bad_inputs_are_rejected_with_a_message(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = make_inputs(1, 4, 1, 4, 4, "scalar", True)
    with pytest.raises(ValueError, match="gate='channel' needs g"):
        gated_delta_rule(**x, gate="channel")
    with pytest.raises(ValueError, match="delta=True needs beta"):
        gated_delta_rule(**dict(x, beta=None))
    with pytest.raises(ValueError, match="unknown kernel impl"):
        gated_delta_rule(**x, impl="cuda")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        gated_delta_rule(**x, impl="triton")
