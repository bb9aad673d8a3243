"""A small TOML writer for test configs: nested dicts of tables, scalars, lists and inline tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str | Path):
        s = str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{s}"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {v!r}")


def _key(k: str) -> str:
    return k if k.replace("-", "").replace("_", "").isalnum() else _value(k)


def dumps_toml(doc: dict[str, Any], _prefix: str = "") -> str:
    """TOML text for `doc`: every dict value is a [table] (dotted names for nested ones), except an
    `Inline({...})`, which is written as an inline table; keys that are not bare are quoted."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for k, v in doc.items():
        if isinstance(v, dict) and not isinstance(v, Inline):
            tables.append((f"{_prefix}{_key(k)}", v))
        else:
            lines.append(f"{_key(k)} = {_value(dict(v) if isinstance(v, Inline) else v)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for name, t in tables:
        body = dumps_toml(t, name + ".")
        out += f"\n[{name}]\n{body}" if any(not isinstance(x, dict) or isinstance(x, Inline) for x in t.values()) \
            or not t else body
    return out


class Inline(dict):  # type: ignore[type-arg]
    """A dict written as an inline table ({ a = 1 }) rather than a [table]."""


def write_toml(path: Path, doc: dict[str, Any] | str) -> Path:
    """Write `doc` (a dict, or TOML text as is) to `path`; returns the path."""
    path.write_text(doc if isinstance(doc, str) else dumps_toml(doc))
    return path
