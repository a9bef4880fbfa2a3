"""Check-level properties for the assignments' checks (``compare="property:<name>"``).

A property judges all of a check's outputs together: statistics of a random masking,
an accuracy against held-out truth, two calls that must agree. Each assignment's
properties live in a module of this package and register themselves with
:func:`register`; ``genlab.checks.judge`` looks them up by name.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable

from genlab.checks import PROPERTIES


def register(name: str) -> Callable:
    def decorate(fn: Callable) -> Callable:
        if name in PROPERTIES and PROPERTIES[name] is not fn:
            raise ValueError(f"property {name!r} is registered twice")
        PROPERTIES[name] = fn
        return fn

    return decorate


def load_all() -> None:
    """Import every module of this package, so that their properties are registered."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
