"""Scalars as pydantic's lax mode reads them, which is how vLLM's request models read a request:
"10" is an integer, "0.5" a number. chirond's checks and fake-vllm use these, so both take what
vLLM takes (tests/conformance/test_request_verdicts.py holds them to it). Pure."""

from __future__ import annotations

import re

_INT_TEXT = re.compile(r"[+-]?\d+(?:_\d+)*(?:\.0*)?")
_NUMBER_TEXT = re.compile(r"[+-]?(?:\d+(?:_\d+)*(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def lax_int(v: object) -> int | None:
    """`v` as pydantic's lax mode reads an integer field (vLLM's request models): an int, a bool, an
    integral float, or a string holding an integer ("10", " 10 ", "1_0", "10.0"); None otherwise."""
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return int(v) if v.is_integer() else None
    if isinstance(v, str) and _INT_TEXT.fullmatch(v.strip()):
        return int(v.strip().split(".")[0].replace("_", ""))  # exact: float() would overflow or round
    return None


def lax_number(v: object) -> float | None:
    """`v` as pydantic's lax mode reads a float field: a number, a bool or a numeric string; None otherwise."""
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str) and _NUMBER_TEXT.fullmatch(v.strip()):
        return float(v.strip().replace("_", ""))
    return None


_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def lax_bool(v: object) -> bool | None:
    """`v` as pydantic's lax mode reads a boolean field: a bool, 0 or 1 (int or float), or one of
    "true"/"false", "yes"/"no", "on"/"off", "t"/"f", "y"/"n", "1"/"0" in any case; None otherwise."""
    if isinstance(v, bool):
        return v
    if isinstance(v, int | float) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        low = v.lower()
        return True if low in _TRUE else False if low in _FALSE else None
    return None
