"""Stacked training (harness/run/grid_step.py) is the G trainings alone: G models of one architecture, each with
its own initialisation and lr, trained a few steps as one vmapped model end where each ends trained by itself
with torch's AdamW, per-model gradient clipping and the trainer's schedule (the PyTorch path, on the CPU)."""

import dataclasses

import pytest
import torch
from torch import nn

import models  # noqa: F401  (registers the mixers)
from harness.run.grid_step import StackedAdamW, StackedModels, clip_per_model
from harness.run.step_capture import scored_loss, scored_positions
from harness.run.train import TrainConfig, lr_factor, make_optimizer
from models.backbone import LanguageModel
from models.presets import build_model_config
from tasks.base import IGNORE

VOCAB = 64
LRS = [3e-3, 1e-2, 3e-2]  # high enough that a model given another's lr would end visibly elsewhere


def build(arch: str, seed: int) -> LanguageModel:
    torch.manual_seed(seed)
    return LanguageModel(build_model_config(arch, "tiny", vocab_size=VOCAB))


def batches(n: int, B: int = 4, T: int = 24):
    gen = torch.Generator().manual_seed(0)
    for _ in range(n):
        inputs = torch.randint(0, VOCAB, (B, T), generator=gen)
        labels = torch.randint(0, VOCAB, (B, T), generator=gen)
        labels[:, : T // 2] = IGNORE  # scored positions in the second half only, as in the recall tasks
        yield inputs, *scored_positions(labels)


@pytest.mark.parametrize("arch", ["kda", "mamba2", "mla"])
def test_stacked_training_is_each_model_trained_alone(arch):
    config = TrainConfig(max_steps=6, warmup_steps=2, grad_clip=0.5, weight_decay=0.1, device="cpu")
    alone = [build(arch, seed) for seed in range(len(LRS))]
    stacked = StackedModels([build(arch, seed) for seed in range(len(LRS))])
    optimizer = StackedAdamW(stacked, LRS, betas=config.betas, weight_decay=config.weight_decay)
    optimizers = [
        make_optimizer(m, dataclasses.replace(config, lr=lr)) for m, lr in zip(alone, LRS, strict=True)
    ]
    start = [{k: p.detach().clone() for k, p in m.named_parameters()} for m in alone]

    for step, (inputs, positions, targets) in enumerate(batches(config.max_steps)):
        factor = lr_factor(step, config)
        optimizer.zero_grad()
        losses = stacked.losses(inputs, positions, targets)
        losses.sum().backward()
        clip_per_model(stacked.params, config.grad_clip)
        optimizer.step(factor)
        for i, (model, opt) in enumerate(zip(alone, optimizers, strict=True)):
            opt.zero_grad()
            loss = scored_loss(model, inputs, positions, targets, None, None)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            for group in opt.param_groups:
                group["lr"] = LRS[i] * factor
            opt.step()
            assert losses[i].item() == pytest.approx(loss.item(), rel=1e-4), (step, i)

    # float32 rounding differs between a batched and a plain matrix product, and Adam's normalised steps carry
    # it on: the two agree to within 2% of how far training moved each parameter, far less than a model trained
    # with another model's lr would (each lr is 3x the last)
    for i, model in enumerate(alone):
        for name, param in model.named_parameters():
            moved = (param - start[i][name]).abs().max().item()
            apart = (stacked.params[name][i] - param).abs().max().item()
            assert apart <= 0.02 * moved + 1e-7, f"model {i} {name}: {apart:.2e} apart, moved {moved:.2e}"


def test_load_into_gives_a_model_that_computes_as_its_stacked_copy():
    stacked = StackedModels([build("gdn", seed) for seed in range(2)])
    inputs, positions, targets = next(batches(1))
    losses = stacked.losses(inputs, positions, targets)
    model = stacked.load_into(build("gdn", 99), 1)
    assert scored_loss(model, inputs, positions, targets, None, None).item() == pytest.approx(
        losses[1].item()
    )


def test_clip_per_model_clips_each_model_by_its_own_norm():
    stacked = StackedModels([build("gdn", seed) for seed in range(2)])
    for p in stacked.params.values():
        p.grad = torch.ones_like(p)
    first = next(iter(stacked.params.values()))
    first.grad[1] *= 100  # model 1's norm is larger
    norms = clip_per_model(stacked.params, 1.0)
    assert norms[1] > norms[0] > 1
    after = torch.stack([p.grad.flatten(1).square().sum(1) for p in stacked.params.values()]).sum(0).sqrt()
    torch.testing.assert_close(after, torch.ones(2), rtol=1e-4, atol=1e-4)


def test_models_of_different_shapes_cannot_be_stacked():
    wide = LanguageModel(build_model_config("gdn", "tiny", vocab_size=VOCAB * 2))
    with pytest.raises(ValueError, match="same parameters"):
        StackedModels([build("gdn", 0), wide])


def test_one_lr_per_model():
    stacked = StackedModels([build("gdn", seed) for seed in range(2)])
    with pytest.raises(ValueError, match="one lr per stacked model"):
        StackedAdamW(stacked, [1e-3], betas=(0.9, 0.95), weight_decay=0.1)


def test_the_grid_step_speed_script_runs_in_its_quick_mode(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[3]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    script = root / "scripts" / "gpu" / "grid_step_speed.py"
    command = [
        sys.executable,
        str(script),
        "--quick",
        "--warmup",
        "1",
        "--steps",
        "2",
        "--out",
        str(tmp_path),
    ]
    subprocess.run(command, check=True, env=env, capture_output=True, timeout=180)
    rows = [json.loads(line) for line in (tmp_path / "grid_step_speed.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["models"]) for r in rows[:3]] == [("cell", 1), ("stacked", 1), ("stacked", 2)]
    assert all("error" not in r and r["tokens_per_s"] > 0 for r in rows), rows
    assert "| kda@tiny B4 T32 | stacked eager | 2 |" in (tmp_path / "grid_step_speed.md").read_text()
