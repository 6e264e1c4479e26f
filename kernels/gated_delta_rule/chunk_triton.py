"""Chunked gated delta rule in Triton: forward and backward kernels for the whole family.

Same algorithm as `chunk_torch.py` (docs/reference.md §2). Two compile-time switches select the member:
GATE_CHANNEL (per-channel gate, KDA/GLA; else one gate per head, GDN/SSD) and USE_DELTA (the delta rule's UT
transform, KDA/GDN; else U = V and W = 0, SSD/GLA). One code path serves all four.

Tokens live flattened as (B*T, H, D); a chunk never straddles two sequences, so a variable-length batch is
the same kernels with a table of (sequence, chunk) pairs. Rows of a chunk past the end of its sequence are
masked on every load (zeros: k = q = v = 0, g = 0) and every store, which makes T any length.

Forward, per chunk of C tokens (G = cumulative log-decay inside the chunk):
    1. cumsum         G
    2. intra          A_qk = Tril((scale q) (k)^T * decay), A_kk = StrictTril(k k^T * decay), in BC-token blocks
    3. solve          M = (I + Diag(beta) A_kk)^-1; W = M Diag(beta) (e^G * K), U = M Diag(beta) V
    4. state          sequential over chunks, parallel over V-blocks: h_n = state before chunk n,
                      V' = U - W h_n, h_{n+1} = e^{G_C} * h_n + (e^{G_C - G} * K)^T V'
    5. output         O = (scale q * e^G) h_n + A_qk V'
Backward: 6. state_bwd (sequential, reverse) -> dh_n, dV'; 7. local (per chunk) -> everything that needs the
states; 8. intra_bwd (per chunk, in BC-token blocks) -> the A_qk / A_kk paths, and dg as a reverse cumsum.

Stable per-channel decays: every decay that is formed is exp of a difference <= 0 (g <= 0 makes G decrease).
For a block pair (I, J), I > J, both sides are decayed relative to G at the first token of block I:
q_i e^{G_i - R} and k_j e^{R - G_j}, each <= 1; inside a diagonal block the (BC, BC) pairs use exact pairwise
decays, one key at a time. With a scalar gate a whole chunk is one block (pairwise decays are a (C, C) matrix).
Exponents that should be <= 0 are clipped at 0, so masked (padded) rows never overflow.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

SUB_CHUNK = 16  # BC: block of the per-channel pairwise decays and of the triangular solve
# Tests set this: every buffer the launchers allocate starts as NaN, so that an element no kernel wrote shows.
POISON = False


def _empty(*shape, dtype, device) -> Tensor:
    x = torch.empty(*shape, dtype=dtype, device=device)
    return x.fill_(float("nan")) if POISON else x


@triton.jit
def _exp_le0(x):
    return tl.exp(tl.minimum(x, 0.0))


@triton.jit
def _chunk_of(i_c, cu_seqlens, chunk_indices, T, C: tl.constexpr, IS_VARLEN: tl.constexpr):
    """First token (flattened) and number of valid tokens of global chunk i_c."""
    if IS_VARLEN:
        i_n = tl.load(chunk_indices + 2 * i_c).to(tl.int32)
        i_t = tl.load(chunk_indices + 2 * i_c + 1).to(tl.int32)
        bos = tl.load(cu_seqlens + i_n).to(tl.int32)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int32)
    else:
        NT = tl.cdiv(T, C)
        i_n = i_c // NT
        i_t = i_c % NT
        bos = i_n * T
        eos = bos + T
    start = bos + i_t * C
    return start, tl.minimum(eos - start, C)


@triton.jit
def _seq_of(i_n, cu_seqlens, chunk_offsets, T, C: tl.constexpr, IS_VARLEN: tl.constexpr):
    """First token, end and first global chunk of sequence i_n."""
    if IS_VARLEN:
        bos = tl.load(cu_seqlens + i_n).to(tl.int32)
        eos = tl.load(cu_seqlens + i_n + 1).to(tl.int32)
        base = tl.load(chunk_offsets + i_n).to(tl.int32)
    else:
        bos = i_n * T
        eos = bos + T
        base = i_n * tl.cdiv(T, C)
    return bos, eos, base


@triton.jit
def _load_rows(p, rows, m_rows, i_h, H: tl.constexpr, D: tl.constexpr, BD: tl.constexpr):
    """(len(rows), BD) tile of a (tokens, H, D) tensor, zeros where masked."""
    o_d = tl.arange(0, BD)
    ptr = p + (rows[:, None] * H + i_h) * D + o_d[None, :]
    return tl.load(ptr, mask=m_rows[:, None] & (o_d < D)[None, :], other=0.0)


@triton.jit
def _store_rows(p, x, rows, m_rows, i_h, H: tl.constexpr, D: tl.constexpr, BD: tl.constexpr):
    o_d = tl.arange(0, BD)
    ptr = p + (rows[:, None] * H + i_h) * D + o_d[None, :]
    tl.store(ptr, x.to(p.dtype.element_ty), mask=m_rows[:, None] & (o_d < D)[None, :])


@triton.jit
def _load_qk(
    p, rn, rows, m_rows, i_h, H: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, L2NORM: tl.constexpr
):
    """(len(rows), BD) tile of q or k, L2-normalised per row by the inverse norms `rn` (tokens, H) if L2NORM."""
    b = _load_rows(p, rows, m_rows, i_h, H, D, BD)
    if L2NORM:
        b_r = tl.load(rn + rows * H + i_h, mask=m_rows, other=0.0)
        b = (b.to(tl.float32) * b_r[:, None]).to(b.dtype)
    return b


@triton.jit
def _load_qk_row(
    p, rn, row, pos, valid, i_h, H: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, L2NORM: tl.constexpr
):
    """Token `row` (at `pos` in its chunk of `valid` tokens) of q or k: (BD,) float32, normalised as `_load_qk`."""
    o_d = tl.arange(0, BD)
    m_d = (o_d < D) & (pos + 0 * o_d < valid)
    b = tl.load(p + (row * H + i_h) * D + o_d, mask=m_d, other=0.0)
    if L2NORM:
        # the token's inverse norm, broadcast over the row
        b_r = tl.load(rn + row * H + i_h + 0 * o_d, mask=m_d, other=0.0)
        b = (b.to(tl.float32) * b_r).to(b.dtype)
    return b.to(tl.float32)


@triton.jit
def _softplus(x):
    """log(1 + e^x) as torch.nn.functional.softplus (x above 20 passes through); log1p by Goldberg's trick."""
    y = tl.exp(tl.minimum(x, 20.0))
    u = 1.0 + y
    log1p = tl.where(u == 1.0, y, tl.log(u) * (y / tl.where(u == 1.0, 1.0, u - 1.0)))
    return tl.where(x > 20.0, x, log1p)


@triton.jit
def _inverse_norm(b):
    """1 / max(|row|, 1e-6) of a (rows, D) tile, as torch.nn.functional.normalize(eps=1e-6)."""
    b = b.to(tl.float32)
    return 1.0 / tl.maximum(tl.sqrt(tl.sum(b * b, axis=1)), 1e-6)


@triton.jit
def _l2norm_bwd(b_dx, b_xn, b_r):
    """Gradient through x_n = x r, r = 1 / max(|x|, eps): r (dx_n - x_n (x_n . dx_n)), the projection only where
    the norm is above eps (below it, r is the constant 1 / eps)."""
    b_dot = tl.sum(b_xn * b_dx, axis=1)[:, None]
    return b_r[:, None] * (b_dx - tl.where(b_r[:, None] < 1e6, b_xn * b_dot, 0.0))


@triton.jit
def _load_gate(G, rows, m_rows, i_h, H: tl.constexpr, K: tl.constexpr, BK: tl.constexpr, GATE_CHANNEL):
    """Gate tile: (rows, BK) per channel, (rows, 1) per head, ready to broadcast against (rows, BK)."""
    if GATE_CHANNEL:
        b_g = _load_rows(G, rows, m_rows, i_h, H, K, BK).to(tl.float32)
    else:
        b_g = tl.load(G + rows * H + i_h, mask=m_rows, other=0.0).to(tl.float32)[:, None]
    return b_g


@triton.jit
def _load_gate_row(G, row, i_h, H: tl.constexpr, K: tl.constexpr, BK: tl.constexpr, GATE_CHANNEL):
    """Gate of one token: (1, BK) per channel, (1, 1) per head."""
    o_k = tl.arange(0, BK)
    if GATE_CHANNEL:
        b_g = tl.load(G + (row * H + i_h) * K + o_k, mask=o_k < K, other=0.0).to(tl.float32)[None, :]
    else:
        b_g = tl.load(G + row * H + i_h + 0 * o_k[None, :]).to(tl.float32)
        b_g = tl.max(b_g, axis=1)[:, None]
    return b_g


# Largest per-channel gate span (G at a diagonal block's first token minus G at its last) for which the block is
# a matrix product: factors e^{+-(G - midpoint)} stay within e^{+-32}, far from float32's (and TF32's) overflow and
# underflow for any q, k of |x| < 1e4. Wider spans (a channel forgetting faster than e^-4 per token) take the
# exact loop.
DIAG_SPAN = tl.constexpr(64.0)


@triton.jit
def _diag_factors(G, b_g, start, valid, m_i, i_i, i_h, H: tl.constexpr, K: tl.constexpr, BK: tl.constexpr,
                  BC: tl.constexpr):  # fmt: skip
    """Decay factors of diagonal block I, whose (BC, BK) gate tile is b_g: with m = the per-channel midpoint of
    the block's gates, e^{G_i - G_j} = e^{G_i - m} e^{m - G_j}, so the block's pairwise decays are one matrix
    product of (rows * up) and (columns * dn). Returns (up, dn, span); masked rows take the first row's gate
    (finite factors that multiply zeros). Exact only while span <= DIAG_SPAN: the caller checks."""
    b_r = _load_gate_row(G, start + tl.minimum(i_i * BC, valid - 1), i_h, H, K, BK, True)  # (1, BK)
    b_gv = tl.where(m_i[:, None], b_g, b_r)
    b_hi = tl.max(b_gv, axis=0)[None, :]
    b_lo = tl.min(b_gv, axis=0)[None, :]
    b_mid = (b_hi + b_lo) * 0.5
    b_span = tl.max(tl.max(b_hi - b_lo, axis=1), axis=0)
    # clipped at the span's half: no-ops where the product is used, finite factors where it is not
    b_up = tl.exp(tl.minimum(b_gv - b_mid, 0.5 * DIAG_SPAN))
    b_dn = tl.exp(tl.minimum(b_mid - b_gv, 0.5 * DIAG_SPAN))
    return b_up, b_dn, b_span


@triton.jit
def _load_tri(A, start, r_i, m_i, r_j, i_h, H: tl.constexpr, C: tl.constexpr, STRICT: tl.constexpr):
    """Block (r_i, r_j) of a (tokens, H, C) lower-triangular matrix; the upper part is never stored."""
    if STRICT:
        m = m_i[:, None] & (r_j[None, :] < r_i[:, None])
    else:
        m = m_i[:, None] & (r_j[None, :] <= r_i[:, None])
    return tl.load(A + ((start + r_i[:, None]) * H + i_h) * C + r_j[None, :], mask=m, other=0.0)


# ---------------------------------------------------------------------------------------------- forward


@triton.jit
def cumsum_kernel(
    g, G, q, k, A_log, dt_bias, cu_seqlens, chunk_indices, T, rq, rk,
    H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, BK: tl.constexpr,
    GATE_CHANNEL: tl.constexpr, IS_VARLEN: tl.constexpr, L2NORM: tl.constexpr, GATE_ACT: tl.constexpr,
):  # fmt: skip
    """G = cumsum of the log gate inside the chunk; with GATE_ACT, g = -exp(A_log) softplus(g_raw + dt_bias) first.
    With L2NORM, also the inverse norms of q and k, which every later kernel applies as it loads them."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    start, valid = _chunk_of(i_c, cu_seqlens, chunk_indices, T, C, IS_VARLEN)
    o_t = tl.arange(0, C)
    m_t = o_t < valid
    if GATE_CHANNEL:
        b_g = _load_rows(g, start + o_t, m_t, i_h, H, K, BK).to(tl.float32)
        if GATE_ACT:
            o_k = tl.arange(0, BK)
            b_x = b_g + tl.load(dt_bias + i_h * K + o_k, mask=o_k < K, other=0.0).to(tl.float32)[None, :]
            b_g = tl.where(m_t[:, None], -tl.exp(tl.load(A_log + i_h).to(tl.float32)) * _softplus(b_x), 0.0)
        _store_rows(G, tl.cumsum(b_g, axis=0), start + o_t, m_t, i_h, H, K, BK)
    else:
        b_g = tl.load(g + (start + o_t) * H + i_h, mask=m_t, other=0.0).to(tl.float32)
        if GATE_ACT:
            b_x = b_g + tl.load(dt_bias + i_h).to(tl.float32)
            b_g = tl.where(m_t, -tl.exp(tl.load(A_log + i_h).to(tl.float32)) * _softplus(b_x), 0.0)
        tl.store(G + (start + o_t) * H + i_h, tl.cumsum(b_g, axis=0), mask=m_t)
    if L2NORM:
        b_q = _load_rows(q, start + o_t, m_t, i_h, H, K, BK)
        tl.store(rq + (start + o_t) * H + i_h, _inverse_norm(b_q), mask=m_t)
        b_k = _load_rows(k, start + o_t, m_t, i_h, H, K, BK)
        tl.store(rk + (start + o_t) * H + i_h, _inverse_norm(b_k), mask=m_t)


@triton.jit
def _diag_loop(q_i, k_i, b_gi, k, rk, G, start, valid, i_i, i_h, H: tl.constexpr, K: tl.constexpr,
               BK: tl.constexpr, BC: tl.constexpr, USE_DELTA: tl.constexpr, L2NORM: tl.constexpr):  # fmt: skip
    """Diagonal block I of A_qk and A_kk with exact pairwise decays, one key at a time (v2's only path)."""
    o_c = tl.arange(0, BC)
    b_q, b_k = q_i, k_i
    b_qk = tl.zeros([BC, BC], dtype=tl.float32)
    b_kk = tl.zeros([BC, BC], dtype=tl.float32)
    for j in range(0, BC):
        row = start + i_i * BC + j
        o_k = tl.arange(0, BK)
        m_rk = (o_k < K) & (i_i * BC + j + 0 * o_k < valid)
        p_row = (row * H + i_h) * K + o_k
        b_kj = _load_qk_row(k, rk, row, i_i * BC + j, valid, i_h, H, K, BK, L2NORM)
        b_gj = tl.load(G + p_row, mask=m_rk, other=0.0)
        b_kd = b_kj[None, :] * tl.exp(tl.minimum(b_gi - b_gj[None, :], 0.0))  # (BC, BK)
        b_qk = tl.where(o_c[None, :] == j, tl.sum(b_q * b_kd, axis=1)[:, None], b_qk)
        if USE_DELTA:
            b_kk = tl.where(o_c[None, :] == j, tl.sum(b_k * b_kd, axis=1)[:, None], b_kk)
    return b_qk, b_kk


@triton.jit
def intra_kernel(
    q, k, G, Aqk, Akk, cu_seqlens, chunk_indices, scale, T, rq, rk,
    H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
    GATE_CHANNEL: tl.constexpr, USE_DELTA: tl.constexpr, IS_VARLEN: tl.constexpr, L2NORM: tl.constexpr,
    FAST_DIAG: tl.constexpr,
):  # fmt: skip
    """One (BC, BC) block (I, J), J <= I, of A_qk (with the query scale) and A_kk (without beta).

    FAST_DIAG (v3): the grid is (blocks, chunks, heads), so the blocks of one chunk run side by side and share its
    q, k and G tiles through L2; a per-channel diagonal block is a matrix product about the block's per-channel
    midpoint gate when its gate span allows (`_diag_factors`), else the exact key-by-key loop (v2's only path)."""
    if FAST_DIAG:
        i_b, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    else:
        i_c, i_b, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    # lower-triangular block index -> (I, J); sqrt of a perfect square is exact in float32
    i_i = ((tl.sqrt((8 * i_b + 1).to(tl.float32)) - 1) / 2).to(tl.int32)
    i_j = i_b - i_i * (i_i + 1) // 2
    start, valid = _chunk_of(i_c, cu_seqlens, chunk_indices, T, C, IS_VARLEN)
    o_c = tl.arange(0, BC)
    r_i, r_j = i_i * BC + o_c, i_j * BC + o_c  # rows inside the chunk
    m_i, m_j = r_i < valid, r_j < valid
    b_q = _load_qk(q, rq, start + r_i, m_i, i_h, H, K, BK, L2NORM).to(tl.float32) * scale  # (BC, BK)
    b_k = _load_qk(k, rk, start + r_i, m_i, i_h, H, K, BK, L2NORM).to(tl.float32)
    b_gi = _load_gate(G, start + r_i, m_i, i_h, H, K, BK, GATE_CHANNEL)  # (BC, BK) | (BC, 1)
    if GATE_CHANNEL:
        if i_i > i_j:
            b_r = _load_gate_row(
                G, start + tl.minimum(i_i * BC, valid - 1), i_h, H, K, BK, GATE_CHANNEL
            )  # (1, BK)
            b_kj = _load_qk(k, rk, start + r_j, m_j, i_h, H, K, BK, L2NORM).to(tl.float32)
            b_gj = _load_gate(G, start + r_j, m_j, i_h, H, K, BK, GATE_CHANNEL)
            b_kj = b_kj * _exp_le0(b_r - b_gj)
            b_di = _exp_le0(b_gi - b_r)
            b_qk = tl.dot(b_q * b_di, tl.trans(b_kj))
            b_kk = tl.dot(b_k * b_di, tl.trans(b_kj))
        else:
            if FAST_DIAG:
                b_up, b_dn, b_span = _diag_factors(G, b_gi, start, valid, m_i, i_i, i_h, H, K, BK, BC)
                if b_span <= DIAG_SPAN:
                    b_kf = b_k * b_dn
                    b_qk = tl.dot(b_q * b_up, tl.trans(b_kf))
                    b_kk = tl.dot(b_k * b_up, tl.trans(b_kf))
                else:
                    b_qk, b_kk = _diag_loop(b_q, b_k, b_gi, k, rk, G, start, valid, i_i, i_h, H, K, BK, BC, USE_DELTA,
                                            L2NORM)  # fmt: skip
            else:
                b_qk, b_kk = _diag_loop(b_q, b_k, b_gi, k, rk, G, start, valid, i_i, i_h, H, K, BK, BC, USE_DELTA,
                                        L2NORM)  # fmt: skip
    else:
        b_kj = _load_qk(k, rk, start + r_j, m_j, i_h, H, K, BK, L2NORM)
        b_gj = tl.load(G + (start + r_j) * H + i_h, mask=m_j, other=0.0)
        b_d = _exp_le0(b_gi - b_gj[None, :])  # (BC, BC)
        b_qk = tl.dot(b_q.to(b_kj.dtype), tl.trans(b_kj)) * b_d
        b_kk = tl.dot(b_k.to(b_kj.dtype), tl.trans(b_kj)) * b_d
    p_A = ((start + r_i[:, None]) * H + i_h) * C + r_j[None, :]
    m_A = m_i[:, None] & (r_j < C)[None, :]
    tl.store(Aqk + p_A, tl.where(r_i[:, None] >= r_j[None, :], b_qk, 0.0), mask=m_A)
    if USE_DELTA:
        tl.store(Akk + p_A, tl.where(r_i[:, None] > r_j[None, :], b_kk, 0.0), mask=m_A)


@triton.jit
def _dot32(a, b):
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _inv_unit_lower(b_N, BC: tl.constexpr):
    """(I + N)^-1 for a strictly lower-triangular (16, 16) N: N^16 = 0, so the inverse is the sum of (-N)^p for
    p < 16 = (I - N)(I + N^2)(I + N^4)(I + N^8). Seven small products and no serial loop (a forward substitution
    takes 15 dependent row steps, each a reduction across the program's threads)."""
    tl.static_assert(BC == 16)
    o = tl.arange(0, BC)
    b_I = tl.where(o[:, None] == o[None, :], 1.0, 0.0)
    b_P = _dot32(b_N, b_N)  # N^2
    b_M = _dot32(b_I - b_N, b_I + b_P)
    b_P = _dot32(b_P, b_P)  # N^4
    b_M = _dot32(b_M, b_I + b_P)
    b_P = _dot32(b_P, b_P)  # N^8
    return _dot32(b_M, b_I + b_P)


@triton.jit
def _solve_block(Akk, beta, start, valid, i_h, I: tl.constexpr, J: tl.constexpr, H: tl.constexpr,
                 C: tl.constexpr, BC: tl.constexpr):  # fmt: skip
    """Block (I, J) of N = Diag(beta) StrictTril(A_kk)."""
    o = tl.arange(0, BC)
    r_i = I * BC + o
    m_i = r_i < valid
    b_a = _load_tri(Akk, start, r_i, m_i, J * BC + o, i_h, H, C, True)
    b_b = tl.load(beta + (start + r_i) * H + i_h, mask=m_i, other=0.0).to(tl.float32)
    return b_a * b_b[:, None]


@triton.jit
def _store_block(M, x, start, valid, i_h, I: tl.constexpr, J: tl.constexpr, H: tl.constexpr,
                 C: tl.constexpr, BC: tl.constexpr):  # fmt: skip
    o = tl.arange(0, BC)
    r_i = I * BC + o
    p = M + ((start + r_i[:, None]) * H + i_h) * C + J * BC + o[None, :]
    tl.store(p, x, mask=(r_i < valid)[:, None] & (o < BC)[None, :])


@triton.jit
def solve_kernel(
    k, v, beta, G, Akk, M, w, u, kd, cu_seqlens, chunk_indices, T, rk,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BC: tl.constexpr,
    BK: tl.constexpr, BV: tl.constexpr, GATE_CHANNEL: tl.constexpr, IS_VARLEN: tl.constexpr, L2NORM: tl.constexpr,
    STORE_KD: tl.constexpr,
):  # fmt: skip
    """M = (I + Diag(beta) A_kk)^-1 by (BC, BC) blocks (C / BC in 1, 2, 4), then W and U. With STORE_KD, also the
    keys decayed to the chunk's end, e^{G_C - G} * K, for the sequential state kernel (per channel, that saves it
    a (C, K) float32 gate tile and its exponentials in every step of its serial loop)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    start, valid = _chunk_of(i_c, cu_seqlens, chunk_indices, T, C, IS_VARLEN)
    NS: tl.constexpr = C // BC
    b_M00 = _inv_unit_lower(_solve_block(Akk, beta, start, valid, i_h, 0, 0, H, C, BC), BC)
    _store_block(M, b_M00, start, valid, i_h, 0, 0, H, C, BC)
    if NS >= 2:
        # M_IJ = -M_II sum_{J <= L < I} N_IL M_LJ
        b_M11 = _inv_unit_lower(_solve_block(Akk, beta, start, valid, i_h, 1, 1, H, C, BC), BC)
        b_N10 = _solve_block(Akk, beta, start, valid, i_h, 1, 0, H, C, BC)
        b_M10 = -_dot32(b_M11, _dot32(b_N10, b_M00))
        _store_block(M, b_M11, start, valid, i_h, 1, 1, H, C, BC)
        _store_block(M, b_M10, start, valid, i_h, 1, 0, H, C, BC)
    if NS >= 4:
        b_M22 = _inv_unit_lower(_solve_block(Akk, beta, start, valid, i_h, 2, 2, H, C, BC), BC)
        b_M33 = _inv_unit_lower(_solve_block(Akk, beta, start, valid, i_h, 3, 3, H, C, BC), BC)
        b_N20 = _solve_block(Akk, beta, start, valid, i_h, 2, 0, H, C, BC)
        b_N21 = _solve_block(Akk, beta, start, valid, i_h, 2, 1, H, C, BC)
        b_N30 = _solve_block(Akk, beta, start, valid, i_h, 3, 0, H, C, BC)
        b_N31 = _solve_block(Akk, beta, start, valid, i_h, 3, 1, H, C, BC)
        b_N32 = _solve_block(Akk, beta, start, valid, i_h, 3, 2, H, C, BC)
        b_M21 = -_dot32(b_M22, _dot32(b_N21, b_M11))
        b_M32 = -_dot32(b_M33, _dot32(b_N32, b_M22))
        b_M20 = -_dot32(b_M22, _dot32(b_N20, b_M00) + _dot32(b_N21, b_M10))
        b_M31 = -_dot32(b_M33, _dot32(b_N31, b_M11) + _dot32(b_N32, b_M21))
        b_M30 = -_dot32(b_M33, _dot32(b_N30, b_M00) + _dot32(b_N31, b_M10) + _dot32(b_N32, b_M20))
        _store_block(M, b_M22, start, valid, i_h, 2, 2, H, C, BC)
        _store_block(M, b_M33, start, valid, i_h, 3, 3, H, C, BC)
        _store_block(M, b_M21, start, valid, i_h, 2, 1, H, C, BC)
        _store_block(M, b_M32, start, valid, i_h, 3, 2, H, C, BC)
        _store_block(M, b_M20, start, valid, i_h, 2, 0, H, C, BC)
        _store_block(M, b_M31, start, valid, i_h, 3, 1, H, C, BC)
        _store_block(M, b_M30, start, valid, i_h, 3, 0, H, C, BC)
    # the blocks above were written by other threads of this program
    tl.debug_barrier()
    o_t = tl.arange(0, C)
    m_t = o_t < valid
    b_M = _load_tri(M, start, o_t, m_t, o_t, i_h, H, C, False)  # (C, C)
    b_b = tl.load(beta + (start + o_t) * H + i_h, mask=m_t, other=0.0).to(tl.float32)
    b_k = _load_qk(k, rk, start + o_t, m_t, i_h, H, K, BK, L2NORM).to(tl.float32)
    b_g = _load_gate(G, start + o_t, m_t, i_h, H, K, BK, GATE_CHANNEL)
    b_w = tl.dot(b_M, b_k * _exp_le0(b_g) * b_b[:, None])
    _store_rows(w, b_w, start + o_t, m_t, i_h, H, K, BK)
    if STORE_KD:
        b_gc = _load_gate_row(G, start + valid - 1, i_h, H, K, BK, GATE_CHANNEL)
        _store_rows(kd, b_k * _exp_le0(b_gc - b_g), start + o_t, m_t, i_h, H, K, BK)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        p_v = ((start + o_t[:, None]) * H + i_h) * V + o_v[None, :]
        m_v = m_t[:, None] & (o_v < V)[None, :]
        b_v = tl.load(v + p_v, mask=m_v, other=0.0).to(tl.float32)
        tl.store(u + p_v, tl.dot(b_M, b_v * b_b[:, None]).to(u.dtype.element_ty), mask=m_v)


@triton.jit
def state_kernel(
    k, v, w, u, kd, G, h, vn, h0, ht, cu_seqlens, chunk_offsets, T, rk,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    GATE_CHANNEL: tl.constexpr, USE_DELTA: tl.constexpr, HAS_INITIAL_STATE: tl.constexpr,
    STORE_FINAL_STATE: tl.constexpr, IS_VARLEN: tl.constexpr, L2NORM: tl.constexpr, HAS_KD: tl.constexpr,
):  # fmt: skip
    """Sequential over the chunks of one sequence: h_n (state before chunk n) and V' = U - W h_n."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos, base = _seq_of(i_n, cu_seqlens, chunk_offsets, T, C, IS_VARLEN)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    o_t = tl.arange(0, C)
    m_kv = (o_k < K)[:, None] & (o_v < V)[None, :]
    p_kv = (i_h * K + o_k[:, None]) * V + o_v[None, :]  # inside one (H, K, V) state
    if HAS_INITIAL_STATE:
        b_h = tl.load(h0 + i_n * H * K * V + p_kv, mask=m_kv, other=0.0).to(tl.float32)
    else:
        b_h = tl.zeros([BK, BV], dtype=tl.float32)
    for i_t in range(0, tl.cdiv(eos - bos, C)):
        start = bos + i_t * C
        m_t = o_t < eos - start
        tl.store(h + (base + i_t) * H * K * V + p_kv, b_h.to(h.dtype.element_ty), mask=m_kv)
        p_tv = ((start + o_t[:, None]) * H + i_h) * V + o_v[None, :]
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        if USE_DELTA:
            b_w = _load_rows(w, start + o_t, m_t, i_h, H, K, BK)
            b_u = tl.load(u + p_tv, mask=m_tv, other=0.0).to(tl.float32)
            b_vn = b_u - tl.dot(b_w, b_h.to(b_w.dtype))
            tl.store(vn + p_tv, b_vn.to(vn.dtype.element_ty), mask=m_tv)
        else:
            b_vn = tl.load(v + p_tv, mask=m_tv, other=0.0).to(tl.float32)
        last = tl.minimum(eos - start, C) - 1
        b_gc = _load_gate_row(G, start + last, i_h, H, K, BK, GATE_CHANNEL)  # (1, BK) | (1, 1)
        if HAS_KD:
            b_kd = _load_rows(kd, start + o_t, m_t, i_h, H, K, BK)  # e^{G_C - G} * K, from the solve
        else:
            b_k = _load_qk(k, rk, start + o_t, m_t, i_h, H, K, BK, L2NORM)
            b_g = _load_gate(G, start + o_t, m_t, i_h, H, K, BK, GATE_CHANNEL)
            b_kd = (b_k * _exp_le0(b_gc - b_g)).to(b_k.dtype)
        b_h = b_h * tl.trans(_exp_le0(b_gc)) + tl.dot(tl.trans(b_kd), b_vn.to(b_kd.dtype))
    if STORE_FINAL_STATE:
        tl.store(ht + i_n * H * K * V + p_kv, b_h, mask=m_kv)


@triton.jit
def output_kernel(
    q, G, h, vn, Aqk, o, cu_seqlens, chunk_indices, scale, T, rq,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    GATE_CHANNEL: tl.constexpr, IS_VARLEN: tl.constexpr, L2NORM: tl.constexpr,
):  # fmt: skip
    """O = (scale q * e^G) h_n + A_qk V' for one chunk and V-block."""
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start, valid = _chunk_of(i_c, cu_seqlens, chunk_indices, T, C, IS_VARLEN)
    o_t = tl.arange(0, C)
    m_t = o_t < valid
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    b_q = _load_qk(q, rq, start + o_t, m_t, i_h, H, K, BK, L2NORM)
    b_g = _load_gate(G, start + o_t, m_t, i_h, H, K, BK, GATE_CHANNEL)
    b_qg = (b_q * _exp_le0(b_g) * scale).to(b_q.dtype)
    p_h = h + ((i_c * H + i_h) * K + o_k[:, None]) * V + o_v[None, :]
    b_h = tl.load(p_h, mask=(o_k < K)[:, None] & (o_v < V)[None, :], other=0.0)
    p_tv = ((start + o_t[:, None]) * H + i_h) * V + o_v[None, :]
    m_tv = m_t[:, None] & (o_v < V)[None, :]
    b_vn = tl.load(vn + p_tv, mask=m_tv, other=0.0)
    b_A = _load_tri(Aqk, start, o_t, m_t, o_t, i_h, H, C, False)
    b_o = tl.dot(b_qg, b_h.to(b_qg.dtype)) + tl.dot(b_A.to(b_vn.dtype), b_vn)
    tl.store(o + p_tv, b_o.to(o.dtype.element_ty), mask=m_tv)


# --------------------------------------------------------------------------------------------- backward


@triton.jit
def state_bwd_kernel(
    q, k, w, G, Aqk, do, dh, dvn, dht, dh0, cu_seqlens, chunk_offsets, scale, T, rq, rk,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    GATE_CHANNEL: tl.constexpr, USE_DELTA: tl.constexpr, HAS_INITIAL_STATE: tl.constexpr,
    HAS_FINAL_GRAD: tl.constexpr, IS_VARLEN: tl.constexpr, L2NORM: tl.constexpr,
):  # fmt: skip
    """Reverse over chunks: dh_n = gradient of the state after chunk n, dV' = A_qk^T dO + (e^{G_C-G} K) dh_n."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos, base = _seq_of(i_n, cu_seqlens, chunk_offsets, T, C, IS_VARLEN)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    o_t = tl.arange(0, C)
    m_kv = (o_k < K)[:, None] & (o_v < V)[None, :]
    p_kv = (i_h * K + o_k[:, None]) * V + o_v[None, :]
    if HAS_FINAL_GRAD:
        b_dh = tl.load(dht + i_n * H * K * V + p_kv, mask=m_kv, other=0.0).to(tl.float32)
    else:
        b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    NT = tl.cdiv(eos - bos, C)
    for i_r in range(0, NT):
        i_t = NT - 1 - i_r
        start = bos + i_t * C
        m_t = o_t < eos - start
        tl.store(dh + (base + i_t) * H * K * V + p_kv, b_dh.to(dh.dtype.element_ty), mask=m_kv)
        p_tv = ((start + o_t[:, None]) * H + i_h) * V + o_v[None, :]
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        last = tl.minimum(eos - start, C) - 1
        b_q = _load_qk(q, rq, start + o_t, m_t, i_h, H, K, BK, L2NORM)
        b_k = _load_qk(k, rk, start + o_t, m_t, i_h, H, K, BK, L2NORM)
        b_g = _load_gate(G, start + o_t, m_t, i_h, H, K, BK, GATE_CHANNEL)
        b_gc = _load_gate_row(G, start + last, i_h, H, K, BK, GATE_CHANNEL)
        b_do = tl.load(do + p_tv, mask=m_tv, other=0.0)
        b_A = _load_tri(Aqk, start, o_t, m_t, o_t, i_h, H, C, False)
        b_kd = (b_k * _exp_le0(b_gc - b_g)).to(b_k.dtype)
        b_dvn = tl.dot(tl.trans(b_A).to(b_do.dtype), b_do) + tl.dot(b_kd, b_dh.to(b_kd.dtype))
        tl.store(dvn + p_tv, b_dvn, mask=m_tv)
        b_qg = (b_q * _exp_le0(b_g) * scale).to(b_q.dtype)
        b_dh = b_dh * tl.trans(_exp_le0(b_gc)) + tl.dot(tl.trans(b_qg), b_do.to(b_qg.dtype))
        if USE_DELTA:
            b_w = _load_rows(w, start + o_t, m_t, i_h, H, K, BK)
            b_dh -= tl.dot(tl.trans(b_w), b_dvn.to(b_w.dtype))
    if HAS_INITIAL_STATE:
        tl.store(dh0 + i_n * H * K * V + p_kv, b_dh, mask=m_kv)


@triton.jit
def local_bwd_kernel(
    q, k, v, beta, G, Akk, M, w, u, h, vn, dh, dvn, do,
    dq, dk, dv, dG, dbeta, dAqk, dAkk, cu_seqlens, chunk_indices, scale, T, rq, rk,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    GATE_CHANNEL: tl.constexpr, USE_DELTA: tl.constexpr, IS_VARLEN: tl.constexpr, L2NORM: tl.constexpr,
    LATE_LOADS: tl.constexpr,
):  # fmt: skip
    """Per chunk, everything that touches the states, the UT transform and beta; partial dq, dk, dG.

    LATE_LOADS (v3): q, k and the gates are loaded after the loop over V-blocks, which does not use them: three
    (C, K) float32 tiles fewer live across the loop (v2 loads them first and spills registers at K = 128)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    start, valid = _chunk_of(i_c, cu_seqlens, chunk_indices, T, C, IS_VARLEN)
    o_t = tl.arange(0, C)
    m_t = o_t < valid
    o_k = tl.arange(0, BK)
    if not LATE_LOADS:
        b_q = _load_qk(q, rq, start + o_t, m_t, i_h, H, K, BK, L2NORM).to(tl.float32) * scale
        b_k = _load_qk(k, rk, start + o_t, m_t, i_h, H, K, BK, L2NORM).to(tl.float32)
        b_g = _load_gate(G, start + o_t, m_t, i_h, H, K, BK, GATE_CHANNEL)
        b_gc = _load_gate_row(G, start + valid - 1, i_h, H, K, BK, GATE_CHANNEL)
    b_dq = tl.zeros([C, BK], dtype=tl.float32)
    b_dkd = tl.zeros([C, BK], dtype=tl.float32)  # gradient of e^{G_C - G} * K
    b_dw = tl.zeros([C, BK], dtype=tl.float32)
    b_dA = tl.zeros([C, C], dtype=tl.float32)  # gradient of A_qk
    b_dL = tl.zeros([C, C], dtype=tl.float32)  # minus the gradient of Diag(beta) A_kk
    b_dgc = tl.zeros([BK], dtype=tl.float32)
    b_db = tl.zeros([C], dtype=tl.float32)
    if USE_DELTA:
        b_M = _load_tri(M, start, o_t, m_t, o_t, i_h, H, C, False)
        b_b = tl.load(beta + (start + o_t) * H + i_h, mask=m_t, other=0.0).to(tl.float32)
    p_hk = h + (i_c * H + i_h) * K * V + o_k[:, None] * V
    p_dhk = dh + (i_c * H + i_h) * K * V + o_k[:, None] * V
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_kv = (o_k < K)[:, None] & (o_v < V)[None, :]
        p_tv = ((start + o_t[:, None]) * H + i_h) * V + o_v[None, :]
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        b_h = tl.load(p_hk + o_v[None, :], mask=m_kv, other=0.0)
        b_dh = tl.load(p_dhk + o_v[None, :], mask=m_kv, other=0.0)
        b_do = tl.load(do + p_tv, mask=m_tv, other=0.0)
        b_dvn = tl.load(dvn + p_tv, mask=m_tv, other=0.0)
        if USE_DELTA:
            b_vn = tl.load(vn + p_tv, mask=m_tv, other=0.0)
        else:
            b_vn = tl.load(v + p_tv, mask=m_tv, other=0.0)
        b_dq += tl.dot(b_do, tl.trans(b_h.to(b_do.dtype)))
        b_dkd += tl.dot(b_vn, tl.trans(b_dh.to(b_vn.dtype)))
        b_dA += tl.dot(b_do.to(b_vn.dtype), tl.trans(b_vn))
        b_dgc += tl.sum(b_h.to(tl.float32) * b_dh.to(tl.float32), axis=1)
        if USE_DELTA:
            b_dw -= tl.dot(b_dvn, tl.trans(b_h.to(tl.float32)))
            b_zu = tl.dot(tl.trans(b_M), b_dvn)  # (C, BV)
            b_v = tl.load(v + p_tv, mask=m_tv, other=0.0).to(tl.float32)
            b_u = tl.load(u + p_tv, mask=m_tv, other=0.0).to(tl.float32)
            tl.store(dv + p_tv, (b_zu * b_b[:, None]).to(dv.dtype.element_ty), mask=m_tv)
            b_db += tl.sum(b_zu * b_v, axis=1)
            b_dL += tl.dot(b_zu, tl.trans(b_u))
    if LATE_LOADS:
        b_q = _load_qk(q, rq, start + o_t, m_t, i_h, H, K, BK, L2NORM).to(tl.float32) * scale
        b_k = _load_qk(k, rk, start + o_t, m_t, i_h, H, K, BK, L2NORM).to(tl.float32)
        b_g = _load_gate(G, start + o_t, m_t, i_h, H, K, BK, GATE_CHANNEL)
        b_gc = _load_gate_row(G, start + valid - 1, i_h, H, K, BK, GATE_CHANNEL)
    b_eg = _exp_le0(b_g)
    b_dq = b_dq * b_eg
    b_dkd = b_dkd * _exp_le0(b_gc - b_g)
    b_dg = b_q * b_dq - b_k * b_dkd
    b_dgc = b_dgc[None, :] * _exp_le0(b_gc) + tl.sum(b_k * b_dkd, axis=0)[None, :]  # (1, BK)
    b_dk = b_dkd
    if USE_DELTA:
        b_zw = tl.dot(tl.trans(b_M), b_dw)  # (C, BK)
        b_ke = b_k * b_eg
        b_dk += b_zw * b_eg * b_b[:, None]
        b_dg += b_ke * b_zw * b_b[:, None]
        b_db += tl.sum(b_zw * b_ke, axis=1)
        b_w = _load_rows(w, start + o_t, m_t, i_h, H, K, BK).to(tl.float32)
        b_dL += tl.dot(b_zw, tl.trans(b_w))
        b_dL = tl.where(o_t[:, None] > o_t[None, :], -b_dL, 0.0)
        b_Akk = _load_tri(Akk, start, o_t, m_t, o_t, i_h, H, C, True)
        b_db += tl.sum(b_dL * b_Akk, axis=1)
        p_A = ((start + o_t[:, None]) * H + i_h) * C + o_t[None, :]
        tl.store(dAkk + p_A, b_dL * b_b[:, None], mask=m_t[:, None] & (o_t < C)[None, :])
        tl.store(dbeta + (start + o_t) * H + i_h, b_db, mask=m_t)
    p_A = ((start + o_t[:, None]) * H + i_h) * C + o_t[None, :]
    tl.store(
        dAqk + p_A, tl.where(o_t[:, None] >= o_t[None, :], b_dA, 0.0), mask=m_t[:, None] & (o_t < C)[None, :]
    )
    _store_rows(dq, b_dq, start + o_t, m_t, i_h, H, K, BK)
    _store_rows(dk, b_dk, start + o_t, m_t, i_h, H, K, BK)
    # the state decay e^{G_C} and the keys' e^{G_C - G} depend on G at the chunk's last token
    b_dg = tl.where(o_t[:, None] == valid - 1, b_dg + b_dgc, b_dg)
    if GATE_CHANNEL:
        _store_rows(dG, b_dg, start + o_t, m_t, i_h, H, K, BK)
    else:
        tl.store(dG + (start + o_t) * H + i_h, tl.sum(b_dg, axis=1), mask=m_t)


@triton.jit
def _diag_loop_bwd(b_dq, b_dkr, b_dkc, b_gs, r_s, m_s, q, k, G, dAqk, dAkk, rq, rk, scale, start, valid, i_s,
                   i_h, H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BC: tl.constexpr,
                   BG: tl.constexpr, USE_DELTA: tl.constexpr, L2NORM: tl.constexpr):  # fmt: skip
    """Diagonal block of the per-channel backward with exact pairwise decays (v2's only path); returns the three
    accumulators with the block's terms added."""
    # BG tokens at a time: (BC, BG, BK) tiles of exact pairwise decays, reduced over the group; the rows and
    # columns of dA come from memory (extracting them from the register tile takes a reduction each)
    for j0 in range(0, BC, BG):
        r_g = i_s * BC + j0 + tl.arange(0, BG)
        m_g = r_g < valid
        b_kg = _load_qk(k, rk, start + r_g, m_g, i_h, H, K, BK, L2NORM).to(tl.float32)  # (BG, BK)
        b_qg = _load_qk(q, rq, start + r_g, m_g, i_h, H, K, BK, L2NORM).to(tl.float32) * scale
        b_gg = _load_gate(G, start + r_g, m_g, i_h, H, K, BK, True)
        # the group as columns j <= i of the block's rows i
        b_e = tl.exp(tl.minimum(b_gs[:, None, :] - b_gg[None, :, :], 0.0))  # (BC, BG, BK)
        b_da = _load_tri(dAqk, start, r_s, m_s, r_g, i_h, H, C, False)  # (BC, BG)
        b_dq += tl.sum(b_da[:, :, None] * b_kg[None, :, :] * b_e, axis=1)
        if USE_DELTA:
            b_db = _load_tri(dAkk, start, r_s, m_s, r_g, i_h, H, C, True)
            b_dkr += tl.sum(b_db[:, :, None] * b_kg[None, :, :] * b_e, axis=1)
        # the group as rows i >= j of the block's columns j
        b_da = _load_tri(dAqk, start, r_g, m_g, r_s, i_h, H, C, False)  # (BG, BC)
        b_x = b_da[:, :, None] * b_qg[:, None, :]  # (BG, BC, BK)
        if USE_DELTA:
            b_db = _load_tri(dAkk, start, r_g, m_g, r_s, i_h, H, C, True)
            b_x += b_db[:, :, None] * b_kg[:, None, :]
        b_dkc += tl.sum(b_x * tl.exp(tl.minimum(b_gg[:, None, :] - b_gs[None, :, :], 0.0)), axis=0)
    return b_dq, b_dkr, b_dkc


@triton.jit
def intra_bwd_kernel(
    q, k, G, dAqk, dAkk, dq, dk, dqo, dko, dG, dg, cu_seqlens, chunk_indices, scale, T, rq, rk, g, A_log, dt_bias,
    dA_part,
    db_part, H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
    GATE_CHANNEL: tl.constexpr, USE_DELTA: tl.constexpr, IS_VARLEN: tl.constexpr, L2NORM: tl.constexpr,
    GATE_ACT: tl.constexpr, BG: tl.constexpr, FAST_DIAG: tl.constexpr,
):  # fmt: skip
    """Gradients through A_qk and A_kk, block by block from the chunk's end; dg = reverse cumsum of dG.

    With L2NORM, dq and dk are taken through the normalisation; with GATE_ACT, dg through the gate activation
    (to g_raw), and the chunk's partial sums of the gradients of A_log and dt_bias go to dA_part, db_part."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    start, valid = _chunk_of(i_c, cu_seqlens, chunk_indices, T, C, IS_VARLEN)
    NS: tl.constexpr = C // BC
    o_c = tl.arange(0, BC)
    o_k = tl.arange(0, BK)
    if GATE_CHANNEL:
        b_carry = tl.zeros([1, BK], dtype=tl.float32)
        b_dbias = tl.zeros([BK], dtype=tl.float32)
    else:
        b_carry = tl.zeros([1], dtype=tl.float32)
        b_dbias = tl.sum(tl.zeros([1], dtype=tl.float32), axis=0)
    b_dA = tl.sum(tl.zeros([1], dtype=tl.float32), axis=0)
    if GATE_ACT:
        b_a = tl.exp(tl.load(A_log + i_h).to(tl.float32))
    for i_r in range(0, NS):
        i_s = NS - 1 - i_r
        r_s = i_s * BC + o_c
        m_s = r_s < valid
        b_qs = _load_qk(q, rq, start + r_s, m_s, i_h, H, K, BK, L2NORM).to(tl.float32) * scale
        b_ks = _load_qk(k, rk, start + r_s, m_s, i_h, H, K, BK, L2NORM).to(tl.float32)
        b_gs = _load_gate(G, start + r_s, m_s, i_h, H, K, BK, GATE_CHANNEL)
        b_dq = tl.zeros([BC, BK], dtype=tl.float32)  # through A_qk, as a row
        b_dkr = tl.zeros([BC, BK], dtype=tl.float32)  # through A_kk, as a row
        b_dkc = tl.zeros([BC, BK], dtype=tl.float32)  # through A_qk and A_kk, as a column
        # blocks left of the diagonal: this block is the row side
        if GATE_CHANNEL:
            b_r = _load_gate_row(G, start + tl.minimum(i_s * BC, valid - 1), i_h, H, K, BK, GATE_CHANNEL)
        for i_j in range(0, i_s):
            r_j = i_j * BC + o_c
            b_kj = _load_qk(k, rk, start + r_j, r_j < valid, i_h, H, K, BK, L2NORM).to(tl.float32)
            b_gj = _load_gate(G, start + r_j, r_j < valid, i_h, H, K, BK, GATE_CHANNEL)
            b_da = _load_tri(dAqk, start, r_s, m_s, r_j, i_h, H, C, False)
            if GATE_CHANNEL:
                b_kjr = b_kj * _exp_le0(b_r - b_gj)
                b_dq += tl.dot(b_da, b_kjr) * _exp_le0(b_gs - b_r)
                if USE_DELTA:
                    b_db = _load_tri(dAkk, start, r_s, m_s, r_j, i_h, H, C, True)
                    b_dkr += tl.dot(b_db, b_kjr) * _exp_le0(b_gs - b_r)
            else:
                b_d = _exp_le0(b_gs - tl.trans(b_gj))
                b_dq += tl.dot(b_da * b_d, b_kj)
                if USE_DELTA:
                    b_db = _load_tri(dAkk, start, r_s, m_s, r_j, i_h, H, C, True)
                    b_dkr += tl.dot(b_db * b_d, b_kj)
        # blocks below the diagonal: this block is the column side
        for i_i in range(i_s + 1, NS):
            r_i = i_i * BC + o_c
            m_i = r_i < valid
            b_qi = _load_qk(q, rq, start + r_i, m_i, i_h, H, K, BK, L2NORM).to(tl.float32) * scale
            b_gi = _load_gate(G, start + r_i, m_i, i_h, H, K, BK, GATE_CHANNEL)
            b_da = _load_tri(dAqk, start, r_i, m_i, r_s, i_h, H, C, False)
            if GATE_CHANNEL:
                b_ri = _load_gate_row(G, start + tl.minimum(i_i * BC, valid - 1), i_h, H, K, BK, GATE_CHANNEL)
                b_di = _exp_le0(b_gi - b_ri)
                b_acc = tl.dot(tl.trans(b_da), b_qi * b_di)
                if USE_DELTA:
                    b_ki = _load_qk(k, rk, start + r_i, m_i, i_h, H, K, BK, L2NORM).to(tl.float32)
                    b_db = _load_tri(dAkk, start, r_i, m_i, r_s, i_h, H, C, True)
                    b_acc += tl.dot(tl.trans(b_db), b_ki * b_di)
                b_dkc += b_acc * _exp_le0(b_ri - b_gs)
            else:
                b_d = _exp_le0(b_gi - tl.trans(b_gs))  # (BC_i, BC_s)
                b_dkc += tl.dot(tl.trans(b_da * b_d), b_qi)
                if USE_DELTA:
                    b_ki = _load_qk(k, rk, start + r_i, m_i, i_h, H, K, BK, L2NORM).to(tl.float32)
                    b_db = _load_tri(dAkk, start, r_i, m_i, r_s, i_h, H, C, True)
                    b_dkc += tl.dot(tl.trans(b_db * b_d), b_ki)
        # the diagonal block
        if GATE_CHANNEL:
            if FAST_DIAG:
                b_up, b_dn, b_span = _diag_factors(G, b_gs, start, valid, m_s, i_s, i_h, H, K, BK, BC)
                if b_span <= DIAG_SPAN:
                    # as the blocks off the diagonal, about the block's midpoint gate (see `intra_kernel`)
                    b_kf = b_ks * b_dn
                    b_da = _load_tri(dAqk, start, r_s, m_s, r_s, i_h, H, C, False)
                    b_dq += tl.dot(b_da, b_kf) * b_up
                    b_acc = tl.dot(tl.trans(b_da), b_qs * b_up)
                    if USE_DELTA:
                        b_db = _load_tri(dAkk, start, r_s, m_s, r_s, i_h, H, C, True)
                        b_dkr += tl.dot(b_db, b_kf) * b_up
                        b_acc += tl.dot(tl.trans(b_db), b_ks * b_up)
                    b_dkc += b_acc * b_dn
                else:
                    b_dq, b_dkr, b_dkc = _diag_loop_bwd(
                        b_dq, b_dkr, b_dkc, b_gs, r_s, m_s, q, k, G, dAqk, dAkk, rq, rk, scale, start, valid, i_s,
                        i_h, H, K, C, BK, BC, BG, USE_DELTA, L2NORM,
                    )  # fmt: skip
            else:
                b_dq, b_dkr, b_dkc = _diag_loop_bwd(
                    b_dq, b_dkr, b_dkc, b_gs, r_s, m_s, q, k, G, dAqk, dAkk, rq, rk, scale, start, valid, i_s, i_h, H,
                    K, C, BK, BC, BG, USE_DELTA, L2NORM,
                )  # fmt: skip
        else:
            b_da = _load_tri(dAqk, start, r_s, m_s, r_s, i_h, H, C, False)
            b_d = _exp_le0(b_gs - tl.trans(b_gs))
            b_dq += tl.dot(b_da * b_d, b_ks)
            b_dkc += tl.dot(tl.trans(b_da * b_d), b_qs)
            if USE_DELTA:
                b_db = _load_tri(dAkk, start, r_s, m_s, r_s, i_h, H, C, True)
                b_dkr += tl.dot(b_db * b_d, b_ks)
                b_dkc += tl.dot(tl.trans(b_db * b_d), b_ks)
        # totals: partial gradients of the local kernel plus these
        b_dqt = (_load_rows(dq, start + r_s, m_s, i_h, H, K, BK) + b_dq) * scale
        b_dkt = _load_rows(dk, start + r_s, m_s, i_h, H, K, BK) + b_dkr + b_dkc
        if L2NORM:
            b_rq = tl.load(rq + (start + r_s) * H + i_h, mask=m_s, other=0.0)
            b_dqt = _l2norm_bwd(b_dqt, b_qs / scale, b_rq)
            b_rk = tl.load(rk + (start + r_s) * H + i_h, mask=m_s, other=0.0)
            b_dkt = _l2norm_bwd(b_dkt, b_ks, b_rk)
        # the totals go to dqo, dko: q's and k's dtype in v3 (no cast kernels after), v2 dq, dk themselves
        _store_rows(dqo, b_dqt, start + r_s, m_s, i_h, H, K, BK)
        _store_rows(dko, b_dkt, start + r_s, m_s, i_h, H, K, BK)
        b_dgs = b_qs * b_dq + b_ks * (b_dkr - b_dkc)
        # dg_s = sum over later tokens of the chunk of dG
        if GATE_CHANNEL:
            b_dgs += _load_rows(dG, start + r_s, m_s, i_h, H, K, BK)
            b_rev = tl.sum(b_dgs, axis=0)[None, :] - tl.cumsum(b_dgs, axis=0) + b_dgs + b_carry
            b_carry += tl.sum(b_dgs, axis=0)[None, :]
            if GATE_ACT:
                # g = -a softplus(x), x = g_raw + dt_bias: dg/dx = -a sigmoid(x), dg/dA_log = g
                b_x = _load_rows(g, start + r_s, m_s, i_h, H, K, BK).to(tl.float32)
                b_x += tl.load(dt_bias + i_h * K + o_k, mask=o_k < K, other=0.0).to(tl.float32)[None, :]
                b_rev = tl.where(m_s[:, None], b_rev, 0.0)
                b_dA += tl.sum(tl.sum(b_rev * -b_a * _softplus(b_x), axis=1), axis=0)
                b_rev = b_rev * -b_a * tl.sigmoid(b_x)
                b_dbias += tl.sum(b_rev, axis=0)
            _store_rows(dg, b_rev, start + r_s, m_s, i_h, H, K, BK)
        else:
            # a masked sum, not tl.cumsum: Triton 3.6 (with assertions) fails to lower the scan of a (BC, 1) tile
            # at 8 warps, more threads than elements
            b_d1 = tl.sum(b_dgs, axis=1) + tl.load(dG + (start + r_s) * H + i_h, mask=m_s, other=0.0)
            b_rev = tl.sum(tl.where(o_c[None, :] >= o_c[:, None], b_d1[None, :], 0.0), axis=1) + b_carry
            b_carry += tl.sum(b_d1, axis=0)
            if GATE_ACT:
                b_x = tl.load(g + (start + r_s) * H + i_h, mask=m_s, other=0.0).to(tl.float32)
                b_x += tl.load(dt_bias + i_h).to(tl.float32)
                b_rev = tl.where(m_s, b_rev, 0.0)
                b_dA += tl.sum(b_rev * -b_a * _softplus(b_x), axis=0)
                b_rev = b_rev * -b_a * tl.sigmoid(b_x)
                b_dbias += tl.sum(b_rev, axis=0)
            tl.store(dg + (start + r_s) * H + i_h, b_rev, mask=m_s)
    if GATE_ACT:
        tl.store(dA_part + i_c * H + i_h, b_dA)
        if GATE_CHANNEL:
            tl.store(db_part + (i_c * H + i_h) * K + o_k, b_dbias, mask=o_k < K)
        else:
            tl.store(db_part + i_c * H + i_h, b_dbias)


# --------------------------------------------------------------------------------------------- launchers


def _chunk_tables(cu_seqlens: Tensor | None, B: int, T: int, C: int):
    """(sequences, chunks, chunk_indices, chunk_offsets); the tables are None without cu_seqlens."""
    if cu_seqlens is None:
        return B, B * triton.cdiv(T, C), None, None
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    counts = (lengths + C - 1) // C
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    total = int(offsets[-1])
    seq = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    index = torch.arange(total, device=counts.device) - offsets[:-1][seq]
    chunk_indices = torch.stack([seq, index], dim=1).to(torch.int32).contiguous()
    return len(counts), total, chunk_indices, offsets.to(torch.int32).contiguous()


# Launch settings of every kernel but the cumsum, by kernel: 8 warps keep the (C, K) tiles in registers (4 spill).
# One setting for all was chosen on the H100 for the heavy kernels (state, output, local_bwd); kernels with smaller
# tiles (intra, whose tiles are (BC, K) = (16, 128) for a per-channel gate) may do better with fewer warps:
# scripts/gpu/tune_launch.py measures each kernel's settings on a GPU (`launch_settings` overrides them).
KERNELS = ("intra", "solve", "state", "output", "state_bwd", "local_bwd", "intra_bwd")
LAUNCH = {name: dict(num_warps=8, num_stages=2) for name in KERNELS}


@contextlib.contextmanager
def launch_settings(**settings: dict):
    """Launch the named kernels with other settings inside the block, e.g.
    `launch_settings(intra=dict(num_warps=4, num_stages=1))` (the maths is the same; the speed is not)."""
    unknown = set(settings) - set(KERNELS)
    if unknown:
        raise ValueError(
            f"unknown kernel(s) {', '.join(sorted(unknown))}; expected some of {', '.join(KERNELS)}"
        )
    previous = {name: LAUNCH[name] for name in settings}
    LAUNCH.update(settings)
    try:
        yield
    finally:
        LAUNCH.update(previous)


# Kernel versions, so that one benchmark run times before and after: "v2" (main until issue #18) and "v3"
# (per-channel diagonal blocks as matrix products, the forward intra grid by block, local_bwd's late loads).
# HARNESS_GDR_KERNELS picks the default; `kernels_version` switches it for a block of calls (the backward runs the
# version its forward ran).
VERSIONS = ("v2", "v3")
# v3 is the default since its GPU tests passed on an H200 with Triton 3.6 (2026-12-02, 35 of 35), where its
# forward+backward took 7.0 / 7.1 / 16.3 ms against v2's 8.6 / 8.7 / 19.5 for KDA at the benchmark's default shapes
# (results/kernels-h200/); `harness bench kernels` times both
VERSION = os.environ.get("HARNESS_GDR_KERNELS", "v3")


@contextlib.contextmanager
def kernels_version(version: str):
    """Run the Triton chunked kernels of `version` inside the block."""
    global VERSION
    if version not in VERSIONS:
        raise ValueError(f"unknown kernel version '{version}'; expected one of {', '.join(VERSIONS)}")
    previous, VERSION = VERSION, version
    try:
        yield
    finally:
        VERSION = previous


def _block_v(V: int) -> int:
    return min(64, max(16, triton.next_power_of_2(V)))


def _block_k(K: int) -> int:
    return max(16, triton.next_power_of_2(K))


def chunk_fwd(
    q,
    k,
    v,
    g,
    beta,
    scale,
    initial_state,
    output_final_state,
    cu_seqlens,
    gate,
    delta,
    C,
    l2norm,
    A_log,
    dt_bias,
    version="v3",
):
    """Forward over (B, T, H, D) inputs; returns o, the final state and what the backward needs.

    l2norm: q and k are normalised per token and head inside the kernels. A_log (H,) and dt_bias (H,) | (H, K)
    given: g is the gate's raw input, activated inside the first kernel (see `cumsum_kernel`)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    channel = gate == "channel"
    BK, BV, BC = _block_k(K), _block_v(V), (SUB_CHUNK if channel else C)
    N, NC, chunk_indices, chunk_offsets = _chunk_tables(cu_seqlens, B, T, C)
    is_varlen = cu_seqlens is not None
    dev = q.device
    G = _empty(g.shape, dtype=torch.float32, device=dev)
    common = dict(H=H, K=K, C=C, BK=BK, GATE_CHANNEL=channel, IS_VARLEN=is_varlen, L2NORM=l2norm)
    # inverse norms of q and k, (B, T, H) float32 each
    rq = _empty(q.shape[:3], dtype=torch.float32, device=dev) if l2norm else None
    rk = _empty(q.shape[:3], dtype=torch.float32, device=dev) if l2norm else None
    cumsum_kernel[(NC, H)](
        g, G, q, k, A_log, dt_bias, cu_seqlens, chunk_indices, T, rq, rk, GATE_ACT=A_log is not None, **common
    )
    Aqk = _empty(B, T, H, C, dtype=torch.float32, device=dev)
    Akk = _empty(Aqk.shape, dtype=torch.float32, device=dev) if delta else None
    NS = C // BC
    v3 = version == "v3"
    NB = NS * (NS + 1) // 2
    intra_kernel[(NB, NC, H) if v3 else (NC, NB, H)](
        q,
        k,
        G,
        Aqk,
        Akk,
        cu_seqlens,
        chunk_indices,
        scale,
        T,
        rq,
        rk,
        BC=BC,
        USE_DELTA=delta,
        FAST_DIAG=v3,
        **common,
        **LAUNCH["intra"],
    )
    M = w = u = kd = None
    if delta:
        M = _empty(Aqk.shape, dtype=torch.float32, device=dev)
        w = _empty(k.shape, dtype=k.dtype, device=dev)
        u = _empty(v.shape, dtype=v.dtype, device=dev)
        kd = _empty(k.shape, dtype=k.dtype, device=dev) if channel else None
        solve_kernel[(NC, H)](
            k,
            v,
            beta,
            G,
            Akk,
            M,
            w,
            u,
            kd,
            cu_seqlens,
            chunk_indices,
            T,
            rk,
            STORE_KD=kd is not None,
            V=V,
            BC=SUB_CHUNK,
            BV=BV,
            **common,
            **LAUNCH["solve"],
        )
    h = _empty(NC, H, K, V, dtype=q.dtype, device=dev)
    vn = _empty(v.shape, dtype=v.dtype, device=dev) if delta else v
    ht = _empty(N, H, K, V, dtype=torch.float32, device=dev) if output_final_state else None
    # the sequential kernels get narrower V-blocks: more programs in flight when B * H is small
    BVS = min(BV, 32)
    state_kernel[(triton.cdiv(V, BVS), N * H)](
        k, v, w, u, kd, G, h, vn, initial_state, ht, cu_seqlens, chunk_offsets, T, rk, V=V, BV=BVS,
        HAS_KD=kd is not None, USE_DELTA=delta, HAS_INITIAL_STATE=initial_state is not None, STORE_FINAL_STATE=output_final_state,
        **common, **LAUNCH["state"],
    )  # fmt: skip
    o = _empty(v.shape, dtype=v.dtype, device=dev)
    output_kernel[(triton.cdiv(V, BV), NC, H)](
        q, G, h, vn, Aqk, o, cu_seqlens, chunk_indices, scale, T, rq, V=V, BV=BV, **common, **LAUNCH["output"]
    )
    return o, ht, (G, Aqk, Akk, M, w, u, h, vn, rq, rk)


def chunk_bwd(
    q, k, v, g, beta, scale, initial_state, cu_seqlens, gate, delta, C, saved, do, dht, l2norm, A_log, dt_bias,
    version="v3",
):  # fmt: skip
    """Gradients of q, k, v, g, beta, the initial state, A_log and dt_bias (the last two None without them)."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    channel = gate == "channel"
    BK, BV, BC = _block_k(K), _block_v(V), (SUB_CHUNK if channel else C)
    N, NC, chunk_indices, chunk_offsets = _chunk_tables(cu_seqlens, B, T, C)
    G, Aqk, Akk, M, w, u, h, vn, rq, rk = saved
    dev = q.device
    common = dict(H=H, K=K, C=C, BK=BK, GATE_CHANNEL=channel, IS_VARLEN=cu_seqlens is not None, L2NORM=l2norm)
    do = do.contiguous()
    dh = _empty(NC, H, K, V, dtype=q.dtype, device=dev)
    dvn = _empty(B, T, H, V, dtype=torch.float32, device=dev)
    dh0 = _empty(N, H, K, V, dtype=torch.float32, device=dev) if initial_state is not None else None
    BVS = min(BV, 32)
    state_bwd_kernel[(triton.cdiv(V, BVS), N * H)](
        q, k, w, G, Aqk, do, dh, dvn, dht, dh0, cu_seqlens, chunk_offsets, scale, T, rq, rk, V=V, BV=BVS,
        USE_DELTA=delta, HAS_INITIAL_STATE=initial_state is not None, HAS_FINAL_GRAD=dht is not None,
        **common, **LAUNCH["state_bwd"],
    )  # fmt: skip
    dq = _empty(B, T, H, K, dtype=torch.float32, device=dev)
    dk = _empty(B, T, H, K, dtype=torch.float32, device=dev)
    dv = _empty(v.shape, dtype=v.dtype, device=dev) if delta else dvn.to(v.dtype)
    dG = _empty(G.shape, dtype=torch.float32, device=dev)
    dbeta = _empty(B, T, H, dtype=torch.float32, device=dev) if delta else None
    dAqk = _empty(Aqk.shape, dtype=torch.float32, device=dev)
    dAkk = _empty(Aqk.shape, dtype=torch.float32, device=dev) if delta else None
    local_bwd_kernel[(NC, H)](
        q, k, v, beta, G, Akk, M, w, u, h, vn, dh, dvn, do, dq, dk, dv, dG, dbeta, dAqk, dAkk,
        cu_seqlens, chunk_indices, scale, T, rq, rk, V=V, BV=BV, USE_DELTA=delta, LATE_LOADS=version == "v3",
        **common, **LAUNCH["local_bwd"],
    )  # fmt: skip
    dg = _empty(G.shape, dtype=torch.float32, device=dev)
    gate_act = A_log is not None
    # per-chunk partial sums of the gradients of A_log and dt_bias
    dA_part = _empty(NC, H, dtype=torch.float32, device=dev) if gate_act else None
    db_part = _empty(NC, *dt_bias.shape, dtype=torch.float32, device=dev) if gate_act else None
    # v3 writes the final dq, dk in q's and k's dtype (v2: float32, then two cast kernels)
    dqo = _empty(q.shape, dtype=q.dtype, device=dev) if version == "v3" else dq
    dko = _empty(k.shape, dtype=k.dtype, device=dev) if version == "v3" else dk
    # BG: tokens per step of the diagonal blocks; 2 and 4 spill registers at K = 128 (sm_90, Triton 3.6)
    intra_bwd_kernel[(NC, H)](
        q, k, G, dAqk, dAkk, dq, dk, dqo, dko, dG, dg, cu_seqlens, chunk_indices, scale, T, rq, rk, g, A_log, dt_bias,
        dA_part, db_part, BC=BC, USE_DELTA=delta, GATE_ACT=gate_act, BG=1, FAST_DIAG=version == "v3", **common,
        **LAUNCH["intra_bwd"],
    )  # fmt: skip
    dbeta = None if dbeta is None else dbeta.to(beta.dtype)
    if dh0 is not None:
        dh0 = dh0.to(initial_state.dtype)
    dA_log = ddt_bias = None
    if gate_act:
        dA_log, ddt_bias = dA_part.sum(0).to(A_log.dtype), db_part.sum(0).to(dt_bias.dtype)
    return dqo.to(q.dtype), dko.to(k.dtype), dv, dg.to(g.dtype), dbeta, dh0, dA_log, ddt_bias


# What the forward keeps for the backward, in chunk_fwd's order; some exist only with the delta rule or with the
# fused L2 norm (without the delta rule, V' is V itself and is not kept twice).
SAVED = ("G", "Aqk", "Akk", "M", "w", "u", "h", "vn", "rq", "rk")


def _kept(name: str, delta: bool, l2norm: bool) -> bool:
    if name in ("Akk", "M", "w", "u", "vn"):
        return delta
    if name in ("rq", "rk"):
        return l2norm
    return True


class ChunkGatedDeltaRule(torch.autograd.Function):
    """The chunked op with its gradients, in the form that torch.func needs (a forward without ctx, then
    setup_context), so that it also runs under `torch.vmap`: several models of one architecture stacked and trained
    as one (harness/run/grid_step.py) call it once for all of them. Its vmap rule folds the stacked models into the
    heads, which every kernel treats independently, so the kernels launch once with G x H heads instead of G times.

    The forward's intermediates for the backward leave it as extra outputs (setup_context sees only inputs and
    outputs), marked non-differentiable; `chunk_gated_delta_rule_triton` returns (o, final state) alone."""

    @staticmethod
    def forward(
        q, k, v, g, beta, initial_state, A_log, dt_bias, scale, gate, delta, output_final_state, cu_seqlens, C,
        l2norm,
    ):  # fmt: skip
        o, ht, saved = chunk_fwd(
            q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens, gate, delta, C, l2norm, A_log,
            dt_bias, VERSION,
        )  # fmt: skip
        kept = [x for name, x in zip(SAVED, saved, strict=True) if _kept(name, delta, l2norm)]
        return o, ht, *kept

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, g, beta, initial_state, A_log, dt_bias, scale, gate, delta, _, cu_seqlens, C, l2norm = inputs
        kept = output[2:]
        ctx.mark_non_differentiable(*kept)
        # the kept outputs are never used, so their gradients are never made (zeros of their size, otherwise)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(q, k, v, g, beta, initial_state, cu_seqlens, A_log, dt_bias, *kept)
        ctx.config = (scale, gate, delta, C, l2norm, VERSION)

    @staticmethod
    def backward(ctx, do, dht, *_):
        q, k, v, g, beta, initial_state, cu_seqlens, A_log, dt_bias, *kept = ctx.saved_tensors
        scale, gate, delta, C, l2norm, version = ctx.config
        present = iter(kept)
        saved = [next(present) if _kept(name, delta, l2norm) else None for name in SAVED]
        if not delta:
            saved[SAVED.index("vn")] = v
        if do is None:  # only the final state was used
            do = torch.zeros(v.shape, dtype=v.dtype, device=v.device)
        grads = chunk_bwd(
            q, k, v, g, beta, scale, initial_state, cu_seqlens, gate, delta, C, saved, do, dht, l2norm, A_log,
            dt_bias, version,
        )  # fmt: skip
        dq, dk, dv, dg, dbeta, dh0, dA_log, ddt_bias = grads
        return dq, dk, dv, dg, dbeta, dh0, dA_log, ddt_bias, *[None] * 7

    @staticmethod
    def vmap(
        info, in_dims, q, k, v, g, beta, initial_state, A_log, dt_bias, scale, gate, delta, output_final_state,
        cu_seqlens, C, l2norm,
    ):  # fmt: skip
        """G stacked models as G x H heads: per-token inputs (B, T, H, ...) -> (B, T, G*H, ...), the initial state
        (N, H, K, V) -> (N, G*H, K, V), A_log (H,) -> (G*H,), dt_bias (H,) | (H*K,) | (H, K) -> (G*H*...); the
        outputs are unfolded back. An input without the stacked dimension is shared by all G models."""
        G = info.batch_size
        if in_dims[12] is not None:
            raise ValueError("cu_seqlens must be the same for every stacked model")

        def fold(x, dim, head_axis):
            if x is None:
                return None
            if dim is None:
                x = x.unsqueeze(head_axis).expand(*x.shape[:head_axis], G, *x.shape[head_axis:])
            else:
                x = x.movedim(dim, head_axis)
            return x.flatten(head_axis, head_axis + 1).contiguous()

        def fold_params(x, dim):  # per head, head-major: G models' in a row are G x H heads'
            if x is None:
                return None
            return (x.expand(G, *x.shape) if dim is None else x.movedim(dim, 0)).reshape(-1).contiguous()

        q, k, v, g, beta = (fold(x, d, 2) for x, d in zip((q, k, v, g, beta), in_dims[:5], strict=True))
        initial_state = fold(initial_state, in_dims[5], 1)
        A_log, dt_bias = fold_params(A_log, in_dims[6]), fold_params(dt_bias, in_dims[7])
        o, ht, *kept = ChunkGatedDeltaRule.apply(
            q, k, v, g, beta, initial_state, A_log, dt_bias, scale, gate, delta, output_final_state, cu_seqlens,
            C, l2norm,
        )  # fmt: skip
        o = o.unflatten(2, (G, -1))
        ht = None if ht is None else ht.unflatten(1, (G, -1))
        return (o, ht, *kept), (2, None if ht is None else 1, *[None] * len(kept))


def chunk_gated_delta_rule_triton(
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
    chunk_size: int = 64,
    use_qk_l2norm: bool = False,
    A_log: Tensor | None = None,
    dt_bias: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Same contract as `kernels.gated_delta_rule.gated_delta_rule`: o in v's dtype, the final state in float32.

    chunk_size must be 16, 32 or 64; K up to 256 and any V (V is split into blocks of 64).
    """
    if chunk_size not in (16, 32, 64):
        raise ValueError(f"the Triton path takes chunk_size 16, 32 or 64, got {chunk_size}")
    if VERSION not in VERSIONS:
        raise ValueError(f"HARNESS_GDR_KERNELS='{VERSION}': expected one of {', '.join(VERSIONS)}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, k, v, g = (x.contiguous() for x in (q, k, v, g))
    beta = None if beta is None else beta.contiguous()
    initial_state = None if initial_state is None else initial_state.contiguous()
    if A_log is not None:
        A_log = A_log.contiguous()
        dt_bias = A_log.new_zeros(g.shape[2:]) if dt_bias is None else dt_bias.contiguous()
    o, ht, *_ = ChunkGatedDeltaRule.apply(
        q, k, v, g, beta, initial_state, A_log, dt_bias, scale, gate, delta, output_final_state, cu_seqlens,
        chunk_size, use_qk_l2norm,
    )  # fmt: skip
    return o, ht
