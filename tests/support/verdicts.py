"""Comparing chirond's request verdicts with vLLM's (the conformance tier's corpora): verdicts are
"ok" or "400:param"."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def differences(corpus: list[tuple[str, str, Any]], theirs: dict[str, Any],
                ours: Callable[[str, Any], str]) -> dict[tuple[str, str], str]:
    """(kind, label) -> what differs, for each (kind, label, body) of the corpus whose verdict by
    `ours(kind, body)` is not vLLM's (`theirs`, a probe's answer keyed "kind:label")."""
    found = {}
    for kind, label, body in corpus:
        t = theirs[f"{kind}:{label}"]
        vllm = "ok" if t["ok"] else f"400:{t['param']}"
        mine = ours(kind, body)
        if mine != vllm:
            found[(kind, label)] = f"chirond {mine}, vLLM {vllm} ({t.get('why', '')})"
    return found
