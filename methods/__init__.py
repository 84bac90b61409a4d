"""The registry of CIR methods: ``register_method``, ``create_method``, ``list_methods``.

Adding a method is one module in this package that decorates its class with ``@register_method("name")``:
modules are discovered here, so no list of names is edited anywhere. Method modules import their heavy
dependencies (open_clip, transformers) inside functions, so discovering them stays cheap and a Combiner run
never imports transformers.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import Any

from bench.registry import Registry

METHODS: Registry[type] = Registry("method")


def register_method(name: str):
    """Class decorator registering a ``CIRMethod`` subclass under ``name`` (a duplicate name raises)."""
    return METHODS.register_class(name, "method_name")


@cache
def _discover() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")


def get_method_class(name: str) -> type:
    """The method class registered as ``name`` (one-line error with close matches otherwise)."""
    _discover()
    return METHODS.get(name, flag="--method")


def create_method(name: str, **config: Any):
    """Build method ``name`` from its settings: fields of the method's frozen ``Config`` dataclass.

    Unset settings keep the method's defaults; an unknown setting is a one-line error naming it.
    """
    from bench.config import resolve_config

    cls = get_method_class(name)
    return cls(resolve_config(cls.Config, config, {}, source=f"method {name} settings"))


def list_methods() -> list[str]:
    """Names of all registered methods."""
    _discover()
    return METHODS.names()
