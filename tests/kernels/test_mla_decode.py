"""MLA's decode attention (kernels/mla_decode) against its float64 specification: the Triton kernel in Triton's
interpreter (CPU, CI) and the PyTorch path, on awkward shapes: odd context lengths, a context shorter than one
split, several splits, batches whose rows see different ranges, with and without RoPE. The kernel's partial
buffers start as NaN, and the cache outside a row's range is NaN too: neither may reach an output."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    # must be set before the kernel's module is imported (triton.jit reads it then); the op imports it lazily
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels.mla_decode import mla_decode, mla_decode_ref

from .test_gated_delta_rule import rel_rms

TOLERANCE = {torch.float32: 1e-5, torch.float16: 3e-3}


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    from kernels.mla_decode import split_triton

    monkeypatch.setattr(split_triton, "POISON", True)


def make_inputs(B, H, R, P, S, ranges, dtype, seed=0, poison_outside=True):
    """Queries, a cache buffer of S keys and the (start, end) range of every row; the buffer outside each row's
    range is NaN (left pads, unwritten cache) when `poison_outside`."""
    gen = torch.Generator().manual_seed(seed)
    q_latent = torch.randn(B, H, R, generator=gen).to(dtype)
    latent = torch.randn(B, S, R, generator=gen).to(dtype)
    q_rope = torch.randn(B, H, P, generator=gen).to(dtype) if P else None
    rope_key = torch.randn(B, S, P, generator=gen).to(dtype) if P else None
    starts = torch.tensor([r[0] for r in ranges], dtype=torch.int32)
    ends = torch.tensor([r[1] for r in ranges], dtype=torch.int32)
    if poison_outside:
        for b, (start, end) in enumerate(ranges):
            for cache in (latent, rope_key):
                if cache is not None:
                    cache[b, :start] = float("nan")
                    cache[b, end:] = float("nan")
    return dict(q_latent=q_latent, latent=latent, q_rope=q_rope, rope_key=rope_key, starts=starts, ends=ends)


CASES = {
    # name: (B, H, R, P, S, ranges, split_len)
    "odd length, several splits, rope": (1, 3, 48, 8, 77, [(0, 77)], 32),
    "shorter than one split": (1, 2, 32, 16, 20, [(0, 19)], 64),
    "batch of ranges, nope": (3, 2, 40, 0, 50, [(0, 50), (4, 33), (49, 50)], 32),
    "batch, rope, default splits": (2, 8, 64, 16, 100, [(3, 100), (0, 61)], None),
    "one key": (1, 1, 16, 0, 5, [(2, 3)], None),
}


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter test; the gpu tests run on CUDA")
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_kernel_matches_float64(case, dtype):
    B, H, R, P, S, ranges, split_len = CASES[case]
    x = make_inputs(B, H, R, P, S, ranges, dtype)
    ref = mla_decode_ref(**x, scale=0.2)
    out = mla_decode(**x, scale=0.2, impl="triton", split_len=split_len)
    assert out.shape == (B, H, R) and out.dtype == dtype
    assert torch.isfinite(out).all()
    assert rel_rms(out, ref) < TOLERANCE[dtype], rel_rms(out, ref)


@pytest.mark.parametrize("case", CASES)
def test_torch_path_matches_float64(case):
    B, H, R, P, S, ranges, _ = CASES[case]
    # the PyTorch path multiplies the whole buffer by zero weights outside a range: it needs a finite buffer
    x = make_inputs(B, H, R, P, S, ranges, torch.float32, poison_outside=False)
    ref = mla_decode_ref(**x, scale=0.2)
    assert rel_rms(mla_decode(**x, scale=0.2, impl="torch"), ref) < TOLERANCE[torch.float32]


def test_splits_fill_the_device_but_stay_few_and_whole_blocks():
    from kernels.mla_decode.split_triton import BLOCK_KEYS, MAX_SPLITS, split_length

    for batch, length in [(1, 5), (1, 1000), (1, 1 << 20), (64, 4096)]:
        split = split_length(batch, length, torch.device("cpu"))
        assert split % BLOCK_KEYS == 0 and split >= BLOCK_KEYS
        assert -(-length // split) <= MAX_SPLITS


def test_bad_shapes_say_what_is_wrong():
    x = make_inputs(1, 2, 16, 8, 10, [(0, 10)], torch.float32)
    with pytest.raises(ValueError, match="come together"):
        mla_decode(x["q_latent"], x["latent"], q_rope=x["q_rope"], scale=1.0, impl="torch")
    with pytest.raises(ValueError, match="latent must be"):
        mla_decode(x["q_latent"], x["latent"][..., :8], scale=1.0, impl="torch")
