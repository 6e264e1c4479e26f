"""The cost estimate of a sweep (harness/run/cost.py) from a synthetic step-time table, a store's cells as
measurements, and end to end: `harness bench steps` writes what the next `harness run --dry-run` uses."""

import dataclasses
import os
import subprocess
import sys

import pytest

from harness.config import to_dict
from harness.results.store import ResultStore
from harness.run.cost import (
    Measurement,
    Plan,
    append_measurements,
    cost_report,
    estimate,
    read_table,
    shapes_of,
    store_measurements,
)
from harness.run.sweep import plan_cells

GPU = "Test GPU"


@pytest.fixture(scope="module")
def cells():
    # kda and mla at two batch sizes, two lrs each: lr does not change the shape, the batch size does
    planned = []
    for batch in (32, 64):
        planned += plan_cells(
            ["kda", "mla"], "smoke", overrides=[f"train.batch_size={batch}"], lrs=[1e-3, 3e-3], local=False
        )
    return planned


def _measured(shape, **fields):
    return Measurement.of(shape, device=GPU, step_s=0.01, valid_s=0.5, fixed_s=2.0, measured_at=1.0, **fields)


def test_cells_differing_in_lr_share_a_shape_and_batch_sizes_do_not(cells):
    shapes = shapes_of(cells)
    assert len(cells) == 8 and len({s.id for s in shapes.values()}) == 4
    first = shapes[cells[0].id]
    assert (
        first.tokens_per_step == 32 * 64 and first.params > 0
    )  # smoke MQAR: every training sequence is 64 long


def test_exact_measurement_extrapolation_by_tokens_and_unknown(cells):
    shapes = shapes_of(cells)
    kda32 = next(c for c in cells if c.model_name == "kda" and c.train.batch_size == 32)
    table = [_measured(shapes[kda32.id])]
    costs = {c.cell.id: c for c in estimate(cells, shapes, table, GPU)}
    train = kda32.train
    validations = -(-train.max_steps // train.eval_every)
    for cell in cells:
        cost = costs[cell.id]
        if cell.model_name == "mla":
            # no measurement of mla on this device: nothing is made up
            assert cost.basis == "unknown" and cost.seconds is None
        elif cell.train.batch_size == 32:
            assert cost.basis == "measured"
            assert cost.seconds == pytest.approx(2.0 + train.max_steps * 0.01 + validations * 0.5)
        else:
            # twice the tokens per step, the same parameters: steps twice as long; validation and data unchanged
            assert cost.basis == "extrapolated"
            assert cost.seconds == pytest.approx(2.0 + train.max_steps * 0.02 + validations * 0.5)
    # another device's measurements count for nothing here
    assert all(c.basis == "unknown" for c in estimate(cells, shapes, table, "Other GPU"))


def test_the_newest_table_line_of_a_shape_wins(cells, tmp_path):
    shape = shapes_of(cells)[cells[0].id]
    append_measurements(tmp_path, [_measured(shape)])
    append_measurements(tmp_path, [_newer(shape)])
    table = read_table(tmp_path)
    assert len(table) == 2 and (tmp_path / "test-gpu.jsonl").exists()
    (cost,) = estimate(cells[:1], shapes_of(cells[:1]), table, GPU)
    assert cost.source.step_s == 0.03


def _newer(shape):
    return Measurement.of(shape, device=GPU, step_s=0.03, valid_s=0.5, fixed_s=2.0, measured_at=2.0)


def test_report_counts_hours_and_packing(cells):
    shapes = shapes_of(cells)
    table = [_measured(shapes[c.id]) for c in cells if c.model_name == "kda"]
    text = cost_report(cells, shapes, table, GPU, Plan("inprocess"))
    seconds = sum(c.seconds for c in estimate(cells, shapes, table, GPU) if c.seconds is not None)
    assert "| kda | 4 | 4 | 0 | 0 |" in text and "| mla | 4 | 0 | 0 | 4 | ? |" in text
    assert f"| **all** | 8 | 4 | 0 | 4 | {seconds / 3600:.2f}+? |" in text
    assert "upper bounds" in text and "unknown: no measurement of mla on Test GPU" in text
    # packed 4 per GPU without packed measurements: a bound, between perfect overlap and none
    packed = cost_report(cells, shapes, table, GPU, Plan("pool", 4, 1))
    assert "wall time: between" in packed and "--cells-per-gpu 4" in packed
    table += [_measured(shapes[c.id], cells_per_gpu=4) for c in cells]
    assert "from packed step times" in cost_report(cells, shapes, table, GPU, Plan("pool", 4, 1))
    assert cost_report(cells, shapes, table, "cpu", Plan()).startswith(
        "no measurements for cpu: run `harness bench steps`"
    )


def test_a_stores_cells_are_measurements(cells, tmp_path):
    cell = cells[0]
    steps, per_step, train_s = 100, 0.02, 3.0  # 2 s of steps, 1 s of validation over two points
    tokens = cell.train.batch_size * 64
    history = [dict(step=s, tokens=s * tokens, tokens_per_s=tokens / per_step) for s in (50, 100)]
    # the row names the GPU of the machine it ran on; the measurement is of the kind of GPU
    gpu = f"{GPU} (GPU 1)"
    row = dict(run_id=cell.id, steps=steps, tokens_seen=steps * tokens, wall_s=5.0, device=gpu, params=1000)
    ResultStore(tmp_path).write(
        cell.id, [row], dict(config=to_dict(cell), history=history, train_wall_s=train_s)
    )
    (found,) = store_measurements(tmp_path)
    assert found.device == GPU and found.shape == shapes_of([cell])[cell.id].id
    assert found.step_s == pytest.approx(per_step) and found.valid_s == pytest.approx(0.5)
    assert found.fixed_s == pytest.approx(2.0) and found.source == f"store {tmp_path}"
    assert found.shared_by is None  # this cell does not say how many cells shared its GPU


def test_an_estimate_from_cells_that_shared_their_gpu_says_so(cells, tmp_path):
    shapes = shapes_of(cells)

    def store_of(name, at_once):
        root = tmp_path / name
        for cell in cells:
            row = dict(run_id=cell.id, steps=100, tokens_seen=1, wall_s=5.0, device=GPU, params=1000)
            meta = dict(config=to_dict(cell), history=[], train_wall_s=3.0)
            ResultStore(root).write(
                cell.id, [row], meta if at_once is None else meta | {"cells_at_once": at_once}
            )
        return store_measurements(root)

    alone, packed, older = store_of("alone", 1), store_of("packed", 4), store_of("older", None)
    assert {m.shared_by for m in packed} == {4} and {m.shared_by for m in older} == {None}
    assert "shared GPUs" not in cost_report(cells, shapes, alone, GPU, Plan())
    text = cost_report(cells, shapes, packed, GPU, Plan())
    # 4 shapes (the cells of each averaged into one measurement)
    assert (
        "4 are of cells that ran beside others on their GPU (up to 4 at once)" in text
        and "upper bounds" in text
    )
    assert "4 do not say whether theirs did" in cost_report(cells, shapes, older, GPU, Plan())


# ---- end to end through the command line

TINY = [
    "--suite", "smoke", "--set", "train.batch_size=16", "--set", "task.num_train=320", "--set", "task.num_test=32",
    "--lrs", "1e-3,3e-3", "--device", "cpu",
]  # fmt: skip


def harness(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )


def test_bench_steps_writes_what_the_next_dry_run_uses(tmp_path):
    env = {"HARNESS_STEP_TIMES": str(tmp_path / "step-times"), "HARNESS_CACHE": "off"}
    bench = harness("bench", "steps", "--models", "kda", *TINY, "--steps", "2", "--warmup", "1", env=env)
    assert bench.returncode == 0, bench.stderr
    assert "1 shape(s) measured" in bench.stdout and "ms/step" in bench.stdout
    (measured,) = read_table(tmp_path / "step-times")
    assert (
        measured.device == "cpu"
        and measured.model == "kda"
        and measured.step_s > 0
        and measured.steps_timed == 2
    )

    out = tmp_path / "runs"
    dry = harness("run", "--models", "kda,kimi", *TINY, "--dry-run", "--out", out, env=env)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count(" todo ") == 4
    assert "| kda | 2 | 2 | 0 | 0 |" in dry.stdout  # one measurement for both lrs
    assert "| kimi | 2 | 0 | 0 | 2 | ? |" in dry.stdout and "no measurement of kimi on cpu" in dry.stdout
    assert not out.exists(), "a dry run writes nothing"

    again = harness("bench", "steps", "--models", "kda", *TINY, "--steps", "2", "--warmup", "1", env=env)
    assert again.returncode == 0 and "0 shape(s) measured, 1 already" in again.stdout
    assert len(read_table(tmp_path / "step-times")) == 1


def test_an_unknown_device_is_one_line_and_exit_2(tmp_path):
    env = {"HARNESS_STEP_TIMES": str(tmp_path)}
    out = tmp_path / "runs"
    result = harness(
        "run", "--models", "kda", *TINY, "--dry-run", "--estimate-for", "NVIDIA H2000", "--out", out, env=env
    )
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: --estimate-for 'NVIDIA H2000': no step times measured on such a device")
    result = harness("run", "--models", "kda", *TINY, "--estimate-for", "cpu", "--out", out, env=env)
    assert result.returncode == 2 and "goes with --dry-run" in result.stderr and not out.exists()


def test_wall_when_packed_scales_by_the_cells_that_shared_the_gpu(cells):
    from harness.run.cost import wall_when_packed

    shapes = shapes_of(cells)
    kda32 = next(c for c in cells if c.model_name == "kda" and c.train.batch_size == 32)
    mla32 = next(c for c in cells if c.model_name == "mla" and c.train.batch_size == 32)
    alone = _measured(shapes[kda32.id]).cell_s(kda32)
    # kda's shape measured in a store beside 11 other cells; mla's alone, by `harness bench steps`
    table = [_measured(shapes[kda32.id], source="store runs", shared_by=12), _measured(shapes[mla32.id])]
    at_12 = wall_when_packed([kda32, mla32], shapes, table, GPU, packing=12)
    at_4 = wall_when_packed([kda32, mla32], shapes, table, GPU, packing=4)
    assert at_12[kda32.id] == pytest.approx(alone) and at_4[kda32.id] == pytest.approx(alone * 4 / 12)
    assert at_12[mla32.id] == pytest.approx(alone * 12)  # alone, then 12 sharing: 12 times as long
    # a measurement at the packing itself is taken as it is
    packed = dataclasses.replace(_measured(shapes[mla32.id], cells_per_gpu=4), step_s=0.02)
    assert wall_when_packed([mla32], shapes, [*table, packed], GPU, 4)[mla32.id] == pytest.approx(
        packed.cell_s(mla32)
    )
    # a store cell that does not say whether it shared its GPU counts as measured at this packing
    unsaid = [_measured(shapes[kda32.id], source="store old", shared_by=None)]
    assert wall_when_packed([kda32], shapes, unsaid, GPU, 6)[kda32.id] == pytest.approx(alone)
    assert wall_when_packed([kda32], shapes, [], GPU, 6) == {kda32.id: None}
