"""JSON from untrusted clients, with bounds the standard parser does not have: nesting depth
(a line nested 5,000 deep raises RecursionError, not ValueError, and anything that later walks
the value recursively can fail the same way) and lone UTF-16 surrogates ("\\ud800" parses into a
str that cannot be encoded as UTF-8). Both are refused as ValueError, like any other bad JSON, so
callers that catch ValueError need nothing more. Pure."""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 64  # far past any OpenAI body (tool schemas included); far below Python's recursion limit
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # only an escape can make one: UTF-8 cannot


class JsonBoundsError(ValueError):
    """Valid JSON syntax outside the bounds chirond accepts."""


def loads(raw: str | bytes, max_depth: int = MAX_DEPTH, **kwargs: Any) -> Any:
    """json.loads with a depth bound and no lone surrogates; ValueError for anything refused
    (UnicodeDecodeError for bytes that are not UTF-8 is one)."""
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    try:
        value = json.loads(text, **kwargs)
    except RecursionError:
        raise JsonBoundsError(f"nested more than {max_depth} levels deep") from None
    check(value, max_depth, strings=_SURROGATE_ESCAPE.search(text) is not None)
    return value


def check(value: Any, max_depth: int = MAX_DEPTH, strings: bool = True) -> None:
    """Raises JsonBoundsError when `value` nests deeper than `max_depth` or (with `strings`) holds a
    string that is not valid Unicode. Iterative: it cannot itself run out of stack."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            items: Any = v.values()
            if strings:
                for k in v:
                    _check_str(k)
        elif isinstance(v, list):
            items = v
        else:
            if strings and isinstance(v, str):
                _check_str(v)
            continue
        if depth > max_depth:
            raise JsonBoundsError(f"nested more than {max_depth} levels deep")
        for child in items:
            if isinstance(child, dict | list) or (strings and isinstance(child, str)):
                stack.append((child, depth + 1))


def _check_str(s: str) -> None:
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError as e:
            raise JsonBoundsError(f"a string holds a lone surrogate (\\u{ord(s[e.start]):04x})") from None
