"""Multi-head Latent Attention (DeepSeek-V2), with no positional encoding by default as in Kimi Linear.

c_kv = RMSNorm(W_dkv x)                     latent of kv_lora_rank numbers per token (all that decoding caches)
k_h  = [W_uk,h c_kv ; k_rope],  v_h = W_uv,h c_kv
q_h  = W_q x  or, with query compression, W_uq,h RMSNorm(W_dq x)
k_rope (qk_rope_head_dim, shared by all heads) and the matching part of q get RoPE; qk_rope_head_dim = 0 is NoPE.
y    = W_o concat_h softmax(q_h k_h^T / sqrt(d_qk) + causal mask) v_h

Decoding caches only the normalised latent c_kv (and the rotated k_rope when RoPE is on): kv_lora_rank (+
qk_rope_head_dim) numbers per token. A prompt runs the expanded form above (SDPA) and fills the cache; so does a
long chunk of a prompt fed in pieces (its keys and values expanded from the whole cache, causal to the lower
right, so that a million-token prompt never needs a million-square mask). A step of a few tokens absorbs the
up-projections instead of re-expanding the cache: scores q_h^T W_uk,h c = (W_uk,h^T q_h)^T c and outputs
W_uv,h (sum_s p_s c_s), so attention runs against the latent cache directly (DeepSeek-V2's decode); a one-token
step goes through `kernels.mla_decode` (Triton on CUDA: split over the context, each latent read once).
Positions for RoPE count real tokens only (attention_mask), so a left-padded sequence sees the positions it sees
alone; pad keys are masked. With a static cache (models/decoding.py) the latents are written in place into
buffers of the maximum length and a step reads its position from a tensor, so it can be captured in a CUDA graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.registry import MIXERS
from kernels.impl import resolve_impl
from kernels.mla_decode import mla_decode

from .backbone import Mixer, require_sizes
from .layers import PackedDocuments, RMSNorm

# Calls of at most this many new tokens against a filled cache take the absorbed decode path; longer ones (a
# prompt fed in chunks) expand keys and values and run SDPA.
DECODE_MAX_TOKENS = 16


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
        require_sizes(self, "num_heads", "v_head_dim", "kv_lora_rank", "q_lora_rank")
        require_sizes(self, "qk_nope_head_dim", "qk_rope_head_dim", minimum=0)
        if self.qk_nope_head_dim + self.qk_rope_head_dim < 1:
            raise ValueError("qk_nope_head_dim + qk_rope_head_dim must be at least 1, got 0")
        if not 0 < self.rope_theta < math.inf:
            raise ValueError(f"rope_theta must be a finite number > 0, got {self.rope_theta}")
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"qk_rope_head_dim must be even, got {self.qk_rope_head_dim}")

    @classmethod
    def from_size(cls, d_model: int, num_heads: int, head_dim: int) -> MLAConfig:
        # Kimi Linear: head dims 128 with a 512-wide latent, i.e. four head widths; kept here at every size.
        return cls(
            num_heads=num_heads, qk_nope_head_dim=head_dim, v_head_dim=head_dim, kv_lora_rank=4 * head_dim
        )


def apply_rope(x: Tensor, theta: float, positions: Tensor | None = None) -> Tensor:
    """Rotary position embedding over the last dimension of x (B, T, ..., R) at `positions` (B or 1, T); default
    0..T-1."""
    T, R = x.shape[1], x.shape[-1]
    if positions is None:
        positions = torch.arange(T, device=x.device)[None]  # (1, T)
    inv_freq = 1.0 / theta ** (torch.arange(0, R, 2, device=x.device, dtype=torch.float32) / R)
    angles = positions.float()[..., None] * inv_freq  # (B or 1, T, R/2)
    shape = tuple(angles.shape[:2]) + (1,) * (x.dim() - 3) + (R // 2,)
    cos, sin = angles.cos().view(shape), angles.sin().view(shape)
    x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]
    rotated = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return rotated.to(x.dtype)


def rope_positions(attention_mask: Tensor | None, past: int, T: int, device: torch.device) -> Tensor | None:
    """Positions (B or 1, T) of the T new tokens: real tokens counted from 0 (pads do not advance them)."""
    if attention_mask is not None:
        return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)[:, -T:]
    if past:
        return past + torch.arange(T, device=device)[None]
    return None


def allowed_keys(attention_mask: Tensor | None, past: int, T: int, device: torch.device) -> Tensor:
    """(B or 1, 1, T, past + T) bool: query t sees key s if s is causal and not a pad. A query also always sees
    itself, so that a pad query's softmax row is never empty (its output is ignored, but must not be NaN)."""
    S = past + T
    query = past + torch.arange(T, device=device)[:, None]
    key = torch.arange(S, device=device)[None]
    allowed = (key <= query)[None]  # (1, T, S)
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, -S:].bool()
    return (allowed | (key == query))[:, None]


@MIXERS.register("mla")
class MLA(Mixer):
    Config = MLAConfig
    supports_segments = True  # packed documents: a block-diagonal causal mask
    growing_cache_keys = ("latent", "rope_key")

    def __init__(self, d_model: int, config: MLAConfig, kernel_impl: str = "auto"):
        super().__init__()
        self.config, self.kernel_impl = config, kernel_impl
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

    def forward(
        self,
        x: Tensor,
        state: dict[str, Tensor] | None = None,
        attention_mask: Tensor | None = None,
        documents: PackedDocuments | None = None,
    ) -> Tensor:
        """Decoding state: `latent` (B, S, kv_lora_rank) and, with RoPE, `rope_key` (B, S, qk_rope_head_dim); in a
        static cache S is the maximum length and `state.past` says how much is filled. With `documents`, queries
        see keys of their own document only, and RoPE positions restart at each."""
        B, T, _ = x.shape
        cfg = self.config
        H, nope, rope, dv = cfg.num_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        static = getattr(state, "static", False)
        if state is None:
            past = 0
        elif static:
            past = state.past
        else:
            past = state["latent"].shape[1] if "latent" in state else 0
        step = past > 0 and T <= DECODE_MAX_TOKENS
        q = self.q_proj(x).view(B, T, H, nope + rope)
        c_kv, k_rope = self.kv_down(x).split([cfg.kv_lora_rank, rope], dim=-1)
        c_kv = self.kv_norm(c_kv)  # (B, T, R)
        if rope:
            if documents is not None:
                positions = documents.positions
            elif static and step:
                # from tensors only: this step may be captured in a graph and replayed at later positions
                index = state.position + torch.arange(T, device=x.device)  # (T,)
                positions = (index[None] - state.pad[:, None]).clamp_min(0)  # (B, T)
            else:
                positions = rope_positions(attention_mask, past, T, x.device)
            q = torch.cat([q[..., :nope], apply_rope(q[..., nope:], cfg.rope_theta, positions)], dim=-1)
            k_rope = apply_rope(k_rope, cfg.rope_theta, positions)  # (B, T, rope)
        if step:
            return self._decode(q, c_kv, k_rope, state, attention_mask)
        if state is not None:
            c_kv, k_rope = self._store(state, past, c_kv, k_rope)  # now every token so far: (B, past + T, .)
        k_nope, v = self.kv_up(c_kv).view(B, past + T, H, nope + dv).split([nope, dv], dim=-1)
        if rope:
            k = torch.cat([k_nope, k_rope[:, :, None].expand(B, past + T, H, rope)], dim=-1)
        else:
            k = k_nope
        causal = False
        if documents is not None:
            mask = documents.attention_mask
        elif attention_mask is not None:
            mask = allowed_keys(attention_mask, past, T, x.device)
        elif past:
            # slow to import (it pulls in torch._dynamo): only a prompt fed in chunks needs it
            from torch.nn.attention.bias import causal_lower_right

            mask = causal_lower_right(T, past + T)  # the new tokens are the last T: causal to the lower right
        else:
            mask, causal = None, True
        # SDPA wants (B, H, T, D)
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, is_causal=causal
        )
        return self.o_proj(o.transpose(1, 2).reshape(B, T, H * dv))

    def _store(
        self, state: dict[str, Tensor], past: int, c_kv: Tensor, k_rope: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Add the new tokens' latents to the cache; returns the latents (and rope keys) of all tokens so far."""
        T = c_kv.shape[1]
        if getattr(state, "static", False):
            state["latent"][:, past : past + T] = c_kv
            latent = state["latent"][:, : past + T]
            if self.config.qk_rope_head_dim:
                state["rope_key"][:, past : past + T] = k_rope
                k_rope = state["rope_key"][:, : past + T]
            return latent, k_rope
        if past:
            c_kv = torch.cat([state["latent"], c_kv], dim=1)
            if self.config.qk_rope_head_dim:
                k_rope = torch.cat([state["rope_key"], k_rope], dim=1)
        state["latent"] = c_kv
        if self.config.qk_rope_head_dim:
            state["rope_key"] = k_rope
        return c_kv, k_rope

    def _decode(
        self, q: Tensor, c_kv: Tensor, k_rope: Tensor, state: dict[str, Tensor], attention_mask: Tensor | None
    ) -> Tensor:
        """Attention of T new queries against the latent cache, with the up-projections absorbed."""
        B, T, H, _ = q.shape
        cfg = self.config
        nope, rope, dv = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        scale = (nope + rope) ** -0.5
        if getattr(state, "static", False):
            # written in place at the position tensor: no Python number changes from step to step
            index = state.position + torch.arange(T, device=q.device)  # (T,)
            latent = state["latent"]  # (B, max_len, R): the whole buffer, read up to `ends`
            latent.index_copy_(1, index, c_kv.to(latent.dtype))
            rope_key = None
            if rope:
                rope_key = state["rope_key"]
                rope_key.index_copy_(1, index, k_rope.to(rope_key.dtype))
            # every row sees keys from its first real token to the query itself
            starts, ends = state.pad, (index[-1] + 1).expand(B)

            def allowed() -> Tensor:  # (B, 1, T, max_len)
                key = torch.arange(latent.shape[1], device=q.device)
                seen = (key[None, None] >= state.pad[:, None, None]) & (
                    key[None, None] <= index[None, :, None]
                )
                return seen[:, None]

        else:
            past = state["latent"].shape[1]
            latent, rope_key = self._store(state, past, c_kv, k_rope)  # (B, S, R), (B, S, rope)
            starts = ends = None  # one range of keys per row only without a mask
            if attention_mask is None:
                starts = torch.zeros(B, dtype=torch.long, device=q.device)
                ends = torch.full((B,), past + T, dtype=torch.long, device=q.device)

            def allowed() -> Tensor:
                return allowed_keys(attention_mask, past, T, q.device)

        up = self.kv_up.weight.view(H, nope + dv, cfg.kv_lora_rank)
        up_k, up_v = up[:, :nope], up[:, nope:]  # (H, nope, R), (H, dv, R)
        q_latent = torch.einsum("bthn,hnr->bthr", q[..., :nope], up_k)  # W_uk absorbed into the query
        if T == 1 and starts is not None:
            o_latent = mla_decode(
                q_latent[:, 0],
                latent,
                q_rope=q[:, 0, :, nope:] if rope else None,
                rope_key=rope_key if rope else None,
                starts=starts,
                ends=ends,
                scale=scale,
                impl=self.kernel_impl,
            )[:, None]  # (B, 1, H, R)
        else:
            scores = torch.einsum("bthr,bsr->bhts", q_latent, latent)  # (B, H, T, S)
            if rope:
                scores = scores + torch.einsum("bthd,bsd->bhts", q[..., nope:], rope_key)
            scores = (scores.float() * scale).masked_fill(~allowed(), float("-inf"))
            weights = scores.softmax(-1).to(latent.dtype)
            o_latent = torch.einsum("bhts,bsr->bthr", weights, latent)
        o = torch.einsum("bthr,hvr->bthv", o_latent, up_v)  # W_uv absorbed into the output
        return self.o_proj(o.reshape(B, T, H * dv))

    def state_size(self, seq_len: int) -> int:
        # The latent cache: c_kv (and the shared rope key) per token, not per-head keys and values.
        return seq_len * (self.config.kv_lora_rank + self.config.qk_rope_head_dim)

    def cache_bytes(self, seq_len: int, dtype: torch.dtype) -> int:
        return self.state_size(seq_len) * dtype.itemsize

    def kernel_name(self, device: torch.device | str) -> str:
        decode = resolve_impl(self.kernel_impl, device)
        return "sdpa" if decode == "torch" else f"sdpa+mla-decode:{decode}"

    def allocate_cache(
        self, batch: int, max_len: int, dtype: torch.dtype, device: torch.device
    ) -> dict[str, Tensor]:
        cfg = self.config
        state = {"latent": torch.zeros(batch, max_len, cfg.kv_lora_rank, dtype=dtype, device=device)}
        if cfg.qk_rope_head_dim:
            state["rope_key"] = torch.zeros(batch, max_len, cfg.qk_rope_head_dim, dtype=dtype, device=device)
        return state

    def fill_cache(self, state: dict[str, Tensor], start: int, end: int) -> None:
        # what kv_norm gives at initialisation: unit-RMS latents; the rope keys are rotations of about that size
        for key in self.growing_cache_keys:
            if key in state:
                state[key][:, start:end].normal_()
