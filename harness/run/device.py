"""The device a cell runs on, its autocast precision, and how much memory it used."""

from __future__ import annotations

import resource

import torch

from harness.errors import HarnessError

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def resolve_device(name: str) -> torch.device:
    """'auto' (CUDA if available, else the CPU), 'cpu', 'cuda' or 'cuda:N' as a torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' asked for, but CUDA is not available here")
    return device


def check_device(name: str) -> None:
    """Raise HarnessError unless this machine has the device `name` ('auto' and 'cpu' always exist)."""
    if name in ("auto", "cpu"):
        return
    if not torch.cuda.is_available():
        raise HarnessError(
            f"train.device={name}: CUDA is not available on this machine (torch {torch.__version__}); use"
            " --device cpu or auto, or run on a machine with a GPU"
        )
    index = int(name.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise HarnessError(
            f"train.device={name}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0 to"
            f" cuda:{torch.cuda.device_count() - 1}"
        )


def autocast_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype that the setting `dtype` ('bf16', 'fp16', 'fp32') gives on `device`; None for plain
    fp32 (always on the CPU)."""
    if device.type != "cuda":
        return None
    return AUTOCAST[dtype]


def peak_memory_gib(device: torch.device) -> float:
    """Peak CUDA memory allocated on `device` since training began, or this process's peak RSS on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
