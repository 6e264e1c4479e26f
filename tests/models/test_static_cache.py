"""The static cache (models/decoding.py): preallocated buffers updated in place give the logits of the dynamic
cache, and of one forward over the whole sequence, for every mixer; prompts fed in chunks give the logits of one
forward; what the buffers hold for the tokens seen is what cache_bytes says. The CUDA graph of the step is tested
on a GPU (test_static_cache_gpu.py); here its CPU fallback says it is eager."""

import pytest
import torch

from models.backbone import LanguageModel, Mixer
from models.decoding import StaticCache, prefill, static_cache_unsupported
from models.presets import build_model_config

VOCAB = 20
ARCHS = ["kda", "gdn", "mamba2", "mla", "mla-nope", "kimi"]


def tiny(arch: str, **fields) -> LanguageModel:
    torch.manual_seed(0)
    return LanguageModel(build_model_config(arch, "tiny", vocab_size=VOCAB, **fields)).eval()


def stepped(model, cache, ids, mask, prompt=6):
    with torch.no_grad():
        logits = [
            model(ids[:, :prompt], cache=cache, attention_mask=None if mask is None else mask[:, :prompt])
        ]
        for t in range(prompt, ids.shape[1]):
            step_mask = None if mask is None else mask[:, : t + 1]
            logits.append(model(ids[:, t : t + 1], cache=cache, attention_mask=step_mask))
    return torch.cat(logits, dim=1)


@pytest.mark.parametrize("arch", ARCHS)
def test_static_steps_equal_the_dynamic_cache_and_one_forward_left_padded(arch):
    model = tiny(arch)
    ids = torch.randint(VOCAB, (3, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :5] = 0
    with torch.no_grad():
        whole = model(ids, attention_mask=mask)
    dynamic = stepped(model, model.new_cache(), ids, mask)
    cache = StaticCache(model, batch=3, max_len=16).capture(model)
    assert cache.mode == "eager (no CUDA)"
    static = stepped(model, cache, ids, mask)
    real = mask.bool()
    torch.testing.assert_close(static[real], dynamic[real], rtol=0, atol=1e-5)
    torch.testing.assert_close(static[real], whole[real], rtol=0, atol=1e-5)
    # the filled part of the buffers is what the model reports, per sequence
    assert cache.seen_tokens == 12 and int(cache.position) == 12
    assert cache.nbytes() == 3 * model.cache_bytes(12, torch.float32)


@pytest.mark.parametrize("arch", ["kimi", "mla"])
def test_a_prompt_in_chunks_gives_the_logits_of_one_forward(arch):
    model = tiny(arch)
    ids = torch.randint(VOCAB, (2, 50), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = model(ids)
        for cache in (model.new_cache(), StaticCache(model, batch=2, max_len=50)):
            # chunks longer than a decode step (expanded attention) and one short tail (the absorbed path)
            last = prefill(model, cache, ids[:, :49], chunk=20)
            torch.testing.assert_close(last, whole[:, 48], rtol=0, atol=1e-5)
            torch.testing.assert_close(model(ids[:, 49:], cache=cache)[:, 0], whole[:, 49], rtol=0, atol=1e-5)
            assert cache.nbytes() == 2 * model.cache_bytes(50, torch.float32)


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter test; the gpu tests run on CUDA")
def test_the_mla_decode_kernel_inside_the_model_in_the_interpreter():
    """kernel_impl='triton' sends MLA's one-token steps through the Triton kernel (TRITON_INTERPRET=1 here)."""
    ids = torch.randint(VOCAB, (2, 9), generator=torch.Generator().manual_seed(3))
    plain, fast = tiny("mla"), tiny("mla", kernel_impl="triton")
    assert fast.kernel_names("cpu") == "sdpa+mla-decode:triton" and plain.kernel_names("cpu") == "sdpa"
    expected = stepped(plain, plain.new_cache(), ids, None)
    for cache in (fast.new_cache(), StaticCache(fast, batch=2, max_len=12)):
        torch.testing.assert_close(stepped(fast, cache, ids, None), expected, rtol=0, atol=1e-5)


def test_fill_makes_up_the_rest_of_the_cache():
    model = tiny("kimi")
    cache = StaticCache(model, batch=2, max_len=40)
    ids = torch.randint(VOCAB, (2, 8), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        prefill(model, cache, ids, chunk=8)
        cache.fill(model, 30)
        logits = model(ids[:, :1], cache=cache)
    assert cache.seen_tokens == 31 and int(cache.position) == 31 and torch.isfinite(logits).all()
    assert cache.nbytes() == 2 * model.cache_bytes(31, torch.float32)
    latent = cache.layers[1]["latent"]
    assert latent[:, 8:31].abs().sum() > 0 and latent[:, 31:].abs().sum() == 0


def test_static_cache_refusals_say_what_to_do():
    model = tiny("kimi")
    cache = StaticCache(model, batch=2, max_len=8)
    ids = torch.zeros(2, 6, dtype=torch.long)
    with torch.no_grad(), pytest.raises(ValueError, match="make it longer"):
        model(torch.zeros(2, 9, dtype=torch.long), cache=cache)
    with torch.no_grad(), pytest.raises(ValueError, match="batch of 3"):
        model(torch.zeros(3, 2, dtype=torch.long), cache=cache)
    holes = torch.ones(2, 6, dtype=torch.long)
    holes[0, 3] = 0
    with torch.no_grad(), pytest.raises(ValueError, match="left padding only"):
        model(ids, cache=cache, attention_mask=holes)

    class NoStatic(Mixer):
        pass

    model.blocks[0].mixer.__class__ = NoStatic
    model.blocks[0].mixer_name = "nostatic"
    assert static_cache_unsupported(model) == ["nostatic"]
    with pytest.raises(ValueError, match="model.new_cache"):
        StaticCache(model, batch=1, max_len=4)
