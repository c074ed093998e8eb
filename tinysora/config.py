"""Typed configs: plain dataclasses with a strict JSON / TOML round trip.

Every model and training recipe is a ``@dataclass`` subclass of :class:`Config`.
``cfg.to_dict()`` / ``Cls.from_dict(d)`` convert to and from plain data,
``cfg.save(path)`` / ``Cls.load(path)`` write and read ``config.json`` (or read a
``.toml`` recipe). Unknown keys are an error that names the key and lists the
valid ones, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from tinysora.errors import UserError
from tinysora.io.atomic import atomic_write_text

C = TypeVar("C", bound="Config")


class ConfigError(UserError, ValueError):
    """A config file or dict that does not match its dataclass."""


@dataclasses.dataclass
class Config:
    """Base class: subclass with ``@dataclass`` and typed fields."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], *, where: str = "") -> C:
        where = where or cls.__name__
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a table/object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                f"valid keys: {', '.join(fields)}"
            )
        hints = typing.get_type_hints(cls)
        kwargs = {
            name: _from_plain(hints[name], value, f"{where}.{name}") for name, value in data.items()
        }
        try:
            return cls(**kwargs)
        except TypeError as e:  # a required field is missing
            raise ConfigError(f"{where}: {e}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls: type[C], text: str, *, where: str = "") -> C:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where or cls.__name__}: invalid JSON: {e}") from None
        return cls.from_dict(data, where=where)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (JSON) atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, self.to_json())
        return path

    @classmethod
    def load(cls: type[C], path: str | os.PathLike) -> C:
        """Read a ``.json`` or ``.toml`` file into this config class."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read config '{path}': {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"cannot read config '{path}': not UTF-8 text") from None
        if path.suffix == ".toml":
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"{path}: invalid TOML: {e}") from None
            return cls.from_dict(data, where=str(path))
        return cls.from_json(text, where=str(path))


def _to_plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


def _from_plain(hint: Any, value: Any, where: str) -> Any:
    """Convert plain JSON data ``value`` to the annotated type ``hint`` (checking it)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _from_plain(arg, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits no type")
    if isinstance(hint, type) and issubclass(hint, Config):
        return hint.from_dict(value, where=where)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(
                _from_plain(a, v, f"{where}[{i}]")
                for i, (a, v) in enumerate(zip(args, value, strict=True))
            )
        item = args[0] if args else Any
        items = [_from_plain(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table/object, got {value!r}")
        return {
            k: _from_plain(args[1] if args else Any, v, f"{where}[{k!r}]") for k, v in value.items()
        }
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported config type {hint!r}")


@dataclasses.dataclass
class WorldConfig(Config):
    """Size and timing of Shapes World clips (defaults: docs/WORLD.md's 64x64x17 at 8 fps)."""

    height: int = 64
    width: int = 64
    frames: int = 17
    fps: float = 8.0
