"""A simulated run built by hand, for tests of the scripts that read runs (benchmarks/)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from chirond.model import Slo
from chirond.sim.results import RunResult

# model index, cls (0 interactive, 1 batch), arrival, first_token, finish, deadline (NaN: none), output_tokens
Row = tuple[int, int, float, float, float, float, int]


def run_from_rows(rows: Sequence[Row], models: Sequence[str], timeline: Mapping[str, np.ndarray],
                  end_s: float = 200.0) -> RunResult:
    """A run of `rows` (100-token prompts; every model's SLO: TTFT 1 s, TPOT 0.1 s)."""
    cols = list(zip(*rows, strict=True))
    n = len(rows)
    requests: dict[str, np.ndarray] = {
        "id": np.arange(n, dtype=np.int64), "model": np.array(cols[0], dtype=np.int16),
        "cls": np.array(cols[1], dtype=np.int8), "arrival": np.array(cols[2]), "first_token": np.array(cols[3]),
        "finish": np.array(cols[4]), "deadline": np.array(cols[5]), "input_tokens": np.full(n, 100, dtype=np.int32),
        "output_tokens": np.array(cols[6], dtype=np.int32), "preempted": np.zeros(n, dtype=np.int32),
    }
    slo = Slo(ttft_s=1.0, tpot_s=0.1)
    return RunResult(scenario="unit", policy="p", params={}, seed=1, end_s=end_s, models=list(models),
                     slos=dict.fromkeys(models, slo), requests=requests, timeline=dict(timeline), gpu_hours=0.0,
                     gpu_hours_lower_bound=0.0, peak_gpus=4, launches=0, cancellations=0, preemptions=0,
                     failures=0, wall_s=0.0, events=0)
