"""Launch settings (warps, pipeline stages) of each chunked gated-delta-rule kernel, measured one kernel at a time.

Every kernel launches with 8 warps and 2 stages (`kernels.gated_delta_rule.chunk_triton.LAUNCH`), a choice made on
the H100 for the kernels with (C, K) tiles. The per-channel intra kernels work on (16, K) tiles and take 62% of
KDA's forward on the H200 (results/kernels-h200/profile.md), so they may want fewer warps. For each op and shape
this times forward and forward+backward with the defaults, then with each kernel at each setting of the grid (the
others at their defaults), checks that the outputs and gradients are those of the defaults (the maths does not
change; a setting that changes them is reported, never chosen), and ends with every kernel at its best setting
together.

    python scripts/gpu/tune_launch.py --out OUT --budget-s 240                       # KDA at 8x2048x16 and 32x512x2
    python scripts/gpu/tune_launch.py --ops kda,gdn,ssd --out OUT --budget-s 400
    python scripts/gpu/tune_launch.py --quick --out /tmp/tune                        # CPU (interpreter): checks the script

Writes tune_launch.jsonl (a line per measurement, as made) and tune_launch.md (per op and shape: each kernel's best
setting and the time it saves; then all best settings together) to --out. Once --budget-s has passed, no new
setting is tried; what was left is listed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels' module is imported

from kernels.bench import OPS, _inputs, _median_ms  # noqa: E402
from kernels.gated_delta_rule import gated_delta_rule  # noqa: E402
from kernels.gated_delta_rule.chunk_triton import KERNELS, LAUNCH, launch_settings  # noqa: E402

FORWARD = ("intra", "solve", "state", "output")
GRID = [dict(num_warps=w, num_stages=s) for w, s in itertools.product((2, 4, 8), (1, 2, 3))]
SHAPES = [
    (8, 2048, 16),
    (32, 512, 2),
]  # the benchmark's 16K tokens at 16 heads, and a synthetic suite's shape


def run(op: str, x: dict, backward: bool):
    gate, delta = OPS[op]
    o, _ = gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], gate=gate, delta=delta, impl="triton")
    if not backward:
        return [o]
    leaves = [t for name, t in x.items() if t is not None and name != "do"]
    return [o, *torch.autograd.grad(o, leaves, x["do"])]


def timed_ms(fn, cuda: bool) -> float:
    if cuda:
        return _median_ms(fn)
    start = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - start)


def same(results: list, reference: list) -> bool:
    """Outputs and gradients equal to the defaults' up to accumulation order and bf16 rounding (a relative RMS of
    5e-3, the GPU tests' bound against float64)."""
    for a, b in zip(results, reference, strict=True):
        a, b = a.double(), b.double()
        if ((a - b).pow(2).mean().sqrt() > 5e-3 * b.pow(2).mean().sqrt().clamp_min(1e-30)).item():
            return False
    return True


def measure(op: str, x: dict, cuda: bool) -> dict:
    with torch.no_grad():
        fwd = timed_ms(lambda: run(op, x, backward=False), cuda)
    both = timed_ms(lambda: run(op, x, backward=True), cuda)
    return dict(fwd_ms=round(fwd, 4), fwd_bwd_ms=round(both, 4))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ops", default="kda", help=f"comma-separated, of {', '.join(OPS)}")
    parser.add_argument("--budget-s", type=float, default=240.0)
    parser.add_argument("--quick", action="store_true", help="one tiny shape, the intra kernel, two settings")
    args = parser.parse_args(argv)
    ops = args.ops.split(",")
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        print(f"error: unknown op '{unknown[0]}'; expected some of {', '.join(OPS)}", file=sys.stderr)
        return 2
    cuda = torch.cuda.is_available() and not args.quick
    device = "cuda" if cuda else "cpu"
    shapes, kernels, grid = (
        ([(1, 40, 1)], ("intra",), GRID[:2]) if args.quick else (SHAPES, KERNELS, GRID)
    )  # fmt: skip
    dim = 16 if args.quick else 128
    args.out.mkdir(parents=True, exist_ok=True)
    log = (args.out / "tune_launch.jsonl").open("a")
    start, left, report = time.perf_counter(), [], []
    defaults = {name: dict(settings) for name, settings in LAUNCH.items()}

    def record(row: dict) -> None:
        log.write(json.dumps(row) + "\n")
        log.flush()
        print(json.dumps(row), flush=True)

    for op in ops:
        for B, T, H in shapes:
            torch.manual_seed(0)
            x = _inputs(op, B, T, grad=True, H=H, device=device, D=dim)
            x["do"] = torch.randn_like(x["v"])
            reference = run(op, x, backward=True)
            base = measure(op, x, cuda)
            shape = f"{B}x{T}x{H}"
            record(dict(op=op, shape=shape, kernel=None, settings="defaults", **base))
            best: dict[str, tuple[dict, dict]] = {}
            for kernel in kernels:
                for settings in grid:
                    if time.perf_counter() - start > args.budget_s:
                        left.append(f"{op} {shape} {kernel} {settings}")
                        continue
                    with launch_settings(**{kernel: settings}):
                        correct = same(run(op, x, backward=True), reference)
                        times = measure(op, x, cuda)
                    record(
                        dict(op=op, shape=shape, kernel=kernel, settings=settings, correct=correct, **times)
                    )
                    key = "fwd_ms" if kernel in FORWARD else "fwd_bwd_ms"
                    if correct and (kernel not in best or times[key] < best[kernel][1][key]):
                        best[kernel] = (settings, times)
            chosen = {k: s for k, (s, _) in best.items() if s != defaults[k]}
            with launch_settings(**chosen):
                together = measure(op, x, cuda)
                correct = same(run(op, x, backward=True), reference)
            record(dict(op=op, shape=shape, kernel="all best", settings=chosen, correct=correct, **together))
            report.append(f"### {op} at {shape}\n")
            report.append("| kernel | best setting | fwd ms | fwd+bwd ms |")
            report.append("|---|---|---|---|")
            report.append(
                f"| (defaults: 8 warps, 2 stages) | | {base['fwd_ms']:.3f} | {base['fwd_bwd_ms']:.3f} |"
            )
            for kernel, (settings, times) in best.items():
                text = f"{settings['num_warps']} warps, {settings['num_stages']} stages"
                report.append(f"| {kernel} | {text} | {times['fwd_ms']:.3f} | {times['fwd_bwd_ms']:.3f} |")
            mark = "" if correct else " (outputs differ: not usable)"
            report.append(
                f"| all best together{mark} | | {together['fwd_ms']:.3f} | {together['fwd_bwd_ms']:.3f} |\n"
            )
    if left:
        report.append(
            f"not tried (--budget-s {args.budget_s:g} passed): {len(left)} settings, from {left[0]}"
        )
    (args.out / "tune_launch.md").write_text("\n".join(report) + "\n")
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
