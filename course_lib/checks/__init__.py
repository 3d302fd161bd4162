"""Auto-checked exercises: `from course_lib import checks; checks.<exercise>(answer)`.

Each notebook's exercises live in `chNN.py` next to this file and are found automatically.
"""
from __future__ import annotations

import importlib
import pkgutil

from course_lib.checks.core import REGISTRY, CheckResult, Exercise, close, register

_loaded = False


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("ch"):
            importlib.import_module(f"{__name__}.{info.name}")
    _loaded = True


def all_exercises() -> dict[str, Exercise]:
    _load_all()
    return dict(REGISTRY)


def __getattr__(name: str) -> Exercise:
    if name.startswith("__"):
        raise AttributeError(name)
    _load_all()
    if name in REGISTRY:
        return REGISTRY[name]
    raise AttributeError(f"no exercise called {name!r}; available: {', '.join(sorted(REGISTRY))}")


def __dir__():
    _load_all()
    return sorted(list(globals()) + list(REGISTRY))
