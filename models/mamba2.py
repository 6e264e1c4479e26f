"""Mamba2 (Dao & Gu 2024): the SSD recurrence, one member of the gated delta rule family without the delta rule.

    z, xBC, dt = in_proj(x)                 xBC = SiLU(ShortConv(xBC)) -> x (heads of head_dim), B, C (n_groups)
    dt  = clamp(softplus(dt + dt_bias))     A = -exp(A_log)            one of each per head
    h_t = exp(dt_t A) h_{t-1} + B_t (dt_t x_t)^T,    y_t = h_t^T C_t + D * x_t
    y   = out_proj( GatedRMSNorm(y, z) )

In kernel terms: q = C, k = B, v = dt * x, g = dt * A, gate="scalar", delta=False, scale 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.registry import MIXERS
from kernels.gated_delta_rule import resolve_impl

from .backbone import ADDED_LATER, Mixer, put_state, require_range, require_sizes
from .delta_rule import gated_delta_rule_packed
from .layers import OUTPUT_GATES, PackedDocuments, ShortConvolution, init_gate_parameters


@dataclass(frozen=True, kw_only=True)
class Mamba2Config:
    expand: int = 2
    """Inner width = expand * d_model."""
    head_dim: int = 32
    """Channels per head of x (64 in the paper)."""
    d_state: int = 32
    """State width N of B and C (64-128 in the paper)."""
    n_groups: int = 1
    """Groups of heads sharing one B and C (like grouped-query attention)."""
    conv_size: int = 4
    """Kernel of the causal convolution over x, B and C."""
    A_init_range: tuple[float, float] = (1.0, 16.0)
    """A = U(range) per head; stored as A_log."""
    dt_init_range: tuple[float, float] = (1e-3, 1e-1)
    """dt_bias = softplus^-1(dt), dt log-uniform in this range."""
    dt_limit: tuple[float, float] = (0.0, float("inf"))
    """Clamp of dt after the softplus."""
    norm_before_gate: bool = False
    """False: RMSNorm(y * SiLU(z)) as mamba_ssm's default; True: RMSNorm(y) * SiLU(z)."""
    output_gate: Literal["swish", "sigmoid"] = field(default="swish", metadata=ADDED_LATER)
    """Activation of the gate z: 'swish' (SiLU, the paper's) or 'sigmoid' (a variant: at initialisation SiLU(z) is
    about z / 2, a random-signed multiplier of every channel, where a sigmoid is about 1/2; measured to decide
    whether GDN leaves the MQAR plateau, docs/findings/mqar-plateau.md)."""
    block_mlp: bool = True
    """Keep the backbone's MLP in this block. The Mamba2 paper has none; True keeps one backbone for all mixers."""
    chunk_size: int = 64
    """Tokens per chunk of the chunked kernel."""

    def __post_init__(self):
        require_sizes(self, "expand", "head_dim", "d_state", "n_groups", "conv_size", "chunk_size")
        require_range(self, "A_init_range")
        require_range(self, "dt_init_range")
        if self.output_gate not in OUTPUT_GATES:
            raise ValueError(f"output_gate must be one of {sorted(OUTPUT_GATES)}, got '{self.output_gate}'")
        low, high = self.dt_limit
        if not 0 <= low <= high:
            raise ValueError(f"dt_limit must be a range 0 <= low <= high, got {self.dt_limit}")

    @classmethod
    def from_size(cls, d_model: int, num_heads: int, head_dim: int) -> Mamba2Config:
        # Mamba2 heads are narrower and more numerous than attention heads; its state width follows head_dim.
        return cls(head_dim=head_dim, d_state=head_dim)


class GatedRMSNorm(nn.Module):
    """RMSNorm over groups of channels, gated by act(z) (SiLU unless told), before or after normalising."""

    def __init__(
        self, dim: int, group_size: int, norm_before_gate: bool, eps: float = 1e-6, activation: str = "swish"
    ):
        super().__init__()
        self.group_size, self.norm_before_gate, self.eps = group_size, norm_before_gate, eps
        self.act = OUTPUT_GATES[activation]
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        dtype = y.dtype
        y, z = y.float(), z.float()
        if not self.norm_before_gate:
            y = y * self.act(z)
        groups = y.unflatten(-1, (-1, self.group_size))
        y = (groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)).flatten(-2)
        y = y * self.weight.float()
        if self.norm_before_gate:
            y = y * self.act(z)
        return y.to(dtype)


@MIXERS.register("mamba2")
class Mamba2(Mixer):
    Config = Mamba2Config
    supports_segments = True  # packed documents: the kernels' variable-length mode (cu_seqlens)

    def __init__(self, d_model: int, config: Mamba2Config, kernel_impl: str = "auto"):
        super().__init__()
        self.config, self.kernel_impl = config, kernel_impl
        d_inner = config.expand * d_model
        if d_inner % config.head_dim:
            raise ValueError(
                f"mamba2: expand * d_model = {d_inner} is not a multiple of head_dim {config.head_dim}"
            )
        self.d_inner, self.num_heads = d_inner, d_inner // config.head_dim
        if self.num_heads % config.n_groups:
            raise ValueError(f"mamba2: {self.num_heads} heads cannot be split into {config.n_groups} groups")
        bc_width = 2 * config.n_groups * config.d_state
        self.in_proj = nn.Linear(d_model, 2 * d_inner + bc_width + self.num_heads, bias=False)
        self.conv = ShortConvolution(d_inner + bc_width, config.conv_size, bias=True)
        self.A_log, self.dt_bias = init_gate_parameters(
            self.num_heads, self.num_heads, config.A_init_range, config.dt_init_range
        )
        self.D = nn.Parameter(torch.ones(self.num_heads))
        self.D._no_weight_decay = True
        self.norm = GatedRMSNorm(
            d_inner, d_inner // config.n_groups, config.norm_before_gate, activation=config.output_gate
        )
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def init_weights(self, std: float) -> None:
        # As mamba_ssm: its in_proj and out_proj keep PyTorch's default (uniform, fan-in scaled) init rather than
        # the normal(0, 0.02) the attention-style mixers use.
        self.in_proj.reset_parameters()
        self.out_proj.reset_parameters()

    def forward(
        self,
        x: Tensor,
        state: dict[str, Tensor] | None = None,
        attention_mask: Tensor | None = None,
        documents: PackedDocuments | None = None,
    ) -> Tensor:
        """Decoding state: `conv` (B, conv_size - 1, d_inner + 2 G N) and `recurrent` (B, H, N, P) float32. A pad
        token (attention_mask 0) has dt = 0 (no decay, no write) and feeds zeros to the convolution."""
        B, T, _ = x.shape
        H, P, N, G = self.num_heads, self.config.head_dim, self.config.d_state, self.config.n_groups
        keep = None if attention_mask is None else attention_mask[:, -T:].bool()  # (B, T)
        z, xBC, dt = self.in_proj(x).split([self.d_inner, self.d_inner + 2 * G * N, H], dim=-1)
        if keep is not None:
            xBC = xBC.masked_fill(~keep[..., None], 0)
        if state is None:
            xBC = self.conv(xBC, documents)
        else:
            xBC, window = self.conv.forward_with_state(xBC, state.get("conv"))
            put_state(state, "conv", window)
        xs, Bs, Cs = xBC.split([self.d_inner, G * N, G * N], dim=-1)
        xs = xs.view(B, T, H, P)
        # every head of a group reads the same B and C
        Bs = Bs.view(B, T, G, 1, N).expand(B, T, G, H // G, N).reshape(B, T, H, N)
        Cs = Cs.view(B, T, G, 1, N).expand(B, T, G, H // G, N).reshape(B, T, H, N)
        dt = F.softplus(dt.float() + self.dt_bias.float()).clamp(*self.config.dt_limit)  # (B, T, H)
        if keep is not None:
            dt = dt.masked_fill(~keep[..., None], 0)
        g = dt * -self.A_log.float().exp()  # (B, T, H)
        y, final_state = gated_delta_rule_packed(
            Cs,
            Bs,
            xs * dt[..., None].to(xs.dtype),
            g,
            None,
            documents,
            gate="scalar",
            delta=False,
            scale=1.0,
            initial_state=None if state is None else state.get("recurrent"),
            output_final_state=state is not None,
            impl=self.kernel_impl,
            chunk_size=self.config.chunk_size,
        )
        if state is not None:
            put_state(state, "recurrent", final_state)
        y = y + self.D.to(y.dtype)[:, None] * xs  # (B, T, H, P)
        return self.out_proj(self.norm(y.reshape(B, T, self.d_inner), z))

    def state_size(self, seq_len: int) -> int:
        return self.num_heads * self.config.head_dim * self.config.d_state + self.conv.state_size()

    def cache_bytes(self, seq_len: int, dtype: torch.dtype) -> int:
        # the recurrent state is kept in float32 (the kernel accumulates in it); the conv window in `dtype`
        recurrent = self.num_heads * self.config.head_dim * self.config.d_state
        return recurrent * 4 + self.conv.state_size() * dtype.itemsize

    def kernel_name(self, device: torch.device | str) -> str:
        return f"gdr:{resolve_impl(self.kernel_impl, device)}"

    def allocate_cache(
        self, batch: int, max_len: int, dtype: torch.dtype, device: torch.device
    ) -> dict[str, Tensor]:
        H, P, N = self.num_heads, self.config.head_dim, self.config.d_state
        return {
            "conv": torch.zeros(
                batch, self.config.conv_size - 1, self.conv.channels, dtype=dtype, device=device
            ),
            "recurrent": torch.zeros(batch, H, N, P, dtype=torch.float32, device=device),
        }
