"""How results are named in tables and figures: tasks with their setting, slices in numeric order, numbers."""

from __future__ import annotations

import dataclasses
import re

import pandas as pd


def task_label(task: str, setting: object) -> str:
    """'niah' + 'variant=multi-key' -> 'niah[variant=multi-key]'; just the task when it has one setting."""
    return f"{task}[{setting}]" if isinstance(setting, str) and setting else task


def slice_sort_key(name: str) -> tuple:
    """'seq_len=64,pairs=8' sorts by (64, 8): numbers in the order they appear, numerically."""
    name = name if isinstance(name, str) else ""  # rows without a slice (lm-eval scores) have NaN there
    return tuple(float(x) for x in re.findall(r"[=(,](-?\d+(?:\.\d+)?)", name)), name


def natural_sort_key(name: str) -> tuple:
    """'mla@zoology-64' before 'mla@zoology-128': runs of digits compare as numbers, the rest as text."""
    parts = re.split(r"(\d+(?:\.\d+)?)", name if isinstance(name, str) else "")
    return tuple((1, float(part), "") if i % 2 else (0, 0.0, part) for i, part in enumerate(parts))


def format_mean_ci(mean: float, ci95: float) -> str:
    if pd.isna(mean):
        return "n/a"
    return f"{mean:.3f}" if pd.isna(ci95) else f"{mean:.3f} ± {ci95:.3f}"


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return str(int(n))


def length_text(tokens: float) -> str:
    """4096 -> '4K', 1048576 -> '1M', 300 -> '300'."""
    tokens = int(tokens)
    for unit, size in (("M", 1024**2), ("K", 1024)):
        if tokens >= size and tokens % size == 0:
            return f"{tokens // size}{unit}"
    return str(tokens)


def bytes_text(n: float) -> str:
    """1.2e9 -> '1.2 GB' (decimal units, as bandwidths are quoted)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def duration_text(seconds: float) -> str:
    """4000 -> '1h06m', 754 -> '12m34s', 42 -> '42s'."""
    seconds = max(0, round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def base_label(model: object, preset: object) -> str:
    """'kda' at size 'kimi-synth' -> 'kda@kimi-synth'; just the model where there is no size (lm-eval rows of
    other models)."""
    return f"{model}" if not isinstance(preset, str) or not preset else f"{model}@{preset}"


def flatten(view: object, prefix: str = "") -> dict[str, object]:
    """{'train': {'lr': 1e-3}} -> {'train.lr': 1e-3}; lists as tuples (hashable, comparable)."""
    if isinstance(view, dict):
        flat: dict[str, object] = {}
        for key, value in view.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: tuple(view) if isinstance(view, list) else view}


# Keys of a cell's config that are not part of its setting (they vary inside one row of a table), and the ones
# its label shows already.
_NOT_SETTING = {"seed", "train.lr"}
_IN_LABEL = {"model_name", "size"}


def setting_columns(rows: pd.DataFrame, configs: dict[str, dict]) -> tuple[pd.Series, pd.Series]:
    """(task_variant, label) of every row, from the stored config view of one cell per setting_id (`configs`).

    task_variant: where one table (suite, scale, task, task_setting) holds several configs of the task (the kimi
    suite trains one model per length), the task settings in which they differ ('train_lengths=(256)'): the
    report makes a table of each. label: ARCH@SIZE, and where two configurations of one table still share that,
    the other settings in which they differ ('kda@tiny [train.max_steps=100]'); '#<setting id>' where a
    configuration's config is unknown."""
    base = pd.Series(
        [base_label(m, p) for m, p in zip(rows["model"], rows["preset"], strict=True)], index=rows.index
    )
    variant = pd.Series("", index=rows.index)
    table = _join(rows[["suite", "scale", "task", "task_setting", "task_version"]])
    for _, members in rows.groupby(table, sort=False):
        ids = [s for s in dict.fromkeys(members["setting_id"]) if s in configs]
        tasks = {s: flatten(configs[s].get("task", {})) for s in ids}
        differing = _differing(tasks)
        if differing:
            for setting_id in ids:
                text = ", ".join(f"{k}={_short(tasks[setting_id].get(k))}" for k in differing)
                variant.loc[members.index[members["setting_id"] == setting_id]] = text
    # a model that is not its preset says how (the table's other rows may hold no sibling to differ from), and so
    # does a training or task setting that is not its suite's, unless every row of its table shares it (then the
    # table says it once: `table_deviations`)
    changed = {s: preset_deviations(view) for s, view in configs.items()}
    for _, members in rows.groupby(table + "|" + variant, sort=False):  # the report's tables
        ids = [s for s in dict.fromkeys(members["setting_id"]) if s in configs]
        off = {s: suite_deviations(configs[s]) for s in ids}
        shared = _shared(off)
        for s in ids:
            own = ", ".join(f"{k}={_short(stored)}" for k, (stored, _) in off[s].items() if k not in shared)
            changed[s] = ", ".join(part for part in (changed[s], own) if part)
    suffix = rows["setting_id"].map(lambda s: changed.get(s, ""))
    base = base.where(suffix == "", base + " [" + suffix + "]")
    labels = base.copy()
    keys = table + "|" + variant + "|" + base
    for _, members in rows.groupby(keys, sort=False):
        ids = list(dict.fromkeys(members["setting_id"]))
        if len(ids) < 2:
            continue
        suffixes = _distinguishing(ids, configs)
        for setting_id in ids:
            where = members.index[members["setting_id"] == setting_id]
            labels.loc[where] = base.loc[where] + f" [{suffixes[setting_id]}]"
    return variant, labels


def preset_deviations(view: dict) -> str:
    """The model fields in which a stored cell config (`to_dict(cell)`) differs from its model's preset at its
    size, as 'model.mixers.gdn.output_gate=sigmoid'; '' for the preset itself, or where the preset is unknown (a
    plugin not loaded, a size matched to another model's parameters)."""
    # here, not at the top: the cell and model modules import torch, which reading a table does not need otherwise
    from harness.config import to_dict
    from harness.errors import HarnessError
    from harness.run.cell import Cell
    from models.presets import build_model_config

    try:
        cell = Cell.from_view(view)
        preset = build_model_config(
            f"{cell.model_name}@{cell.size}", cell.size, vocab_size=cell.model.vocab_size
        )
    except (HarnessError, KeyError, TypeError, ValueError):
        return ""
    stored, planned = flatten(to_dict(cell.model)), flatten(to_dict(preset))
    keys = [k for k in sorted(set(stored) | set(planned)) if stored.get(k) != planned.get(k)]
    return ", ".join(f"model.{k}={_short(stored.get(k))}" for k in keys)


# Training fields that say how a cell runs, not what it trains (and the lr, a column of every table).
_RUN_OPTIONS = {"train.lr", "train.device", "train.step_capture", "train.eval_batch_size"}


def suite_deviations(view: dict) -> dict[str, tuple[object, object]]:
    """The training and task settings in which a stored cell config differs from what its suite at its scale plans
    for its task today, as {'train.max_steps': (stored, planned)}: a `--set` override, or a suite whose settings
    changed since the cell ran. Run options (device, step capture, evaluation batch) and the lr are left out.
    Where the suite plans several configurations of the task (one per length), the nearest is compared. {} where
    the suite or its scale is unknown (a plugin's, not loaded)."""
    # here, not at the top: the cell and training modules import torch, which reading a table does not need otherwise
    from harness.config import to_dict
    from harness.registry import SUITES
    from harness.run.cell import Cell
    from harness.run.train import TrainConfig

    try:
        cell = Cell.from_view(view)
        scale = SUITES.get(cell.suite).scales[cell.scale]
        planned_train = dataclasses.replace(TrainConfig(), **scale.train_for(cell.task_name))
    except Exception:  # noqa: BLE001 - a cell of an unknown suite, scale or an older layout: nothing to compare
        return {}
    stored = {f"train.{k}": v for k, v in flatten(to_dict(cell.train)).items()}
    planned = {f"train.{k}": v for k, v in flatten(to_dict(planned_train)).items()}
    tasks = [flatten(to_dict(config)) for name, config in scale.tasks if name == cell.task_name]
    if tasks:
        mine = flatten(to_dict(cell.task))
        nearest = min(tasks, key=lambda t: sum(mine.get(k) != t.get(k) for k in set(mine) | set(t)))
        stored |= {f"task.{k}": v for k, v in mine.items()}
        planned |= {f"task.{k}": v for k, v in nearest.items()}
    keys = sorted(k for k in set(stored) | set(planned) if k not in _RUN_OPTIONS)
    return {k: (stored.get(k), planned.get(k)) for k in keys if stored.get(k) != planned.get(k)}


def table_deviations(setting_ids: list[str], configs: dict[str, dict]) -> str:
    """What every configuration of one table does otherwise than its suite plans, as
    'train.max_steps=500 (the suite's: 6000)'; '' when nothing is shared (or nothing differs)."""
    off = {s: suite_deviations(configs[s]) for s in dict.fromkeys(setting_ids) if s in configs}
    shared = _shared(off)
    first = next(iter(off.values()), {})
    return ", ".join(f"{k}={_short(first[k][0])} (the suite's: {_short(first[k][1])})" for k in shared)


def _shared(off: dict[str, dict[str, tuple[object, object]]]) -> list[str]:
    """The deviations that every one of `off`'s configurations has, with the same value."""
    if not off:
        return []
    views = list(off.values())
    return [k for k in views[0] if all(k in v and repr(v[k]) == repr(views[0][k]) for v in views)]


def _join(frame: pd.DataFrame) -> pd.Series:
    """One text key per row from several columns (missing values as '')."""
    return frame.apply(lambda row: "|".join("" if pd.isna(v) else str(v) for v in row), axis=1).astype(object)


def _differing(flat: dict[str, dict[str, object]]) -> list[str]:
    """The keys whose values are not the same in all of `flat`'s views."""
    if len(flat) < 2:
        return []
    keys = sorted(set().union(*flat.values()))
    return [k for k in keys if len({repr(view.get(k)) for view in flat.values()}) > 1]


def _distinguishing(ids: list[str], configs: dict[str, dict]) -> dict[str, str]:
    """For configurations that share a label: the settings whose values differ between them, per setting id."""
    if any(setting_id not in configs for setting_id in ids):
        return {setting_id: f"#{setting_id[:8]}" for setting_id in ids}
    flat = {
        s: {k: v for k, v in flatten(configs[s]).items() if k not in _NOT_SETTING | _IN_LABEL} for s in ids
    }
    differing = _differing(flat)
    return {s: ", ".join(f"{k}={_short(flat[s].get(k))}" for k in differing) or f"#{s[:8]}" for s in ids}


def _short(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple | list):
        return "(" + ",".join(_short(v) for v in value) + ")"
    return str(value)


def same_model_warnings(configs: dict[str, dict], rows: pd.DataFrame) -> list[str]:
    """'kimi@tiny and kda:mla=1:1@tiny are one model trained twice': configurations that differ only in the
    name they were given."""
    groups: dict[str, list[str]] = {}
    for setting_id, view in configs.items():
        blind = {k: v for k, v in flatten(view).items() if k not in _NOT_SETTING | {"model_name"}}
        groups.setdefault(repr(sorted(blind.items(), key=lambda kv: kv[0])), []).append(setting_id)
    label_of = dict(zip(rows["setting_id"], rows["label"], strict=True)) if "label" in rows else {}
    warnings = []
    for ids in groups.values():
        names = sorted({label_of.get(s, s) for s in ids})
        if len(names) > 1:
            task = configs[ids[0]].get("task_name", "?")
            warnings.append(
                f"{' and '.join(names)} are the same model (identical configs) on {task}: trained twice"
            )
    return warnings
