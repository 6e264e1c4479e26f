"""`harness bench models` on the CPU with tiny models: the rows it writes (every metric, the cache measured from the
tensors equal to cache_bytes, the memory floor from the measured bandwidth), refusals and out-of-memory as rows,
a prefill past its budget, resuming, and the command end to end with its table and figures."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness.analysis.labels import length_text
from harness.errors import HarnessError
from harness.results.store import ResultStore
from harness.run.bench_models import (
    Bench,
    BenchSettings,
    Case,
    parse_length,
    plan_cases,
    resolve_models,
    weight_bytes,
)
from models.backbone import LanguageModel

ROOT = Path(__file__).resolve().parents[3]
FAST = BenchSettings(
    decode_steps=2, warmup_steps=1, train_steps=1, prefill_chunk=16, vocab_size=64, device="cpu"
)
CASES = [Case("infer", 1, 40), Case("infer", 3, 24), Case("train", 2, 16)]


def test_lengths_and_cases():
    assert [parse_length(t) for t in ("4K", "1M", "300", "0.5K")] == [4096, 1 << 20, 300, 512]
    assert length_text(32768) == "32K" and length_text(1 << 20) == "1M" and length_text(300) == "300"
    cases = plan_cases("4K,32K", "64x4K", "4K,32K", 32768)
    assert cases == [
        Case("infer", 1, 4096), Case("infer", 1, 32768), Case("infer", 64, 4096),
        Case("train", 8, 4096), Case("train", 1, 32768),
    ]  # fmt: skip
    assert cases[0].slice == "context=4096,batch=1"
    for bad in (dict(contexts="4Q"), dict(contexts="", batched="4K"), dict(contexts="")):
        with pytest.raises(HarnessError):
            plan_cases(**bad)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    store = ResultStore(tmp_path_factory.mktemp("bench"))
    models = resolve_models(["mla", "kimi"], "tiny", FAST)
    lines = []
    bench = Bench(FAST, store, on_line=lines.append)
    bench.run(models, CASES)
    return store, models, bench, lines


def test_every_case_writes_its_rows(measured):
    store, models, bench, lines = measured
    rows = store.read()
    assert set(rows["status"]) == {"ok"} and set(rows["suite"]) == {"bench"}
    assert len(store.done()) == len(models) * len(CASES)
    infer = rows[rows["task"] == "decode"]
    assert set(infer["metric"]) == {
        "decode_ms_per_token", "decode_tokens_per_s", "cache_bytes", "decode_floor_ms", "floor_fraction",
        "peak_memory_gib",
    }  # fmt: skip
    assert set(rows[rows["task"] == "prefill"]["metric"]) == {
        "prefill_ms",
        "prefill_tokens_per_s",
        "peak_memory_gib",
    }
    assert set(rows[rows["task"] == "train"]["metric"]) == {"train_tokens_per_s", "peak_memory_gib"}
    assert set(rows["slice"]) == {"context=40,batch=1", "context=24,batch=3", "context=16,batch=2"}
    assert set(infer["kernel_impl"]) == {"sdpa+eager (no CUDA)", "gdr:torch+sdpa+eager (no CUDA)"}
    assert (rows["value"] > 0).all() and rows["git_commit"].notna().all()
    assert len(lines) == len(models) * len(CASES) + 1 and lines[0].startswith("device: cpu")


def test_cache_is_measured_and_the_floor_follows_from_it(measured):
    store, models, bench, _ = measured
    rows = store.read()
    for spec in models:
        model = LanguageModel(spec.config)
        for case in (c for c in CASES if c.kind == "infer"):
            got = rows[(rows["model"] == spec.token) & (rows["slice"] == case.slice)].set_index("metric")[
                "value"
            ]
            # the bytes the cache's tensors hold per sequence are what the model says (no row carries an error)
            assert got["cache_bytes"] == model.cache_bytes(case.context, torch.float32)
            floor = 1e3 * (weight_bytes(model) + case.batch * got["cache_bytes"]) / bench.bandwidth
            assert got["decode_floor_ms"] == pytest.approx(floor)
            assert got["floor_fraction"] == pytest.approx(floor / got["decode_ms_per_token"])
            assert got["decode_tokens_per_s"] == pytest.approx(case.batch * 1e3 / got["decode_ms_per_token"])
    assert rows["error"].isna().all()


def test_a_rerun_skips_what_the_store_has(measured):
    store, models, _, _ = measured
    before = len(store.read())
    lines = []
    assert Bench(FAST, store, on_line=lines.append).run(models, CASES) == []
    assert len(store.read()) == before and sum("already in" in line for line in lines) == len(models) * len(
        CASES
    )


def test_refusals_and_out_of_memory_are_rows(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    models = resolve_models(["kda"], "tiny", FAST)
    limited = dataclasses.replace(FAST, memory_limit_gib=1e-4)
    Bench(limited, store, on_line=lambda line: None).run(models, [Case("infer", 1, 32), Case("train", 1, 32)])
    rows = store.read()
    assert set(rows["status"]) == {"oom"} and rows["error"].str.startswith("refused: estimated").all()
    assert sorted(rows["task"]) == ["decode", "prefill", "train"] and rows["metric"].isna().all()

    def out_of_memory(self, model, case, built):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    monkeypatch.setattr(Bench, "train", out_of_memory)
    Bench(FAST, store, on_line=lambda line: None).run(models, [Case("train", 4, 32)])
    row = store.read().query("slice == 'context=32,batch=4'").iloc[0]
    assert row["status"] == "oom" and "80.00 GiB" in row["error"]


def test_a_prefill_past_its_budget_stops_and_the_cache_is_made_up(tmp_path):
    store = ResultStore(tmp_path)
    settings = dataclasses.replace(FAST, row_budget_s=0.0)
    models = resolve_models(["mla"], "tiny", settings)
    Bench(settings, store, on_line=lambda line: None).run(models, [Case("infer", 1, 64)])
    rows = store.read()
    prefill = rows[rows["task"] == "prefill"].iloc[0]
    assert prefill["status"] == "failed" and "16 of 64 tokens" in prefill["error"]
    decode = rows[rows["task"] == "decode"].set_index("metric")
    assert (decode["status"] == "ok").all()
    assert decode.loc["cache_bytes", "value"] == LanguageModel(models[0].config).cache_bytes(64)
    notes = store.read_meta(decode["run_id"].iloc[0])["notes"]
    assert "prefill stopped at 16 of 64 tokens" in notes[0]


def test_a_time_budget_skips_what_it_cannot_start(tmp_path):
    lines = []
    bench = Bench(FAST, ResultStore(tmp_path), on_line=lines.append, time_budget_s=0.0)
    assert bench.run(resolve_models(["kda"], "tiny", FAST), CASES[:1]) == []
    assert "not run: kda@tiny infer 1x40" in lines[-1]


@pytest.mark.slow
def test_the_command_prints_the_table_and_writes_the_figures(tmp_path):
    out = tmp_path / "bench"
    command = [
        sys.executable, "-m", "harness.cli", "bench", "models", "--quick", "--models", "mla,kimi",
        "--contexts", "32,128", "--train-contexts", "32", "--memory-limit", "0.02", "--batched", "64x128", "--out", str(out), "--quality-store", str(ROOT / "results" / "smoke-cpu"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| mla@tiny | 1×32 |" in result.stdout and "| kimi@tiny | 64×128 | OOM |" in result.stdout
    assert "against mla@tiny" in result.stdout
    report = out / "report"
    for name in ("bench.md", "bench.csv", "bench_decode_vs_context.png", "bench_cache_vs_context.png",
                 "bench_train_vs_context.png", "bench_quality_vs_efficiency.png"):  # fmt: skip
        assert (report / name).exists(), name
    table = pd.read_csv(report / "bench.csv")
    assert set(table["task"]) == {"prefill", "decode", "train"}
    again = subprocess.run([*command[:5], "--report-only", "--out", str(out), "--no-figures"], capture_output=True,
                           text=True, cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0 and "| mla@tiny | 1×32 |" in again.stdout
