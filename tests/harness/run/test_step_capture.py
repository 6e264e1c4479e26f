"""The captured training step's CPU-checkable parts: its static-shape loss equals the eager one, `settle` stops at
the first non-finite loss, step_capture validates and falls back to the eager step without CUDA (the same run)."""

import math

import pytest
import torch

import models  # noqa: F401  (registers the mixers)
from harness.config import apply_override
from harness.errors import HarnessError
from harness.run.cell import run_cell
from harness.run.step_capture import MIN_CAPACITY, scored_loss, scored_positions
from harness.run.train import (
    TrainConfig,
    TrainResult,
    load_checkpoint,
    make_optimizer,
    save_checkpoint,
    settle,
    training_curve,
    training_loss,
    uses_graphs,
)
from models.backbone import LanguageModel
from models.presets import build_model_config
from tasks.base import IGNORE
from tests.harness.run.test_train import tiny_cell


def test_scored_positions_pad_to_a_power_of_two_with_ignored_targets():
    labels = torch.full((3, 50), IGNORE)
    labels[0, 7], labels[2, 49] = 5, 9
    positions, targets = scored_positions(labels)
    assert len(positions) == MIN_CAPACITY
    assert positions[:2].tolist() == [7, 2 * 50 + 49] and targets[:2].tolist() == [5, 9]
    assert (targets[2:] == IGNORE).all()
    many = torch.randint(0, 4, (4, 60))  # 240 labelled: capacity 256
    assert len(scored_positions(many)[0]) == 256


@pytest.mark.parametrize("arch", ["kda", "mla"])
def test_the_static_shape_loss_and_gradients_equal_the_eager_ones(arch):
    torch.manual_seed(0)
    model = LanguageModel(build_model_config(arch, "tiny", vocab_size=64))
    inputs = torch.randint(64, (4, 24))
    labels = torch.where(torch.rand(4, 24) < 0.3, torch.randint(64, (4, 24)), IGNORE)
    eager = training_loss(model, inputs, labels, None, None)
    eager.backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    positions, targets = scored_positions(labels)
    assert len(positions) > (labels != IGNORE).sum()  # padded: the pads must not count
    static = scored_loss(model, inputs, positions, targets, None, None)
    static.backward()
    torch.testing.assert_close(static, eager)
    for got, expected in zip((p.grad for p in model.parameters()), want, strict=True):
        torch.testing.assert_close(got, expected)


def test_settle_counts_the_steps_before_the_first_non_finite_loss():
    class Bar:
        updates = 0

        def update(self, n):
            self.updates += n

    logged = []

    class Logger:
        def log(self, step, values):
            logged.append((step, values["train_loss_step"]))

    result, bar = TrainResult(), Bar()
    pending = [(s, torch.tensor(v), 10) for s, v in [(1, 2.0), (2, 1.0), (3, math.nan), (4, 0.5)]]
    assert not settle(pending, result, Logger(), bar)
    assert (result.steps, result.tokens_seen, result.loss_sum, result.loss_count) == (2, 20, 3.0, 2)
    assert logged == [(1, 2.0), (2, 1.0)] and bar.updates == 2 and not pending
    assert settle([(5, torch.tensor(0.25), 10)], result, None, bar) and result.steps == 5


def test_step_capture_takes_its_three_values_only():
    assert TrainConfig(step_capture="graph").step_capture == "graph"
    with pytest.raises(ValueError, match="step_capture must be one of auto, off, graph"):
        TrainConfig(step_capture="cuda")
    with pytest.raises(HarnessError, match="expected one of auto, off, graph"):
        apply_override(TrainConfig(), ("step_capture",), "grpah")


def test_without_cuda_every_setting_trains_eagerly_and_graph_says_so(capsys):
    cpu = torch.device("cpu")
    assert not any(uses_graphs(TrainConfig(step_capture=mode), cpu) for mode in ("auto", "off", "graph"))
    assert "step_capture='graph' needs CUDA" in capsys.readouterr().err
    assert not uses_graphs(TrainConfig(step_capture="off"), torch.device("cuda"))
    assert uses_graphs(TrainConfig(), torch.device("cuda"))


def test_graph_on_a_cpu_runs_exactly_as_off():
    rows_off, meta_off = run_cell(tiny_cell(step_capture="off"))
    rows_graph, meta_graph = run_cell(tiny_cell(step_capture="graph"))
    assert meta_off["train_step"] == meta_graph["train_step"] == "eager"

    def values(rows):
        return [(r["slice"], r["metric"], r["value"]) for r in rows]

    assert values(rows_graph) == values(rows_off)
    assert training_curve(meta_graph["history"]) == training_curve(meta_off["history"])


def test_a_resumed_optimizer_keeps_its_own_implementation(tmp_path):
    """A checkpoint of one step path resumes on the other: AdamW's settings of how it computes stay this run's."""
    config = TrainConfig()

    def setup(foreach):
        torch.manual_seed(0)
        model = LanguageModel(build_model_config("kda", "tiny", vocab_size=64))
        optimizer = make_optimizer(model, config)
        for group in optimizer.param_groups:
            group["foreach"] = foreach
        return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    model, optimizer, schedule = setup(foreach=True)
    training_loss(model, torch.randint(64, (2, 8)), torch.randint(64, (2, 8)), None, None).backward()
    optimizer.step()
    save_checkpoint(tmp_path / "c.safetensors", model, optimizer, schedule, TrainResult(steps=1))
    model, optimizer, schedule = setup(foreach=False)
    assert load_checkpoint(tmp_path / "c.safetensors", model, optimizer, schedule, TrainResult()) == 1
    assert all(group["foreach"] is False for group in optimizer.param_groups)
    assert optimizer.state  # the moments came back


def test_the_step_speed_script_runs_in_its_quick_mode(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[3]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    script = root / "scripts" / "gpu" / "step_speed.py"
    command = [sys.executable, str(script), "--quick", "--packed", "0", "--out", str(tmp_path)]
    subprocess.run(command, check=True, env=env, capture_output=True, timeout=120)
    rows = json.loads((tmp_path / "step_speed.json").read_text())["rows"]
    assert [row["mode"] for row in rows] == ["off", "off"]
    assert all(row["tokens_per_s"] > 0 and row["step_path"] == "eager" for row in rows)
    assert "| kda@tiny B8 T<=64 |" in (tmp_path / "step_speed.md").read_text()
