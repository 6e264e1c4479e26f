"""Building blocks shared by several mixers and the backbone: RMSNorm, the causal short convolution, the
initialisation of the Mamba-style forget gate, the output gates' activations, and the views of packed documents
(PackedDocuments)."""

from __future__ import annotations

from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Activations of a mixer's output gate, by config name (GDN's and Mamba2's `output_gate`)
OUTPUT_GATES = {"swish": F.silu, "sigmoid": torch.sigmoid}


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension, computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * self.weight.float()).to(x.dtype)


class ShortConvolution(nn.Module):
    """Depthwise causal 1-D convolution over time (kernel 4 in KDA, GDN and Mamba2), optionally followed by SiLU.

    Inference state: the last kernel_size - 1 inputs of every channel, (B, kernel_size - 1, C).
    """

    def __init__(self, channels: int, kernel_size: int = 4, activation: bool = True, bias: bool = False):
        super().__init__()
        self.channels, self.kernel_size, self.activation = channels, kernel_size, activation
        self.conv = nn.Conv1d(
            channels, channels, kernel_size, groups=channels, padding=kernel_size - 1, bias=bias
        )

    def forward(
        self, x: Tensor, documents: PackedDocuments | None = None
    ) -> Tensor:  # (B, T, C) -> (B, T, C)
        """With `documents`, a token's window holds only earlier tokens of its own document."""
        T = x.shape[1]
        y = self.conv(x.transpose(1, 2))[..., :T].transpose(1, 2)
        if documents is not None:
            # the plain convolution, less the taps that reach into an earlier document: a few tokens per boundary,
            # subtracted in place (the convolution's backward does not need its output) in one scatter
            rows, columns, lags = documents.breaks_within(self.kernel_size - 1)
            weight = self.conv.weight[:, 0].flip(-1)  # (C, W): weight[:, j] multiplies x[t - j]
            correction = -x[rows, columns - lags] * weight[:, lags].T
            y.index_put_((rows, columns), correction.to(y.dtype), accumulate=True)
        return F.silu(y) if self.activation else y

    def forward_with_state(self, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        """forward(x) continuing from `state` (None: zeros, as at the start of a sequence); returns (y, new state).

        For decoding: a prompt, then one token at a time, gives the outputs of one forward over the whole.
        """
        B, T, C = x.shape
        if state is None:
            state = x.new_zeros(B, self.kernel_size - 1, C)
        window = torch.cat([state.to(x.dtype), x], dim=1)  # (B, W - 1 + T, C)
        y = F.conv1d(window.transpose(1, 2), self.conv.weight, self.conv.bias, groups=C).transpose(1, 2)
        return (F.silu(y) if self.activation else y), window[:, T:]

    def state_size(self) -> int:
        return (self.kernel_size - 1) * self.channels


def init_gate_parameters(
    num_heads: int, dt_channels: int, a_range: tuple[float, float], dt_range: tuple[float, float]
):
    """A_log = log U(a_range) per head; dt_bias = softplus^-1(dt), dt log-uniform in dt_range (Mamba2 init).

    Used by every mixer whose forget gate is -exp(A_log) * softplus(. + dt_bias): KDA, GDN and Mamba2.
    """
    A = torch.empty(num_heads).uniform_(*a_range)
    lo, hi = dt_range
    dt = torch.exp(
        torch.rand(dt_channels) * (torch.log(torch.tensor(hi)) - torch.log(torch.tensor(lo)))
        + torch.log(torch.tensor(lo))
    )
    dt = dt.clamp_min(1e-4)
    inv_softplus_dt = dt + torch.log(-torch.expm1(-dt))
    A_log = nn.Parameter(torch.log(A))
    dt_bias = nn.Parameter(inv_softplus_dt)
    # Both are excluded from weight decay by the trainer (they parameterise a decay, not a mapping).
    A_log._no_weight_decay = True
    dt_bias._no_weight_decay = True
    return A_log, dt_bias


class PackedDocuments:
    """Documents packed into the rows of a (B, T) batch, from their segment ids (equal within a document), in the
    forms the mixers need; computed once per forward and shared by every layer.

    A document begins at the start of every row and wherever the segment id changes.
    """

    def __init__(self, segment_ids: Tensor):
        self.segment_ids = segment_ids
        self.starts = torch.ones_like(segment_ids, dtype=torch.bool)
        self.starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
        self._windows: dict[int, tuple[Tensor, Tensor, Tensor]] = {}

    @cached_property
    def cu_seqlens(self) -> Tensor:
        """Offsets (N + 1,) int32 of the N documents in the batch flattened to one row of B * T tokens: the
        variable-length input of the gated-delta-rule kernels."""
        offsets = self.starts.flatten().nonzero().flatten()
        end = offsets.new_tensor([self.starts.numel()])
        return torch.cat([offsets, end]).to(torch.int32)

    @cached_property
    def positions(self) -> Tensor:
        """(B, T) position of every token within its document (0 at each document's first token)."""
        index = torch.arange(self.starts.shape[1], device=self.starts.device).expand_as(self.segment_ids)
        start_index = torch.where(self.starts, index, torch.zeros_like(index)).cummax(dim=1).values
        return index - start_index

    @cached_property
    def attention_mask(self) -> Tensor:
        """(B, 1, T, T) bool: query t may attend key s <= t of its own document (SDPA's attn_mask)."""
        T = self.segment_ids.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=self.segment_ids.device).tril()
        same = self.segment_ids[:, :, None] == self.segment_ids[:, None, :]
        return (same & causal)[:, None]

    def breaks_within(self, max_lag: int) -> tuple[Tensor, Tensor, Tensor]:
        """(rows, columns, lags) of every (token, lag <= max_lag) pair whose window crosses a boundary (`breaks`);
        computed once per batch and shared by every layer's convolutions."""
        if max_lag not in self._windows:
            pieces = [self.breaks(lag) for lag in range(1, max_lag + 1)]
            rows = torch.cat([r for r, _ in pieces])
            columns = torch.cat([c for _, c in pieces])
            lags = torch.cat([torch.full_like(r, lag) for lag, (r, _) in enumerate(pieces, 1)])
            self._windows[max_lag] = (rows, columns, lags)
        return self._windows[max_lag]

    def breaks(self, lag: int) -> tuple[Tensor, Tensor]:
        """(rows, columns) of the tokens t >= lag whose token t - lag lies in an earlier document: where a window
        of `lag` tokens back crosses a boundary. Few (at most lag per boundary), so fixed up sparsely."""
        ids = self.segment_ids
        crossed = ids[:, lag:] != ids[:, :-lag]  # (B, T - lag): token t = column + lag
        rows, columns = crossed.nonzero(as_tuple=True)
        return rows, columns + lag
