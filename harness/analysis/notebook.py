"""What the analysis notebooks share: finding the result stores to read, wherever the notebook is run from."""

from __future__ import annotations

import os
from pathlib import Path

import harness
from harness.errors import HarnessError

# the checkout this harness was installed from (an editable install), whose results/ holds the committed stores
REPOSITORY = Path(harness.__file__).resolve().parents[1]


def find_stores(variable: str, names: tuple[str, ...] = ()) -> list[Path]:
    """The stores named in the environment variable `variable` (':'-separated), else `names` (or every store)
    under results/ of the current folder, its parent, or the harness's own checkout. One-line error naming the
    places looked at when there is none."""
    if given := os.environ.get(variable):
        stores = [Path(p).expanduser() for p in given.split(":") if p]
        missing = [str(s) for s in stores if not (s / "cells").is_dir()]
        if missing:
            raise HarnessError(f"{variable} names no results store at {', '.join(missing)}")
        return stores
    places = list(dict.fromkeys(p.resolve() for p in (Path.cwd(), Path.cwd().parent, REPOSITORY)))
    for place in places:
        results = place / "results"
        if names:
            stores = [results / name for name in names if (results / name / "cells").is_dir()]
        else:
            stores = sorted(p.parent for p in results.glob("*/cells"))
        if stores:
            return stores
    wanted = ", ".join(names) if names else "any store"
    looked = ", ".join(str(p / "results") for p in places)
    raise HarnessError(f"no results store ({wanted}) found in {looked}; set {variable}=/path/to/store")
