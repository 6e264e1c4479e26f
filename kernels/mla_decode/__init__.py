"""MLA's decode attention: one new query per sequence against the latent cache, with absorbed projections.

    o = mla_decode(q_latent, latent, q_rope=..., rope_key=..., starts=..., ends=..., scale=..., impl="auto")

q_latent (B, H, R) is the query with W_uk folded in (R = kv_lora_rank), latent (B, S, R) the cache buffer, q_rope
(B, H, P) and rope_key (B, S, P) the RoPE parts (None for NoPE); sequence b sees keys [starts[b], ends[b]) of its
buffer (left padding before, unwritten cache after); o (B, H, R) is the attention over the latents, which the
caller maps to values with W_uv. See `ref.py` for the definition.

Implementations: "reference" (`ref.py`, float64, one sequence at a time), "torch" (masked matrix products over the
whole buffer, as the model's plain decode path), "triton" (`split_triton.py`: flash-decoding, the context cut
into splits for small batches, each latent read once for all heads). "auto" is "triton" on CUDA. Every
implementation reads the ranges from tensors and never synchronises with the host, so a decode step that calls
it can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..impl import resolve_impl
from .ref import mla_decode_ref

__all__ = ["mla_decode", "mla_decode_ref", "mla_decode_torch"]


def mla_decode(
    q_latent: Tensor,
    latent: Tensor,
    *,
    q_rope: Tensor | None = None,
    rope_key: Tensor | None = None,
    starts: Tensor | None = None,
    ends: Tensor | None = None,
    scale: float,
    impl: str = "auto",
    split_len: int | None = None,
) -> Tensor:  # (B, H, R) in latent's dtype
    """Attention of one query per sequence and head over the latent cache (module docstring). starts, ends:
    (B,) integer tensors on the cache's device; default the whole buffer. split_len: keys per split of the
    Triton kernel (default: enough splits to fill the device)."""
    B, H, R = q_latent.shape
    if latent.dim() != 3 or latent.shape[0] != B or latent.shape[2] != R:
        raise ValueError(f"latent must be (B, S, R) = ({B}, S, {R}), got {tuple(latent.shape)}")
    if (q_rope is None) != (rope_key is None):
        raise ValueError("q_rope and rope_key come together (RoPE) or not at all (NoPE)")
    if q_rope is not None and (q_rope.shape[:2] != (B, H) or rope_key.shape[:2] != latent.shape[:2]):
        raise ValueError(
            f"q_rope must be (B, H, P) and rope_key (B, S, P); got {tuple(q_rope.shape)}, {tuple(rope_key.shape)}"
        )
    S = latent.shape[1]
    if starts is None:
        starts = torch.zeros(B, dtype=torch.int32, device=latent.device)
    if ends is None:
        ends = torch.full((B,), S, dtype=torch.int32, device=latent.device)
    impl = resolve_impl(impl, latent.device)
    if impl == "reference":
        return mla_decode_ref(q_latent, latent, q_rope, rope_key, starts, ends, scale).to(latent.dtype)
    if impl == "torch":
        return mla_decode_torch(q_latent, latent, q_rope, rope_key, starts, ends, scale)
    from .split_triton import mla_decode_triton  # Triton is optional (CPU machines run the torch path)

    return mla_decode_triton(q_latent, latent, q_rope, rope_key, starts, ends, scale, split_len)


def mla_decode_torch(
    q_latent: Tensor,
    latent: Tensor,
    q_rope: Tensor | None,
    rope_key: Tensor | None,
    starts: Tensor,
    ends: Tensor,
    scale: float,
) -> Tensor:  # (B, H, R)
    """Masked matrix products over the whole buffer: the scores in the cache's dtype, the softmax in float32 (as
    the model's plain decode path computes them)."""
    scores = torch.einsum("bhr,bsr->bhs", q_latent, latent)  # (B, H, S)
    if q_rope is not None:
        scores = scores + torch.einsum("bhp,bsp->bhs", q_rope, rope_key)
    key = torch.arange(latent.shape[1], device=latent.device)
    seen = (key >= starts[:, None]) & (key < ends[:, None])  # (B, S)
    scores = (scores.float() * scale).masked_fill(~seen[:, None], float("-inf"))
    return torch.einsum("bhs,bsr->bhr", scores.softmax(-1).to(latent.dtype), latent)
