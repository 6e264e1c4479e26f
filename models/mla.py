"""Multi-head Latent Attention (DeepSeek-V2), with no positional encoding by default as in Kimi Linear.

c_kv = RMSNorm(W_dkv x)                     latent of kv_lora_rank numbers per token (all that decoding caches)
k_h  = [W_uk,h c_kv ; k_rope],  v_h = W_uv,h c_kv
q_h  = W_q x  or, with query compression, W_uq,h RMSNorm(W_dq x)
k_rope (qk_rope_head_dim, shared by all heads) and the matching part of q get RoPE; qk_rope_head_dim = 0 is NoPE.
y    = W_o concat_h softmax(q_h k_h^T / sqrt(d_qk) + causal mask) v_h
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.registry import MIXERS

from .backbone import Mixer
from .layers import RMSNorm


@dataclass(frozen=True, kw_only=True)
class MLAConfig:
    num_heads: int = 2
    """Number of attention heads."""
    qk_nope_head_dim: int = 32
    """Per-head query/key width without position information (128 in Kimi Linear)."""
    qk_rope_head_dim: int = 0
    """Width of the decoupled RoPE part shared across heads; 0 = NoPE (Kimi Linear), 64 in DeepSeek-V2."""
    v_head_dim: int = 32
    """Per-head value width."""
    kv_lora_rank: int = 64
    """Width of the compressed KV latent (512 at scale)."""
    q_lora_rank: int | None = None
    """Width of the compressed query; None = no query compression (Kimi Linear)."""
    rope_theta: float = 10000.0
    """RoPE base, used only when qk_rope_head_dim > 0."""

    def __post_init__(self):
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"qk_rope_head_dim must be even, got {self.qk_rope_head_dim}")

    @classmethod
    def from_size(cls, d_model: int, num_heads: int, head_dim: int) -> MLAConfig:
        # Kimi Linear: head dims 128 with a 512-wide latent, i.e. four head widths; kept here at every size.
        return cls(
            num_heads=num_heads, qk_nope_head_dim=head_dim, v_head_dim=head_dim, kv_lora_rank=4 * head_dim
        )


def apply_rope(x: Tensor, theta: float) -> Tensor:
    """Rotary position embedding over the last dimension of x (B, T, ..., R), positions 0..T-1."""
    T, R = x.shape[1], x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, R, 2, device=x.device, dtype=torch.float32) / R)
    angles = torch.arange(T, device=x.device, dtype=torch.float32)[:, None] * inv_freq  # (T, R/2)
    shape = (1, T) + (1,) * (x.dim() - 3) + (R // 2,)
    cos, sin = angles.cos().view(shape), angles.sin().view(shape)
    x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]
    rotated = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return rotated.to(x.dtype)


@MIXERS.register("mla")
class MLA(Mixer):
    Config = MLAConfig

    def __init__(self, d_model: int, config: MLAConfig, kernel_impl: str = "auto"):
        super().__init__()
        self.config = config
        H, nope, rope, dv = (
            config.num_heads,
            config.qk_nope_head_dim,
            config.qk_rope_head_dim,
            config.v_head_dim,
        )
        q_width = H * (nope + rope)
        if config.q_lora_rank is None:
            self.q_proj = nn.Linear(d_model, q_width, bias=False)
        else:
            self.q_proj = nn.Sequential(
                nn.Linear(d_model, config.q_lora_rank, bias=False),
                RMSNorm(config.q_lora_rank),
                nn.Linear(config.q_lora_rank, q_width, bias=False),
            )
        self.kv_down = nn.Linear(d_model, config.kv_lora_rank + rope, bias=False)
        self.kv_norm = RMSNorm(config.kv_lora_rank)
        self.kv_up = nn.Linear(config.kv_lora_rank, H * (nope + dv), bias=False)
        self.o_proj = nn.Linear(H * dv, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        cfg = self.config
        H, nope, rope, dv = cfg.num_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        q = self.q_proj(x).view(B, T, H, nope + rope)
        c_kv, k_rope = self.kv_down(x).split([cfg.kv_lora_rank, rope], dim=-1)
        k_nope, v = self.kv_up(self.kv_norm(c_kv)).view(B, T, H, nope + dv).split([nope, dv], dim=-1)
        if rope:
            q = torch.cat([q[..., :nope], apply_rope(q[..., nope:], cfg.rope_theta)], dim=-1)
            k_rope = apply_rope(k_rope, cfg.rope_theta)[:, :, None].expand(B, T, H, rope)
            k = torch.cat([k_nope, k_rope], dim=-1)
        else:
            k = k_nope
        # SDPA wants (B, H, T, D)
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        return self.o_proj(o.transpose(1, 2).reshape(B, T, H * dv))

    def state_size(self, seq_len: int) -> int:
        # The latent cache: c_kv (and the shared rope key) per token, not per-head keys and values.
        return seq_len * (self.config.kv_lora_rank + self.config.qk_rope_head_dim)

    def kernel_name(self, device: torch.device | str) -> str:
        return "sdpa"
