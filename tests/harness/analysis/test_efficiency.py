"""The benchmark's tables: the floor target is marked met or missed at batch 1 from 32K on, failures show in place,
and models are compared with the baseline per context."""

import pandas as pd

from harness.analysis.efficiency import efficiency_markdown, profile_markdown, wide
from harness.analysis.efficiency_figures import quality_figure
from harness.results.schema import Row


def rows(model: str, context: int, ms: float, floor: float, cache: float, batch: int = 1, status: str = "ok"):
    base = Row(run_id=f"{model}{context}{batch}", suite="bench", task="decode", model=model, preset="bench-167m",
               slice=f"context={context},batch={batch}", kernel_impl="gdr:triton+sdpa+cuda-graph", status=status,
               error=None if status == "ok" else "CUDA out of memory")  # fmt: skip
    if status != "ok":
        return [base.to_dict()]
    values = dict(decode_ms_per_token=ms, decode_tokens_per_s=batch * 1e3 / ms, decode_floor_ms=floor,
                  floor_fraction=floor / ms, cache_bytes=cache, peak_memory_gib=1.0)  # fmt: skip
    return [base.with_(metric=k, value=v).to_dict() for k, v in values.items()]


def frame():
    records = (
        rows("mla", 4096, 1.0, 0.1, 4e7) + rows("mla", 32768, 1.2, 0.5, 3e8) + rows("mla", 131072, 3.0, 1.5, 1.2e9)
        + rows("kimi", 4096, 0.9, 0.1, 1e7) + rows("kimi", 32768, 0.6, 0.15, 7e7) + rows("kimi", 131072, 0.5, 0.2, 2.7e8)
        + rows("kimi", 32768, 0, 0, 0, batch=64, status="oom")
    )  # fmt: skip
    return pd.DataFrame.from_records(records)


def test_targets_failures_and_the_baseline_comparison():
    text = efficiency_markdown(frame(), order=["mla", "kimi"])
    lines = {line.split("|")[1].strip() + " " + line.split("|")[2].strip(): line for line in text.splitlines()
             if line.startswith("| mla@") or line.startswith("| kimi@")}  # fmt: skip
    assert "| met |" in lines["mla@bench-167m 1×128K"]
    assert "| missed |" in lines["kimi@bench-167m 1×32K"]  # 4x the floor
    assert "| met |" not in lines["mla@bench-167m 1×4K"] and "| missed |" not in lines["mla@bench-167m 1×4K"]
    assert (
        "| OOM |" in lines["kimi@bench-167m 64×32K"]
        and "CUDA out of memory" in lines["kimi@bench-167m 64×32K"]
    )
    # kimi against mla: 6x the speed and 22% of the cache at 128K
    assert "| kimi@bench-167m | 1.11× · 25% | 2.00× · 23% | 6.00× · 22% |" in text
    assert text.index("| mla@bench-167m | 1×4K") < text.index("| kimi@bench-167m | 1×4K")


def test_quality_joins_by_architecture():
    quality = pd.DataFrame(dict(label=["kimi@small", "mla@small", "kda@small"], model=["kimi", "mla", "kda"],
                                score=[0.9, 0.95, 0.8], slices=[4, 4, 4]))  # fmt: skip
    fig = quality_figure(wide(frame()), quality)
    assert fig is not None  # kda has no efficiency rows: two points, at the longest context both have
    assert len(fig.axes[0].collections) == 2


def test_profiles_say_where_the_step_time_goes():
    kernels = [
        dict(kernel="mla_split_kernel", calls=2, ms=0.30),
        dict(kernel="elementwise", calls=300, ms=0.20),
    ]
    meta = {"a": dict(label="mla@bench-167m infer 1x32K", profile=dict(
        measured=dict(wall_ms=0.6, device_ms=0.5, launches=302, kernels=kernels),
        eager=dict(error="RuntimeError: CUPTI"),
    ))}  # fmt: skip
    text = profile_markdown(meta)
    assert "#### mla@bench-167m infer 1x32K" in text
    assert "- measured: 0.600 ms per step, 0.500 ms of it in 302 kernels (83%)" in text
    assert (
        "- eager: profile failed (RuntimeError: CUPTI)" in text and "| elementwise | 300 | 0.2000 |" in text
    )
    assert profile_markdown({"b": dict(label="x")}) == ""
