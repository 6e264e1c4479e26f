"""The kernel benchmark's shape sets and implementation filter (the timing itself needs CUDA)."""

import pytest

from kernels import bench


def test_shape_sets_and_explicit_shapes():
    assert bench.parse_shapes("default") == [(8, 2048, 16), (2, 8192, 16), (1, 32768, 16)]
    assert bench.parse_shapes("synthetic") == [(32, 256, 2), (32, 512, 2), (32, 1024, 2), (32, 2048, 2)]
    assert len(bench.parse_shapes("all")) == 7
    assert bench.parse_shapes("4x1024,32x256x2") == [(4, 1024, 16), (32, 256, 2)]
    with pytest.raises(ValueError, match="BxT"):
        bench.parse_shapes("4")


def test_floor_and_flops_scale_with_heads():
    assert bench._floor_bytes("kda", 32, 256, 2) * 8 == bench._floor_bytes("kda", 32, 256, 16)
    assert bench._flops("gdn", 32, 256, 2) * 8 == bench._flops("gdn", 32, 256, 16)


def test_impl_filter_keeps_both_kernel_versions_apart():
    assert list(bench._impls(torch_path=False, only=["triton"])) == ["triton"]
    assert list(bench._impls(torch_path=False, only=["triton", "triton-v2", "sdpa"])) == [
        "triton",
        "triton-v2",
        "sdpa-flash",
    ]
    every = bench._impls(torch_path=True)
    assert {"triton", "triton-v2", "torch", "sdpa-flash"} <= set(every)
    assert bench._compiled(every)[:2] == ["triton", "triton-v2"]
