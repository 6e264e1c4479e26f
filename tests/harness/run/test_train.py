import dataclasses

import pytest
import torch

import models  # noqa: F401  (registers the mixers)
import tasks  # noqa: F401
from harness.run.cell import Cell, run_cell
from harness.run.data import drop_seen
from harness.run.train import TrainConfig, TrainResult, lr_factor, make_optimizer
from models.backbone import LanguageModel
from models.presets import build_model_config
from tasks.base import Slice
from tasks.mqar import MQARConfig

TINY_TASK = MQARConfig(
    vocab_size=64, train_settings=((32, 4),), test_settings=((32, 4),), num_train=128, num_test=16
)
TINY_TRAIN = TrainConfig(max_steps=6, batch_size=16, eval_every=3, warmup_steps=2, device="cpu")


def tiny_cell(model="kda", **train_fields) -> Cell:
    return Cell(
        suite="test",
        scale="tiny",
        model_name=model,
        size="tiny",
        model=build_model_config(model, "tiny", vocab_size=64),
        task_name="mqar",
        task=TINY_TASK,
        train=dataclasses.replace(TINY_TRAIN, **train_fields),
        seed=0,
    )


def test_schedule_warms_up_then_decays_to_the_floor():
    config = TrainConfig(warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    factors = [lr_factor(step, config) for step in range(111)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert factors[60] == pytest.approx(0.55) and factors[110] == pytest.approx(0.1)


def test_weight_decay_skips_vectors_embeddings_and_gate_parameters():
    model = LanguageModel(build_model_config("kda", "tiny", vocab_size=64))
    decay, no_decay = make_optimizer(model, TrainConfig()).param_groups
    decayed = {id(p) for p in decay["params"]}
    mixer = model.blocks[0].mixer
    assert id(mixer.inputs.q_proj.weight) in decayed
    for param in (mixer.A_log, mixer.dt_bias, mixer.o_norm.weight, model.embed.weight, model.norm.weight):
        assert id(param) not in decayed
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("model", ["gdn", "mla"])
def test_a_cell_is_deterministic_on_cpu(model):
    first, meta = run_cell(tiny_cell(model))
    second, _ = run_cell(tiny_cell(model))
    assert [r["status"] for r in first] == ["ok"] * len(first)

    def values(rows):
        return [(r["slice"], r["metric"], r["value"]) for r in rows]

    assert values(first) == values(second)
    assert [h["step"] for h in meta["history"]] == [3, 6]


def test_seed_and_lr_change_the_cell_identity():
    assert tiny_cell().id == tiny_cell().id
    assert tiny_cell().id != tiny_cell(lr=3e-4).id
    assert tiny_cell().id != dataclasses.replace(tiny_cell(), seed=1).id


def test_early_stop_at_target_accuracy():
    rows, meta = run_cell(tiny_cell("mla", target_accuracy=0.0))
    assert rows[0]["steps"] == 3 and len(meta["history"]) == 1


def test_early_stop_on_the_mean_or_on_every_slice():
    from harness.run.train import TrainConfig, reached

    metrics = {"64/4": {"accuracy": 1.0}, "256/64": {"accuracy": 0.98}}  # mean 0.99, one slice below
    assert reached(metrics, TrainConfig(target_accuracy=0.99))
    assert not reached(metrics, TrainConfig(target_accuracy=0.99, target_on="every"))
    metrics["256/64"]["accuracy"] = 0.995
    assert reached(metrics, TrainConfig(target_accuracy=0.99, target_on="every"))
    with pytest.raises(ValueError, match="target_on"):
        TrainConfig(target_on="min")


def test_a_failing_cell_becomes_a_failed_row():
    cell = tiny_cell("kda", device="cuda:7") if not torch.cuda.is_available() else None
    if cell is None:
        pytest.skip("needs a machine without CUDA")
    rows, _ = run_cell(cell)
    assert len(rows) == 1 and rows[0]["status"] == "failed"
    assert "CUDA is not available" in rows[0]["error"]


def test_test_examples_seen_in_training_are_dropped():
    train = [Slice("a", torch.arange(6).view(3, 2).numpy(), torch.zeros(3, 2, dtype=torch.long).numpy())]
    test = [
        Slice(
            "a", torch.tensor([[0, 1], [9, 9], [4, 5]]).numpy(), torch.zeros(3, 2, dtype=torch.long).numpy()
        )
    ]
    (kept,) = drop_seen(test, train)
    assert kept.inputs.tolist() == [[9, 9]]


def test_a_slice_whose_examples_all_occur_in_training_reports_no_value():
    # one key, two values, length 4: every possible test sequence is in the training data
    tiny_space = MQARConfig(
        vocab_size=4, train_settings=((4, 1),), test_settings=((4, 1),), num_train=64, num_test=8
    )
    cell = dataclasses.replace(tiny_cell("gdn"), task=tiny_space, model=build_model_config("gdn", "tiny", 4))
    rows, _ = run_cell(cell)
    accuracy = [r for r in rows if r["metric"] == "accuracy"]
    assert len(accuracy) == 1 and accuracy[0]["status"] == "ok"
    assert accuracy[0]["n"] == 0 and accuracy[0]["value"] != accuracy[0]["value"]  # NaN


def test_wsd_schedule_is_flat_then_decays_linearly_over_its_last_fraction():
    config = TrainConfig(warmup_steps=10, max_steps=100, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.1)
    factors = [lr_factor(step, config) for step in range(101)]
    assert factors[9] == 1.0 and factors[10:81] == [1.0] * 71
    assert factors[90] == pytest.approx(0.55) and factors[100] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="schedule must be one of"):
        TrainConfig(schedule="linear")


def test_a_checkpoint_that_does_not_fit_is_set_aside_and_nothing_of_it_is_applied(tmp_path, capsys):
    import safetensors.torch

    from harness.run.train import resume, save_checkpoint

    def fresh():
        torch.manual_seed(0)
        model = LanguageModel(build_model_config("kda", "tiny", vocab_size=64))
        optimizer = make_optimizer(model, TINY_TRAIN)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        return model, optimizer, schedule

    model, optimizer, schedule = fresh()
    path = tmp_path / "cell.ckpt.safetensors"
    save_checkpoint(path, model, optimizer, schedule, TrainResult(steps=7))
    assert resume(path, *fresh(), TrainResult()) == 7
    # the same header with one tensor of another shape: refused before anything is loaded
    tensors = safetensors.torch.load_file(path)
    with safetensors.safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    tensors["model/embed.weight"] = torch.zeros(3, 3)
    path.write_bytes(safetensors.torch.save(tensors, metadata=metadata))
    model, optimizer, schedule = fresh()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = TrainResult()
    assert resume(path, model, optimizer, schedule, result) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and result.steps == 0
    assert not path.exists() and (tmp_path / "damaged" / "cell.1.ckpt.safetensors").exists()
    assert "embed.weight" in capsys.readouterr().err
