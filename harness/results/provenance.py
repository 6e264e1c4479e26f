"""Where a result came from: code version, library versions, device."""

from __future__ import annotations

import functools
import os
import re
import subprocess
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=1)
def git_state() -> tuple[str, bool]:
    """(commit, dirty) of the harness checkout; ('unknown', False) outside a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return commit, bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    try:
        import triton  # optional: absent on machines without a GPU toolchain

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return {"torch": torch.__version__, "triton": triton_version}


def device_name(device: torch.device) -> str:
    """The kind of device: a GPU's name ('NVIDIA H200') or 'cpu'; what step times are measured per."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def device_label(device: torch.device) -> str:
    """The device a cell ran on, for its rows' `device` column: the kind and, on a GPU, which one of the machine
    ('NVIDIA H200 (GPU 1)'), also in a pool worker or a Ray task that sees its one GPU as cuda:0."""
    if device.type != "cuda":
        return device_name(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"{device_name(device)} (GPU {physical_gpu(index, os.environ.get('CUDA_VISIBLE_DEVICES'))})"


def physical_gpu(index: int, visible: str | None) -> str:
    """The machine's name for the GPU that this process calls cuda:`index`, given CUDA_VISIBLE_DEVICES (`visible`;
    None when unset): its entry there (an index as nvidia-smi numbers the GPUs, or a UUID), else `index`."""
    if visible is None:
        return str(index)
    entries = [part.strip() for part in visible.split(",") if part.strip()]
    return entries[index] if index < len(entries) else str(index)


def device_kind(label: str) -> str:
    """The kind of device in a `device` column ('NVIDIA H200 (GPU 1)' -> 'NVIDIA H200'; rows written before the
    GPU was named carry the kind alone)."""
    return re.sub(r" \(GPU [^)]*\)$", "", label)
