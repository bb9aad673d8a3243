"""Unit tests start no process: anything that tries fails here, loudly (the static check in
test_test_layout.py cannot see a process started deep inside chirond, e.g. by a Daemon)."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import pytest


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError(f"a unit test started a process: {args[:1]!r}; move the test to tests/component")


@pytest.fixture(autouse=True)
def _no_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "Popen", _refuse)
    monkeypatch.setattr(asyncio, "create_subprocess_exec", _refuse)
    monkeypatch.setattr(asyncio, "create_subprocess_shell", _refuse)
