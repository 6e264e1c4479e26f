"""Multi-scale retention (RetNet, Sun et al. 2023) as a harness mixer: a worked example of a plugin.

    q, k, v = W_q x, W_k x, W_v x                                   heads of head_dim
    S_t = gamma_h S_{t-1} + k_t v_t^T,     o_t = S_t^T q_t / sqrt(head_dim)
    y   = W_o( swish(W_g x) * RMSNorm_per_head(o) )

Each head h decays its state by a fixed gamma_h, spread log-uniformly from 1 - 1/32 to 1 - 1/512 as in RetNet:
short and long memories side by side. That is the harness's gated delta rule op with a scalar gate and without
the delta rule (gate="scalar", delta=False, g = log gamma_h), so the chunked PyTorch path, the Triton kernels,
packed documents (cu_seqlens) and a decoding state come with the op. RetNet also rotates q and k (xPos); this
example leaves that out, and the decay alone tells the order of tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.registry import MIXERS
from kernels.gated_delta_rule import gated_delta_rule, resolve_impl
from models.backbone import Mixer
from models.layers import PackedDocuments, RMSNorm


@dataclass(frozen=True, kw_only=True)
class RetentionConfig:
    num_heads: int = 2
    """Number of heads, each with its own decay."""
    head_dim: int = 32
    """Key and value width per head."""
    gamma_range: tuple[float, float] = (1 / 32, 1 / 512)
    """1 - gamma of the first and of the last head (log-uniform in between)."""
    chunk_size: int = 64
    """Tokens per chunk of the chunked kernel."""

    @classmethod
    def from_size(cls, d_model: int, num_heads: int, head_dim: int) -> RetentionConfig:
        return cls(num_heads=num_heads, head_dim=head_dim)


@MIXERS.register("retention")
class Retention(Mixer):
    Config = RetentionConfig
    supports_segments = True  # packed documents: the op's variable-length mode

    def __init__(self, d_model: int, config: RetentionConfig, kernel_impl: str = "auto"):
        super().__init__()
        self.config, self.kernel_impl = config, kernel_impl
        width = config.num_heads * config.head_dim
        self.q_proj = nn.Linear(d_model, width, bias=False)
        self.k_proj = nn.Linear(d_model, width, bias=False)
        self.v_proj = nn.Linear(d_model, width, bias=False)
        self.g_proj = nn.Linear(d_model, width, bias=False)
        self.o_norm = RMSNorm(config.head_dim)
        self.o_proj = nn.Linear(width, d_model, bias=False)
        first, last = config.gamma_range
        one_minus_gamma = torch.exp(torch.linspace(math.log(first), math.log(last), config.num_heads))
        # a buffer, not a parameter: RetNet's decays are fixed
        self.register_buffer("log_gamma", torch.log1p(-one_minus_gamma), persistent=False)

    def forward(
        self,
        x: Tensor,
        state: dict[str, Tensor] | None = None,
        attention_mask: Tensor | None = None,
        documents: PackedDocuments | None = None,
    ) -> Tensor:
        """Decoding state: `recurrent` (B, H, K, K) float32. A pad token (attention_mask 0) neither writes (k = 0)
        nor decays (g = 0) the state, so a left-padded sequence gives the outputs it gives alone."""
        B, T, _ = x.shape
        H, K = self.config.num_heads, self.config.head_dim
        q, k, v = (proj(x).view(B, T, H, K) for proj in (self.q_proj, self.k_proj, self.v_proj))
        g = self.log_gamma.expand(B, T, H)  # (B, T, H) float32
        if attention_mask is not None:
            keep = attention_mask[:, -T:].bool()  # (B, T)
            k = k.masked_fill(~keep[..., None, None], 0)
            g = g.masked_fill(~keep[..., None], 0)
        kwargs = dict(gate="scalar", delta=False, impl=self.kernel_impl, chunk_size=self.config.chunk_size)
        if documents is not None:
            # the rows as one sequence of documents: every document starts from an empty state
            flat = [t.reshape(1, B * T, *t.shape[2:]) for t in (q, k, v, g)]
            o, _ = gated_delta_rule(*flat, cu_seqlens=documents.cu_seqlens, **kwargs)
            o = o.view(B, T, H, K)
        else:
            o, final = gated_delta_rule(
                q,
                k,
                v,
                g,
                initial_state=None if state is None else state.get("recurrent"),
                output_final_state=state is not None,
                **kwargs,
            )
            if state is not None:
                state["recurrent"] = final
        o = self.o_norm(o) * F.silu(self.g_proj(x)).view(B, T, H, K)
        return self.o_proj(o.reshape(B, T, H * K))

    def state_size(self, seq_len: int) -> int:
        return self.config.num_heads * self.config.head_dim**2

    def cache_bytes(self, seq_len: int, dtype: torch.dtype) -> int:
        return self.state_size(seq_len) * 4  # the op keeps the state in float32 whatever `dtype` is

    def kernel_name(self, device: torch.device | str) -> str:
        return f"gdr:{resolve_impl(self.kernel_impl, device)}"
