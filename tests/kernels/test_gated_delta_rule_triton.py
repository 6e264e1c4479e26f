"""The Triton kernels in Triton's interpreter (CPU, CI) against the float64 token-by-token recurrence.

Small odd shapes keep the interpreter fast; chunk sizes 16 and 32 cover one and two 16-token blocks per chunk
(the per-channel gate's exact diagonal blocks and its relative-decay off-diagonal blocks). Every buffer the
launchers allocate starts as NaN. On a machine with CUDA these are skipped: the gpu tests cover the kernels there.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    # must be set before the kernels' module is imported (triton.jit reads it then); the op imports it lazily
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels.gated_delta_rule import (
    DECODE_MAX_TOKENS,
    gated_delta_rule,
    gated_delta_rule_ref,
    resolve_impl,
)

from .test_gated_delta_rule import (
    FAMILY,
    make_fused_option_inputs,
    make_inputs,
    rel_rms,
    run_with_grads,
    unfused_ref,
)

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason="interpreter tests; the gpu tests run on CUDA"
)

# Relative RMS error against float64, by input dtype (state and gates are float32 either way).
TOLERANCE = {torch.float32: 2e-5, torch.float16: 5e-3}


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    from kernels.gated_delta_rule import chunk_triton

    monkeypatch.setattr(chunk_triton, "POISON", True)


def lowered(inputs, dtype):
    """The same inputs with q, k, v in `dtype` (gates, beta and the state stay float32), fresh leaves."""
    out = {}
    for name, x in inputs.items():
        if x is not None:
            x = x.detach().to(dtype if name in ("q", "k", "v") else torch.float32).requires_grad_(True)
        out[name] = x
    return out


def assert_close(triton_result, ref_result, tol):
    o, s, grads = triton_result
    o_ref, s_ref, g_ref = ref_result
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    assert rel_rms(o, o_ref) < tol, "output"
    assert rel_rms(s, s_ref) < tol, "final state"
    assert set(grads) == set(g_ref)
    for name, grad in grads.items():
        assert torch.isfinite(grad).all(), name
        assert rel_rms(grad, g_ref[name]) < tol, name


@pytest.mark.parametrize("gate,delta", FAMILY)
@pytest.mark.parametrize(
    "T,H,chunk_size,dtype",
    [(37, 2, 16, torch.float32), (45, 1, 32, torch.float32), (21, 1, 16, torch.float16)],
)
def test_triton_equals_recurrence_with_gradients(gate, delta, T, H, chunk_size, dtype):
    inputs = lowered(make_inputs(1, T, H, 16, 24, gate, delta, seed=T), dtype)
    ref = run_with_grads(gated_delta_rule_ref, inputs, gate, delta)
    # the chunked kernels, also for short T: gradients are needed, so no decode path
    tri = run_with_grads(gated_delta_rule, inputs, gate, delta, impl="triton", chunk_size=chunk_size)
    assert tri[0].dtype == dtype and tri[1].dtype == torch.float32
    assert_close(tri, ref, TOLERANCE[dtype])


@pytest.mark.parametrize("gate,delta", FAMILY)
def test_triton_varlen_batch_equals_sequences_one_by_one(gate, delta):
    lengths = [5, 19, 1]
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    packed = lowered(
        make_inputs(1, sum(lengths), 1, 16, 24, gate, delta, seed=5, states=len(lengths)), torch.float32
    )
    tri = run_with_grads(
        gated_delta_rule, packed, gate, delta, impl="triton", cu_seqlens=cu_seqlens, chunk_size=16
    )
    ref = run_with_grads(gated_delta_rule_ref, packed, gate, delta, cu_seqlens=cu_seqlens)
    assert_close(tri, ref, TOLERANCE[torch.float32])
    with torch.no_grad():
        for n, (start, end) in enumerate(zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist(), strict=True)):
            one = {
                name: (x[n : n + 1] if name == "initial_state" else x[:, start:end])
                if x is not None
                else None
                for name, x in packed.items()
            }
            o, s = gated_delta_rule(
                **one, gate=gate, delta=delta, output_final_state=True, impl="triton", chunk_size=16
            )
            assert rel_rms(tri[0][:, start:end], o) < 1e-6
            assert rel_rms(tri[1][n : n + 1], s) < 1e-6


@pytest.mark.parametrize("gate,delta", FAMILY)
def test_decode_steps_through_the_recurrent_kernel_continue_a_prefill(gate, delta):
    """Prefill 20 tokens, then decode 1 and 3 tokens at a time from the cached state: same as one pass."""
    inputs = {
        n: None if x is None else x.detach().float()
        for n, x in make_inputs(2, 24, 1, 16, 24, gate, delta).items()
    }
    o_full, s_full = gated_delta_rule_ref(**inputs, gate=gate, delta=delta, output_final_state=True)
    pieces, state = [], inputs["initial_state"]
    for start, end in [(0, 20), (20, 21), (21, 24)]:
        step = {n: x[:, start:end] for n, x in inputs.items() if x is not None and n != "initial_state"}
        with torch.no_grad():
            o, state = gated_delta_rule(
                **step, initial_state=state, gate=gate, delta=delta, output_final_state=True, impl="triton"
            )
        pieces.append(o)
    assert end - start <= DECODE_MAX_TOKENS
    assert rel_rms(torch.cat(pieces, dim=1), o_full) < TOLERANCE[torch.float32]
    assert rel_rms(state, s_full) < TOLERANCE[torch.float32]


def test_strong_channel_decay_does_not_overflow():
    inputs = lowered(make_inputs(1, 40, 1, 16, 16, "channel", True, seed=6), torch.float32)
    g = torch.full_like(inputs["g"], -30.0, requires_grad=True)  # 1 / exp(cumsum) overflows within 3 tokens
    o, s, grads = run_with_grads(
        gated_delta_rule, dict(inputs, g=g), "channel", True, impl="triton", chunk_size=32
    )
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    assert all(torch.isfinite(x).all() for x in grads.values())


@pytest.mark.parametrize("delta", [True, False])
def test_per_channel_diagonal_blocks_past_the_matrix_product_span(delta):
    """A diagonal block is a matrix product while its gates span at most DIAG_SPAN, else the exact loop: one head
    forgets fast in half its channels (about -12.5 per token, spans near 190 over 16 tokens: the product's factors
    e^{+-95} would overflow float32), the other slowly."""
    from kernels.gated_delta_rule.chunk_triton import DIAG_SPAN

    inputs = lowered(make_inputs(1, 45, 2, 16, 24, "channel", delta, seed=9), torch.float32)
    g = inputs["g"].detach().clone()
    g[:, :, 0, ::2] = -13.0 + torch.rand(g[:, :, 0, ::2].shape, generator=torch.Generator().manual_seed(1))
    spans = -g[0, :15].sum(0)  # the first diagonal block's span, per (head, channel)
    assert spans[0].max() > DIAG_SPAN.value and spans[1].max() < DIAG_SPAN.value
    inputs["g"] = g.requires_grad_(True)
    ref = run_with_grads(gated_delta_rule_ref, inputs, "channel", delta)
    tri = run_with_grads(gated_delta_rule, inputs, "channel", delta, impl="triton", chunk_size=32)
    assert_close(tri, ref, TOLERANCE[torch.float32])


@pytest.mark.parametrize("gate,delta", FAMILY)
def test_kernel_versions_agree(gate, delta):
    """The previous kernels (v2, kept for the benchmark's before/after) and the current ones: same results."""
    from kernels.gated_delta_rule.chunk_triton import kernels_version

    inputs = lowered(make_inputs(1, 37, 2, 16, 24, gate, delta, seed=3), torch.float32)
    new = run_with_grads(gated_delta_rule, inputs, gate, delta, impl="triton", chunk_size=32)
    with kernels_version("v2"):
        old = run_with_grads(gated_delta_rule, inputs, gate, delta, impl="triton", chunk_size=32)
    assert_close(new, old, 1e-5)


def test_auto_resolves_by_device_and_triton_on_cpu_needs_the_interpreter(monkeypatch):
    assert resolve_impl("auto", "cpu") == "torch"
    assert resolve_impl("auto", "cuda") == "triton"
    assert resolve_impl("triton", "cpu") == "triton"  # TRITON_INTERPRET=1 here
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        resolve_impl("triton", "cpu")


@pytest.mark.parametrize("gate,delta", FAMILY)
@pytest.mark.parametrize("T,chunk_size", [(37, 16), (45, 32)])
def test_fused_qk_l2norm_and_gate_activation_with_gradients(gate, delta, T, chunk_size):
    """Raw q, k (any norm) and the gate's raw input, A_log and dt_bias: output, state and every gradient."""
    inputs = lowered(make_fused_option_inputs(1, T, 2, 16, 24, gate, delta, seed=T), torch.float32)
    ref = run_with_grads(unfused_ref, inputs, gate, delta)
    tri = run_with_grads(
        gated_delta_rule, inputs, gate, delta, impl="triton", chunk_size=chunk_size, use_qk_l2norm=True
    )
    assert {"A_log", "dt_bias", "g", "q", "k"} <= set(tri[2])
    assert_close(tri, ref, TOLERANCE[torch.float32])


@pytest.mark.parametrize("gate", ["channel", "scalar"])
def test_fused_options_on_the_decode_path(gate):
    inputs = {
        n: None if x is None else x.detach().float()
        for n, x in make_fused_option_inputs(2, 3, 2, 16, 24, gate, True, seed=4).items()
    }
    o_ref, s_ref = unfused_ref(**inputs, gate=gate, delta=True, output_final_state=True)
    with torch.no_grad():
        o, s = gated_delta_rule(
            **inputs, gate=gate, delta=True, output_final_state=True, impl="triton", use_qk_l2norm=True
        )
    assert rel_rms(o, o_ref) < TOLERANCE[torch.float32]
    assert rel_rms(s, s_ref) < TOLERANCE[torch.float32]


# each member once, two of them with the fused options (the interpreter takes seconds per call)
@pytest.mark.parametrize(
    "gate, delta, fused_options",
    [("channel", True, True), ("scalar", True, False), ("scalar", False, True), ("channel", False, False)],
)
def test_vmap_over_stacked_models_is_each_model_alone(gate, delta, fused_options):
    """torch.vmap over G stacked models (harness/run/grid_step.py) runs the kernels once with the G models' heads
    side by side: outputs, final states and every gradient are those of G calls one model at a time."""
    torch.manual_seed(0)
    G, B, T, H, K, V = 2, 2, 20, 2, 16, 16
    gate_shape = (G, B, T, H, K) if gate == "channel" else (G, B, T, H)
    inputs = dict(
        q=torch.randn(G, B, T, H, K),
        k=torch.randn(G, B, T, H, K),
        v=torch.randn(G, B, T, H, V),
        g=torch.randn(gate_shape) if fused_options else -0.3 * torch.rand(gate_shape),
        beta=torch.rand(G, B, T, H) if delta else None,
        initial_state=torch.randn(G, B, H, K, V),
        A_log=torch.randn(G, H) if fused_options else None,
        dt_bias=torch.randn(G, *gate_shape[3:]) if fused_options else None,
    )
    inputs = {n: None if x is None else x.requires_grad_(True) for n, x in inputs.items()}
    if not fused_options:  # delta needs unit keys: normalised here when the op does not
        inputs["k"] = torch.nn.functional.normalize(inputs["k"].detach(), dim=-1).requires_grad_(True)

    def op(**kw):
        return gated_delta_rule(
            **kw, gate=gate, delta=delta, impl="triton", chunk_size=16, output_final_state=True,
            use_qk_l2norm=fused_options,
        )  # fmt: skip

    names = [n for n, x in inputs.items() if x is not None]

    def stacked_op(*xs):
        return op(**dict(zip(names, xs, strict=True)))

    o, ht = torch.vmap(stacked_op)(*[inputs[n] for n in names])
    (o.square().sum() + ht.square().sum()).backward()
    stacked_grads = {n: inputs[n].grad.clone() for n in names}
    for n in names:
        inputs[n].grad = None
    for i in range(G):
        o_i, ht_i = op(**{n: inputs[n][i] for n in names})
        torch.testing.assert_close(o[i], o_i, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ht[i], ht_i, rtol=1e-5, atol=1e-5)
        (o_i.square().sum() + ht_i.square().sum()).backward()
    for n in names:
        torch.testing.assert_close(stacked_grads[n], inputs[n].grad, rtol=1e-4, atol=1e-4, msg=n)


def test_launch_settings_change_no_result_and_are_restored():
    """Warps and stages are a kernel's speed, not its maths (scripts/gpu/tune_launch.py relies on it); the block
    restores the defaults, and a kernel that does not exist is refused."""
    from kernels.gated_delta_rule import chunk_triton

    inputs = lowered(make_inputs(1, 20, 1, 16, 16, "channel", True, seed=3), torch.float32)
    before = dict(chunk_triton.LAUNCH)
    expected = run_with_grads(
        gated_delta_rule, inputs, impl="triton", gate="channel", delta=True, chunk_size=16
    )
    with chunk_triton.launch_settings(
        intra=dict(num_warps=2, num_stages=1), solve=dict(num_warps=4, num_stages=3)
    ):
        assert chunk_triton.LAUNCH["intra"] == dict(num_warps=2, num_stages=1)
        changed = run_with_grads(
            gated_delta_rule, inputs, impl="triton", gate="channel", delta=True, chunk_size=16
        )
    assert before == chunk_triton.LAUNCH
    torch.testing.assert_close(changed[0], expected[0])
    for name in expected[2]:
        torch.testing.assert_close(changed[2][name], expected[2][name], msg=name)
    with pytest.raises(ValueError, match="unknown kernel"), chunk_triton.launch_settings(intra_fwd={}):
        pass
