"""Gated DeltaNet mixer against a token-by-token loop written here from the paper's equations."""

import pytest
import torch
import torch.nn.functional as F

from models.gdn import GDN, GDNConfig

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


def make_gdn(seed: int = 0, kernel_impl: str = "torch", **fields) -> GDN:
    torch.manual_seed(seed)
    # chunk_size 8 < T so that the chunked kernel carries state across chunks
    config = GDNConfig(num_heads=H, head_dim=K, chunk_size=8, **fields)
    gdn = GDN(D_MODEL, config, kernel_impl=kernel_impl).double()
    perturb_parameters(gdn, seed)
    return gdn


@torch.no_grad()
def gdn_reference(gdn: GDN, x: torch.Tensor) -> torch.Tensor:
    """S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, token by token, module's weights."""
    B, T, _ = x.shape
    q, k, v, beta = delta_rule_inputs_ref(gdn.inputs, x, H, K, gdn.config.negative_eigenvalues)
    # one decay per head and token
    alpha = (-gdn.A_log.exp() * F.softplus(x @ gdn.a_proj.weight.T + gdn.dt_bias)).exp()  # (B, T, H)

    o = torch.zeros(B, T, H, K, dtype=x.dtype)
    eye = torch.eye(K, dtype=x.dtype)
    for b in range(B):
        for h in range(H):
            S = torch.zeros(K, K, dtype=x.dtype)
            for t in range(T):
                k_t, b_t = k[b, t, h], beta[b, t, h]
                S = alpha[b, t, h] * (eye - b_t * torch.outer(k_t, k_t)) @ S + b_t * torch.outer(
                    k_t, v[b, t, h]
                )
                o[b, t, h] = S.T @ q[b, t, h] / K**0.5

    act = {"swish": F.silu, "sigmoid": torch.sigmoid}[gdn.config.output_gate]
    o = rms_norm(o, gdn.o_norm.weight) * act(x @ gdn.g_proj.weight.T).view(B, T, H, K)
    return o.reshape(B, T, H * K) @ gdn.o_proj.weight.T


@pytest.mark.parametrize(
    "fields,kernel_impl",
    [
        ({}, "torch"),
        ({"output_gate": "sigmoid"}, "torch"),
        ({"negative_eigenvalues": True}, "torch"),
        ({}, "reference"),
    ],
)
def test_matches_token_by_token_equations(fields, kernel_impl):
    gdn = make_gdn(kernel_impl=kernel_impl, **fields)
    x = randn(2, 19, D_MODEL)
    with torch.no_grad():
        y = gdn(x)
    assert rel_rms(y, gdn_reference(gdn, x)) < MODEL_TOLERANCE


def test_output_gate_choice_changes_the_output():
    swish = make_gdn(output_gate="swish")
    sigmoid = GDN(
        D_MODEL, GDNConfig(num_heads=H, head_dim=K, chunk_size=8, output_gate="sigmoid"), "torch"
    ).double()
    sigmoid.load_state_dict(swish.state_dict())
    x = randn(2, 9, D_MODEL)
    with torch.no_grad():
        assert rel_rms(sigmoid(x), swish(x)) > 0.1


def test_unknown_output_gate_is_rejected():
    with pytest.raises(ValueError, match="output_gate must be one of"):
        GDNConfig(output_gate="relu")


@pytest.mark.parametrize("T", [1, 5, 17])
def test_output_shape(T):
    y = make_gdn()(randn(3, T, D_MODEL))
    assert y.shape == (3, T, D_MODEL)
    assert y.dtype == torch.float64


@pytest.mark.parametrize("t", [1, 8, 13])
def test_causal(t):
    gdn = make_gdn()
    x = randn(2, 20, D_MODEL)
    changed = x.clone()
    changed[:, t:] = randn(2, 20 - t, D_MODEL, seed=2)
    assert_causal(gdn, x, changed, t)


@pytest.mark.parametrize("output_gate", ["swish", "sigmoid"])
def test_every_parameter_gets_a_finite_gradient(output_gate):
    torch.manual_seed(0)
    gdn = GDN(D_MODEL, GDNConfig(num_heads=H, head_dim=K, chunk_size=8, output_gate=output_gate), "torch")
    assert_every_parameter_gets_a_finite_gradient(gdn, torch.randn(2, 13, D_MODEL))


def test_beta_lies_in_0_2_with_negative_eigenvalues():
    gdn = make_gdn(negative_eigenvalues=True)
    with torch.no_grad():
        gdn.inputs.b_proj.weight.mul_(4)
        _, _, _, beta = gdn.inputs(randn(4, 32, D_MODEL))
    assert (beta > 0).all() and (beta < 2).all() and beta.max() > 1


@pytest.mark.parametrize("conv_size", [2, 4])
def test_state_size(conv_size):
    gdn = make_gdn(conv_size=conv_size)
    expected = H * K * K + 3 * (conv_size - 1) * H * K
    assert gdn.state_size(1) == gdn.state_size(4096) == expected


def test_kernel_name():
    assert make_gdn(kernel_impl="auto").kernel_name("cpu") == "gdr:torch"
    assert make_gdn(kernel_impl="reference").kernel_name("cpu") == "gdr:reference"
