"""Which implementation a kernel op runs: one rule for every op of this package.

"auto" is "triton" on CUDA tensors when Triton imports, else "torch"; "triton" on CPU tensors runs only under
TRITON_INTERPRET=1 (Triton's interpreter, for tests). Nothing switches silently: results record what ran.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

IMPLS = ("auto", "torch", "triton", "reference")


@functools.cache  # asked on every call of an op (every layer of every decode step): look once
def _triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve_impl(impl: str, device: torch.device | str) -> str:
    """The implementation that `impl` stands for on `device` ("auto" resolved)."""
    if impl not in IMPLS:
        raise ValueError(f"unknown kernel impl '{impl}'; expected one of {', '.join(IMPLS)}")
    on_cuda = torch.device(device).type == "cuda"
    if impl == "auto":
        return "triton" if on_cuda and _triton_available() else "torch"
    if impl == "triton":
        if not _triton_available():
            raise ValueError("impl='triton' needs the triton package; install it or use impl='torch'")
        if not on_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                f"impl='triton' needs CUDA tensors (got {device}); use impl='torch' or 'auto', "
                "or set TRITON_INTERPRET=1 to run the kernels in Triton's (slow) interpreter"
            )
    return impl
