"""Hindsight by the hour: how many instances of one model each hour of a past day asked for.

One model's requests of that day run through fixed deployments of it (warm, a policy's own
per-instance mechanisms, as the frontier runs them), one count after another; in each hour the
chosen count is the one with the fewest GPU-hours plus SLO misses at 1/`price` GPU-hour each.
Read off an earlier day, it is a floor for the hours of the next (`min_instances_by_hour`): the
daemon learns it from its own traffic (`chirond learn-floor`), the simulator from a scenario's
`history_seed`, and benchmarks/by_hour.py prints it beside a policy's run."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np

from chirond.model import ReqClass, Request
from chirond.policy import make_policy
from chirond.policy.base import Policy
from chirond.sim.fixed import FixedPolicy
from chirond.sim.report import slo_met
from chirond.sim.results import RunResult
from chirond.sim.runner import ClusterSetup, ModelSetup, Simulation

HOURS = 24


def interactive_mask(r: RunResult, model: str) -> np.ndarray:
    """Which of the run's requests are `model`'s interactive ones."""
    return np.asarray((r.requests["cls"] == 0) & (r.requests["model"] == r.models.index(model)))


def misses_by_bin(r: RunResult, model: str, bin_s: float, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(interactive requests, SLO misses) of `model` per `bin_s` bin of arrival, `bins` bins."""
    sel = interactive_mask(r, model)
    met = slo_met(r)
    k = np.minimum((r.requests["arrival"][sel] // bin_s).astype(np.int64), bins - 1)
    return np.bincount(k, minlength=bins), np.bincount(k, weights=~met[sel], minlength=bins).astype(np.int64)


def hindsight(fixed: dict[int, np.ndarray], gpus: int, bin_h: float, price: float) -> tuple[list[int], int, float]:
    """Per bin, the swept count with the lowest cost, its GPU-hours plus its misses at one
    `price`-th of a GPU-hour each (the most on a tie: an instance that avoids just `price` misses
    per GPU-hour is bought). So more instances only where they avoid at least `price` misses per
    GPU-hour, however many it takes first: below the count that keeps up, one instance more avoids
    few misses and several many. The schedule, its misses and its GPU-hours."""
    counts = sorted(fixed)
    bins = range(len(fixed[counts[0]]))
    chosen = [min(counts, key=lambda n: (fixed[n][b] + price * n * gpus * bin_h, -n)) for b in bins]
    misses = sum(int(fixed[n][b]) for b, n in enumerate(chosen))
    return chosen, misses, sum(chosen) * gpus * bin_h


Progress = Callable[[int, np.ndarray], None]  # (count, its misses per hour), after each run


def learn_floor(
    requests: Sequence[Request],
    setup: ModelSetup,
    policy: Policy,
    price: float,
    *,
    tick_s: float = 5.0,
    progress: Progress | None = None,
) -> tuple[tuple[int, ...], dict[int, np.ndarray]]:
    """The floor per hour of the day that `requests` (one model's, arrivals in seconds since that
    day's midnight; its interactive ones are read) asked for at `price` misses per GPU-hour, and the
    misses per hour of each count run. Counts run from `min_instances` (0 counts every request of
    the hour a miss: a cold start is minutes) up until no hour has the misses left to pay for one
    more (then no hour can take it), at most `max_instances`. The fixed deployments have the
    partition to themselves, no queue wait, no time limit and no failures (an instance a node):
    what the traffic asked for, not what Slurm gave. `tick_s`: the control tick of the world that
    learns (the daemon's, the scenario's)."""
    reqs = [replace(r, id=i) for i, r in enumerate(x for x in requests if x.cls is ReqClass.INTERACTIVE)]
    per_hour = requests_by_hour(reqs)
    gpus = setup.profile.gpus
    price_n = price * gpus  # the misses an instance must avoid in an hour
    fixed: dict[int, np.ndarray] = {}
    n = max(0, setup.min_instances)
    end_s = max((r.arrival for r in reqs), default=0.0) + 3600.0
    cluster = ClusterSetup(gpus=setup.max_instances * gpus, gpus_per_node=gpus, queue_wait_s=(0.0, 0.0),
                           time_limit_s=math.inf)
    alone = replace(setup, min_instances=0, initial_instances=0, min_instances_by_hour=())
    while True:
        if n == 0 or not reqs:
            fixed[n] = per_hour.copy() if n == 0 else np.zeros(HOURS, dtype=np.int64)
        else:
            sim = Simulation(scenario="history", models=[alone], cluster=cluster, requests=[replace(r) for r in reqs],
                             policy=FixedPolicy(policy, {setup.name: n}), policy_name=f"{policy.name}-fixed",
                             seed=0, horizon_s=end_s, tick_s=tick_s)
            fixed[n] = misses_by_bin(sim.run(), setup.name, 3600.0, HOURS)[1]
        if progress is not None:
            progress(n, fixed[n])
        if n >= setup.max_instances or not np.any(fixed[n] >= price_n):
            break  # no hour's misses left would pay for another instance: the schedule is known
        n += 1
    chosen, _, _ = hindsight(fixed, gpus, 1.0, price)
    return tuple(chosen), fixed


def requests_by_hour(requests: Sequence[Request]) -> np.ndarray:
    """Interactive requests per hour of the day (arrivals in seconds since midnight, clipped to it)."""
    hour = [min(HOURS - 1, max(0, int(r.arrival // 3600))) for r in requests if r.cls is ReqClass.INTERACTIVE]
    return np.bincount(np.asarray(hour, dtype=np.int64), minlength=HOURS)


def policy_for(name: str, setup: ModelSetup, params: Mapping[str, object] | None = None) -> Policy:
    """`name`'s per-instance mechanisms for `setup`'s model alone."""
    return make_policy(name, {setup.name: setup.profile}, params or {})
