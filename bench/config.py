"""Config resolution: frozen dataclasses, with precedence CLI > YAML > defaults.

CLI flags left unset are ``None`` and never override the YAML file; the resolved config is saved with every run.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

from bench.errors import BenchError

C = TypeVar("C")


def read_yaml(path: Path | str) -> dict[str, Any]:
    """Read a YAML mapping with one-line errors for a missing file, bad syntax or a non-mapping document."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise BenchError(f"--config: {path} does not exist") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise BenchError(f"{path}: malformed YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BenchError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check (and for tuples convert) a YAML value against a dataclass field's annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if value is None:
        if type(None) in args:
            return None
        raise BenchError(f"{where}: must not be null")
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except BenchError:
                continue
        raise BenchError(f"{where}: {value!r} is not a {annotation}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise BenchError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], where) for v in value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(annotation, type) and (
        not isinstance(value, annotation) or (annotation is int and isinstance(value, bool))
    ):
        raise BenchError(f"{where}: expected {annotation.__name__}, got {value!r}")
    return value


def resolve_config(cls: type[C], yaml_values: dict[str, Any] | None, cli_values: dict[str, Any], source: str) -> C:
    """Build ``cls`` from defaults, overridden by ``yaml_values``, overridden by the non-None ``cli_values``.

    An unknown key in the YAML names ``source`` and the key; a value of the wrong type names the field.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in (yaml_values or {}).items():
        if key not in fields:
            import difflib

            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise BenchError(f"{source}: unknown key {key!r}{hint}")
        values[key] = _coerce(value, hints[key], f"{source}: {key}")
    values.update({k: v for k, v in cli_values.items() if v is not None and k in fields})
    return cls(**values)


def config_dict(config: Any) -> dict[str, Any]:
    """A frozen config dataclass as a JSON-ready dict (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
