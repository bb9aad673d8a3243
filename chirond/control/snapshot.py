"""The snapshot a policy reads, built by one pure function from the facts both worlds provide."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from chirond.control.instance import Instance
from chirond.control.observations import Observations
from chirond.dispatch import Dispatcher
from chirond.model import BacklogGroup, InstanceView, ModelView, Slo, Snapshot
from chirond.profiles import Profile

# (model, now) -> queued batch work by deadline, and its request count
Backlog = Callable[[str, float], tuple[tuple[BacklogGroup, ...], int]]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What the control loop is told about a model (config in the daemon, scenario in the simulator)."""

    name: str
    slo: Slo
    profile: Profile
    min_instances: int
    max_instances: int
    startup_s: float  # expected running-to-ready time of one instance (engine start)
    initial_instances: int = 0
    static_instances: int = 0  # what the `static` policy runs (the simulator's scenarios set it)
    idle_timeout_s: float | None = None  # min_instances = 0: drain after this long idle (None: lead time)
    # A site's floor per hour of the day (empty: none), e.g. from an earlier day's traffic
    # (benchmarks/by_hour.py): local time in the daemon, hours from the start in the simulator.
    min_instances_by_hour: tuple[int, ...] = ()


DAY_S = 86400.0


def hourly_floor(spec: ModelSpec, day_s: float, ahead_s: float) -> int:
    """The fewest instances `spec` may run at `day_s` seconds into the day: `min_instances`, raised
    by the largest entry of its schedule from this hour to the hour `ahead_s` (the lead time, in
    seconds of the day) from now, so the instances an hour asks for are launched one lead time
    before it and kept until it ends; at most `max_instances`."""
    if not spec.min_instances_by_hour:
        return spec.min_instances
    first = int(day_s % DAY_S // 3600)
    hours = min(24, int((day_s % DAY_S + max(0.0, ahead_s)) // 3600) - first + 1)
    need = max(spec.min_instances_by_hour[(first + i) % 24] for i in range(hours))
    return max(spec.min_instances, min(spec.max_instances, need))


def higher(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    """Two floors by the hour as one (a site's and a learned one): the larger count of each hour;
    an empty one is none."""
    if not a or not b:
        return tuple(a or b)
    return tuple(max(x, y) for x, y in zip(a, b, strict=True))


def build_snapshot(
    now: float,
    specs: Mapping[str, ModelSpec],
    instances: Iterable[Instance],
    dispatcher: Dispatcher,
    obs: Observations,
    backlog: Backlog,
    free_gpus: int,
    stale_after_s: float,
    day_clock: Callable[[float], float] | None = None,
) -> Snapshot:
    """Pure but for one thing: each instance's request observations are taken (they cover the
    time since the previous snapshot). `backlog(model, now)` gives the queued batch work by
    deadline and its request count; `day_clock(t)`, the seconds since midnight at instant `t`
    (for `min_instances_by_hour`; by default the simulator's, whose clock starts at midnight).
    Instances being stopped are left out: in the simulator they are gone at once, in the daemon a
    poll or two later."""
    by_model: dict[str, list[InstanceView]] = {name: [] for name in specs}
    for x in sorted(instances, key=lambda i: i.id):
        if x.cancel_sent_at is not None:
            continue
        m = specs[x.model]
        slot = dispatcher.slots.get(x.id)
        ttft, tpot = x.take_observations()
        by_model[x.model].append(
            InstanceView(
                id=x.id, model=x.model, pool=x.pool, state=x.state, gpus=x.gpus,
                launched_at=x.launched_at, ready_at=x.ready_at, ends_at=x.ends_at,
                cap=slot.cap if slot else 0, batch_cap=slot.batch_cap if slot else 0,
                inflight_interactive=len(slot.inter) if slot else 0,
                inflight_batch=len(slot.batch) if slot else 0,
                running=x.running, waiting=x.waiting, kv_usage=x.kv_usage,
                kv_free_tokens=int(m.profile.kv_capacity_tokens * (1.0 - x.kv_usage)),
                tpot_obs_s=tpot, ttft_obs_s=ttft,
                tokens_per_s=x.tokens_per_s, stale=x.stale(now, stale_after_s),
            )
        )  # fmt: skip
    day_of = day_clock or (lambda t: t % DAY_S)
    # the time of day only where a floor asks for it (a daemon without one never reads local time)
    day_s = day_of(now) if any(m.min_instances_by_hour for m in specs.values()) else 0.0
    views = []
    for name, m in specs.items():
        n_inter, _ = dispatcher.queued(name)
        groups, n_batch = backlog(name, now)
        oldest = dispatcher.oldest_interactive(name) if n_inter else None
        lead = m.startup_s + obs.queue_wait[name]
        # the lead in seconds of the day: a faster clock's is shorter
        ahead = (day_of(now + lead) - day_s) % DAY_S if m.min_instances_by_hour else 0.0
        views.append(
            ModelView(
                name=name, slo=m.slo, gpus_per_instance=m.profile.gpus,
                max_instances=m.max_instances, min_instances=hourly_floor(m, day_s, ahead), lead_time_s=lead,
                interactive_queue=n_inter, interactive_queue_tokens=dispatcher.interactive_tokens(name),
                oldest_interactive_wait_s=0.0 if oldest is None else now - oldest,
                batch_queue=n_batch, backlog=groups,
                batch_mean_output=obs.batch_out_mean[name], load=obs.windows[name].stats(now),
                instances=tuple(by_model[name]), failures_recent=obs.recent_failures(name, now),
                idle_timeout_s=m.idle_timeout_s,
            )
        )  # fmt: skip
    return Snapshot(now=now, models=tuple(views), free_gpus=free_gpus)


def dispatcher_backlog(dispatcher: Dispatcher) -> Backlog:
    """The backlog as the dispatcher alone holds it (the simulator: every batch request is queued there)."""

    def backlog(model: str, now: float) -> tuple[tuple[BacklogGroup, ...], int]:
        return dispatcher.backlog(model), dispatcher.queued(model)[1]

    return backlog
