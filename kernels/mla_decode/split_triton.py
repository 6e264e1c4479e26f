"""MLA decode attention in Triton, split over the context (flash-decoding) for small batches.

A decode step of one sequence has one query per head and a long cache: one program per sequence would leave most
of the GPU idle. The context is cut into splits instead, a program per (split, sequence):

    1. split_kernel     for every head at once (heads are the rows of the matrix products), walk the split's keys
                        in blocks of BS: scores = q_latent c^T (+ q_rope r^T), an online softmax, acc += p c.
                        Writes the split's normalised output and its log-sum-exp (-inf for an empty split).
    2. combine_kernel   per (sequence, head): weights exp(lse_split - lse), the weighted sum of the splits.

Every cached latent is loaded once per step, for all heads together: it is the key of the scores and the value
of the output, so the bytes moved are the cache once (the memory floor). The grid depends only on the buffer's
length, not on how much of it is filled (each program reads its range from `starts`/`ends`), so one launch can be
captured in a CUDA graph and replayed as the cache grows. Plain pointer arithmetic (no block pointers), so the
same code runs on Triton 3.6 and later and in the interpreter.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK_KEYS = 32  # BS: keys per block of the inner loop
# Tests set this: the partial buffers start as NaN, so that an element no kernel wrote shows in the output.
POISON = False


def _empty(*shape, dtype, device) -> Tensor:
    x = torch.empty(*shape, dtype=dtype, device=device)
    return x.fill_(float("nan")) if POISON else x


@triton.jit
def split_kernel(
    q_latent, q_rope, latent, rope_key, starts, ends, o_part, lse_part, scale, S, split_len, NS,
    H: tl.constexpr, R: tl.constexpr, P: tl.constexpr, BH: tl.constexpr, BR: tl.constexpr, BP: tl.constexpr,
    BS: tl.constexpr, HAS_ROPE: tl.constexpr,
):  # fmt: skip
    i_split, i_b = tl.program_id(0), tl.program_id(1)
    start = tl.load(starts + i_b).to(tl.int32)
    end = tl.load(ends + i_b).to(tl.int32)
    lo = tl.maximum(start, i_split * split_len)
    hi = tl.minimum(end, (i_split + 1) * split_len)
    o_h, o_r, o_p = tl.arange(0, BH), tl.arange(0, BR), tl.arange(0, BP)
    m_h, m_r, m_p = o_h < H, o_r < R, o_p < P
    # the queries of every head, (BH, BR) and (BH, BP); rows past H are zeros and never stored
    b_q = tl.load(
        q_latent + (i_b * H + o_h[:, None]) * R + o_r[None, :], mask=m_h[:, None] & m_r[None, :], other=0.0
    )
    if HAS_ROPE:
        b_qr = tl.load(
            q_rope + (i_b * H + o_h[:, None]) * P + o_p[None, :], mask=m_h[:, None] & m_p[None, :], other=0.0
        )
    b_m = tl.full([BH], float("-inf"), dtype=tl.float32)  # running max of the scores
    b_l = tl.zeros([BH], dtype=tl.float32)  # running sum of exp(score - max)
    b_acc = tl.zeros([BH, BR], dtype=tl.float32)
    for s0 in range(lo, hi, BS):
        o_s = s0 + tl.arange(0, BS)
        m_s = o_s < hi
        row = (i_b * S + o_s).to(tl.int64)  # the cache may be large: 64-bit offsets
        b_c = tl.load(latent + row[:, None] * R + o_r[None, :], mask=m_s[:, None] & m_r[None, :], other=0.0)
        b_s = tl.dot(b_q.to(b_c.dtype), tl.trans(b_c))  # (BH, BS)
        if HAS_ROPE:
            b_k = tl.load(
                rope_key + row[:, None] * P + o_p[None, :], mask=m_s[:, None] & m_p[None, :], other=0.0
            )
            b_s += tl.dot(b_qr.to(b_k.dtype), tl.trans(b_k))
        b_s = tl.where(m_s[None, :], b_s * scale, float("-inf"))
        # a block has at least one key (s0 < hi), so the new max is finite and exp(old - new) is 0 or a ratio
        b_m_new = tl.maximum(b_m, tl.max(b_s, axis=1))
        alpha = tl.exp(b_m - b_m_new)
        b_p = tl.exp(b_s - b_m_new[:, None])
        b_l = b_l * alpha + tl.sum(b_p, axis=1)
        b_acc = b_acc * alpha[:, None] + tl.dot(b_p.to(b_c.dtype), b_c)
        b_m = b_m_new
    seen = b_l > 0
    b_o = b_acc / tl.where(seen, b_l, 1.0)[:, None]
    b_lse = tl.where(seen, b_m + tl.log(tl.where(seen, b_l, 1.0)), float("-inf"))
    part = i_b * NS + i_split
    tl.store(o_part + (part * H + o_h[:, None]) * R + o_r[None, :], b_o, mask=m_h[:, None] & m_r[None, :])
    tl.store(lse_part + part * H + o_h, b_lse, mask=m_h)


@triton.jit
def combine_kernel(
    o_part, lse_part, o, NS, H: tl.constexpr, R: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr
):  # fmt: skip
    # one program per (sequence, head, BR columns of the latent): at batch 1 a grid of (sequence, head) alone was
    # 8 programs on a GPU of 132 multiprocessors, each walking the whole latent width (50 us per call on an H200)
    i_b, i_h, i_r = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_n = tl.arange(0, BN)
    m_n = o_n < NS
    b_lse = tl.load(lse_part + (i_b * NS + o_n) * H + i_h, mask=m_n, other=float("-inf"))
    # at least one split saw a key (every sequence has one), so the max is finite
    b_w = tl.exp(b_lse - tl.max(b_lse, axis=0))
    b_w = b_w / tl.sum(b_w, axis=0)  # (BN,) the share of each split in the softmax
    o_r = i_r * BR + tl.arange(0, BR)
    m_r = o_r < R
    b_o = tl.load(
        o_part + ((i_b * NS + o_n[:, None]) * H + i_h) * R + o_r[None, :],
        mask=m_n[:, None] & m_r[None, :],
        other=0.0,
    )
    b_out = tl.sum(b_w[:, None] * b_o, axis=0)
    tl.store(o + (i_b * H + i_h) * R + o_r, b_out.to(o.dtype.element_ty), mask=m_r)


MAX_SPLITS = 256  # the combine kernel holds one number per split in registers


@functools.lru_cache(maxsize=8)
def _programs_wanted(device: torch.device) -> int:
    """Programs that fill the device: two per multiprocessor on CUDA; a handful in the interpreter."""
    if device.type != "cuda":
        return 4
    return 2 * torch.cuda.get_device_properties(device).multi_processor_count


def split_length(batch: int, length: int, device: torch.device, split_len: int | None = None) -> int:
    """Keys per split for a cache buffer of `length` keys: enough splits to fill the device, each a multiple of
    BLOCK_KEYS. Depends only on shapes (never on what is filled), so a captured graph keeps one launch grid."""
    if split_len is None:
        splits = min(triton.cdiv(_programs_wanted(device), batch), triton.cdiv(length, BLOCK_KEYS))
        split_len = triton.cdiv(length, max(1, splits))
    # at most MAX_SPLITS splits, each a whole number of key blocks
    split_len = max(split_len, triton.cdiv(length, MAX_SPLITS))
    return triton.cdiv(split_len, BLOCK_KEYS) * BLOCK_KEYS


def mla_decode_triton(
    q_latent: Tensor,
    latent: Tensor,
    q_rope: Tensor | None,
    rope_key: Tensor | None,
    starts: Tensor,
    ends: Tensor,
    scale: float,
    split_len: int | None = None,
) -> Tensor:  # (B, H, R) in latent's dtype
    """Same contract as `mla_decode_ref`; no gradients."""
    B, H, R = q_latent.shape
    S = latent.shape[1]
    P = 0 if q_rope is None else q_rope.shape[-1]
    split_len = split_length(B, S, latent.device, split_len)
    NS = triton.cdiv(S, split_len)
    q_latent, latent = q_latent.contiguous(), latent.contiguous()
    starts, ends = (
        starts.contiguous(),
        ends.contiguous(),
    )  # one number per row (an expanded scalar has stride 0)
    if P:
        q_rope, rope_key = q_rope.contiguous(), rope_key.contiguous()
    o_part = _empty(B, NS, H, R, dtype=torch.float32, device=latent.device)
    lse_part = _empty(B, NS, H, dtype=torch.float32, device=latent.device)
    BH = max(16, triton.next_power_of_2(H))  # matrix products need 16 rows
    BR = max(16, triton.next_power_of_2(R))
    BP = max(16, triton.next_power_of_2(max(P, 1)))
    split_kernel[(NS, B)](
        q_latent, q_rope, latent, rope_key, starts, ends, o_part, lse_part, scale, S, split_len, NS,
        H=H, R=R, P=P, BH=BH, BR=BR, BP=BP, BS=BLOCK_KEYS, HAS_ROPE=P > 0, num_warps=8 if BR >= 256 else 4,
    )  # fmt: skip
    o = torch.empty(B, H, R, dtype=latent.dtype, device=latent.device)
    BRC = min(32, BR)  # latent columns per combine program
    combine_kernel[(B, H, triton.cdiv(R, BRC))](
        o_part, lse_part, o, NS, H=H, R=R, BN=max(16, triton.next_power_of_2(NS)), BR=BRC
    )
    return o
