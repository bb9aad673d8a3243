"""What one simulated run produces: per-request outcomes and a timeline, as numpy arrays."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from chirond.model import ReqClass, Request, Slo


@dataclass
class RunResult:
    scenario: str
    policy: str  # registry name, e.g. "llumnix-tuned"
    params: dict[str, object]  # the policy's parameters (for llumnix-tuned: the chosen U and D)
    seed: int
    end_s: float  # virtual time the run ended
    models: list[str]  # index i in `requests["model"]` is models[i]
    slos: dict[str, Slo]
    # Per-request columns, all the same length:
    #   id (int64: the workload's request id, the same in `simulate` and `replay`), model (int16
    #   index), cls (int8: 0 interactive, 1 batch), arrival, first_token, finish, deadline (float64,
    #   NaN where absent), input_tokens, output_tokens, preempted (int32; -1: not known)
    requests: dict[str, np.ndarray]
    # Timeline, one sample per control tick: "t" and, per model M,
    #   "M/interactive", "M/mixed", "M/batch" (ready instances per pool), "M/starting", "M/pending",
    #   "M/queue_interactive", "M/queue_batch", "M/cap" (mean cap over ready instances),
    # plus "gpus" (GPUs held by jobs: allocated, loading or serving).
    timeline: dict[str, np.ndarray]
    gpu_hours: float
    gpu_hours_lower_bound: float
    peak_gpus: int
    launches: int
    cancellations: int  # instances ended by the policy (drain or cancel)
    preemptions: int  # batch requests evicted for interactive ones, plus work lost with instances
    failures: int  # instances lost to node failures or time limits
    wall_s: float  # real seconds the run took
    events: int  # simulator events processed
    log: list[str] = field(default_factory=list)  # the tick line of every decision that changed something
    launches_by_model: dict[str, int] = field(default_factory=dict)
    gpu_hours_by_model: dict[str, float] = field(default_factory=dict)


def request_columns(reqs: Sequence[Request], models: Sequence[str]) -> dict[str, np.ndarray]:
    """`RunResult.requests` from the requests of a run (simulated or replayed); times NaN where absent."""
    index = {n: k for k, n in enumerate(models)}

    def col(f: Callable[[Request], float | None]) -> np.ndarray:
        return np.array([math.nan if (v := f(r)) is None else v for r in reqs], dtype=np.float64)

    return {
        "id": np.array([r.id for r in reqs], dtype=np.int64),
        "model": np.array([index[r.model] for r in reqs], dtype=np.int16),
        "cls": np.array([0 if r.cls is ReqClass.INTERACTIVE else 1 for r in reqs], dtype=np.int8),
        "arrival": col(lambda r: r.arrival),
        "first_token": col(lambda r: r.first_token),
        "finish": col(lambda r: r.finish),
        "deadline": col(lambda r: r.deadline),
        "input_tokens": np.array([r.input_tokens for r in reqs], dtype=np.int64),
        "output_tokens": np.array([r.output_tokens for r in reqs], dtype=np.int64),
        "preempted": np.array([r.preempted for r in reqs], dtype=np.int32),
    }
