"""The shared backbone and one file per sequence mixer. Importing this package registers every mixer.

Every module in this folder is imported here, so a new mixer is one new file (plus its test): nothing to edit.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
