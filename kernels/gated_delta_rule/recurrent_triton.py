"""Token-by-token gated delta rule in Triton, for decoding one or a few tokens against a cached state.

One program holds a (K, BV) slice of one sequence's state in registers and walks its tokens: for each,
S = a_t * S, then (delta rule) S += k_t (beta_t (v_t - k_t^T S))^T, or S += k_t v_t^T; o_t = S^T (scale q_t).
It reads every input once and the state once, and writes the output and the state once: the least a decode
step can move. Forward only; a call that needs gradients goes through the chunked kernels.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .chunk_triton import _empty


@triton.jit
def recurrent_kernel(
    q, k, v, g, beta, o, h0, ht, cu_seqlens, scale, T,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    GATE_CHANNEL: tl.constexpr, USE_DELTA: tl.constexpr, HAS_INITIAL_STATE: tl.constexpr,
    STORE_FINAL_STATE: tl.constexpr, IS_VARLEN: tl.constexpr,
):  # fmt: skip
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int32)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int32)
    else:
        bos = i_n * T
        eos = bos + T
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_kv = (i_h * K + o_k[:, None]) * V + o_v[None, :]
    if HAS_INITIAL_STATE:
        b_h = tl.load(h0 + i_n * H * K * V + p_kv, mask=m_kv, other=0.0).to(tl.float32)
    else:
        b_h = tl.zeros([BK, BV], dtype=tl.float32)
    for t in range(bos, eos):
        b_q = tl.load(q + (t * H + i_h) * K + o_k, mask=m_k, other=0.0).to(tl.float32) * scale
        b_k = tl.load(k + (t * H + i_h) * K + o_k, mask=m_k, other=0.0).to(tl.float32)
        b_v = tl.load(v + (t * H + i_h) * V + o_v, mask=m_v, other=0.0).to(tl.float32)
        if GATE_CHANNEL:
            b_g = tl.load(g + (t * H + i_h) * K + o_k, mask=m_k, other=0.0).to(tl.float32)
            b_h = b_h * tl.exp(b_g)[:, None]
        else:
            b_h = b_h * tl.exp(tl.load(g + t * H + i_h).to(tl.float32))
        if USE_DELTA:
            b_b = tl.load(beta + t * H + i_h).to(tl.float32)
            b_old = tl.sum(b_k[:, None] * b_h, axis=0)  # (BV,) what the state recalls for k_t
            b_h += b_k[:, None] * (b_b * (b_v - b_old))[None, :]
        else:
            b_h += b_k[:, None] * b_v[None, :]
        b_o = tl.sum(b_q[:, None] * b_h, axis=0)
        tl.store(o + (t * H + i_h) * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)
    if STORE_FINAL_STATE:
        tl.store(ht + i_n * H * K * V + p_kv, b_h, mask=m_kv)


def recurrent_gated_delta_rule_triton(
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
) -> tuple[Tensor, Tensor | None]:
    """Same contract as `gated_delta_rule_ref`; no gradients."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    scale = K**-0.5 if scale is None else scale
    q, k, v, g = (x.contiguous() for x in (q, k, v, g))
    beta = None if beta is None else beta.contiguous()
    h0 = None if initial_state is None else initial_state.contiguous()
    o = _empty(v.shape, dtype=v.dtype, device=q.device)
    ht = _empty(N, H, K, V, dtype=torch.float32, device=q.device) if output_final_state else None
    BK = max(16, triton.next_power_of_2(K))
    BV = min(32, max(16, triton.next_power_of_2(V)))
    recurrent_kernel[(triton.cdiv(V, BV), N * H)](
        q, k, v, g, beta, o, h0, ht, cu_seqlens, scale, T, H=H, K=K, V=V, BK=BK, BV=BV,
        GATE_CHANNEL=gate == "channel", USE_DELTA=delta, HAS_INITIAL_STATE=h0 is not None,
        STORE_FINAL_STATE=output_final_state, IS_VARLEN=cu_seqlens is not None,
    )  # fmt: skip
    return o, ht
