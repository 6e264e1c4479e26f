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


def test_an_implementation_not_compiled_within_the_warm_budget_is_named(tmp_path, monkeypatch):
    # a stand-in for `python -m kernels.bench warm OP IMPL SHAPES`: "slow" compiles for longer than the budget
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\n[ "$5" = slow ] && sleep 30\necho "warm $4/$5"\n')
    fake.chmod(0o755)
    monkeypatch.setattr(bench.sys, "executable", str(fake))
    report, unwarmed = bench.warm_caches(["kda", "gdn"], ["fast", "slow"], [(1, 64, 2)], timeout_s=2.0)
    assert unwarmed == {("kda", "slow"), ("gdn", "slow")}
    assert "kda/fast: rc 0" in report and "gdn/slow: killed at the warm budget" in report


def test_rows_timed_implementation_by_implementation_are_tabled_by_shape(tmp_path):
    def row(op, impl, T):
        return bench.Row(op, impl, 1, T, 2, 1.0, None, None, 0.1, None, None, None, None)

    writer = bench.Writer(tmp_path, {"bandwidth_Bps": 1e12, "bf16_flops": 1e15})
    timed = [row("kda", "triton", 256), row("gdn", "triton", 256), row("kda", "triton", 512)]
    timed += [row("kda", "fla", 256), row("kda", "fla", 512)]
    writer.rows = timed
    assert [(r.T, r.op, r.impl) for r in writer.by_shape()] == [
        (256, "kda", "triton"),
        (256, "kda", "fla"),
        (256, "gdn", "triton"),
        (512, "kda", "triton"),
        (512, "kda", "fla"),
    ]


def test_the_benchmark_times_fla_last_and_keeps_what_came_before(tmp_path, monkeypatch):
    """bench_kernels' control flow with stand-ins for everything that needs CUDA: each implementation is warmed
    up just before its first row and timed at every shape before the next, fla last and after a profile of the
    others; an (op, impl) its warm budget could not compile is not run, and its rows say so."""
    events = []
    impls = {"triton": "ours", "fla-0.6.0": "fla", "sdpa-flash": "sdpa"}
    monkeypatch.setattr(bench, "_impls", lambda torch_path, only=None: dict(impls))
    monkeypatch.setattr(bench, "warm_caches", lambda ops, names, shapes, budget: ("", {("gdn", "fla-0.6.0")}))
    monkeypatch.setattr(bench, "measure_ceilings", lambda: {"bandwidth_Bps": 1e12, "bf16_flops": 1e15})
    monkeypatch.setattr(bench, "_summary", lambda ceilings: "summary")
    monkeypatch.setattr(bench, "_once", lambda run, op, B, T, H: events.append(("warm-up", op, run)) or "")

    def row(op, name, B, T, H, run, ceilings, refused, budget):
        events.append(("row", op, name, T))
        return bench.Row(op, name, B, T, H, 1.0, 2.0, None, 0.1, None, None, None, None)

    monkeypatch.setattr(bench, "_row", row)
    monkeypatch.setattr(
        bench, "_write_profile", lambda out, ops, named, *rest: events.append(("profile", *named))
    )
    rows = bench.bench_kernels(
        tmp_path, ops=["kda", "gdn"], shapes=[(1, 256, 2), (1, 512, 2)], torch_path=False
    )

    assert events == [
        ("warm-up", "kda", "ours"),
        ("row", "kda", "triton", 256),
        ("warm-up", "gdn", "ours"),
        ("row", "gdn", "triton", 256),
        ("row", "kda", "triton", 512),
        ("row", "gdn", "triton", 512),
        ("row", "sdpa", "sdpa-flash", 256),
        ("row", "sdpa", "sdpa-flash", 512),
        ("profile", "triton", "sdpa-flash"),
        ("warm-up", "kda", "fla"),
        ("row", "kda", "fla-0.6.0", 256),
        ("row", "kda", "fla-0.6.0", 512),
        ("profile", "triton", "fla-0.6.0", "sdpa-flash"),
    ]
    untimed = [r for r in rows if r.impl == "fla-0.6.0" and r.op == "gdn"]
    assert len(untimed) == 2 and all(r.fwd_ms is None and "warm budget" in r.note for r in untimed)
    table = (tmp_path / "kernels.md").read_text()
    assert table.index("| kda | fla-0.6.0 | 1×256×2") < table.index("| kda | triton | 1×512×2")


def test_the_launch_tuning_script_runs_in_its_quick_mode(tmp_path):
    """scripts/gpu/tune_launch.py --quick: the intra kernel at two settings in the interpreter, each checked
    against the defaults' outputs, and a table of the best."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[2]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1", TRITON_INTERPRET="1")
    script = root / "scripts" / "gpu" / "tune_launch.py"
    subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path)], check=True, env=env,
                   capture_output=True, timeout=300)  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "tune_launch.jsonl").read_text().splitlines()]
    assert [r["kernel"] for r in rows] == [None, "intra", "intra", "all best"]
    assert all(r["correct"] for r in rows[1:]) and all(r["fwd_bwd_ms"] > 0 for r in rows)
    assert "| intra |" in (tmp_path / "tune_launch.md").read_text()
    bad = subprocess.run([sys.executable, str(script), "--ops", "kdaa", "--out", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert (
        bad.returncode == 2
        and bad.stderr.strip() == "error: unknown op 'kdaa'; expected some of kda, gdn, ssd"
    )
