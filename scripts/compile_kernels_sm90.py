"""Compile the gated-delta-rule Triton kernels for sm_90 (H100/H200) on a machine without a GPU.

    python scripts/compile_kernels_sm90.py [--versions v2,v3] [--shape 2x256x16] [--only intra,local_bwd]

The launchers run on CPU tensors with Triton's launch replaced by a recorder; every recorded launch is then
compiled ahead of time for GPUTarget("cuda", 90, 32) with this environment's Triton (and its bundled ptxas),
pointers marked 16-byte aligned as the JIT would. Per kernel: registers, spill bytes (ptxas -v) and shared
memory. A compile error is reported and the script exits 1. The Triton here may be newer than the GPU image's.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from kernels.gated_delta_rule import chunk_triton as ct  # noqa: E402

TYPES = {
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float32: "fp32",
    torch.int32: "i32",
    torch.int64: "i64",
}
LAUNCHES: list[tuple[JITFunction, tuple, dict]] = []


def _record(self, *args, grid, warmup, **kwargs):
    LAUNCHES.append((self, args, kwargs))


def _source(fn: JITFunction, args: tuple, kwargs: dict):
    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
    values = dict(zip(fn.arg_names, args, strict=False))
    values.update(kwargs)
    signature, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        x = values[p.name]
        if p.is_constexpr or x is None:
            signature[p.name] = "constexpr"
            constexprs[p.name] = x
        elif isinstance(x, torch.Tensor):
            signature[p.name] = "*" + TYPES[x.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(x, bool):
            signature[p.name] = "i1"
        elif isinstance(x, int):
            signature[p.name] = "i32"
        elif isinstance(x, float):
            signature[p.name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}.{p.name}: {type(x)}")
    return triton.compiler.ASTSource(fn, signature, constexprs=constexprs, attrs=attrs), options


def _ptxas_stats(ptx: str) -> str:
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(90).path  # the one Triton compiled with (the PTX version must match)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.ptx"
        path.write_text(ptx)
        out = subprocess.run(
            [str(ptxas), "-v", "--gpu-name", "sm_90a", str(path), "-o", str(Path(tmp) / "k.cubin")],
            capture_output=True,
            text=True,
        )
        out = out.stdout + out.stderr
    regs = re.search(r"Used (\d+) registers", out)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out)
    return f"{regs.group(1) if regs else '?'} regs, spills {spill.group(1) if spill else '?'} B"


def _run_launchers(op: str, B: int, T: int, H: int, D: int, version: str, l2norm: bool):
    gate, delta = {"kda": ("channel", True), "gdn": ("scalar", True), "ssd": ("scalar", False)}[op]
    bf16 = torch.bfloat16
    q = torch.randn(B, T, H, D, dtype=bf16)
    k = torch.randn(B, T, H, D, dtype=bf16)
    v = torch.randn(B, T, H, D, dtype=bf16)
    g = torch.randn(B, T, H, *([D] if gate == "channel" else []))
    beta = torch.rand(B, T, H, dtype=bf16) if delta else None
    A_log = torch.zeros(H) if l2norm else None
    dt_bias = torch.zeros(*g.shape[2:]) if l2norm else None
    args = (q, k, v, g, beta, D**-0.5, None, False, None, gate, delta, 64, l2norm, A_log, dt_bias)
    o, ht, saved = ct.chunk_fwd(*args, version=version)
    ct.chunk_bwd(
        q, k, v, g, beta, D**-0.5, None, None, gate, delta, 64, saved, torch.randn_like(o), None, l2norm, A_log,
        dt_bias, version=version,
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--versions", default="v2,v3")
    parser.add_argument("--ops", default="kda,gdn,ssd")
    parser.add_argument("--shape", default="2x256x16x128", help="BxTxHxD")
    parser.add_argument("--only", default="", help="comma-separated kernel names (default: all)")
    parser.add_argument("--fused", action="store_true", help="with use_qk_l2norm and the gate activation")
    args = parser.parse_args()
    B, T, H, D = (int(x) for x in args.shape.split("x"))
    JITFunction.run = _record
    target = GPUTarget("cuda", 90, 32)
    failed = 0
    print(f"triton {triton.__version__}, target sm_90")
    for version in args.versions.split(","):
        for op in args.ops.split(","):
            LAUNCHES.clear()
            _run_launchers(op, B, T, H, D, version, args.fused)
            for fn, a, kw in LAUNCHES:
                if args.only and fn.__name__ not in args.only.split(","):
                    continue
                src, options = _source(fn, a, dict(kw))
                try:
                    kernel = triton.compile(src, target=target, options=options)
                    stats = _ptxas_stats(kernel.asm["ptx"])
                    print(
                        f"{version} {op} {fn.__name__}: ok, {stats}, shared {kernel.metadata.shared} B",
                        flush=True,
                    )
                except Exception as error:  # noqa: BLE001 - reported, then the exit status says so
                    failed += 1
                    print(
                        f"{version} {op} {fn.__name__}: FAILED {str(error).splitlines()[-1][:300]}",
                        flush=True,
                    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
