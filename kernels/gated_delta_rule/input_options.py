"""The op's input options, unfused: the L2 norm of q and k and the forget gate's activation.

The Triton chunked kernels apply both as they load their inputs; every other path (the chunked PyTorch
implementation, the reference, the recurrent decoding kernel) runs `apply_input_options` first, and the models use
`activate_gate` wherever they need the gate itself (e.g. to inspect it). Both are plain PyTorch and the
definition of what the fused kernels must compute.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def apply_input_options(
    q: Tensor,
    k: Tensor,
    g: Tensor,
    *,
    use_qk_l2norm: bool = False,
    A_log: Tensor | None = None,
    dt_bias: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """What the op's fused input options mean, unfused (the PyTorch and reference paths run this first).

    use_qk_l2norm: q, k = q / max(|q|, 1e-6), k / max(|k|, 1e-6) per token and head (F.normalize, eps 1e-6).
    A_log given: g holds the gate's raw input and becomes the log gate `activate_gate(g, A_log, dt_bias)`.
    """
    if use_qk_l2norm:
        q, k = F.normalize(q, dim=-1, eps=1e-6), F.normalize(k, dim=-1, eps=1e-6)
    if A_log is not None:
        g = activate_gate(g, A_log, dt_bias)
    return q, k, g


def activate_gate(g_raw: Tensor, A_log: Tensor, dt_bias: Tensor | None = None) -> Tensor:
    """Log forget gate g = -exp(A_log[h]) softplus(g_raw + dt_bias) of KDA and GDN, in float32 (float64 for float64
    inputs). g_raw: (B, T, H) for a scalar gate, (B, T, H, K) per channel; A_log: (H,); dt_bias: (H,) for a scalar
    gate, (H * K,) or (H, K) per channel, or None. A raw input of -inf gives g = 0 (no decay: a padded token)."""
    compute = torch.float64 if g_raw.dtype == torch.float64 else torch.float32
    H = A_log.shape[0]
    decay = A_log.to(compute).exp().view(H, *[1] * (g_raw.dim() - 3))  # (H,) or (H, 1)
    bias = 0.0 if dt_bias is None else dt_bias.to(compute).view(g_raw.shape[2:])
    return -decay * F.softplus(g_raw.to(compute) + bias)
