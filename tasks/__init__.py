"""Synthetic tasks (one file per family) and suites. Importing this package registers all of them.

Every module in this folder is imported here, so a new task is one new file (plus its test): nothing to edit.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
