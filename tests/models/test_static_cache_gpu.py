"""The decode step as a CUDA graph over a static cache, on a GPU: replaying it gives the logits of the plain path
(the dynamic cache, the PyTorch kernels) for every mixer, in float32 and bf16, after a prompt fed in chunks."""

import pytest
import torch

from models.backbone import LanguageModel
from models.decoding import StaticCache, prefill
from models.presets import build_model_config

pytestmark = pytest.mark.gpu

VOCAB = 512
ARCHS = ["kda", "gdn", "mamba2", "mla", "mla-nope", "kimi", "gdn-h"]


def model_on_cuda(arch: str, dtype: torch.dtype, impl: str = "auto") -> LanguageModel:
    torch.manual_seed(0)
    config = build_model_config(arch, "small", vocab_size=VOCAB, kernel_impl=impl)
    return LanguageModel(config).to("cuda", dtype).eval()


def rel_rms(x, ref):
    x, ref = x.double(), ref.double()
    return ((x - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()


# every mixer in bf16 (the benchmark's dtype); float32 (TF32 products in the kernels) for MLA and kimi
CASES = [(arch, torch.bfloat16, 5e-2) for arch in ARCHS] + [(a, torch.float32, 1e-2) for a in ("mla", "kimi")]


@pytest.mark.parametrize("arch,dtype,tolerance", CASES)
def test_graph_steps_equal_the_plain_path(arch, dtype, tolerance):
    fast, plain = model_on_cuda(arch, dtype), model_on_cuda(arch, dtype, impl="torch")
    B, prompt, steps = 2, 300, 12
    ids = torch.randint(
        VOCAB, (B, prompt + steps), device="cuda", generator=torch.Generator("cuda").manual_seed(1)
    )
    with torch.no_grad():
        cache = StaticCache(fast, B, prompt + steps).capture(fast)
        assert cache.mode == "cuda-graph"
        reference = plain.new_cache()
        got = [prefill(fast, cache, ids[:, :prompt], chunk=128)]
        want = [prefill(plain, reference, ids[:, :prompt], chunk=128)]
        for t in range(prompt, prompt + steps):
            got.append(fast(ids[:, t : t + 1], cache=cache)[:, 0])
            want.append(plain(ids[:, t : t + 1], cache=reference)[:, 0])
    got, want = torch.stack(got, 1), torch.stack(want, 1)
    assert torch.isfinite(got).all()
    assert rel_rms(got, want) < tolerance, rel_rms(got, want)
    assert cache.nbytes() == B * fast.cache_bytes(prompt + steps, dtype)


def test_a_captured_cache_can_be_reset_and_reused():
    model = model_on_cuda("kimi", torch.float32)
    ids = torch.randint(VOCAB, (1, 40), device="cuda")
    with torch.no_grad():
        cache = StaticCache(model, 1, 48).capture(model)
        first = [prefill(model, cache, ids[:, :32], chunk=32)] + [
            model(ids[:, t : t + 1], cache=cache)[:, 0] for t in range(32, 40)
        ]
        cache.reset()
        again = [prefill(model, cache, ids[:, :32], chunk=32)] + [
            model(ids[:, t : t + 1], cache=cache)[:, 0] for t in range(32, 40)
        ]
    torch.testing.assert_close(torch.stack(again), torch.stack(first))
