"""MLA mixer against naive causal attention written here from the module's weights; NoPE vs RoPE behaviour."""

import pytest
import torch

from models.mla import MLA, MLAConfig, apply_rope

from .checks import (
    MODEL_TOLERANCE,
    assert_causal,
    assert_every_parameter_gets_a_finite_gradient,
    perturb_parameters,
    randn,
    rel_rms,
    rms_norm,
)

D_MODEL, H, NOPE, DV, LATENT = 16, 2, 8, 6, 12


def make_mla(seed: int = 0, **fields) -> MLA:
    torch.manual_seed(seed)
    config = MLAConfig(num_heads=H, qk_nope_head_dim=NOPE, v_head_dim=DV, kv_lora_rank=LATENT, **fields)
    mla = MLA(D_MODEL, config).double()
    perturb_parameters(mla, seed)
    return mla


def rope_ref(x: torch.Tensor, position: int, theta: float) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x (..., R) by position * theta^(-2i/R)."""
    R = x.shape[-1]
    angle = position * theta ** (-torch.arange(0, R, 2, dtype=x.dtype) / R)
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack(
        [even * angle.cos() - odd * angle.sin(), even * angle.sin() + odd * angle.cos()], -1
    ).flatten(-2)


@torch.no_grad()
def mla_reference(mla: MLA, x: torch.Tensor) -> torch.Tensor:
    """Per query: softmax of q.k / sqrt(d_qk) over earlier keys; keys and values from the latent c_kv."""
    cfg = mla.config
    B, T, _ = x.shape
    R = cfg.qk_rope_head_dim
    if cfg.q_lora_rank is None:
        q = x @ mla.q_proj.weight.T
    else:
        down, norm, up = mla.q_proj
        q = rms_norm(x @ down.weight.T, norm.weight) @ up.weight.T
    q = q.view(B, T, H, NOPE + R)
    down = x @ mla.kv_down.weight.T
    c_kv, k_rope = down[..., :LATENT], down[..., LATENT:]  # (B, T, LATENT), (B, T, R) shared by all heads
    kv = (rms_norm(c_kv, mla.kv_norm.weight) @ mla.kv_up.weight.T).view(B, T, H, NOPE + DV)
    k, v = kv[..., :NOPE], kv[..., NOPE:]
    if R:
        q = torch.cat(
            [
                q[..., :NOPE],
                torch.stack([rope_ref(q[:, t, :, NOPE:], t, cfg.rope_theta) for t in range(T)], 1),
            ],
            -1,
        )
        k_rope = torch.stack([rope_ref(k_rope[:, t], t, cfg.rope_theta) for t in range(T)], 1)
        k = torch.cat([k, k_rope[:, :, None].expand(B, T, H, R)], -1)

    o = torch.zeros(B, T, H, DV, dtype=x.dtype)
    for i in range(T):
        scores = torch.einsum("bhd,bjhd->bhj", q[:, i], k[:, : i + 1]) / (NOPE + R) ** 0.5
        o[:, i] = torch.einsum("bhj,bjhv->bhv", scores.softmax(-1), v[:, : i + 1])
    return o.reshape(B, T, H * DV) @ mla.o_proj.weight.T


CONFIGS = [{}, {"qk_rope_head_dim": 4}, {"q_lora_rank": 10}, {"qk_rope_head_dim": 4, "q_lora_rank": 10}]


@pytest.mark.parametrize("fields", CONFIGS)
def test_matches_naive_attention(fields):
    mla = make_mla(**fields)
    x = randn(2, 11, D_MODEL)
    with torch.no_grad():
        y = mla(x)
    assert rel_rms(y, mla_reference(mla, x)) < MODEL_TOLERANCE


def test_query_compression_is_a_low_rank_path():
    mla = make_mla(q_lora_rank=3)
    assert mla.q_proj[0].weight.shape == (3, D_MODEL)
    with torch.no_grad():
        q = mla.q_proj(randn(1, 20, D_MODEL))  # (1, 20, H * NOPE)
    assert torch.linalg.matrix_rank(q[0]).item() == 3


@pytest.mark.parametrize("T", [1, 5, 17])
def test_output_shape(T):
    y = make_mla()(randn(3, T, D_MODEL))
    assert y.shape == (3, T, D_MODEL)
    assert y.dtype == torch.float64


@pytest.mark.parametrize("fields", CONFIGS[:2])
@pytest.mark.parametrize("t", [1, 6])
def test_causal(fields, t):
    mla = make_mla(**fields)
    x = randn(2, 12, D_MODEL)
    changed = x.clone()
    changed[:, t:] = randn(2, 12 - t, D_MODEL, seed=2)
    assert_causal(mla, x, changed, t)


@pytest.mark.parametrize("fields", CONFIGS)
def test_every_parameter_gets_a_finite_gradient(fields):
    torch.manual_seed(0)
    config = MLAConfig(num_heads=H, qk_nope_head_dim=NOPE, v_head_dim=DV, kv_lora_rank=LATENT, **fields)
    assert_every_parameter_gets_a_finite_gradient(MLA(D_MODEL, config), torch.randn(2, 9, D_MODEL))


@pytest.mark.parametrize("rope,invariant", [(0, True), (4, False)])
def test_last_query_sees_the_prefix_as_a_set_only_without_rope(rope, invariant):
    """NoPE with a causal softmax: the last output depends on the set of earlier tokens, not their order."""
    mla = make_mla(qk_rope_head_dim=rope)
    x = randn(2, 10, D_MODEL)
    order = torch.cat([torch.randperm(9, generator=torch.Generator().manual_seed(3)), torch.tensor([9])])
    assert not torch.equal(order, torch.arange(10))
    with torch.no_grad():
        last, last_permuted = mla(x)[:, -1], mla(x[:, order])[:, -1]
    assert (rel_rms(last_permuted, last) < 1e-12) == invariant
    if not invariant:
        assert rel_rms(last_permuted, last) > 1e-3


def test_rope_scores_depend_on_relative_position_only():
    q, k = randn(1, 1, 8, seed=4), randn(1, 1, 8, seed=5)
    # the same q and k at every one of 12 positions
    q_rot, k_rot = apply_rope(q.expand(1, 12, 8), 1e4)[0], apply_rope(k.expand(1, 12, 8), 1e4)[0]
    scores = q_rot @ k_rot.T  # (12, 12): query position x key position
    for offset in (0, 3):
        diagonal = scores.diagonal(-offset)
        # apply_rope rotates in float32
        torch.testing.assert_close(diagonal, diagonal[:1].expand_as(diagonal), rtol=1e-5, atol=1e-6)
    assert (scores.diagonal(0)[0] - scores.diagonal(-3)[0]).abs() > 1e-3


@pytest.mark.parametrize("rope", [0, 4])
def test_state_size_is_the_latent_cache(rope):
    # c_kv (and the shared rope key) per token: not 2 * H * head_dim, and the same for any number of heads
    for heads in (1, 2, 8):
        config = MLAConfig(
            num_heads=heads, qk_nope_head_dim=NOPE, v_head_dim=DV, kv_lora_rank=LATENT, qk_rope_head_dim=rope
        )
        mla = MLA(D_MODEL, config)
        assert mla.state_size(0) == 0
        assert mla.state_size(100) == 100 * (LATENT + rope)


def test_odd_rope_width_is_rejected():
    with pytest.raises(ValueError, match="must be even"):
        MLAConfig(qk_rope_head_dim=3)


def test_kernel_name():
    assert make_mla().kernel_name("cpu") == "sdpa"
