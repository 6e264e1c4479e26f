"""Sweep grids written as a small TOML file, for `harness run --grid FILE`:

    # grid.toml
    models = ["kda", "gdn", "mamba2", "mla"]
    suite = "recall"
    scale = "small"
    lrs = [3e-4, 1e-3, 3e-3]
    seeds = [0, 1, 2]
    params = "1M"            # match every model to 1M non-embedding parameters ...
    tolerance = 0.05         # ... within ±5% (see harness/run/sizing.py)

    [set]                    # the same overrides as --set
    "train.max_steps" = 2000
    "model.kda.negative_eigenvalues" = true

Options given on the command line win over the file; what neither gives comes from the suite at its scale.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


@dataclass(frozen=True, kw_only=True)
class Grid:
    models: tuple[str, ...] = ()
    """Model tokens (ARCH[@SIZE])."""
    suite: str | None = None
    """Suite name."""
    scale: str | None = None
    """Suite scale; None: the suite's first."""
    lrs: tuple[float, ...] | None = None
    """Learning rates; None: the suite's grid at its scale."""
    seeds: tuple[int, ...] | None = None
    """Seeds; None: the suite's."""
    set: tuple[str, ...] = ()
    """Overrides, KEY=VALUE as for --set."""
    params: str | None = None
    """Parameter target for every model (e.g. '1M'); None: the size presets as they are."""
    tolerance: float = 0.05
    """Relative tolerance of the parameter match."""

    def merged(self, **given: Any) -> Grid:
        """This grid with the options given on the command line (those not None) taking precedence;
        --set assignments are added after the file's, so that they win."""
        given = {k: v for k, v in given.items() if v is not None}
        if "set" in given:
            given["set"] = (*self.set, *given["set"])
        return dataclasses.replace(self, **given)


def load_grid(path: Path) -> Grid:
    """Read and check a grid file; every mistake is a one-line HarnessError naming the file and the key."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise HarnessError(f"grid file {path} does not exist") from None
    except IsADirectoryError:
        raise HarnessError(f"grid file {path} is a folder; pass the TOML file itself") from None
    except OSError as err:
        raise HarnessError(f"grid file {path} cannot be read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise HarnessError(f"grid file {path} is not text; a grid is a TOML file") from None
    except tomllib.TOMLDecodeError as err:
        raise HarnessError(f"grid file {path} is not valid TOML: {err}") from None
    names = [f.name for f in dataclasses.fields(Grid)]
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean {close[0]}?" if close else f"known keys: {', '.join(names)}"
            raise HarnessError(f"grid file {path}: unknown key '{key}'; {hint}")
        values[key] = _check(path, key, value)
    return Grid(**values)


def _check(path: Path, key: str, value: Any) -> Any:
    def wrong(expected: str) -> HarnessError:
        return HarnessError(f"grid file {path}: '{key}' should be {expected}, got {value!r}")

    if key == "models":
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",")]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise wrong("a list of model names")
        return tuple(value)
    if key in ("suite", "scale"):
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    if key == "lrs":
        if not isinstance(value, list) or not all(isinstance(v, int | float) and v > 0 for v in value):
            raise wrong("a list of positive numbers")
        return tuple(float(v) for v in value)
    if key == "seeds":
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise wrong("a list of integers")
        return tuple(value)
    if key == "set":
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        if isinstance(value, dict):
            return tuple(f"{k}={_text(v)}" for k, v in _flatten(value))
        raise wrong('a table of settings ("train.lr" = 3e-4) or a list of "KEY=VALUE"')
    if key == "params":
        if not isinstance(value, str | int):
            raise wrong('a count such as "1M" or 1000000')
        return str(value)
    if key == "tolerance":
        if not isinstance(value, int | float) or not 0 < value < 1:
            raise wrong("a number between 0 and 1")
        return float(value)
    raise AssertionError(key)


def _flatten(table: dict, prefix: str = "") -> list[tuple[str, Any]]:
    # [set.train] max_steps = 100 and "train.max_steps" = 100 both mean train.max_steps=100
    items = []
    for key, value in table.items():
        if isinstance(value, dict):
            items += _flatten(value, f"{prefix}{key}.")
        else:
            items.append((f"{prefix}{key}", value))
    return items


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        # tuples of tuples: [[64, 4], [128, 8]] -> "64,4;128,8"
        if value and all(isinstance(v, list) for v in value):
            return ";".join(",".join(map(str, v)) for v in value)
        return ",".join(map(str, value))
    return str(value)
