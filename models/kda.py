"""Kimi Delta Attention (Kimi Linear report, Eq. 10): Gated DeltaNet with a per-channel forget gate.

q, k = L2Norm(SiLU(ShortConv(W_{q,k} x)))      v = SiLU(ShortConv(W_v x))      beta = sigmoid(W_beta x)
g    = -exp(A_log[h]) * softplus(W_up W_down x + dt_bias)          low rank d -> head_dim -> H * head_dim
S_t  = (I - beta_t k_t k_t^T) Diag(exp(g_t)) S_{t-1} + beta_t k_t v_t^T,     o_t = S_t^T q_t / sqrt(head_dim)
y    = W_o( sigmoid(W_up' W_down' x) * RMSNorm_per_head(o) )       low-rank sigmoid output gate
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from harness.registry import MIXERS

from .backbone import require_range, require_sizes
from .delta_rule import DeltaRuleInputs, DeltaRuleMixer
from .layers import RMSNorm, init_gate_parameters


@dataclass(frozen=True, kw_only=True)
class KDAConfig:
    num_heads: int = 2
    """Number of heads."""
    head_dim: int = 32
    """Key and value width per head (128 in the report)."""
    conv_size: int = 4
    """Kernel of the short convolutions on q, k and v."""
    gate_rank: int | None = None
    """Rank of the low-rank forget and output gates; None = head_dim, as in the report."""
    negative_eigenvalues: bool = False
    """beta in (0, 2) instead of (0, 1): lets the state transition flip sign (helps parity-like tracking)."""
    A_init_range: tuple[float, float] = (1.0, 16.0)
    """A_log = log U(range) per head."""
    dt_init_range: tuple[float, float] = (1e-3, 1e-1)
    """dt_bias = softplus^-1(dt), dt log-uniform in this range, per channel."""
    chunk_size: int = 64
    """Tokens per chunk of the chunked kernel."""

    def __post_init__(self):
        require_sizes(self, "num_heads", "head_dim", "conv_size", "gate_rank", "chunk_size")
        require_range(self, "A_init_range")
        require_range(self, "dt_init_range")

    @classmethod
    def from_size(cls, d_model: int, num_heads: int, head_dim: int) -> KDAConfig:
        return cls(num_heads=num_heads, head_dim=head_dim)


@MIXERS.register("kda")
class KDA(DeltaRuleMixer):
    Config = KDAConfig
    gate = "channel"

    def __init__(self, d_model: int, config: KDAConfig, kernel_impl: str = "auto"):
        super().__init__()
        self.config, self.kernel_impl = config, kernel_impl
        H, K = config.num_heads, config.head_dim
        rank = config.gate_rank or K
        self.inputs = DeltaRuleInputs(d_model, H, K, config.conv_size, config.negative_eigenvalues)
        self.f_proj = nn.Sequential(nn.Linear(d_model, rank, bias=False), nn.Linear(rank, H * K, bias=False))
        self.A_log, self.dt_bias = init_gate_parameters(H, H * K, config.A_init_range, config.dt_init_range)
        self.g_proj = nn.Sequential(nn.Linear(d_model, rank, bias=False), nn.Linear(rank, H * K, bias=True))
        self.o_norm = RMSNorm(K)
        self.o_proj = nn.Linear(H * K, d_model, bias=False)

    def gate_input(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return self.f_proj(x).view(B, T, self.config.num_heads, self.config.head_dim)  # (B, T, H, K)

    def output_gate(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.g_proj(x))
