"""KDA mixer against a token-by-token loop written here from the Kimi Linear report's equations (Eq. 10)."""

import pytest
import torch
import torch.nn.functional as F

from models.kda import KDA, KDAConfig

from .checks import (
    MODEL_TOLERANCE,
    assert_causal,
    assert_every_parameter_gets_a_finite_gradient,
    delta_rule_inputs_ref,
    perturb_parameters,
    randn,
    rel_rms,
    rms_norm,
)

D_MODEL, H, K = 16, 2, 8


def make_kda(seed: int = 0, kernel_impl: str = "torch", **fields) -> KDA:
    torch.manual_seed(seed)
    # chunk_size 8 < T so that the chunked kernel carries state across chunks
    config = KDAConfig(num_heads=H, head_dim=K, chunk_size=8, **fields)
    kda = KDA(D_MODEL, config, kernel_impl=kernel_impl).double()
    perturb_parameters(kda, seed)
    return kda


@torch.no_grad()
def kda_reference(kda: KDA, x: torch.Tensor) -> torch.Tensor:
    """The report's equations, one token at a time, with the module's weights."""
    B, T, _ = x.shape
    q, k, v, beta = delta_rule_inputs_ref(kda.inputs, x, H, K, kda.config.negative_eigenvalues)
    f_down, f_up = kda.f_proj
    gate_in = (x @ f_down.weight.T @ f_up.weight.T).view(B, T, H, K) + kda.dt_bias.view(H, K)
    g = -kda.A_log.exp()[:, None] * F.softplus(gate_in)  # (B, T, H, K) log forget gate per channel

    o = torch.zeros(B, T, H, K, dtype=x.dtype)
    eye = torch.eye(K, dtype=x.dtype)
    for b in range(B):
        for h in range(H):
            S = torch.zeros(K, K, dtype=x.dtype)  # key-first state (K, V)
            for t in range(T):
                k_t, v_t, b_t = k[b, t, h], v[b, t, h], beta[b, t, h]
                S = (eye - b_t * torch.outer(k_t, k_t)) @ torch.diag(g[b, t, h].exp()) @ S
                S = S + b_t * torch.outer(k_t, v_t)
                o[b, t, h] = S.T @ q[b, t, h] / K**0.5

    g_down, g_up = kda.g_proj
    out_gate = torch.sigmoid(x @ g_down.weight.T @ g_up.weight.T + g_up.bias).view(B, T, H, K)
    o = rms_norm(o, kda.o_norm.weight) * out_gate
    return o.reshape(B, T, H * K) @ kda.o_proj.weight.T


@pytest.mark.parametrize(
    "fields,kernel_impl",
    [
        ({}, "torch"),
        ({"negative_eigenvalues": True}, "torch"),
        ({"gate_rank": 3}, "torch"),
        ({"conv_size": 2}, "torch"),
        ({}, "reference"),
    ],
)
def test_matches_token_by_token_equations(fields, kernel_impl):
    kda = make_kda(kernel_impl=kernel_impl, **fields)
    x = randn(2, 19, D_MODEL)
    with torch.no_grad():
        y = kda(x)
    assert rel_rms(y, kda_reference(kda, x)) < MODEL_TOLERANCE


@pytest.mark.parametrize("T", [1, 5, 17])
def test_output_shape(T):
    kda = make_kda()
    y = kda(randn(3, T, D_MODEL))
    assert y.shape == (3, T, D_MODEL)
    assert y.dtype == torch.float64


@pytest.mark.parametrize("t", [1, 8, 13])
def test_causal(t):
    kda = make_kda()
    x = randn(2, 20, D_MODEL)
    changed = x.clone()
    changed[:, t:] = randn(2, 20 - t, D_MODEL, seed=2)
    assert_causal(kda, x, changed, t)


def test_every_parameter_gets_a_finite_gradient():
    torch.manual_seed(0)
    kda = KDA(D_MODEL, KDAConfig(num_heads=H, head_dim=K, chunk_size=8), kernel_impl="torch")
    assert_every_parameter_gets_a_finite_gradient(kda, torch.randn(2, 13, D_MODEL))


@pytest.mark.parametrize("negative_eigenvalues,upper", [(False, 1.0), (True, 2.0)])
def test_beta_range(negative_eigenvalues, upper):
    kda = make_kda(negative_eigenvalues=negative_eigenvalues)
    with torch.no_grad():
        kda.inputs.b_proj.weight.mul_(4)  # logits spread over about +-5: beta covers most of its range
        _, _, _, beta = kda.inputs(randn(4, 32, D_MODEL))
    assert (beta > 0).all() and (beta < upper).all()
    # with negative eigenvalues beta goes past 1, so I - beta k k^T can flip the sign along k
    assert (beta.max() > 1) == negative_eigenvalues


def test_forget_gate_is_per_channel_and_in_0_1():
    kda = make_kda()
    x = randn(1, 6, D_MODEL)
    with torch.no_grad():
        f = kda.f_proj(x).view(1, 6, H, K) + kda.dt_bias.view(H, K)
        alpha = (-kda.A_log.exp()[:, None] * F.softplus(f)).exp()
    assert ((alpha > 0) & (alpha <= 1)).all()
    assert (alpha.std(dim=-1) > 0).all()  # channels of one head decay at different rates


@pytest.mark.parametrize("conv_size", [2, 4])
def test_state_size(conv_size):
    kda = make_kda(conv_size=conv_size)
    # the (K, V) state of every head plus the last conv_size - 1 inputs of the q, k and v convolutions
    expected = H * K * K + 3 * (conv_size - 1) * H * K
    assert kda.state_size(1) == kda.state_size(4096) == expected


def test_kernel_name():
    assert make_kda(kernel_impl="auto").kernel_name("cpu") == "gdr:torch"
    assert make_kda(kernel_impl="reference").kernel_name("cpu") == "gdr:reference"
