"""Loading what registers itself: the built-in mixers, model presets, tasks and suites, and plugins.

A plugin is a module that registers mixers, tasks or suites with `harness.registry` when imported. It is found
through the Python entry-point group `harness.plugins` (an installed package names its module there), or named
with `--plugin MODULE`. `load_plugins` is the one place that imports them all; worker processes (pool, Ray) call
it with the same modules, so that they know every name the sweep does, and so does reading a checkpoint's config
(harness/integrations/hf_config.py). See docs/plugins.md and the worked example in examples/.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from importlib.metadata import entry_points

# importing the built-in packages registers every mixer and preset in models/ and every task and suite in tasks/
import models  # noqa: F401
import models.presets  # noqa: F401
import tasks  # noqa: F401
from harness.errors import HarnessError

ENTRY_POINT_GROUP = "harness.plugins"

_loaded: list[str] = []


def load_plugins(modules: Sequence[str] = ()) -> None:
    """Import every entry point of the `harness.plugins` group and `modules` (once each); the built-in packages
    are imported with this module."""
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        # the module of 'package.module' or 'package.module:attribute' (importing it is what registers)
        _import(entry.module, f"plugin entry point '{entry.name}'")
    for module in modules:
        _import(module, "--plugin")


def loaded_modules() -> list[str]:
    """The plugin modules named explicitly so far (for worker processes to load the same)."""
    return list(_loaded)


def _import(module: str, what: str) -> None:
    if module in _loaded:
        return
    try:
        importlib.import_module(module)
    except ImportError as err:
        raise HarnessError(f"{what}: cannot import module '{module}' ({err})") from None
    _loaded.append(module)
