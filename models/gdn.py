"""Gated DeltaNet (Yang et al. 2024), as used for GDN-H in the Kimi Linear report: a scalar forget gate per head.

q, k, v, beta as in KDA (short convolutions, L2-normalised q/k, sigmoid beta)
g   = -exp(A_log[h]) * softplus(W_a x + dt_bias[h])                   one number per head and token
S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,      o_t = S_t^T q_t / sqrt(head_dim)
y   = W_o( act(W_g x) * RMSNorm_per_head(o) )       act = SiLU (GDN paper) or sigmoid (Kimi report's GDN-H)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from harness.registry import MIXERS

from .backbone import require_range, require_sizes
from .delta_rule import DeltaRuleInputs, DeltaRuleMixer
from .layers import OUTPUT_GATES, RMSNorm, init_gate_parameters


@dataclass(frozen=True, kw_only=True)
class GDNConfig:
    num_heads: int = 2
    """Number of heads."""
    head_dim: int = 32
    """Key and value width per head."""
    conv_size: int = 4
    """Kernel of the short convolutions on q, k and v."""
    output_gate: Literal["swish", "sigmoid"] = "swish"
    """Activation of the full-rank output gate: 'swish' (GDN paper) or 'sigmoid' (Kimi report, GDN-H)."""
    negative_eigenvalues: bool = False
    """beta in (0, 2) instead of (0, 1)."""
    A_init_range: tuple[float, float] = (1.0, 16.0)
    """A_log = log U(range) per head."""
    dt_init_range: tuple[float, float] = (1e-3, 1e-1)
    """dt_bias = softplus^-1(dt), dt log-uniform in this range, per head."""
    chunk_size: int = 64
    """Tokens per chunk of the chunked kernel."""

    def __post_init__(self):
        if self.output_gate not in OUTPUT_GATES:
            raise ValueError(f"output_gate must be one of {sorted(OUTPUT_GATES)}, got '{self.output_gate}'")
        require_sizes(self, "num_heads", "head_dim", "conv_size", "chunk_size")
        require_range(self, "A_init_range")
        require_range(self, "dt_init_range")

    @classmethod
    def from_size(cls, d_model: int, num_heads: int, head_dim: int) -> GDNConfig:
        return cls(num_heads=num_heads, head_dim=head_dim)


@MIXERS.register("gdn")
class GDN(DeltaRuleMixer):
    Config = GDNConfig
    gate = "scalar"

    def __init__(self, d_model: int, config: GDNConfig, kernel_impl: str = "auto"):
        super().__init__()
        self.config, self.kernel_impl = config, kernel_impl
        H, K = config.num_heads, config.head_dim
        self.inputs = DeltaRuleInputs(d_model, H, K, config.conv_size, config.negative_eigenvalues)
        self.a_proj = nn.Linear(d_model, H, bias=False)
        self.A_log, self.dt_bias = init_gate_parameters(H, H, config.A_init_range, config.dt_init_range)
        self.g_proj = nn.Linear(d_model, H * K, bias=False)
        self.o_norm = RMSNorm(K)
        self.o_proj = nn.Linear(H * K, d_model, bias=False)
        self.gate_fn = OUTPUT_GATES[config.output_gate]

    def gate_input(self, x: Tensor) -> Tensor:
        return self.a_proj(x)  # (B, T, H)

    def output_gate(self, x: Tensor) -> Tensor:
        return self.gate_fn(self.g_proj(x))
