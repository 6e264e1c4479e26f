"""Chunked gated delta rule in plain PyTorch (docs/reference.md §2): runs anywhere, differentiable by autograd.

A sequence is cut into chunks of C tokens. Inside a chunk everything is a few matrix products; only the
(K, V) state passes from one chunk to the next, so the Python loop runs T/C times, not T times.

For a chunk with incoming state S, cumulative log-decay G_i = sum_{s<=i} g_s (per head or per channel),
and pairwise decays D_ij = exp(G_i - G_j) for j <= i (0 above the diagonal):

    A_kk = (K K^T) * D,  A_qk = (Q K^T) * D                    (per channel: sum_c k_ic k_jc D_ijc)
    delta rule:  (I + StrictTril(Diag(b) A_kk)) [U | W] = Diag(b) [V | exp(G) * K]     (the UT transform)
    no delta:    U = V, W = 0
    pseudo-values  U' = U - W S
    output         O = (exp(G) * Q) S + Tril(A_qk) U'
    next state     S' = exp(G_C) * S + (exp(G_C - G) * K)^T U'

Pairwise decays are formed from differences G_i - G_j <= 0, never from exp(G_i) / exp(G_j), so a strong
per-channel decay cannot overflow however long the chunk is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Sub-chunk of the per-channel gate's exact pairwise decays (see channel_decayed_scores); measured fastest on CPU.
SUB_CHUNK = 8


def chunk_gated_delta_rule_torch(
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
) -> tuple[Tensor, Tensor | None]:
    """Same contract as `gated_delta_rule_ref`; computes in float32 (float64 for float64 inputs)."""
    if cu_seqlens is None:
        return _chunk_dense(
            q, k, v, g, beta, gate, delta, scale, initial_state, output_final_state, chunk_size
        )
    offsets = cu_seqlens.tolist()
    lengths = [end - start for start, end in zip(offsets[:-1], offsets[1:], strict=True)]
    if len(lengths) * max(lengths) <= 2 * offsets[-1]:
        return _padded_varlen(
            q, k, v, g, beta, gate, delta, scale, initial_state, output_final_state, chunk_size, cu_seqlens
        )
    # Lengths too uneven to pad into one batch: run the sequences one after another.
    outputs, finals = [], []
    for n in range(len(offsets) - 1):
        piece = slice(offsets[n], offsets[n + 1])
        o, s = _chunk_dense(
            q[:, piece],
            k[:, piece],
            v[:, piece],
            g[:, piece],
            None if beta is None else beta[:, piece],
            gate,
            delta,
            scale,
            None if initial_state is None else initial_state[n : n + 1],
            output_final_state,
            chunk_size,
        )
        outputs.append(o)
        finals.append(s)
    final_state = torch.cat(finals) if output_final_state else None
    return torch.cat(outputs, dim=1), final_state


def _padded_varlen(q, k, v, g, beta, gate, delta, scale, initial_state, output_final_state, C, cu_seqlens):
    """The sequences of a packed row as one batch, each padded at its end to the longest: a pad token has
    k = v = beta = 0 and gate 0 (no decay), so it leaves the state as it is, and the outputs and final states of
    the real tokens are exact."""
    starts, lengths = cu_seqlens[:-1].long(), (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    steps = torch.arange(int(lengths.max()), device=q.device)
    valid = steps[None] < lengths[:, None]  # (N, Lmax)
    index = (starts[:, None] + steps[None]).clamp(max=q.shape[1] - 1)

    def pad(x):
        if x is None:
            return None
        padded = x[0, index]  # (N, Lmax, ...)
        return padded * valid.view(*valid.shape, *[1] * (padded.dim() - 2)).to(padded.dtype)

    o, final_state = _chunk_dense(
        pad(q), pad(k), pad(v), pad(g), pad(beta), gate, delta, scale, initial_state, output_final_state, C
    )
    return o[valid][None], final_state


def _chunk_dense(q, k, v, g, beta, gate, delta, scale, initial_state, output_final_state, C):
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K**-0.5 if scale is None else scale
    out_dtype = v.dtype
    # float32 arithmetic whatever the input (bf16 state updates drift); float64 stays float64 for tests.
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    # Pad to whole chunks with tokens that change nothing: k = 0, beta = 0 and g = 0 (no decay).
    pad = (-T) % C
    N = (T + pad) // C

    def chunks(x: Tensor) -> Tensor:
        # (B, T, H, ...) -> (B, H, N, C, ...)
        x = x.to(compute)
        x = F.pad(x, (0, 0) * (x.dim() - 2) + (0, pad)) if pad else x
        x = x.reshape(B, N, C, H, *x.shape[3:])
        return x.permute(0, 3, 1, 2, 4) if x.dim() == 5 else x.permute(0, 3, 1, 2)

    q, k, v, g = chunks(q) * scale, chunks(k), chunks(v), chunks(g)  # (B, H, N, C, K|V) ; g (B, H, N, C[, K])
    G = g.cumsum(dim=3)
    lower = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    if gate == "scalar":
        diff = G[..., :, None] - G[..., None, :]  # (B, H, N, C, C)
        decay = diff.masked_fill(~lower, float("-inf")).exp()
        A_qk = (q @ k.transpose(-1, -2)) * decay
        A_kk = (k @ k.transpose(-1, -2)) * decay
        G_last = G[..., -1]  # (B, H, N)
        q_in = q * G.exp()[..., None]
        k_gated = k * G.exp()[..., None]
        k_out = k * (G_last[..., None] - G).exp()[..., None]
        state_decay = G_last.exp()[..., None, None]  # (B, H, N, 1, 1)
    else:
        A_qk, A_kk = channel_decayed_scores(torch.stack([q, k]), k, G, sub_chunk=SUB_CHUNK).unbind(0)
        G_last = G[..., -1, :]  # (B, H, N, K)
        q_in = q * G.exp()
        k_gated = k * G.exp()
        k_out = k * (G_last[..., None, :] - G).exp()
        state_decay = G_last.exp()[..., None]  # (B, H, N, K, 1)

    if delta:
        b = chunks(beta)[..., None]  # (B, H, N, C, 1)
        L = torch.eye(C, dtype=compute, device=q.device) + (b * A_kk).tril(-1)
        UW = torch.linalg.solve_triangular(
            L, b * torch.cat([v, k_gated], dim=-1), upper=False, unitriangular=True
        )
        u, w = UW[..., :V], UW[..., V:]
    else:
        u, w = v, None

    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.to(compute)
    outputs = []
    for n in range(N):
        u_n = u[:, :, n] if w is None else u[:, :, n] - w[:, :, n] @ S  # (B, H, C, V)
        outputs.append(q_in[:, :, n] @ S + A_qk[:, :, n] @ u_n)
        S = state_decay[:, :, n] * S + k_out[:, :, n].transpose(-1, -2) @ u_n
    o = torch.stack(outputs, dim=2)  # (B, H, N, C, V)
    o = o.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, V)[:, :T]
    return o.to(out_dtype), (S if output_final_state else None)


def channel_decayed_scores(a: Tensor, b: Tensor, G: Tensor, sub_chunk: int) -> Tensor:
    """scores_ij = sum_c a_ic b_jc exp(G_ic - G_jc) for j <= i, else 0; b, G: (..., C, K); a: (S, ..., C, K)
    (S left operands sharing b and G, e.g. q and k) -> (S, ..., C, C).

    Forming the (C, C, K) tensor of pairwise decays costs C*K per token. Instead the chunk is cut into
    sub-chunks of c tokens: pairs within a sub-chunk use exact pairwise decays, (c, c, K) each; pairs across
    sub-chunks go through one matrix product per sub-chunk I, with both sides decayed relative to the
    cumulative gate R_I just before sub-chunk I: a_i exp(G_i - R_I) and b_j exp(R_I - G_j), both <= 1 because
    G only decreases. No factor can overflow.
    """
    *lead, C, K = b.shape
    c = sub_chunk if C % sub_chunk == 0 else C
    n = C // c
    start = torch.arange(n, device=a.device) * c  # first token of each sub-chunk
    # R_I = G at token start_I - 1 (0 before the chunk): (..., n, 1, K)
    G_padded = torch.cat([torch.zeros_like(G[..., :1, :]), G], dim=-2)
    R = G_padded[..., start, :][..., None, :]
    a_blocks = a.unflatten(-2, (n, c))  # (..., n, c, K)
    G_blocks = G.unflatten(-2, (n, c))
    a_rel = a_blocks * (G_blocks - R).exp()
    # b_j exp(R_I - G_j) for tokens before sub-chunk I; later tokens are masked before the exp
    before = torch.arange(C, device=a.device)[None, :] < start[:, None]  # (n, C)
    exponent = (R - G[..., None, :, :]).masked_fill(~before[..., None], float("-inf"))  # (..., n, C, K)
    b_rel = b[..., None, :, :] * exponent.exp()
    across = a_rel @ b_rel.transpose(-1, -2)  # (..., n, c, C)

    lower = torch.ones(c, c, dtype=torch.bool, device=a.device).tril()
    diff = G_blocks[..., :, None, :] - G_blocks[..., None, :, :]  # (..., n, c, c, K)
    decay = diff.masked_fill(~lower[..., None], float("-inf")).exp()
    b_decayed = b.unflatten(-2, (n, c))[..., None, :, :] * decay  # (..., n, c, c, K)
    within = (b_decayed @ a_blocks[..., :, :, None]).squeeze(-1)  # (S, ..., n, c, c)
    within = torch.einsum("...iab,ij->...iajb", within, torch.eye(n, dtype=a.dtype, device=a.device))
    return (across.unflatten(-1, (n, c)) + within).reshape(a.shape[0], *lead, C, C)
