"""Reading typed, validated TOML configuration with errors that say file, field and problem.

Every role (server, client) has one TOML file. Unknown keys are refused, so a typo never silently
falls back to a default; every error names the file and the dotted field.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigFileError(ValueError):
    """A configuration file is missing, unparsable or has a bad field."""


class Section:
    """One table of a TOML document; remembers which keys were read so leftovers can be refused."""

    def __init__(self, path: Path, name: str, data: Mapping[str, Any]) -> None:
        self.path = path
        self.name = name
        self.data = data
        self._read: set[str] = set()

    def _where(self, key: str) -> str:
        return f"{self.path}: {self.name + '.' if self.name else ''}{key}"

    def error(self, key: str, problem: str) -> ConfigFileError:
        return ConfigFileError(f"{self._where(key)}: {problem}")

    def get(self, key: str, kind: type[T], default: T | None = None, *, required: bool = False) -> T:
        self._read.add(key)
        if key not in self.data:
            if required or default is None:
                unread = [k for k in self.data if k not in self._read]
                typo = difflib.get_close_matches(key, unread, n=1)
                hint = (
                    f" (the file has {typo[0]!r}, which is not a known key: a misspelling?)" if typo else ""
                )
                raise self.error(key, f"is required{hint}")
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(key, f"must be a {kind.__name__}, got {type(value).__name__} {value!r}")
        return value

    def number(
        self, key: str, kind: type[T], default: T, *, low: float | None = None, high: float | None = None
    ) -> T:
        value = self.get(key, kind, default)
        assert isinstance(value, int | float)
        if (low is not None and value < low) or (high is not None and value > high):
            raise self.error(key, f"must be in [{low}, {high}], got {value}")
        return value

    def strings(self, key: str, default: list[str] | None = None) -> list[str]:
        value = self.get(key, list, default)
        if not all(isinstance(v, str) for v in value):
            raise self.error(key, "must be a list of strings")
        return list(value)

    def table(self, key: str) -> Section:
        value = self.get(key, dict, {})
        return Section(self.path, f"{self.name}.{key}" if self.name else key, value)

    def everything(self) -> dict[str, Any]:
        """All keys of the table (a typed model validates them, naming unknown ones)."""
        self._read.update(self.data)
        return dict(self.data)

    def finish(self) -> None:
        """Refuse keys nobody read (typos, options from another version)."""
        unknown = sorted(set(self.data) - self._read)
        if unknown:
            raise ConfigFileError(f"{self.path}: {self.name or 'top level'}: unknown key(s) {unknown}")


def load(path: Path) -> Section:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigFileError(f"{path}: no such configuration file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: not valid TOML: {exc}") from exc
    return Section(path, "", data)
