"""One reader for TOML tables, shared by every file chirond reads: the daemon's config
(chirond/config.py), its [users] section (chirond/users.py) and simulator scenarios
(chirond/sim/scenario.py).

A `Table` is one table of a parsed file. It knows its key path, rejects unknown keys on creation
with the valid list, and its getters check types and ranges. Every error names the key path:
`FILE: models."llama-3.1-8b".slo.ttft_s: must be a positive number, got -1` (keys that are not TOML
bare keys are quoted; array items are `key[i]`). Each caller picks the exception (ConfigError,
ScenarioError) or, with `on_error`, raises its own way.

This module imports nothing of chirond's: everything that reads a file can import it.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, NoReturn, TypeVar

__all__ = ["REQUIRED", "Fail", "Table", "TableError", "key_path", "read_toml", "show"]

REQUIRED: Any = object()  # a getter's default: the key must be there
Fail = Callable[[str, str], NoReturn]  # (key path, reason): raises
_T = TypeVar("_T")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SIGNS = ("positive", "non-negative", "any")
_MAX_SHOWN_ITEMS = 8


class TableError(ValueError):
    """A bad value in a TOML file; the message names the file, the key path and the reason."""


def show(v: object) -> str:
    """A value as an error message quotes it: true/false, 'text', 3, 0.5, [1, 2], a table, an array."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, list):
        scalars = 0 < len(v) <= _MAX_SHOWN_ITEMS and all(isinstance(x, bool | int | float | str) for x in v)
        return "[" + ", ".join(show(x) for x in v) + "]" if scalars else "an array"
    return str(v)


def key_path(*parts: str | int) -> str:
    """`models."llama-3.1-8b".workload[0]`: keys that are not TOML bare keys are quoted; integers
    are array indexes."""
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
            continue
        name = p if _BARE_KEY.fullmatch(p) else '"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"'
        out += ("." if out else "") + name
    return out


def read_toml(path: Path, error: type[Exception] = TableError, *, invalid: str = "not valid TOML") -> dict[str, Any]:
    """The parsed file; `error("PATH: reason")` when it is missing, unreadable, not UTF-8 or not
    TOML (`invalid` words the last)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text: {e}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise error(f"{path}: {invalid}: {e}") from None


class Table:
    """A TOML table being read. `valid`: the keys it may hold (None: any). `file`: the file it
    comes from (relative paths start at its directory). Errors are raised as
    `error("FILE: key.path: reason")`, or through `on_error(key path, reason)` when given.
    `named`: this table is one entry of a table keyed by names ([models.NAME]): an unknown key
    holding a table then gets a hint that a name containing "." must be quoted.

    Getters return the value from the file, or `default` when the key is absent (REQUIRED: the key
    must be there), and fail naming the key path."""

    def __init__(
        self,
        data: object,
        valid: Collection[str] | None,
        *,
        file: str | Path | None = None,
        parts: tuple[str | int, ...] = (),
        error: type[Exception] = TableError,
        on_error: Fail | None = None,
        named: bool = False,
    ) -> None:
        self.file = file
        self.parts = parts
        self.error = error
        self._custom = on_error
        self.on_error: Fail = on_error or self._raise
        if not isinstance(data, dict):
            self.fail("", f"must be a table, got {show(data)}")
        self.data: dict[str, Any] = data
        if valid is None:
            return
        for key, value in data.items():
            if key not in valid:
                hint = ""
                if named and isinstance(value, dict) and parts and isinstance(parts[-1], str):
                    # TOML splits [models.llama-3.1-8b] at the dots, leaving a stray sub-table.
                    quoted = key_path(*parts[:-1], f"{parts[-1]}.{key}")
                    hint = f'; a name containing "." must be quoted: [{quoted}]'
                self.fail(key, f"unknown key (valid: {', '.join(valid) or 'none'}){hint}")

    def _raise(self, where: str, reason: str) -> NoReturn:
        raise self.error(f"{self.file}: {where}: {reason}" if self.file is not None else f"{where}: {reason}")

    @property
    def base(self) -> Path:
        """The directory relative paths start at (the file's)."""
        return Path(self.file).resolve().parent if self.file is not None else Path.cwd()

    def path(self, key: str | int = "") -> str:
        """The key path of `key` in this table ("": of the table itself)."""
        return key_path(*self.parts, key) if key != "" else key_path(*self.parts)

    def fail(self, key: str, reason: str, index: int | None = None) -> NoReturn:
        """Fail "key.path: reason" for `key` ("": the table itself), or for item `index` of the
        array `key`."""
        parts = (*self.parts, key) if key else self.parts
        self.on_error(key_path(*parts, *(() if index is None else (index,))), reason)

    def fail_at(self, where: str, reason: str) -> NoReturn:
        """Fail with a key path as written (for a name that failed its own check)."""
        self.on_error(where, reason)

    def _child(self, parts: tuple[str | int, ...], data: object, valid: Collection[str] | None,
               named: bool = False) -> Table:
        return Table(data, valid, file=self.file, parts=parts, error=self.error, on_error=self._custom, named=named)

    def sub(self, key: str, valid: Collection[str] | None, *, required: bool = False, named: bool = False) -> Table:
        """The sub-table `key` (empty when absent, unless `required`)."""
        if required and key not in self.data:
            self.fail(key, "required")
        return self._child((*self.parts, key), self.data.get(key, {}), valid, named)

    def item(self, key: str, index: int, valid: Collection[str] | None) -> Table:
        """Table `index` of the array of tables `key` (`key[index]`)."""
        return self._child((*self.parts, key, index), self.data[key][index], valid)

    def has(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, default: Any = REQUIRED) -> Any:
        """The raw value (unchecked)."""
        if key in self.data:
            return self.data[key]
        if default is REQUIRED:
            self.fail(key, "required")
        return default

    def integer(self, key: str, default: _T = REQUIRED, lo: int = 0, hi: int | None = None, *,
                note: str = "") -> int | _T:
        """An integer in lo..hi (no upper bound when `hi` is None). `note` is added to the message."""
        if key not in self.data:
            return self.get(key, default)
        v = self.data[key]
        want = f"an integer in {lo}..{hi}" if hi is not None else f"an integer >= {lo}"
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            self.fail(key, f"must be {want}{f' ({note})' if note else ''}, got {show(v)}")
        return v

    def positive_integer(self, key: str, default: _T = REQUIRED) -> int | _T:
        """An integer >= 1, worded "a positive integer"."""
        if key not in self.data:
            return self.get(key, default)
        v = self.data[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            self.fail(key, f"must be a positive integer, got {show(v)}")
        return v

    def number(self, key: str, default: _T = REQUIRED, sign: str = "positive") -> float | _T:
        """A finite number (integers accepted), returned as float. `sign`: "positive" (> 0),
        "non-negative" or "any"."""
        assert sign in _SIGNS, sign
        if key not in self.data:
            return self.get(key, default)
        v = self.data[key]
        ok = not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)
        if not ok or (sign == "positive" and v <= 0) or (sign == "non-negative" and v < 0):
            self.fail(key, f"must be {'a' if sign == 'any' else 'a ' + sign} number, got {show(v)}")
        return float(v)

    def string(self, key: str, default: _T = REQUIRED, choices: Collection[str] = ()) -> str | _T:
        """A non-empty string (one of `choices` when given)."""
        if key not in self.data:
            return self.get(key, default)
        v = self.data[key]
        if not isinstance(v, str) or not v.strip():
            self.fail(key, f"must be a non-empty string, got {show(v)}")
        if choices and v not in choices:
            self.fail(key, f"must be one of {', '.join(choices)}, got {show(v)}")
        return v

    def optional_string(self, key: str) -> str:
        """A string where "" means "not set" (the same as leaving the key out)."""
        v = self.data.get(key, "")
        if not isinstance(v, str):
            self.fail(key, f"must be a string, got {show(v)}")
        return v

    def boolean(self, key: str, default: _T = REQUIRED) -> bool | _T:
        if key not in self.data:
            return self.get(key, default)
        v = self.data[key]
        if not isinstance(v, bool):
            self.fail(key, f"must be true or false, got {show(v)}")
        return v

    def strings(self, key: str) -> tuple[str, ...]:
        """An array of strings (empty when absent)."""
        v = self.data.get(key, [])
        if not isinstance(v, list):
            self.fail(key, f"must be an array of strings, got {show(v)}")
        for i, item in enumerate(v):
            if not isinstance(item, str):
                self.fail(key, f"must be a string, got {show(item)}", i)
        return tuple(v)

    def hourly_counts(self, key: str, hi: int | None = None) -> tuple[int, ...]:
        """An array of 24 integers in 0..hi, one per hour of the day (empty when absent)."""
        v = self.data.get(key, [])
        if not isinstance(v, list) or (v and len(v) != 24):
            self.fail(key, f"must be an array of 24 instance counts, one per hour from midnight, got {show(v)}")
        for i, item in enumerate(v):
            if isinstance(item, bool) or not isinstance(item, int) or item < 0 or (hi is not None and item > hi):
                want = f"an integer in 0..{hi}" if hi is not None else "a non-negative integer"
                self.fail(key, f"must be {want}, got {show(item)}", i)
        return tuple(v)

    def resolved_path(self, key: str, default: _T = REQUIRED) -> Path | _T:
        """A path, absolute; relative ones start at the file's directory."""
        if key not in self.data:
            return self.get(key, default)
        return (self.base / Path(self.string(key)).expanduser()).resolve()

    def existing_file(self, key: str, what: str = "", default: _T = REQUIRED) -> Path | _T:
        """`resolved_path` of a file that must exist and be readable. `what` explains a missing key."""
        if key not in self.data:
            if default is REQUIRED:
                self.fail(key, f"required: {what}" if what else "required")
            return default
        path = self.resolved_path(key, Path())
        if not path.is_file():
            relative = not Path(self.data[key]).expanduser().is_absolute()
            hint = f" (relative paths start at the directory of {Path(str(self.file)).name})" if relative else ""
            self.fail(key, f"no such file: {path}{hint}")
        try:
            with path.open("rb"):
                pass
        except OSError as e:
            self.fail(key, f"cannot read {path}: {e.strerror or e}")
        return path
