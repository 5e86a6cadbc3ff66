"""Pipeline files: a TOML recipe (pipelines/*.toml) resolved into one frozen config per stage.

A pipeline file has one table per stage (``[preprocess]``, ``[classifier]``, ``[cam]``, ``[prior]``,
``[fusion]``, ``[crf]``, ``[morphology]``, ``[decision]``, ``[calibration]``) and optional per-device tables
(``[device.cuda.classifier]`` ...) whose values replace the stage's when that device is used. Command-line
overrides (``--set classifier.epochs=3``) come last. The resolved result is written next to every output.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import tomllib
import types
from importlib import resources
import typing
from pathlib import Path
from typing import Any, TypeVar

from wsm.errors import WsmError

# The recipes ship inside the package (pipelines/ at the top of a checkout is a link to them).
PIPELINES_DIR = Path(str(resources.files("wsm") / "pipelines"))
T = TypeVar("T")


class PipelineError(WsmError, ValueError):
    """A pipeline file or override that does not fit the recipe's shape."""


def find_pipeline(name_or_path: str | Path) -> Path:
    """A path as given, or a name (``default``, ``cam-only``, ``classic``) under pipelines/."""
    path = Path(name_or_path)
    if path.exists():
        return path
    named = PIPELINES_DIR / f"{name_or_path}.toml"
    if named.exists():
        return named
    raise PipelineError(f"no pipeline file {str(name_or_path)!r}; give a path or one of "
                        f"{', '.join(known_pipelines())}")


def known_pipelines() -> list[str]:
    """The names of the recipes that ship with wsm (wsm/pipelines/*.toml)."""
    return sorted(p.stem for p in PIPELINES_DIR.glob("*.toml"))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` with a TOML value (``3``, ``0.5``, ``true``, ``"resnet18"``; bare words are strings)."""
    if "=" not in text:
        raise PipelineError(f"override {text!r} should look like section.key=value, e.g. classifier.epochs=3")
    dotted, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return dotted.strip().split("."), value


def apply_override(resolved: dict, text: str) -> list[str]:
    """Set one ``section.key=value`` in a resolved pipeline, in place; the keys set."""
    keys, value = parse_override(text)
    _set(resolved, keys, value)
    return keys


def _set(table: dict, keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        table = table.setdefault(key, {})
        if not isinstance(table, dict):
            raise PipelineError(f"cannot set {'.'.join(keys)}: {key} is a value, not a table")
    table[keys[-1]] = value


def merge_tables(base: dict, top: dict) -> dict:
    """``base`` with ``top`` merged over it, table by table (a copy; neither is changed)."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        out[key] = merge_tables(out.get(key, {}), value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_pipeline(name_or_path: str | Path, device: str = "cpu", overrides: list[str] = ()) -> dict:
    """The resolved recipe: file, then its [device.<device>] tables, then overrides."""
    path = find_pipeline(name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf8"))
    except tomllib.TOMLDecodeError as err:
        raise PipelineError(f"{path} is not valid TOML: {err}") from err
    per_device = raw.pop("device", {})
    resolved = merge_tables(raw, per_device.get(device, {}))
    for text in overrides:
        apply_override(resolved, text)
    resolved["device_profile"] = device
    return resolved


def stage_config(cls: type[T], table: dict | None, section: str) -> T:
    """Build a stage's frozen dataclass from its table; unknown keys are an error that lists the valid ones."""
    table = dict(table or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise PipelineError(f"[{section}] has unknown key(s) {unknown}; valid keys: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    for name, value in table.items():
        try:
            table[name] = _typed(value, hints[name])
        except TypeError as err:
            raise PipelineError(f"[{section}] {name} = {value!r}: expected {err}") from None
    try:
        return cls(**table)
    except PipelineError:
        raise
    except ValueError as err:       # a stage's own check of its values
        raise PipelineError(f"[{section}] {err}") from None


def _typed(value: Any, hint: Any) -> Any:
    """value checked against a field's type (bool, int, float, str, tuples of those, X | None); raises
    TypeError naming what was expected. Other types pass as given."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _typed(value, inner[0]) if len(inner) == 1 else value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError(_describe(hint))
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_typed(v, args[0]) for v in value)
        if len(value) != len(args):
            raise TypeError(_describe(hint))
        return tuple(_typed(v, a) for v, a in zip(value, args))
    if hint is bool and not isinstance(value, bool):
        raise TypeError("true or false")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError("a whole number")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TypeError("a finite number")
        return float(value)
    if hint is str and not isinstance(value, str):
        raise TypeError('a string (in quotes: --set section.key="text")')
    return value


def _describe(hint: Any) -> str:
    args = typing.get_args(hint)
    if len(args) == 2 and args[1] is Ellipsis:
        return f"a list of {args[0].__name__}"
    return f"a list of {len(args)} values ({', '.join(a.__name__ for a in args)}), e.g. [0.5, 1.0]"


def to_toml(table: dict, prefix: str = "") -> str:
    """A small TOML writer for resolved pipelines (tables of scalars, lists and nested tables)."""
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    lines = [f"[{prefix}]"] if prefix and scalars else []
    lines += [f"{_key(k)} = {_value(v)}" for k, v in scalars.items()]
    out = "\n".join(lines) + ("\n\n" if lines else "")
    for key, sub in tables.items():
        out += to_toml(sub, f"{prefix}.{_key(key)}" if prefix else _key(key))
    return out


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else f'"{key}"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise PipelineError(f"cannot write {value!r} to TOML")


def pipeline_hash(resolved: dict) -> str:
    return hashlib.sha256(to_toml(resolved).encode()).hexdigest()[:16]
