"""benchmarks/after_the_start.py: its tally counts SLO attainment by the report's own rule."""

from __future__ import annotations

import math
import runpy
from pathlib import Path

import numpy as np

from tests.support.runs import run_from_rows

ROOT = Path(__file__).resolve().parents[2]
NAN = math.nan
# cls, arrival, first_token, finish, deadline, output_tokens (TTFT SLO 1 s, TPOT 0.1 s)
ROWS = [
    (0, 10.0, 10.5, 11.0, NAN, 11),  # met, before T0 = 60 s: not counted
    (0, 70.0, 70.5, 71.0, NAN, 11),  # met
    (0, 80.0, 82.0, 83.0, NAN, 11),  # TTFT 2 s: missed
    (0, 90.0, 90.5, NAN, NAN, 1),  # one token, never finished: missed (no TPOT is no answer)
    (1, 0.0, 5.0, 50.0, 100.0, 20),  # batch by its deadline: met
    (1, 0.0, 5.0, 150.0, 100.0, 20),  # batch late: missed
    (1, 0.0, 5.0, 150.0, NAN, 20),  # batch without a deadline (a trace row), finished: met
]


def test_the_tally_counts_as_the_summary_does() -> None:
    tally = runpy.run_path(str(ROOT / "benchmarks" / "after_the_start.py"))["tally"]
    r = run_from_rows([(0, *row) for row in ROWS], ["a"], {"t": np.array([0.0, 100.0]), "gpus": np.array([4.0, 2.0])})
    counts, gpu_h = tally(r, 60.0)
    assert counts == {"a": (1, 3, 2, 3)}
    assert gpu_h == 2 * 100 / 3600  # the sample at 100 s, held to the end; the one at 0 s is before T0
