"""What the driver recorded -> the simulator's `RunResult`, so `chirond.sim.report` gives replay
the same summary.json keys, table and plots as `chirond simulate`, plus replay-only figures.

Times become daemon seconds since the start (real x K). The start is the moment the initial fleet
was ready (the simulator starts with its initial instances ready at t = 0). GPU-hours, peak GPUs
and the timeline come from /metrics scrapes (chirond_instances by model, pool and state: GPUs of
every instance past PENDING, as the simulator counts jobs that started); launches are the policy's
(every chirond_scaling_actions{action="launch"} since the daemon started, less the instances it
started with, as the simulator counts them: successors it launched while the initial fleet was
still starting count too)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chirond.model import ReqClass, Request, Slo
from chirond.replay.driver import Recording
from chirond.replay.plan import ReplayPlan, percentile
from chirond.sim.results import RunResult, request_columns

Sample = Mapping[tuple[str, tuple[tuple[str, str], ...]], float]
POOLS = ("interactive", "mixed", "batch")
LOOP_LAG_GAUGE = "chirond_event_loop_lag_seconds"  # real seconds (the daemon's own probe), if exported


def _get(sample: Sample, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for (n, lab), v in sample.items():
        if n == name and all(dict(lab).get(k) == x for k, x in labels.items()):
            total += v
    return total


def _counter(sample: Sample, base: str, **labels: str) -> float:
    # prometheus_client exposes counters as NAME_total
    return _get(sample, base + "_total", **labels)


@dataclass
class Extras:
    """Replay-only figures (summary.json's "replay" object)."""

    speedup: float
    client_lag_p50_s: float
    client_lag_p99_s: float
    client_lag_max_s: float
    client_loop_lag_max_s: float
    loop_lag_max_s: float | None  # the daemon's, when it exports chirond_event_loop_lag_seconds
    trustworthy: bool
    warnings: list[str]
    not_answered: int  # interactive requests with no complete answer
    wrong_length: int  # answers whose completion_tokens differ from the scenario's output length
    errors: dict[str, int]
    per_model: dict[str, dict[str, Any]] = field(default_factory=dict)  # gpu_hours, launches, daemon's batch view
    timed_out: bool = False

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def timeline(
    plan: ReplayPlan, scrapes: Sequence[tuple[float, Sample]]
) -> dict[str, np.ndarray]:
    """The simulator's timeline keys (plus M/draining and M/gpus) from scrapes at t >= 0."""
    k = plan.speedup
    gpus_of = {m.name: m.profile.gpus for m in plan.models}
    tl: dict[str, list[float]] = {"t": [], "gpus": []}
    for t, s in scrapes:
        if t < 0:
            continue
        tl["t"].append(t * k)
        total = 0.0
        for m in plan.models:
            name = m.name

            def inst(state: str, pool: str | None = None, _n: str = name, _s: Sample = s) -> float:
                labels = {"model": _n, "state": state} | ({"pool": pool} if pool else {})
                return _get(_s, "chirond_instances", **labels)

            for p in POOLS:
                tl.setdefault(f"{name}/{p}", []).append(inst("ready", p))
            held = sum(inst(st) for st in ("starting", "ready", "draining"))
            caps = [v for (n, lab), v in s.items()
                    if n == "chirond_instance_batch_cap" and dict(lab).get("model") == name]
            for key, v in (
                ("starting", inst("starting")),
                ("pending", inst("pending")),
                ("draining", inst("draining")),
                ("queue_interactive", _get(s, "chirond_queue_length", model=name, **{"class": "interactive"})),
                ("queue_batch", _get(s, "chirond_queue_length", model=name, **{"class": "batch"})),
                ("cap", float(np.mean(caps)) if caps else 0.0),
                ("gpus", held * gpus_of[name]),
            ):
                tl.setdefault(f"{name}/{key}", []).append(v)
            total += held * gpus_of[name]
        tl["gpus"].append(total)
    return {key: np.asarray(v, dtype=np.float64) for key, v in tl.items()}


def integrate_hours(t: np.ndarray, v: np.ndarray, end: float) -> float:
    """GPU-hours of a step series sampled at `t` (each value holds until the next sample), to `end`."""
    if t.size == 0:
        return 0.0
    edges = np.minimum(np.append(t, max(end, float(t[-1]))), end)
    return float(np.sum(v * np.maximum(0.0, np.diff(edges)))) / 3600.0


def batch_finish_times(progress: Sequence[tuple[float, int]], completed: int, fallback: float) -> list[float]:
    """Real finish times of a batch's completed lines, earliest first: each poll that saw the
    completed count grow contributes that many lines at its time (an upper bound, within one poll
    interval); lines the polls missed (the last ones before the end) get `fallback`."""
    times: list[float] = []
    prev = 0
    for t, n in progress:
        times.extend([t] * max(0, n - prev))
        prev = max(prev, n)
    times = times[:completed]
    times.extend([fallback] * (completed - len(times)))
    return times


def build_result(
    plan: ReplayPlan,
    rec: Recording,
    *,
    start_sample: Sample,
    wall_s: float,
    failures: int,
    log: list[str],
    lower_bound: float,
) -> tuple[RunResult, list[Request]]:
    """The run as a RunResult (daemon seconds since the start) and its requests with their times."""
    k = plan.speedup
    names = [m.name for m in plan.models]
    reqs: list[Request] = []
    for r, s in zip(plan.interactive, rec.sent, strict=True):
        x = Request(r.id, r.model, ReqClass.INTERACTIVE, r.arrival, r.input_tokens, r.output_tokens)
        if not math.isnan(s.sent):
            x.arrival = s.sent * k  # when it reached the daemon; lateness is the client's lag, reported apart
        if not math.isnan(s.first) and not math.isnan(s.finish):
            x.first_token, x.finish = s.first * k, s.finish * k
        reqs.append(x)
    for b in rec.batches:
        done = [r for r in b.file.requests if b.output.get(f"r{r.id}") == 200]
        times = batch_finish_times(b.progress, len(done), rec.end)
        finish = dict(zip((r.id for r in done), times, strict=True))
        for r in b.file.requests:
            x = Request(r.id, r.model, ReqClass.BATCH, r.arrival, r.input_tokens, r.output_tokens,
                        r.arrival + b.file.deadline_s)
            if r.id in finish:
                x.finish = x.first_token = finish[r.id] * k
            reqs.append(x)

    all_done = all(x.finish is not None for x in reqs)
    last = max((x.finish for x in reqs if x.finish is not None), default=0.0)
    # As the simulator: the run ends with its last answer (a request that failed is over too),
    # unless the horizon cut it short.
    over = all_done or not rec.timed_out
    end = min(last if over else rec.end * k, plan.scenario.horizon_s) if reqs else rec.end * k
    tl = timeline(plan, rec.scrapes)
    final = rec.scrapes[-1][1] if rec.scrapes else {}

    def since(base: str, **labels: str) -> float:
        return _counter(final, base, **labels) - _counter(start_sample, base, **labels)

    requests = request_columns(reqs, names)
    requests["preempted"][:] = -1  # not known: the client does not see evictions and retries
    launches = policy_launches(plan, final)
    result = RunResult(
        scenario=plan.scenario.name,
        policy=plan.policy,
        params={**plan.params, "replay_speedup": k},
        seed=plan.seed,
        end_s=end,
        models=names,
        slos={m.name: Slo(m.ttft_s, m.tpot_s) for m in plan.models},
        requests=requests,
        timeline=tl,
        gpu_hours=integrate_hours(tl["t"], tl["gpus"], end),
        gpu_hours_lower_bound=lower_bound,
        peak_gpus=int(tl["gpus"].max()) if tl["gpus"].size else 0,
        launches=sum(launches.values()),
        cancellations=round(sum(since("chirond_scaling_actions", model=n, action=a)
                                    for n in names for a in ("drain", "cancel"))),
        preemptions=round(sum(since("chirond_preemptions", model=n) for n in names)),
        failures=failures,
        wall_s=wall_s,
        events=0,
        log=log,
        launches_by_model=launches,
        gpu_hours_by_model={
            n: integrate_hours(tl["t"], tl.get(f"{n}/gpus", np.zeros(tl["t"].size)), end) for n in names
        },
    )
    return result, reqs


def policy_launches(plan: ReplayPlan, final: Sample) -> dict[str, int]:
    """Launches the policy decided, per model: all the daemon submitted, less its initial fleet."""
    return {
        m.name: max(0, round(_counter(final, "chirond_scaling_actions", model=m.name, action="launch"))
                    - max(m.initial_instances, m.min_instances))
        for m in plan.models
    }


def per_model_extras(
    plan: ReplayPlan, result: RunResult, start_sample: Sample, final_sample: Sample
) -> dict[str, dict[str, Any]]:
    """Per model: GPU-hours and launches (the simulator's RunResult has them in total only), and
    the daemon's own count of batch lines that met their deadline (a cross-check of the client's)."""
    out: dict[str, dict[str, Any]] = {}
    tl = result.timeline
    for m in plan.models:
        n = m.name

        def since(base: str, **labels: str) -> float:
            return _counter(final_sample, base, **labels) - _counter(start_sample, base, **labels)

        out[n] = {
            "gpu_hours": integrate_hours(tl["t"], tl.get(f"{n}/gpus", np.zeros(tl["t"].size)), result.end_s),
            "launches": policy_launches(plan, final_sample)[n],
            "daemon_batch_ok": round(since("chirond_requests", model=n, outcome="ok", **{"class": "batch"})),
            "daemon_batch_met": round(since("chirond_slo_met", model=n, **{"class": "batch"})),
            "daemon_interactive_met": round(since("chirond_slo_met", model=n, **{"class": "interactive"})),
        }
    return out


def client_lags(rec: Recording, k: float) -> tuple[float, float, float]:
    """p50, p99 and max of how late each interactive request was sent, daemon seconds."""
    lags = [(s.sent - s.scheduled) * k for s in rec.sent if not math.isnan(s.sent)]
    return percentile(lags, 50), percentile(lags, 99), max(lags, default=0.0)


def daemon_loop_lag(scrapes: Sequence[tuple[float, Sample]], k: float) -> float | None:
    vals = [_get(s, LOOP_LAG_GAUGE) for t, s in scrapes if t >= 0 and any(n == LOOP_LAG_GAUGE for n, _ in s)]
    return max(vals) * k if vals else None
