"""Modules imported on first use, so that a short command does not pay for them.

`reconcile --help`, `validate` and `diff` must start at once (issue 15): a heavy library
that only some paths use (gitpython's start-up runs `git --version`) is bound at import
as a module object that loads itself on the first attribute read
(importlib.util.LazyLoader). Type checkers see the plain import (under TYPE_CHECKING).
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_module(name: str) -> ModuleType:
    """The module `name`, loaded when one of its attributes is first read."""
    loaded = sys.modules.get(name)
    if loaded is not None:
        return loaded
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
