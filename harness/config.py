"""Frozen config dataclasses: typed `--set a.b.c=value` overrides, JSON views and content hashes.

An override path walks through dataclass fields and through dicts of dataclasses (the model's per-mixer
configs): `train.lr=3e-4`, `task.num_pairs=8`, `model.kda.num_heads=4`. Unknown keys and values of the wrong
type are rejected with a message naming the key, the expected type and the value given.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from typing import Any

from harness.errors import HarnessError


def parse_assignment(text: str) -> tuple[tuple[str, ...], str]:
    """'train.lr=3e-4' -> (('train', 'lr'), '3e-4')."""
    key, sep, value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise HarnessError(f"--set expects KEY=VALUE with a dotted key such as train.lr=3e-4, got '{text}'")
    return tuple(key.strip().split(".")), value.strip()


def apply_override(config: Any, path: tuple[str, ...], value: str, full_key: str | None = None) -> Any:
    """A copy of `config` with the field at `path` set to `value` parsed to the field's type."""
    full_key = full_key or ".".join(path)
    head, rest = path[0], path[1:]
    if isinstance(config, dict):
        if head not in config or not rest:
            raise _unknown(full_key, head, list(config))
        return {**config, head: apply_override(config[head], rest, value, full_key)}
    if not dataclasses.is_dataclass(config):
        raise HarnessError(f"--set {full_key}: '{head}' goes below a plain value")
    hints = typing.get_type_hints(type(config))
    names = [f.name for f in dataclasses.fields(config)]
    if head not in names:
        raise _unknown(full_key, head, names)
    if rest:
        new_value = apply_override(getattr(config, head), rest, value, full_key)
    else:
        new_value = parse_value(value, hints[head], full_key)
    try:
        return dataclasses.replace(config, **{head: new_value})
    except (ValueError, TypeError) as err:
        raise HarnessError(f"--set {full_key}={value}: {err}") from None


def _unknown(full_key: str, head: str, known: list[str]) -> HarnessError:
    close = difflib.get_close_matches(head, known, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else f"known here: {', '.join(known)}"
    return HarnessError(f"--set {full_key}: unknown setting '{head}'; {hint}")


def parse_value(text: str, annotation: Any, key: str) -> Any:
    """Parse command-line text into a value of the annotated type (int, float, bool, str, Literal choices,
    tuples, X | None). Numbers must be finite."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return parse_value(text, option, key)
            except HarnessError:
                continue
        raise HarnessError(f"--set {key}: cannot read '{text}' as {_type_name(annotation)}")
    if origin is typing.Literal:
        for choice in args:
            if text == str(choice):
                return choice
        raise HarnessError(f"--set {key}: expected one of {', '.join(map(str, args))}, got '{text}'")
    if origin is tuple:
        return _parse_tuple(text, args, key)
    if annotation is bool:
        if text.lower() in ("true", "1", "yes", "on"):
            return True
        if text.lower() in ("false", "0", "no", "off"):
            return False
        raise HarnessError(f"--set {key}: expected true or false, got '{text}'")
    if annotation in (int, float):
        try:
            number = annotation(text)
        except ValueError:
            raise HarnessError(f"--set {key}: expected {annotation.__name__}, got '{text}'") from None
        if not math.isfinite(number):
            # nan and inf parse as floats but make no sense as a setting: nan compares false with every bound
            raise HarnessError(f"--set {key}: expected a finite number, got '{text}'")
        return number
    if annotation is str:
        return text
    raise HarnessError(
        f"--set {key}: values of type {_type_name(annotation)} cannot be set from the command line"
    )


def check_choices(config: Any, name: str) -> None:
    """Raise HarnessError if a field annotated `Literal[...]` of `config` (or of a dataclass inside it) holds a
    value outside its choices: configs built in code, not parsed from --set, are checked this way at planning."""
    if isinstance(config, dict):
        for key, value in config.items():
            check_choices(value, f"{name}.{key}")
        return
    if not dataclasses.is_dataclass(config):
        return
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, annotation = getattr(config, f.name), hints[f.name]
        choices = _literal_choices(annotation)
        if choices is not None and value not in choices:
            raise HarnessError(
                f"{name}.{f.name}: expected one of {', '.join(map(str, choices))}, got '{value}'"
            )
        check_choices(value, f"{name}.{f.name}")


def _literal_choices(annotation: Any) -> tuple | None:
    """The choices of Literal[...] (and of Literal[...] | None, with None), else None."""
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        literals = [a for a in typing.get_args(annotation) if typing.get_origin(a) is typing.Literal]
        if literals and len(literals) == len(typing.get_args(annotation)) - 1:
            return (*typing.get_args(literals[0]), None)
    return None


def _parse_tuple(text: str, args: tuple, key: str) -> tuple:
    """'1,16' -> (1, 16); nested tuples separated by ';': '64,4;128,8' -> ((64, 4), (128, 8))."""
    variadic = len(args) == 2 and args[1] is Ellipsis
    inner = args[0] if variadic else None
    separator = ";" if variadic and typing.get_origin(inner) is tuple else ","
    parts = [p.strip() for p in text.strip("()[] ").split(separator) if p.strip()]
    if variadic:
        return tuple(parse_value(p, inner, key) for p in parts)
    if len(parts) != len(args):
        raise HarnessError(f"--set {key}: expected {len(args)} comma-separated values, got '{text}'")
    return tuple(parse_value(p, a, key) for p, a in zip(parts, args, strict=True))


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def to_dict(config: Any, for_hash: bool = False) -> Any:
    """A JSON-ready view of a (nested) config dataclass. `for_hash`: less the fields marked ADDED_LATER that hold
    their default."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        view = {}
        for f in dataclasses.fields(config):
            value = getattr(config, f.name)
            if for_hash and f.metadata.get("hash_when_default", True) is False and value == _default(f):
                continue
            view[f.name] = to_dict(value, for_hash)
        return view
    if isinstance(config, dict):
        return {str(k): to_dict(v, for_hash) for k, v in config.items()}
    if isinstance(config, tuple | list):
        return [to_dict(v, for_hash) for v in config]
    return config


# Metadata of a field added to a config after results were stored: while it holds its default it is left out of
# hashes, so that cells planned before it existed keep their ids (and a resumed sweep does not redo them).
ADDED_LATER = {"hash_when_default": False}


def from_view(cls: type, view: dict[str, Any], **built: Any) -> Any:
    """The `cls` config dataclass a JSON view (to_dict) describes: lists back to tuples, nested dataclasses by their
    type hints; `built` gives fields already made (e.g. a dict of configs whose classes the hints do not say).
    Fields the view lacks (added since it was stored) take their defaults; one the class does not have is an
    error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    if unknown := set(view) - names:
        raise HarnessError(
            f"a stored {cls.__name__} has settings this version does not know: {sorted(unknown)}"
        )
    fields = {key: _value(value, hints[key]) for key, value in view.items() if key not in built}
    return cls(**fields, **built)


def _value(value: Any, annotation: Any) -> Any:
    options = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(options) == 1:
        annotation = options[0]
    if isinstance(value, dict) and dataclasses.is_dataclass(annotation):
        return from_view(annotation, value)
    if isinstance(value, list):
        return tuple(_value(v, Any) for v in value)
    return value


def without_added_defaults(view: dict[str, Any], cls: type) -> dict[str, Any]:
    """A stored view of a `cls` config (to_dict) less its ADDED_LATER fields that hold their default: the same
    for a view stored before such a field existed and one stored after, as config_hash sees them."""
    added = [f for f in dataclasses.fields(cls) if f.metadata.get("hash_when_default", True) is False]
    return {
        k: v for k, v in view.items() if not any(f.name == k and v == to_dict(_default(f)) for f in added)
    }


def config_hash(config: Any) -> str:
    """Content hash of a config: equal configs, equal hashes, whatever the construction order."""
    text = json.dumps(to_dict(config, for_hash=True), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING
