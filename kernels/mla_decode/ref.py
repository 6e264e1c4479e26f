"""The specification of MLA's decode attention: one new query per sequence against the latent cache, in float64.

With the up-projections absorbed (DeepSeek-V2), head h of sequence b attends over the cached latents c_s
(kv_lora_rank numbers each) and, with RoPE, the shared rotated keys r_s:

    score_s = scale * (q_latent[b, h] . c_s + q_rope[b, h] . r_s)        s in [start_b, end_b)
    o[b, h] = sum_s softmax(score)_s c_s                                 (kv_lora_rank numbers)

Keys outside [start_b, end_b) are not seen: left padding before start_b, unwritten cache after end_b. The caller
turns o back into values with W_uv. Written one sequence at a time, for reading, not speed.
"""

from __future__ import annotations

import torch
from torch import Tensor


def mla_decode_ref(
    q_latent: Tensor,
    latent: Tensor,
    q_rope: Tensor | None,
    rope_key: Tensor | None,
    starts: Tensor,
    ends: Tensor,
    scale: float,
) -> Tensor:  # (B, H, R) float64
    """q_latent (B, H, R), latent (B, S, R), q_rope (B, H, P), rope_key (B, S, P), starts and ends (B,)."""
    B, H, R = q_latent.shape
    out = torch.zeros(B, H, R, dtype=torch.float64, device=q_latent.device)
    for b in range(B):
        start, end = int(starts[b]), int(ends[b])
        c = latent[b, start:end].double()  # (n, R)
        scores = q_latent[b].double() @ c.T  # (H, n)
        if q_rope is not None:
            scores = scores + q_rope[b].double() @ rope_key[b, start:end].double().T
        out[b] = torch.softmax(scores * scale, dim=-1) @ c
    return out
