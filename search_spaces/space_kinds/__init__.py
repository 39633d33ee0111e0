"""One module per space kind, each with one `kinds.SpaceKindRules` subclass; importing the package
imports (and so registers) every module in it. A new kind is a new file here."""

from __future__ import annotations

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
