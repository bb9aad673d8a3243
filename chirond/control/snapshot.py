"""The snapshot a policy reads, built by one pure function from the facts both worlds provide."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
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


def build_snapshot(
    now: float,
    specs: Mapping[str, ModelSpec],
    instances: Iterable[Instance],
    dispatcher: Dispatcher,
    obs: Observations,
    backlog: Backlog,
    free_gpus: int,
    stale_after_s: float,
) -> Snapshot:
    """Pure but for one thing: each instance's request observations are taken (they cover the
    time since the previous snapshot). `backlog(model, now)` gives the queued batch work by
    deadline and its request count. Instances being stopped are left out: in the simulator they
    are gone at once, in the daemon a poll or two later."""
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
    views = []
    for name, m in specs.items():
        n_inter, _ = dispatcher.queued(name)
        groups, n_batch = backlog(name, now)
        oldest = dispatcher.oldest_interactive(name) if n_inter else None
        views.append(
            ModelView(
                name=name, slo=m.slo, gpus_per_instance=m.profile.gpus,
                max_instances=m.max_instances, min_instances=m.min_instances,
                lead_time_s=m.startup_s + obs.queue_wait[name],
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
