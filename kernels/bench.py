"""Kernel benchmark: the gated-delta-rule family against its PyTorch path, SDPA (flash) and fla, on one GPU.

    harness bench kernels --out results/kernels-h100

Per op and shape: median forward and forward+backward time, tokens/s, the forward's achieved bandwidth (the
floor's bytes: inputs read once, output written once) and FLOP rate, each against the device's ceilings
measured in the same run (a large device-to-device copy; a large bf16 matrix product). fla is timed when
importable, with its backend dispatch pinned off (FLA_DISABLE_BACKEND_DISPATCH=1: its plain Triton kernels).
A backward that raises (fla 0.6.0 refuses some on Hopper with Triton < 3.7.1) is reported as "refused".

Compilation and autotuning happen outside the timed regions and take longer than the timing itself, so:
    1. warm: one subprocess per (op, impl) runs the forward and backward once at every shape, all at once,
       filling Triton's on-disk caches (compiled kernels; fla's autotuning results) on several CPU cores;
    2. each (op, impl) runs once more in this process before the shape loop (loads from the caches);
    3. each (op, impl, shape) gets a time budget; a row past it is written with what was measured.
Every row is printed and saved (markdown and JSON under --out) as soon as it is measured, so a run cut short
still leaves its rows. After the first shape's rows, a per-kernel profile (torch.profiler device time by kernel
name) of the forward and of forward+backward at that shape.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from kernels.gated_delta_rule import gated_delta_rule

SHAPES = [(8, 2048), (2, 8192), (1, 32768)]  # (B, T) at HEADS heads: 16K or 32K tokens
HEADS, HEAD_DIM, CHUNK = 16, 128, 64
# The synthetic-task suites' shapes (B, T, H): 2 heads of 128, batch 32
SYNTHETIC_SHAPES = [(32, 256, 2), (32, 512, 2), (32, 1024, 2), (32, 2048, 2)]
SHAPE_SETS = {"default": SHAPES, "synthetic": SYNTHETIC_SHAPES, "all": SHAPES + SYNTHETIC_SHAPES}
# The Triton kernels' versions: "triton" is the current one, "triton-v2" the previous (timed side by side)
TRITON_VERSIONS = {"triton": "v3", "triton-v2": "v2"}
DEVICE = "cuda"
# op -> (gate, delta); "ssd" is Mamba2's form (scalar gate, no delta rule)
OPS = {"kda": ("channel", True), "gdn": ("scalar", True), "ssd": ("scalar", False)}
# Seconds: one (op, impl, shape) row; the warm subprocesses all together; one in-process warm-up.
# fla's KDA took 71 s to autotune in-process with its kernels compiled (H200, 2026-12-02): the in-process budget
# leaves it room (the budget cannot interrupt a compilation, only the Python between them)
ROW_BUDGET_S, WARM_BUDGET_S, WARMUP_BUDGET_S = 15.0, 120.0, 150.0


@dataclass
class Row:
    op: str
    impl: str
    B: int
    T: int
    H: int
    fwd_ms: float | None
    fwdbwd_ms: float | None
    tokens_per_s: float | None
    fwd_floor_ms: float
    fwd_gbps: float | None
    fwd_bw_frac: float | None
    fwd_tflops: float | None
    fwd_flop_frac: float | None
    note: str = ""


class OverBudget(Exception):
    pass


@contextmanager
def budget(seconds: float):
    """Raise OverBudget in this (main) thread once `seconds` have passed; a CUDA call in flight finishes first."""

    def expire(signum, frame):
        raise OverBudget(f"over its {seconds:.0f} s budget")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _median_ms(fn, warmup=5, rep=30) -> float:
    import triton.testing  # optional: the benchmark runs only where Triton and CUDA are

    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def measure_ceilings() -> dict:
    """Device-to-device copy bandwidth (bytes read + written) and bf16 matmul rate."""
    x = torch.randn(2**27, device=DEVICE, dtype=torch.float32)  # 512 MiB
    y = torch.empty_like(x)
    ms = _median_ms(lambda: y.copy_(x))
    bandwidth = 2 * x.numel() * 4 / (ms * 1e-3)
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = _median_ms(lambda: a @ b)
    flops = 2 * n**3 / (ms * 1e-3)
    return {"bandwidth_Bps": bandwidth, "bf16_flops": flops, "device": torch.cuda.get_device_name()}


def parse_shapes(spec: str) -> list[tuple[int, int, int]]:
    """Shapes (B, T, H) from "default", "synthetic", "all", or comma-separated BxT or BxTxH (H: HEADS by default)."""
    if spec in SHAPE_SETS:
        return [_full_shape(s) for s in SHAPE_SETS[spec]]
    shapes = []
    for item in spec.split(","):
        parts = [int(x) for x in item.lower().split("x")]
        if len(parts) not in (2, 3):
            raise ValueError(f"shape '{item}': expected BxT or BxTxH")
        shapes.append(_full_shape(parts))
    return shapes


def _full_shape(shape) -> tuple[int, int, int]:
    B, T, *H = shape
    return int(B), int(T), int(H[0]) if H else HEADS


def _inputs(op: str, B: int, T: int, grad: bool, H: int = HEADS, device: str = DEVICE, D: int = HEAD_DIM):
    gate, delta = OPS[op]
    dev = device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32  # bf16 is wrong in the interpreter
    q = F.normalize(torch.randn(B, T, H, D, device=dev), dim=-1).to(dtype)
    k = F.normalize(torch.randn(B, T, H, D, device=dev), dim=-1).to(dtype)
    v = torch.randn(B, T, H, D, device=dev, dtype=dtype)
    g = F.logsigmoid(torch.randn(B, T, H, *([D] if gate == "channel" else []), device=dev)) / 8
    beta = torch.rand(B, T, H, device=dev, dtype=dtype) if delta else None
    tensors = {"q": q, "k": k, "v": v, "g": g, "beta": beta}
    for x in tensors.values():
        if x is not None:
            x.requires_grad_(grad)
    return tensors


def _floor_bytes(op: str, B: int, T: int, H: int = HEADS) -> int:
    """Forward: read q, k, v (bf16), g (float32), beta (bf16) once; write o (bf16) once."""
    gate, delta = OPS[op]
    n = B * T * H
    return n * (
        3 * HEAD_DIM * 2 + (HEAD_DIM if gate == "channel" else 1) * 4 + (2 if delta else 0) + HEAD_DIM * 2
    )


def _flops(op: str, B: int, T: int, H: int = HEADS) -> float:
    """docs/reference.md §2: per head about 6 T d^2 + 3 T C d + T C^2 (forward)."""
    d, C = HEAD_DIM, CHUNK
    return B * H * (6 * T * d * d + 3 * T * C * d + T * C * C)


def _ours(impl: str, version: str | None = None):
    def run(op, x):
        gate, delta = OPS[op]
        # the backward runs the version its forward ran
        with _kernels_version(version):
            o, _ = gated_delta_rule(
                x["q"], x["k"], x["v"], x["g"], x["beta"], gate=gate, delta=delta, impl=impl, chunk_size=CHUNK
            )
        return o

    return run


@contextmanager
def _kernels_version(version: str | None):
    if version is None:
        yield
        return
    from kernels.gated_delta_rule.chunk_triton import kernels_version  # needs Triton: only where it is timed

    with kernels_version(version):
        yield


def _fla():
    os.environ["FLA_DISABLE_BACKEND_DISPATCH"] = "1"
    try:  # fla is optional: a reference to time against where it is installed
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

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)


def _impls(torch_path: bool, only: list[str] | None = None) -> dict[str, Callable]:
    """Implementations by row name; `only` keeps those whose name starts with one of its entries (e.g. "triton",
    "triton-v2", "fla", "sdpa", "torch")."""
    impls = {name: _ours("triton", version) for name, version in TRITON_VERSIONS.items()}
    if torch_path:
        impls["torch"] = _ours("torch")
    fla = _fla() if not only or any(o.startswith("fla") for o in only) else None
    if fla is not None:
        impls[f"fla-{_fla_version()}"] = fla
    impls["sdpa-flash"] = _sdpa
    if only:
        impls = {
            n: r for n, r in impls.items() if any(n == o or (n.startswith(o) and o != "triton") for o in only)
        }
    return impls


def _compiled(impls) -> list[str]:
    return [name for name in impls if name.startswith("triton") or name.startswith("fla")]


def _step(run, op, x, do):
    """One forward and backward through `run`."""
    o = run(op, x)
    # SDPA does not use g and beta
    torch.autograd.grad(o, [t for t in x.values() if t is not None], do, allow_unused=True)


def _once(run, op, B, T, H=HEADS, backward: bool = True) -> str:
    """Run the forward and (if it is not refused) the backward once; returns a note."""
    x = _inputs(op, B, T, grad=True, H=H)
    with torch.no_grad():
        run(op, x)
    if backward:
        try:
            _step(run, op, x, torch.randn_like(x["v"]))
        except OverBudget:
            raise
        except Exception as error:  # noqa: BLE001 - a refused backward is reported, not fatal
            return f"backward refused: {str(error).splitlines()[0][:80]}"
    torch.cuda.synchronize()
    return ""


def _time(run, op, B, T, H, refused: str) -> tuple[float | None, float | None, str]:
    notes = []
    fwd = fwdbwd = None
    try:
        x = _inputs(op, B, T, grad=False, H=H)
        with torch.no_grad():
            fwd = _median_ms(lambda: run(op, x))
        if refused:
            notes.append(refused)
        else:
            x = _inputs(op, B, T, grad=True, H=H)
            do = torch.randn_like(x["v"])
            try:
                fwdbwd = _median_ms(lambda: _step(run, op, x, do))
            except OverBudget:
                raise
            except Exception as error:  # noqa: BLE001 - a refused or failing backward is reported, not fatal
                notes.append(f"backward refused: {str(error).splitlines()[0][:80]}")
    except OverBudget as error:
        notes.append(str(error))
    return fwd, fwdbwd, "; ".join(notes)


def warm_caches(
    ops: list[str], impls: list[str], shapes, timeout_s: float = WARM_BUDGET_S
) -> tuple[str, set[tuple[str, str]]]:
    """One subprocess per (op, impl) runs every shape once (filling Triton's disk caches), all at once. Returns
    the report and the (op, impl) pairs killed at the budget: those are not cached, and compiling them in the
    benchmark's process (fla's KDA compiles and autotunes for minutes) would stall every row after them."""
    procs = []
    for op in ops:
        for impl in impls:
            cmd = [sys.executable, "-m", "kernels.bench", "warm", op, impl, json.dumps(shapes)]
            # autotuning on a shared GPU would pick configurations by contended timings: cache compilation only
            env = dict(os.environ, FLA_CACHE_RESULTS="0")
            # a session of its own: killing it at the budget kills what it started too (compilers), so that
            # nothing keeps its output pipe open
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                start_new_session=True,
            )
            procs.append((op, impl, proc))
    deadline = time.time() + timeout_s
    report, unwarmed = [], set()
    for op, impl, proc in procs:
        try:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.time()))
            tail = out.strip().splitlines()[-1:] if proc.returncode else []
            report.append(f"{op}/{impl}: rc {proc.returncode}{' ' + tail[0][:100] if tail else ''}")
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            report.append(f"{op}/{impl}: killed at the warm budget")
            unwarmed.add((op, impl))
    return "; ".join(report), unwarmed


def _warm_main(op: str, impl: str, shapes: list) -> None:
    run = _impls(torch_path=impl == "torch", only=[impl])[impl]
    for B, T, H in (_full_shape(s) for s in shapes):
        start = time.time()
        note = _once(run, op, B, T, H)
        print(f"warm {op}/{impl} {B}x{T}x{H}: {time.time() - start:.1f} s {note}", flush=True)


class Writer:
    """Rows as markdown and JSON under `out`, rewritten after every row."""

    def __init__(self, out: Path, ceilings: dict):
        self.out, self.ceilings, self.rows, self.extra = out, ceilings, [], {}
        out.mkdir(parents=True, exist_ok=True)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(_markdown([row], header=len(self.rows) == 1), flush=True)
        self.save()

    def by_shape(self) -> list[Row]:
        """The rows in the order of the tables: by shape as first timed, then op, then implementation."""
        first = {}
        for index, row in enumerate(self.rows):
            first.setdefault((row.B, row.T, row.H), index)
            first.setdefault(row.op, index)
        return sorted(self.rows, key=lambda r: (first[r.B, r.T, r.H], first[r.op]))

    def save(self) -> None:
        data = {
            "ceilings": self.ceilings,
            "env": _env(),
            **self.extra,
            "rows": [asdict(r) for r in self.rows],
        }
        (self.out / "kernels.json").write_text(json.dumps(data, indent=1))
        text = _summary(self.ceilings) + "\n\n" + _markdown(self.by_shape()) + "\n"
        for name, value in self.extra.items():
            if isinstance(value, str):
                text += f"\n{name}: {value}\n"
        (self.out / "kernels.md").write_text(text)


def bench_kernels(
    out: Path,
    ops: list[str] | None = None,
    shapes=None,
    torch_path: bool = True,
    warm: bool = True,
    profile: bool = True,
    row_budget_s: float = ROW_BUDGET_S,
    warm_budget_s: float = WARM_BUDGET_S,
    only: list[str] | None = None,
) -> list[Row]:
    """Time every implementation at every shape; write rows (JSON, markdown) and a per-kernel profile under `out`."""
    ops, shapes = ops or list(OPS), [_full_shape(s) for s in (shapes or SHAPES)]
    impls = _impls(torch_path, only)
    started = time.time()
    warm_report, unwarmed = "", set()
    if warm:
        warm_report, unwarmed = warm_caches(ops, _compiled(impls), shapes, warm_budget_s)
        print(f"warm ({time.time() - started:.0f} s): {warm_report}", flush=True)
    ceilings = measure_ceilings()
    print(_summary(ceilings), flush=True)
    writer = Writer(out, ceilings)
    writer.extra["warm"] = warm_report
    refused: dict[tuple[str, str], str] = {}
    skipped: dict[tuple[str, str], str] = {}  # not timed: their rows carry the reason
    for op in ops:
        for name in _compiled(impls):
            if (op, name) in unwarmed:
                skipped[op, name] = f"not compiled within the {warm_budget_s:.0f} s warm budget"

    def warm_up(op: str, name: str) -> None:
        """In-process warm-up before the first row of (op, name), not of all of them first: a slow one (fla's KDA
        autotunes for over a minute) delays its own rows, not those already timed. Loads the compiled kernels and
        learns whether the backward is refused."""
        if (op, name) in refused or (op, name) in skipped or name == "sdpa-flash":
            return
        start = time.time()
        try:
            with budget(WARMUP_BUDGET_S):
                refused[op, name] = _once(impls[name], op, *shapes[0])
        except Exception as error:  # noqa: BLE001 - over budget or failing: its rows say so
            refused[op, name] = f"warm-up failed: {str(error).splitlines()[0][:80]}"
        print(f"warm-up {op}/{name}: {time.time() - start:.1f} s {refused[op, name]}", flush=True)

    # fla last (its warm-up is the slow one), each implementation at every shape before the next: a run cut off
    # keeps every row of what came before; the tables list rows by shape all the same
    order = sorted(impls, key=lambda name: name.startswith("fla"))
    first_fla = next((name for name in order if name.startswith("fla")), None)
    for name in order:
        if profile and name == first_fla:
            # the profile of the others before fla's rows, so that a run cut off in them still has it
            ours = {n: impls[n] for n in impls if not n.startswith("fla")}
            _write_profile(out, ops, ours, refused, shapes[0], set(skipped))
        for i, (B, T, H) in enumerate(shapes):
            for op in [*ops, "sdpa"]:
                if (op == "sdpa") != (name == "sdpa-flash") or (name == "torch" and i > 0):
                    # the PyTorch path is 5-10x slower and its Python loop over chunks grows with T: one shape
                    continue
                if (op, name) in skipped:
                    writer.add(_result_row(op, name, B, T, H, ceilings, None, None, skipped[op, name]))
                    continue
                warm_up(op, name)
                row = _row(
                    op, name, B, T, H, impls[name], ceilings, refused.get((op, name), ""), row_budget_s
                )
                writer.add(row)
    if profile:
        _write_profile(out, ops, impls, refused, shapes[0], set(skipped))
    writer.extra["bench_s"] = round(time.time() - started, 1)
    writer.save()
    return writer.rows


def _write_profile(out: Path, ops, impls, refused, shape, skipped=frozenset()) -> None:
    compiled = {n: impls[n] for n in _compiled(impls)}
    tables = profile_kernels(ops, compiled, refused, shape, skipped)
    text = "\n\n".join(_profile_markdown(t) for t in tables)
    print(text, flush=True)
    (out / "profile.md").write_text(
        f"Device time per kernel at B×T×H = {shape[0]}×{shape[1]}×{shape[2]}\n\n" + text + "\n"
    )
    (out / "profile.json").write_text(json.dumps(tables, indent=1))


def _row(op, name, B, T, H, run, ceilings, refused, row_budget_s) -> Row:
    torch.cuda.empty_cache()
    try:
        with budget(row_budget_s):
            fwd, fwdbwd, note = _time(run, "gdn" if op == "sdpa" else op, B, T, H, refused)
    except Exception as error:  # noqa: BLE001 - e.g. out of memory for the PyTorch path at 32K tokens
        fwd, fwdbwd, note = None, None, f"failed: {str(error).splitlines()[0][:80]}"
    return _result_row(op, name, B, T, H, ceilings, fwd, fwdbwd, note)


def _result_row(op, name, B, T, H, ceilings, fwd, fwdbwd, note) -> Row:
    """A row of the table from its times (None: not timed, `note` says why)."""
    inputs_of = "gdn" if op == "sdpa" else op
    floor_ms = _floor_bytes(inputs_of, B, T, H) / ceilings["bandwidth_Bps"] * 1e3
    flops = 2 * B * H * T * T * HEAD_DIM if op == "sdpa" else _flops(op, B, T, H)
    return Row(
        op=op,
        impl=name,
        B=B,
        T=T,
        H=H,
        fwd_ms=fwd,
        fwdbwd_ms=fwdbwd,
        tokens_per_s=None if fwd is None else B * T / (fwd * 1e-3),
        fwd_floor_ms=floor_ms,
        fwd_gbps=None if fwd is None else _floor_bytes(inputs_of, B, T, H) / (fwd * 1e-3) / 1e9,
        fwd_bw_frac=None if fwd is None else floor_ms / fwd,
        fwd_tflops=None if fwd is None else flops / (fwd * 1e-3) / 1e12,
        fwd_flop_frac=None if fwd is None else flops / (fwd * 1e-3) / ceilings["bf16_flops"],
        note=note,
    )


def profile_kernels(ops, impls, refused, shape, skipped=frozenset()) -> list[dict]:
    """Device time per kernel name (ms per call), forward and forward+backward, one table per (op, impl, pass)."""
    B, T, H = shape
    tables = []
    for op in ops:
        for name, run in impls.items():
            if (op, name) in skipped:
                continue
            for backward in (False, True):
                if backward and refused.get((op, name)):
                    continue
                table = {"op": op, "impl": name, "pass": "fwd+bwd" if backward else "fwd", "kernels": []}
                try:
                    with budget(ROW_BUDGET_S):
                        table["kernels"] = _profile_one(run, op, B, T, H, backward)
                except Exception as error:  # noqa: BLE001 - a profile that fails leaves a note
                    table["error"] = str(error).splitlines()[0][:100]
                tables.append(table)
    return tables


def _profile_one(run, op, B, T, H, backward: bool, iters: int = 5) -> list[dict]:
    x = _inputs(op, B, T, grad=backward, H=H)
    do = torch.randn_like(x["v"])
    with torch.set_grad_enabled(backward):
        for i in range(iters + 1):
            if i == 1:  # the first call outside the profile
                torch.cuda.synchronize()
                prof = profile(activities=[ProfilerActivity.CUDA])
                prof.__enter__()
            _step(run, op, x, do) if backward else run(op, x)
        torch.cuda.synchronize()
        prof.__exit__(None, None, None)
    kernels = []
    for evt in prof.key_averages():
        us = getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0)
        if us > 0:
            kernels.append({"kernel": evt.key[:60], "calls": evt.count // iters, "ms": us / iters / 1e3})
    return sorted(kernels, key=lambda k: -k["ms"])


def _profile_markdown(table: dict) -> str:
    total = sum(k["ms"] for k in table["kernels"])
    lines = [f"{table['op']} / {table['impl']} / {table['pass']}: {total:.3f} ms of kernels"]
    if table.get("error"):
        lines.append(f"(profile failed: {table['error']})")
    lines += ["", "| kernel | calls | ms | share |", "|---|---|---|---|"]
    for k in table["kernels"][:14]:
        lines.append(f"| {k['kernel']} | {k['calls']} | {k['ms']:.3f} | {k['ms'] / max(total, 1e-9):.0%} |")
    return "\n".join(lines)


def _fla_version() -> str:

    try:
        return version("fla-core")
    except Exception:  # noqa: BLE001
        return "unknown"


def _env() -> dict:
    import triton  # optional: the benchmark runs only where Triton and CUDA are

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
            "| op | impl | B×T×H | fwd ms | fwd+bwd ms | Mtok/s (fwd) | floor ms | fwd / floor | fwd TFLOP/s | note |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = None if r.fwd_ms is None else r.fwd_ms / r.fwd_floor_ms
        lines.append(
            f"| {r.op} | {r.impl} | {r.B}×{r.T}×{r.H} | {_fmt(r.fwd_ms, '.3f')} | {_fmt(r.fwdbwd_ms, '.3f')} | "
            f"{_fmt(None if r.tokens_per_s is None else r.tokens_per_s / 1e6, '.1f')} | {r.fwd_floor_ms:.3f} | "
            f"{_fmt(ratio, '.1f')} | {_fmt(r.fwd_tflops, '.1f')} | {r.note} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    # python -m kernels.bench warm OP IMPL SHAPES_JSON: the warm subprocess of `warm_caches`;
    # python -m kernels.bench warm-all BUDGET_S [SHAPES [IMPLS]]: every one of them (e.g. in the background while
    # tests run); SHAPES as `parse_shapes` takes them, IMPLS comma-separated as `_impls(only=...)`
    if len(sys.argv) == 5 and sys.argv[1] == "warm":
        _warm_main(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))
    elif 3 <= len(sys.argv) <= 5 and sys.argv[1] == "warm-all":
        shapes = parse_shapes(sys.argv[3]) if len(sys.argv) > 3 else SHAPES
        only = sys.argv[4].split(",") if len(sys.argv) > 4 else None
        compiled = _compiled(_impls(torch_path=False, only=only))
        print(warm_caches(list(OPS), compiled, shapes, float(sys.argv[2]))[0], flush=True)
    else:
        sys.exit(
            "usage: python -m kernels.bench warm OP IMPL SHAPES_JSON | warm-all BUDGET_S [SHAPES [IMPLS]]"
        )
