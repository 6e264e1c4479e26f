from dataclasses import dataclass, field

import pytest

from harness.config import apply_override, config_hash, parse_assignment, to_dict
from harness.errors import HarnessError


@dataclass(frozen=True, kw_only=True)
class Inner:
    heads: int = 2
    gate: str = "swish"


@dataclass(frozen=True, kw_only=True)
class Outer:
    lr: float = 1e-3
    steps: int = 10
    flag: bool = False
    rank: int | None = None
    span: tuple[float, float] = (1.0, 16.0)
    settings: tuple[tuple[int, int], ...] = ((64, 4),)
    names: tuple[str, ...] = ("kda",)
    mixers: dict = field(default_factory=lambda: {"kda": Inner()})


@pytest.mark.parametrize(
    "text,field_name,expected",
    [
        ("lr=3e-4", "lr", 3e-4),
        ("steps=7", "steps", 7),
        ("flag=true", "flag", True),
        ("rank=none", "rank", None),
        ("rank=16", "rank", 16),
        ("span=0.5,2", "span", (0.5, 2.0)),
        ("settings=64,4;128,8", "settings", ((64, 4), (128, 8))),
        ("names=kda,kda,mla", "names", ("kda", "kda", "mla")),
    ],
)
def test_typed_overrides(text, field_name, expected):
    path, value = parse_assignment(text)
    assert getattr(apply_override(Outer(), path, value), field_name) == expected


def test_override_reaches_into_dicts_of_dataclasses():
    updated = apply_override(Outer(), ("mixers", "kda", "heads"), "4")
    assert updated.mixers["kda"].heads == 4
    assert Outer().mixers["kda"].heads == 2  # the original is untouched


@pytest.mark.parametrize(
    "text,message",
    [
        ("lr=abc", "expected float, got 'abc'"),
        ("steps=1.5", "expected int"),
        ("flag=maybe", "expected true or false"),
        ("lrr=1", "unknown setting 'lrr'; did you mean lr"),
        ("mixers.gdn.heads=1", "unknown setting 'gdn'"),
        ("span=1,2,3", "expected 2 comma-separated values"),
    ],
)
def test_bad_overrides_name_the_problem(text, message):
    path, value = parse_assignment(text)
    with pytest.raises(HarnessError, match=message):
        apply_override(Outer(), path, value)


@pytest.mark.parametrize("text", ["lr", "=3", "train..lr=1"])
def test_malformed_assignment(text):
    with pytest.raises(HarnessError, match="KEY=VALUE"):
        parse_assignment(text)


def test_hash_depends_on_content_only():
    assert config_hash(Outer()) == config_hash(Outer())
    assert config_hash(Outer()) != config_hash(Outer(lr=2e-3))
    assert to_dict(Outer())["mixers"] == {"kda": {"heads": 2, "gate": "swish"}}


def test_fields_added_later_keep_old_hashes_while_at_their_default():
    """Cells planned before TrainConfig had `schedule`, `decay_fraction` and `step_capture` keep their ids (stores
    resume)."""
    import dataclasses

    from harness.config import config_hash
    from harness.run.train import TrainConfig

    added = ("schedule", "decay_fraction", "step_capture", "target_on")
    old_fields = {
        f.name: getattr(TrainConfig(), f.name) for f in dataclasses.fields(TrainConfig) if f.name not in added
    }
    assert config_hash(TrainConfig()) == config_hash(old_fields)
    assert config_hash(TrainConfig(schedule="wsd")) != config_hash(TrainConfig())
    assert config_hash(TrainConfig(step_capture="off")) != config_hash(TrainConfig())


def test_a_mixer_field_added_later_keeps_cell_and_setting_ids_at_its_default():
    """Mamba2's `output_gate` came after cells of mamba2 were stored: a view without it (an old store) and one with
    it at its default are one cell and one report row; another value is another configuration."""
    import copy

    import models.backbone
    from harness.config import ADDED_LATER, to_dict
    from harness.plugins import load_plugins
    from harness.run.cell import Cell, setting_id_of
    from harness.run.sweep import plan_cells

    assert models.backbone.ADDED_LATER == ADDED_LATER
    load_plugins()
    (cell,) = plan_cells(["mamba2"], "smoke", "tiny", lrs=[1e-3], seeds=[0])[:1]
    new = to_dict(cell)
    assert new["model"]["mixers"]["mamba2"]["output_gate"] == "swish"
    old = copy.deepcopy(new)
    del old["model"]["mixers"]["mamba2"]["output_gate"]
    assert Cell.from_view(old).id == Cell.from_view(new).id == cell.id
    assert setting_id_of(old) == setting_id_of(new) == cell.setting_id
    other = copy.deepcopy(new)
    other["model"]["mixers"]["mamba2"]["output_gate"] = "sigmoid"
    assert Cell.from_view(other).id != cell.id and setting_id_of(other) != cell.setting_id


def test_a_cell_rebuilt_from_its_stored_config_is_the_same_cell():
    import json
    from pathlib import Path

    from harness.plugins import load_plugins
    from harness.run.cell import Cell

    load_plugins()
    stored = sorted(Path(__file__).parents[2].glob("results/**/cells/*.json"))
    assert stored
    checked = 0
    for path in stored:
        view = json.loads(path.read_text())["config"]
        if "suite" not in view:  # `harness bench models` stores: benchmark cases, not sweep cells
            continue
        assert Cell.from_view(view).id == path.stem  # the committed baselines rerun as themselves
        checked += 1
    assert checked >= 90


def test_choices_and_finite_numbers():
    from typing import Literal

    from harness.config import check_choices, parse_value

    assert parse_value("fp16", Literal["bf16", "fp16"], "train.dtype") == "fp16"
    with pytest.raises(HarnessError, match="expected one of bf16, fp16, got 'bfloat16'"):
        parse_value("bfloat16", Literal["bf16", "fp16"], "train.dtype")
    assert parse_value("none", Literal["a"] | None, "k") is None
    for text in ("nan", "inf", "-inf", "1e400"):
        with pytest.raises(HarnessError, match="expected a finite number"):
            parse_value(text, float, "train.lr")

    @dataclass(frozen=True)
    class Gate:
        kind: Literal["swish", "sigmoid"] = "swish"

    check_choices({"gdn": Gate()}, "model")
    with pytest.raises(HarnessError, match="model.gdn.kind: expected one of swish, sigmoid, got 'tanh'"):
        check_choices({"gdn": Gate(kind="tanh")}, "model")
