"""Building blocks shared by several mixers and the backbone: RMSNorm, the causal short convolution and the
initialisation of the Mamba-style forget gate."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C) -> (B, T, C)
        T = x.shape[1]
        y = self.conv(x.transpose(1, 2))[..., :T].transpose(1, 2)
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
