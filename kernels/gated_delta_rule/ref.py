"""Executable specification of the gated delta rule family: the token-by-token recurrence.

Per sequence and head, with a key-first state S of shape (K, V):

    delta=True  (KDA, GDN):      S_t = (I - b_t k_t k_t^T) Diag(a_t) S_{t-1} + b_t k_t v_t^T
    delta=False (Mamba2/SSD, GLA): S_t = Diag(a_t) S_{t-1} + k_t v_t^T
    output:                      o_t = S_t^T (scale * q_t)

where a_t = exp(g_t) is the forget gate, given in log space (g <= 0): one number per head
(gate="scalar", GDN and Mamba2) or one per key channel (gate="channel", KDA and GLA). The decay is
applied before the delta correction, as in KDA. This file is slow on purpose: it is what every faster
implementation is tested against, computed in float64 by default.
"""

from __future__ import annotations

import torch
from torch import Tensor


def gated_delta_rule_ref(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor | None = None,
    *,
    gate: str = "scalar",
    delta: bool = True,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: Tensor | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor | None]:
    """Token-by-token recurrence; same arguments and shapes as `kernels.gated_delta_rule.gated_delta_rule`.

    q, k: (B, T, H, K); v: (B, T, H, V); g: (B, T, H) for gate="scalar" or (B, T, H, K) for
    gate="channel"; beta: (B, T, H), required when delta=True; initial_state: (N, H, K, V), N = B, or
    the number of sequences when cu_seqlens (B must be 1) packs several sequences into one row.
    Returns the output (B, T, H, V) in v's dtype and, if asked, the final states (N, H, K, V) in float32
    (float64 for float64 inputs).
    """
    B, T, H, K = q.shape
    scale = K**-0.5 if scale is None else scale
    bounds = _sequence_bounds(B, T, cu_seqlens)
    out = torch.empty(B, T, H, v.shape[-1], dtype=dtype, device=q.device)
    finals = []
    for n, (row, start, end) in enumerate(bounds):
        S = torch.zeros(H, K, v.shape[-1], dtype=dtype, device=q.device)
        if initial_state is not None:
            S = initial_state[n].to(dtype).clone()
        for t in range(start, end):
            q_t, k_t, v_t = (x[row, t].to(dtype) for x in (q, k, v))  # (H, K), (H, K), (H, V)
            a_t = g[row, t].to(dtype).exp()  # (H,) or (H, K)
            decay = a_t[:, None, None] if gate == "scalar" else a_t[:, :, None]
            S = decay * S
            if delta:
                b_t = beta[row, t].to(dtype)[:, None]  # (H, 1)
                v_old = torch.einsum("hk,hkv->hv", k_t, S)
                S = S + torch.einsum("hk,hv->hkv", k_t, b_t * (v_t - v_old))
            else:
                S = S + torch.einsum("hk,hv->hkv", k_t, v_t)
            out[row, t] = torch.einsum("hk,hkv->hv", q_t * scale, S)
        finals.append(S)
    state_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    final_state = torch.stack(finals).to(state_dtype) if output_final_state else None
    return out.to(v.dtype), final_state


def _sequence_bounds(B: int, T: int, cu_seqlens: Tensor | None) -> list[tuple[int, int, int]]:
    """(batch row, start, end) of every sequence."""
    if cu_seqlens is None:
        return [(b, 0, T) for b in range(B)]
    offsets = cu_seqlens.tolist()
    return [(0, offsets[i], offsets[i + 1]) for i in range(len(offsets) - 1)]
