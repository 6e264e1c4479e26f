"""The `device` column names the GPU a cell ran on as the machine numbers it, also in a pool worker or a Ray task
that sees its one GPU as cuda:0 through CUDA_VISIBLE_DEVICES (faked here: no GPU is needed)."""

import torch

from harness.results.provenance import device_kind, device_label, physical_gpu


def test_physical_gpu_reads_cuda_visible_devices():
    assert physical_gpu(0, "1") == "1"  # a pool worker pinned to the machine's second GPU
    assert physical_gpu(1, "0,1") == "1"
    assert physical_gpu(0, " 3 , 2") == "3"
    assert physical_gpu(1, None) == "1"  # unset: CUDA's own numbering
    assert physical_gpu(0, "GPU-5f1c") == "GPU-5f1c"  # a UUID stays as given
    assert physical_gpu(2, "0,1") == "2"  # not in the list (CUDA would not number it): the index


def test_device_label_names_the_physical_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert device_label(torch.device("cuda")) == "NVIDIA H200 (GPU 1)"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert device_label(torch.device("cuda:1")) == "NVIDIA H200 (GPU 1)"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert device_label(torch.device("cuda:0")) == "NVIDIA H200 (GPU 0)"
    assert device_label(torch.device("cpu")) == "cpu"


def test_device_kind_drops_the_gpu():
    assert device_kind("NVIDIA H200 (GPU 1)") == "NVIDIA H200"
    assert device_kind("NVIDIA H200 (GPU GPU-5f1c)") == "NVIDIA H200"
    assert device_kind("NVIDIA H200") == "NVIDIA H200"  # rows written before the GPU was named
    assert device_kind("cpu") == "cpu"
