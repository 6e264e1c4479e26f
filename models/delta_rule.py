"""What KDA and Gated DeltaNet share: the q/k/v/beta input path and the delta-rule forward.

The two differ only in their forget gate (per channel vs. per head) and output gate (low-rank sigmoid vs.
full-rank swish or sigmoid); each says so in its own file by implementing `gate_input` and `output_gate`.
The L2 norm of q and k and the forget gate's activation run inside the kernel op (`use_qk_l2norm`, `A_log`,
`dt_bias`): the Triton kernels apply them as they load their inputs, so no normalised or activated copies are
written to memory.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from kernels.gated_delta_rule import activate_gate, gated_delta_rule, resolve_impl

from .backbone import Mixer, put_state
from .layers import PackedDocuments, ShortConvolution


class DeltaRuleInputs(nn.Module):
    """The input path shared by KDA and Gated DeltaNet (Kimi Linear report, Eq. 10):

        q, k = L2Norm(SiLU(ShortConv(W_{q,k} x)));  v = SiLU(ShortConv(W_v x));  beta = sigmoid(W_beta x)

    except the L2 norm, which the kernel op applies (use_qk_l2norm=True).

    With `negative_eigenvalues`, beta is scaled to (0, 2): the transition I - beta k k^T can then have a
    negative eigenvalue, which is what lets a linear RNN track parity (Grazzi et al. 2025).
    """

    def __init__(
        self, d_model: int, num_heads: int, head_dim: int, conv_size: int, negative_eigenvalues: bool
    ):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.beta_scale = 2.0 if negative_eigenvalues else 1.0
        width = num_heads * head_dim
        self.q_proj = nn.Linear(d_model, width, bias=False)
        self.k_proj = nn.Linear(d_model, width, bias=False)
        self.v_proj = nn.Linear(d_model, width, bias=False)
        self.b_proj = nn.Linear(d_model, num_heads, bias=False)
        self.q_conv = ShortConvolution(width, conv_size)
        self.k_conv = ShortConvolution(width, conv_size)
        self.v_conv = ShortConvolution(width, conv_size)

    def forward(
        self, x: Tensor, state: dict[str, Tensor] | None = None, documents: PackedDocuments | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """q, k (not yet L2-normalised), v, beta of x; with a decoding `state`, the short convolutions continue
        from (and update) it; with `documents`, their windows stop at document boundaries."""
        B, T, _ = x.shape
        H, K = self.num_heads, self.head_dim
        q = short_conv(self.q_conv, self.q_proj(x), state, "q_conv", documents).view(B, T, H, K)
        k = short_conv(self.k_conv, self.k_proj(x), state, "k_conv", documents).view(B, T, H, K)
        v = short_conv(self.v_conv, self.v_proj(x), state, "v_conv", documents).view(
            B, T, H, K
        )  # (B, T, H, V)
        beta = self.beta_scale * torch.sigmoid(self.b_proj(x).float())  # (B, T, H)
        return q, k, v, beta

    def conv_state_size(self) -> int:
        return self.q_conv.state_size() + self.k_conv.state_size() + self.v_conv.state_size()


def short_conv(
    conv: ShortConvolution,
    x: Tensor,
    state: dict[str, Tensor] | None,
    key: str,
    documents: PackedDocuments | None = None,
) -> Tensor:
    """conv(x); with a decoding state, continued from state[key], which is updated."""
    if state is None:
        return conv(x, documents)
    y, window = conv.forward_with_state(x, state.get(key))
    put_state(state, key, window)
    return y


class DeltaRuleMixer(Mixer):
    """y = W_o( output_gate(x) * RMSNorm_per_head(o) ), o from the gated delta rule over the shared inputs.

    Subclasses set `gate` ("channel" or "scalar") and build, in __init__: `inputs` (DeltaRuleInputs), `o_norm`
    (RMSNorm of head_dim), `o_proj`, the forget gate's `A_log` (H,) and `dt_bias`, and whatever else their two
    gates need. The log forget gate is g = -exp(A_log) * softplus(gate_input(x) + dt_bias), computed by the op.

    Decoding state (one dict per layer): `q_conv`, `k_conv`, `v_conv` (B, conv_size - 1, H * K) and `recurrent`
    (B, H, K, K) float32. A pad token (attention_mask 0) neither writes (beta = 0) nor decays (g = 0) the state and
    feeds zeros to the convolutions, so a left-padded sequence gives the outputs it gives alone.
    """

    gate: ClassVar[str]
    supports_segments = True  # packed documents: the kernels' variable-length mode (cu_seqlens)

    def gate_input(self, x: Tensor) -> Tensor:
        """The forget gate's raw input, before + dt_bias and the activation: (B, T, H) for a scalar gate,
        (B, T, H, K) per channel."""
        raise NotImplementedError

    def forget_gate(self, x: Tensor) -> Tensor:
        """Log forget gate g <= 0 (what the op computes inside): (B, T, H) or (B, T, H, K); float32."""
        return activate_gate(self.gate_input(x), self.A_log, self.dt_bias)

    def output_gate(self, x: Tensor) -> Tensor:
        """Multiplier of the normalised output: (B, T, H * K)."""
        raise NotImplementedError

    def forward(
        self,
        x: Tensor,
        state: dict[str, Tensor] | None = None,
        attention_mask: Tensor | None = None,
        documents: PackedDocuments | None = None,
    ) -> Tensor:
        B, T, _ = x.shape
        H, K = self.config.num_heads, self.config.head_dim
        keep = None if attention_mask is None else attention_mask[:, -T:].bool()  # (B, T)
        if keep is not None:
            x = x.masked_fill(~keep[..., None], 0)
        q, k, v, beta = self.inputs(x, state, documents)
        g = self.gate_input(x)
        if keep is not None:
            beta = beta.masked_fill(~keep[..., None], 0)
            # softplus(-inf) = 0: a pad token's log gate is 0, it does not decay the state
            g = g.masked_fill(~keep.view(B, T, *[1] * (g.dim() - 2)), float("-inf"))
        o, final_state = gated_delta_rule_packed(
            q,
            k,
            v,
            g,
            beta,
            documents,
            gate=self.gate,
            delta=True,
            initial_state=None if state is None else state.get("recurrent"),
            output_final_state=state is not None,
            impl=self.kernel_impl,
            chunk_size=self.config.chunk_size,
            use_qk_l2norm=True,
            A_log=self.A_log,
            dt_bias=self.dt_bias,
        )
        if state is not None:
            put_state(state, "recurrent", final_state)
        o = self.o_norm(o) * self.output_gate(x).view(B, T, H, K)
        return self.o_proj(o.reshape(B, T, H * K))

    def state_size(self, seq_len: int) -> int:
        H, K = self.config.num_heads, self.config.head_dim
        return H * K * K + self.inputs.conv_state_size()

    def cache_bytes(self, seq_len: int, dtype: torch.dtype) -> int:
        H, K = self.config.num_heads, self.config.head_dim
        # the recurrent state is kept in float32 (the kernel accumulates in it); the conv windows in `dtype`
        return H * K * K * 4 + self.inputs.conv_state_size() * dtype.itemsize

    def kernel_name(self, device: torch.device | str) -> str:
        return f"gdr:{resolve_impl(self.kernel_impl, device)}"

    def allocate_cache(
        self, batch: int, max_len: int, dtype: torch.dtype, device: torch.device
    ) -> dict[str, Tensor]:
        H, K = self.config.num_heads, self.config.head_dim
        window = (batch, self.config.conv_size - 1, H * K)
        state = {
            key: torch.zeros(window, dtype=dtype, device=device) for key in ("q_conv", "k_conv", "v_conv")
        }
        state["recurrent"] = torch.zeros(batch, H, K, K, dtype=torch.float32, device=device)
        return state


def gated_delta_rule_packed(
    q, k, v, g, beta, documents: PackedDocuments | None, **kwargs
) -> tuple[Tensor, Tensor | None]:
    """gated_delta_rule; with `documents`, the rows are flattened into one and each document becomes a sequence
    of the kernels' variable-length mode, so that every state starts from zero at a document."""
    if documents is None:
        return gated_delta_rule(q, k, v, g, beta, **kwargs)
    B, T = documents.segment_ids.shape

    def flat(t):
        return None if t is None else t.reshape(1, B * T, *t.shape[2:])

    o, _ = gated_delta_rule(
        flat(q), flat(k), flat(v), flat(g), flat(beta), cu_seqlens=documents.cu_seqlens, **kwargs
    )
    return o.view(B, T, *o.shape[2:]), None
