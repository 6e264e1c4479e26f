"""MLA's decode kernel on a CUDA device against the plain PyTorch path, at the model's real shapes (8 heads, a
512-wide latent, a 64-wide rope key) in bf16, and replayed from a CUDA graph as the cache grows."""

import pytest
import torch

from kernels.mla_decode import mla_decode, mla_decode_ref

from .test_gated_delta_rule import rel_rms

pytestmark = pytest.mark.gpu


def inputs(B, S, rope, filled, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device="cuda").to(torch.bfloat16)

    x = dict(q_latent=randn(B, 8, 512) * 0.05, latent=randn(B, S, 512))
    x["q_rope"], x["rope_key"] = (randn(B, 8, 64) * 0.05, randn(B, S, 64)) if rope else (None, None)
    x["starts"] = torch.zeros(B, dtype=torch.int32, device="cuda")
    x["ends"] = torch.full((B,), filled, dtype=torch.int32, device="cuda")
    return x


@pytest.mark.parametrize(
    "B,S,filled", [(1, 32771, 32771), (1, 4096, 1000), (16, 4100, 4099), (64, 4096, 4096)]
)
@pytest.mark.parametrize("rope", [True, False])
def test_kernel_matches_the_plain_path_in_bf16(B, S, filled, rope):
    x = inputs(B, S, rope, filled)
    plain = mla_decode(**x, scale=192**-0.5, impl="torch")
    fast = mla_decode(**x, scale=192**-0.5, impl="triton")
    assert fast.dtype == torch.bfloat16 and torch.isfinite(fast).all()
    assert rel_rms(fast, plain) < 1e-2, rel_rms(fast, plain)
    if (
        B == 1 and S < 5000
    ):  # float64 on the same bf16 inputs: the kernel is no less exact than the plain path
        ref = mla_decode_ref(**x, scale=192**-0.5)
        assert rel_rms(fast, ref) < rel_rms(plain, ref) + 5e-3


def test_kernel_replays_from_a_graph_as_the_cache_grows():
    x = inputs(1, 8192, True, 100)
    ends = x["ends"]
    mla_decode(**x, scale=0.1, impl="triton")  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = mla_decode(**x, scale=0.1, impl="triton")
    for filled in (100, 4097, 8192):
        ends.fill_(filled)
        graph.replay()
        torch.testing.assert_close(out, mla_decode(**x, scale=0.1, impl="torch"), rtol=2e-2, atol=2e-2)
