"""The simulator's input error, apart from the modules that raise it: scenario.py reads scenario
files and imports workload.py, which reads trace files; both raise `ScenarioError`, and neither
imports the other for it."""

from __future__ import annotations

from chirond.tomltable import TableError

__all__ = ["ScenarioError"]


class ScenarioError(TableError):
    """A scenario or trace file is invalid; the message names the file and the key or line."""
