"""Kernel benchmark: the gated-delta-rule family against its PyTorch path, SDPA (flash) and fla, on one GPU.

    harness bench kernels --out results/kernels-h100

Per op and shape: median forward and forward+backward time, tokens/s, the forward's achieved bandwidth (the
floor's bytes: inputs read once, output written once) and FLOP rate, each against the device's ceilings
measured in the same run (a large device-to-device copy; a large bf16 matrix product). fla is timed when
importable, with its backend dispatch pinned off (FLA_DISABLE_BACKEND_DISPATCH=1: its plain Triton kernels).
A backward that raises (fla 0.6.0 refuses some on Hopper with Triton < 3.7.1) is reported as "refused".
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = [(8, 2048), (2, 8192), (1, 32768)]  # (B, T): 16K or 32K tokens
HEADS, HEAD_DIM, CHUNK = 16, 128, 64
# op -> (gate, delta); "ssd" is Mamba2's form (scalar gate, no delta rule)
OPS = {"kda": ("channel", True), "gdn": ("scalar", True), "ssd": ("scalar", False)}


@dataclass
class Row:
    op: str
    impl: str
    B: int
    T: int
    fwd_ms: float | None
    fwdbwd_ms: float | None
    tokens_per_s: float | None
    fwd_floor_ms: float
    fwd_gbps: float | None
    fwd_bw_frac: float | None
    fwd_tflops: float | None
    fwd_flop_frac: float | None
    note: str = ""


def _median_ms(fn, warmup=10, rep=40) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def measure_ceilings() -> dict:
    """Device-to-device copy bandwidth (bytes read + written) and bf16 matmul rate."""
    x = torch.randn(2**28, device="cuda", dtype=torch.float32)  # 1 GiB
    y = torch.empty_like(x)
    ms = _median_ms(lambda: y.copy_(x))
    bandwidth = 2 * x.numel() * 4 / (ms * 1e-3)
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = _median_ms(lambda: a @ b)
    flops = 2 * n**3 / (ms * 1e-3)
    return {"bandwidth_Bps": bandwidth, "bf16_flops": flops, "device": torch.cuda.get_device_name()}


def _inputs(op: str, B: int, T: int, grad: bool):
    gate, delta = OPS[op]
    H, D = HEADS, HEAD_DIM
    dev, bf16 = "cuda", torch.bfloat16
    q = F.normalize(torch.randn(B, T, H, D, device=dev), dim=-1).to(bf16)
    k = F.normalize(torch.randn(B, T, H, D, device=dev), dim=-1).to(bf16)
    v = torch.randn(B, T, H, D, device=dev, dtype=bf16)
    g = F.logsigmoid(torch.randn(B, T, H, *([D] if gate == "channel" else []), device=dev)) / 8
    beta = torch.rand(B, T, H, device=dev, dtype=bf16) if delta else None
    tensors = {"q": q, "k": k, "v": v, "g": g, "beta": beta}
    for x in tensors.values():
        if x is not None:
            x.requires_grad_(grad)
    return tensors


def _floor_bytes(op: str, B: int, T: int) -> int:
    """Forward: read q, k, v (bf16), g (float32), beta (bf16) once; write o (bf16) once."""
    gate, delta = OPS[op]
    n = B * T * HEADS
    return n * (
        3 * HEAD_DIM * 2 + (HEAD_DIM if gate == "channel" else 1) * 4 + (2 if delta else 0) + HEAD_DIM * 2
    )


def _flops(op: str, B: int, T: int) -> float:
    """REFERENCE.md §2: per head about 6 T d^2 + 3 T C d + T C^2 (forward)."""
    d, C = HEAD_DIM, CHUNK
    return B * HEADS * (6 * T * d * d + 3 * T * C * d + T * C * C)


def _ours(impl: str):
    from kernels.gated_delta_rule import gated_delta_rule

    def run(op, x):
        gate, delta = OPS[op]
        o, _ = gated_delta_rule(
            x["q"], x["k"], x["v"], x["g"], x["beta"], gate=gate, delta=delta, impl=impl, chunk_size=CHUNK
        )
        return o

    return run


def _fla():
    os.environ["FLA_DISABLE_BACKEND_DISPATCH"] = "1"
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        from fla.ops.kda import chunk_kda
        from fla.ops.simple_gla import chunk_simple_gla
    except Exception:  # noqa: BLE001 - fla is optional; any import failure means "not timed"
        return None

    def run(op, x):
        if op == "kda":
            o, _ = chunk_kda(x["q"], x["k"], x["v"], x["g"], x["beta"])
        elif op == "gdn":
            o, _ = chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"])
        else:
            o, _ = chunk_simple_gla(x["q"], x["k"], x["v"], g=x["g"])
        return o

    return run


def _sdpa(op, x):
    q, k, v = (t.transpose(1, 2) for t in (x["q"], x["k"], x["v"]))  # (B, H, T, D)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)


def _time(run, op, B, T) -> tuple[float | None, float | None, str]:
    notes = []
    x = _inputs(op, B, T, grad=False)
    with torch.no_grad():
        fwd = _median_ms(lambda: run(op, x))
    x = _inputs(op, B, T, grad=True)
    leaves = [t for t in x.values() if t is not None]
    do = torch.randn(B, T, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)

    def step():
        o = run(op, x)
        torch.autograd.grad(o, leaves, do)

    try:
        fwdbwd = _median_ms(step)
    except Exception as error:  # noqa: BLE001 - a refused or failing backward is reported, not fatal
        fwdbwd = None
        notes.append(f"backward refused: {str(error).splitlines()[0][:80]}")
    return fwd, fwdbwd, "; ".join(notes)


def bench_kernels(out: Path, ops: list[str] | None = None, shapes=None, torch_path: bool = True) -> list[Row]:
    """Time every implementation at every shape; write rows (CSV, JSON) and a markdown table under `out`."""
    ceilings = measure_ceilings()
    print(_summary(ceilings), flush=True)
    impls = {"triton": _ours("triton")}
    if torch_path:
        impls["torch"] = _ours("torch")
    fla = _fla()
    if fla is not None:
        impls["fla-0.6.0" if _fla_version() == "0.6.0" else f"fla-{_fla_version()}"] = fla
    rows = []
    for i, (B, T) in enumerate(shapes or SHAPES):
        for op in ops or list(OPS):
            for name, run in impls.items():
                if name == "torch" and i > 0:
                    # the PyTorch path is 5-10x slower and its Python loop over chunks grows with T: one shape
                    continue
                rows.append(_row(op, name, B, T, run, ceilings))
                print(_markdown([rows[-1]], header=len(rows) == 1), flush=True)
        rows.append(_row("sdpa", "torch-flash", B, T, _sdpa, ceilings, op_inputs="gdn"))
        print(_markdown([rows[-1]], header=False), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    import pandas as pd

    pd.DataFrame([asdict(r) for r in rows]).to_csv(out / "kernels.csv", index=False)
    (out / "kernels.json").write_text(
        json.dumps({"ceilings": ceilings, "env": _env(), "rows": [asdict(r) for r in rows]}, indent=1)
    )
    (out / "kernels.md").write_text(_summary(ceilings) + "\n\n" + _markdown(rows) + "\n")
    return rows


def _row(op, name, B, T, run, ceilings, op_inputs=None) -> Row:
    torch.cuda.empty_cache()
    floor_ms = _floor_bytes(op_inputs or op, B, T) / ceilings["bandwidth_Bps"] * 1e3
    try:
        fwd, fwdbwd, note = _time(run, op_inputs or op, B, T)
    except Exception as error:  # noqa: BLE001 - e.g. out of memory for the PyTorch path at 32K tokens
        fwd, fwdbwd, note = None, None, f"failed: {str(error).splitlines()[0][:80]}"
    flops = 2 * B * HEADS * T * T * HEAD_DIM if op == "sdpa" else _flops(op, B, T)
    return Row(
        op=op,
        impl=name,
        B=B,
        T=T,
        fwd_ms=fwd,
        fwdbwd_ms=fwdbwd,
        tokens_per_s=None if fwd is None else B * T / (fwd * 1e-3),
        fwd_floor_ms=floor_ms,
        fwd_gbps=None if fwd is None else _floor_bytes(op_inputs or op, B, T) / (fwd * 1e-3) / 1e9,
        fwd_bw_frac=None if fwd is None else floor_ms / fwd,
        fwd_tflops=None if fwd is None else flops / (fwd * 1e-3) / 1e12,
        fwd_flop_frac=None if fwd is None else flops / (fwd * 1e-3) / ceilings["bf16_flops"],
        note=note,
    )


def _fla_version() -> str:
    from importlib.metadata import version

    try:
        return version("fla-core")
    except Exception:  # noqa: BLE001
        return "unknown"


def _env() -> dict:
    import triton

    return {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda}


def _summary(c) -> str:
    return (
        f"device: {c['device']}; measured copy bandwidth {c['bandwidth_Bps'] / 1e12:.2f} TB/s, "
        f"bf16 matmul {c['bf16_flops'] / 1e12:.0f} TFLOP/s; {_env()}"
    )


def _fmt(x, spec):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _markdown(rows: list[Row], header: bool = True) -> str:
    lines = []
    if header:
        lines.append(
            "| op | impl | B×T | fwd ms | fwd+bwd ms | Mtok/s (fwd) | floor ms | fwd / floor | fwd TFLOP/s | note |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = None if r.fwd_ms is None else r.fwd_ms / r.fwd_floor_ms
        lines.append(
            f"| {r.op} | {r.impl} | {r.B}×{r.T} | {_fmt(r.fwd_ms, '.3f')} | {_fmt(r.fwdbwd_ms, '.3f')} | "
            f"{_fmt(None if r.tokens_per_s is None else r.tokens_per_s / 1e6, '.1f')} | {r.fwd_floor_ms:.3f} | "
            f"{_fmt(ratio, '.1f')} | {_fmt(r.fwd_tflops, '.1f')} | {r.note} |"
        )
    return "\n".join(lines)
