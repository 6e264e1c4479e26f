"""The chunked gated delta rule family behind one public op.

One function serves four mixers through two switches:

| mixer          | gate      | delta |
|----------------|-----------|-------|
| KDA            | "channel" | True  |
| Gated DeltaNet | "scalar"  | True  |
| Mamba2 (SSD)   | "scalar"  | False |
| GLA            | "channel" | False |

Implementations: "torch" (chunked PyTorch, `chunk_torch.py`, runs anywhere), "reference" (the token-by-token
recurrence, `ref.py`, slow; the specification) and "triton" (fused GPU kernels: `chunk_triton.py` for whole
sequences, forward and backward, and `recurrent_triton.py` for decoding a few tokens against a cached state).
"auto" is "triton" on CUDA tensors when Triton imports, else "torch"; `resolve_impl` tells which, so that results
can record it. Nothing switches silently: "triton" on CPU tensors runs only under TRITON_INTERPRET=1 (tests).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..impl import IMPLS, resolve_impl
from .chunk_torch import chunk_gated_delta_rule_torch
from .input_options import activate_gate, apply_input_options
from .ref import gated_delta_rule_ref

GATES = ("scalar", "channel")
# With impl="triton", calls of at most this many tokens that need no gradient (decoding against a cached
# state) take the recurrent kernel: one launch, every input read once.
DECODE_MAX_TOKENS = 16

__all__ = [
    "gated_delta_rule",
    "gated_delta_rule_ref",
    "apply_input_options",
    "activate_gate",
    "chunk_gated_delta_rule_torch",
    "resolve_impl",
    "IMPLS",
    "DECODE_MAX_TOKENS",
]


def gated_delta_rule(
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
    impl: str = "auto",
    chunk_size: int = 64,
    use_qk_l2norm: bool = False,
    A_log: Tensor | None = None,
    dt_bias: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Gated delta rule over whole sequences (see `ref.py` for the recurrence).

    Args:
        q, k: (B, T, H, K) queries and keys (with delta=True, k must be L2-normalised, here or by use_qk_l2norm:
            the rule assumes |k| <= 1 times beta < 2 for stability). v: (B, T, H, V).
        g: log forget gate (<= 0): (B, T, H) for gate="scalar", (B, T, H, K) for gate="channel"; with A_log, the
            gate's raw input instead (see below).
        beta: (B, T, H) write strength of the delta rule; required iff delta=True.
        scale: query scale, default K ** -0.5.
        initial_state: (N, H, K, V) state before the first token; N = B, or the number of sequences with cu_seqlens.
        output_final_state: also return the (N, H, K, V) float32 state after the last token.
        cu_seqlens: (N + 1,) int offsets of N sequences packed into one row (B must be 1).
        impl: "auto", "torch", "triton" or "reference" (see `resolve_impl`). With "triton", a call of at most
            DECODE_MAX_TOKENS tokens that needs no gradient runs the recurrent kernel, otherwise the chunked ones.
        chunk_size: tokens per chunk of the chunked implementations (16, 32 or 64 for "triton").
        use_qk_l2norm: L2-normalise q and k per token and head (eps 1e-6) inside the op, with gradients.
        A_log: (H,); given, the op computes the log gate itself, g = -exp(A_log) * softplus(g + dt_bias) (KDA,
            GDN), and returns gradients for g (raw), A_log and dt_bias. dt_bias: (H,) for gate="scalar",
            (H * K,) or (H, K) for "channel"; None = 0. A raw gate of -inf gives g = 0 (a padded token).
        The Triton chunked kernels fuse both options into their loads (no normalised copies of q and k, no
        activated gate in memory); the other paths run `apply_input_options` first: the same math, unfused.
    Returns:
        (o, final_state): o (B, T, H, V) in v's dtype; final_state or None.
    """
    _check_inputs(q, k, v, g, beta, gate, delta, initial_state, cu_seqlens, A_log, dt_bias)
    options = dict(use_qk_l2norm=use_qk_l2norm, A_log=A_log, dt_bias=dt_bias)
    kwargs = dict(
        gate=gate,
        delta=delta,
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
        cu_seqlens=cu_seqlens,
    )
    impl = resolve_impl(impl, q.device)
    needs_grad = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (q, k, v, g, beta, initial_state, A_log, dt_bias)
    )
    chunked_triton = impl == "triton" and (q.shape[1] > DECODE_MAX_TOKENS or needs_grad)
    if chunked_triton:
        # Triton is optional (CPU machines run the PyTorch path): its kernels are imported when first used
        from .chunk_triton import chunk_gated_delta_rule_triton

        return chunk_gated_delta_rule_triton(q, k, v, g, beta, chunk_size=chunk_size, **options, **kwargs)
    q, k, g = apply_input_options(q, k, g, **options)
    if impl == "reference":
        return gated_delta_rule_ref(q, k, v, g, beta, dtype=torch.float32, **kwargs)
    if impl == "torch":
        return chunk_gated_delta_rule_torch(q, k, v, g, beta, chunk_size=chunk_size, **kwargs)
    from .recurrent_triton import recurrent_gated_delta_rule_triton  # optional, as above

    return recurrent_gated_delta_rule_triton(q, k, v, g, beta, **kwargs)


def _check_inputs(q, k, v, g, beta, gate, delta, initial_state, cu_seqlens, A_log, dt_bias) -> None:
    if gate not in GATES:
        raise ValueError(f"gate must be one of {GATES}, got '{gate}'")
    B, T, H, K = q.shape
    if k.shape != q.shape or v.shape[:3] != (B, T, H):
        raise ValueError(f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    expected_g = (B, T, H) if gate == "scalar" else (B, T, H, K)
    if tuple(g.shape) != expected_g:
        raise ValueError(f"gate='{gate}' needs g of shape {expected_g}, got {tuple(g.shape)}")
    if delta and (beta is None or tuple(beta.shape) != (B, T, H)):
        raise ValueError(f"delta=True needs beta of shape {(B, T, H)}")
    if not delta and beta is not None:
        raise ValueError("delta=False takes no beta (scale v instead)")
    if cu_seqlens is not None and B != 1:
        raise ValueError(f"cu_seqlens packs sequences into one row: B must be 1, got {B}")
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    if initial_state is not None and tuple(initial_state.shape) != (N, H, K, v.shape[-1]):
        raise ValueError(f"initial_state must be {(N, H, K, v.shape[-1])}, got {tuple(initial_state.shape)}")
    if A_log is None and dt_bias is not None:
        raise ValueError("dt_bias is the gate activation's bias: it needs A_log")
    if A_log is not None and tuple(A_log.shape) != (H,):
        raise ValueError(f"A_log must be ({H},) (one per head), got {tuple(A_log.shape)}")
    if dt_bias is not None and dt_bias.numel() != math.prod(expected_g[2:]):
        raise ValueError(f"dt_bias must have {math.prod(expected_g[2:])} elements for gate='{gate}'")
