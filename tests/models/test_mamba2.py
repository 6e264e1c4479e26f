"""Mamba2 mixer against a sequential SSD loop written here from the paper's equations."""

import pytest
import torch
import torch.nn.functional as F

from models.mamba2 import Mamba2, Mamba2Config

from .checks import (
    MODEL_TOLERANCE,
    assert_causal,
    assert_every_parameter_gets_a_finite_gradient,
    causal_conv_ref,
    perturb_parameters,
    randn,
    rel_rms,
    rms_norm,
)

# expand 2 -> d_inner 32 = 4 heads of 8 channels
D_MODEL, P, N = 16, 8, 6


def make_mamba2(seed: int = 0, kernel_impl: str = "torch", **fields) -> Mamba2:
    torch.manual_seed(seed)
    config = Mamba2Config(head_dim=P, d_state=N, chunk_size=8, **fields)
    mamba = Mamba2(D_MODEL, config, kernel_impl=kernel_impl).double()
    perturb_parameters(mamba, seed)
    return mamba


@torch.no_grad()
def mamba2_reference(mamba: Mamba2, x: torch.Tensor) -> torch.Tensor:
    """h_t = exp(dt_t A) h_{t-1} + B_t (dt_t x_t)^T,  y_t = h_t^T C_t + D x_t, then the gated RMSNorm."""
    cfg = mamba.config
    B, T, _ = x.shape
    d_inner, G = cfg.expand * D_MODEL, cfg.n_groups
    H = d_inner // P
    z, xBC, dt = (x @ mamba.in_proj.weight.T).split([d_inner, d_inner + 2 * G * N, H], dim=-1)
    xs, Bs, Cs = causal_conv_ref(xBC, mamba.conv.conv).split([d_inner, G * N, G * N], dim=-1)
    xs, Bs, Cs = xs.view(B, T, H, P), Bs.view(B, T, G, N), Cs.view(B, T, G, N)
    dt = F.softplus(dt + mamba.dt_bias).clamp(*cfg.dt_limit)  # (B, T, H)
    A = -mamba.A_log.exp()  # (H,)

    y = torch.zeros(B, T, H, P, dtype=x.dtype)
    for b in range(B):
        for h in range(H):
            group = h // (H // G)  # consecutive heads share one B and C
            state = torch.zeros(N, P, dtype=x.dtype)
            for t in range(T):
                state = (dt[b, t, h] * A[h]).exp() * state + torch.outer(
                    Bs[b, t, group], dt[b, t, h] * xs[b, t, h]
                )
                y[b, t, h] = state.T @ Cs[b, t, group] + mamba.D[h] * xs[b, t, h]

    y, weight = y.reshape(B, T, G, d_inner // G), mamba.norm.weight.view(G, d_inner // G)
    z = z.reshape(B, T, G, d_inner // G)
    # norm_before_gate=False (mamba_ssm's default) gates, then normalises each group of channels
    act = torch.sigmoid if cfg.output_gate == "sigmoid" else F.silu
    gated = rms_norm(y, weight) * act(z) if cfg.norm_before_gate else rms_norm(y * act(z), weight)
    return gated.reshape(B, T, d_inner) @ mamba.out_proj.weight.T


@pytest.mark.parametrize(
    "fields,kernel_impl",
    [
        ({}, "torch"),
        ({"n_groups": 2}, "torch"),
        ({"n_groups": 4, "norm_before_gate": True}, "torch"),
        ({"dt_limit": (0.05, 0.2)}, "torch"),
        ({"output_gate": "sigmoid"}, "torch"),
        ({"output_gate": "sigmoid", "norm_before_gate": True}, "torch"),
        ({"n_groups": 2}, "reference"),
    ],
)
def test_matches_sequential_ssd(fields, kernel_impl):
    mamba = make_mamba2(kernel_impl=kernel_impl, **fields)
    x = randn(2, 19, D_MODEL)
    with torch.no_grad():
        y = mamba(x)
    assert rel_rms(y, mamba2_reference(mamba, x)) < MODEL_TOLERANCE


def test_groups_read_their_own_B_and_C():
    """With two groups, changing the second group's B/C channels moves only the second half of the heads."""
    mamba = make_mamba2(n_groups=2)
    x = randn(1, 7, D_MODEL)
    d_inner, H = 2 * D_MODEL, 2 * D_MODEL // P
    # in_proj rows of (z, x, B_0, B_1, C_0, C_1, dt); perturb B_1 and C_1
    second = torch.cat(
        [
            torch.arange(2 * d_inner + N, 2 * d_inner + 2 * N),
            torch.arange(2 * d_inner + 3 * N, 2 * d_inner + 4 * N),
        ]
    )
    heads = {}

    def capture(module, args, output):
        heads["y"] = args[0].view(1, 7, H, P)  # the SSD output before the gated norm

    handle = mamba.norm.register_forward_hook(capture)
    with torch.no_grad():
        mamba(x)
        before = heads["y"].clone()
        mamba.in_proj.weight[second] += 1.0
        mamba(x)
    handle.remove()
    changed = (heads["y"] - before).abs().amax(dim=(0, 1, 3))  # (H,)
    assert (changed[: H // 2] == 0).all() and (changed[H // 2 :] > 1e-6).all()


@pytest.mark.parametrize("T", [1, 5, 17])
def test_output_shape(T):
    y = make_mamba2()(randn(3, T, D_MODEL))
    assert y.shape == (3, T, D_MODEL)
    assert y.dtype == torch.float64


@pytest.mark.parametrize("t", [1, 8, 13])
def test_causal(t):
    mamba = make_mamba2(n_groups=2)
    x = randn(2, 20, D_MODEL)
    changed = x.clone()
    changed[:, t:] = randn(2, 20 - t, D_MODEL, seed=2)
    assert_causal(mamba, x, changed, t)


@pytest.mark.parametrize("n_groups", [1, 2])
def test_every_parameter_gets_a_finite_gradient(n_groups):
    torch.manual_seed(0)
    mamba = Mamba2(D_MODEL, Mamba2Config(head_dim=P, d_state=N, n_groups=n_groups, chunk_size=8), "torch")
    assert_every_parameter_gets_a_finite_gradient(mamba, torch.randn(2, 13, D_MODEL))


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"head_dim": 12}, "not a multiple of head_dim"),  # d_inner 32
        ({"n_groups": 3}, "cannot be split into 3 groups"),  # 4 heads
    ],
)
def test_invalid_shapes_are_rejected(fields, message):
    config = Mamba2Config(**{"head_dim": P, "d_state": N, **fields})
    with pytest.raises(ValueError, match=message):
        Mamba2(D_MODEL, config)


@pytest.mark.parametrize("n_groups", [1, 2])
def test_state_size(n_groups):
    mamba = make_mamba2(n_groups=n_groups)
    d_inner = 2 * D_MODEL
    H = d_inner // P
    # (N, P) state per head, plus the last 3 inputs of the convolution over x, B and C
    expected = H * P * N + 3 * (d_inner + 2 * n_groups * N)
    assert mamba.state_size(1) == mamba.state_size(4096) == expected


def test_kernel_name():
    assert make_mamba2(kernel_impl="auto").kernel_name("cpu") == "gdr:torch"
    assert make_mamba2(kernel_impl="reference").kernel_name("cpu") == "gdr:reference"
