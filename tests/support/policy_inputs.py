"""Hand-built policy inputs: instance, load and model views and snapshots on the bundled 8B and
70B profiles (models "m8" and "m70", TTFT SLO 2 s, TPOT 0.1 s), and a policy by name on them."""

from __future__ import annotations

from chirond.model import BacklogGroup, InstanceState, InstanceView, LoadStats, ModelView, Pool, Slo, Snapshot
from chirond.policy import make_policy
from chirond.policy.base import Policy
from chirond.profiles import Profile, load_profile
from tests.support.paths import PROFILES as PROFILE_DIR

# ---------------------------------------------------------------- factories

P8 = load_profile(PROFILE_DIR / "llama-3.1-8b_a100-80gb_tp1.toml")
P70 = load_profile(PROFILE_DIR / "llama-3.1-70b_a100-80gb_tp4.toml")
PROFILES: dict[str, Profile] = {"m8": P8, "m70": P70}
SLO = Slo(ttft_s=2.0, tpot_s=0.1)
READY = InstanceState.READY


def inst(
    iid: int,
    *,
    model: str = "m8",
    pool: Pool = Pool.MIXED,
    state: InstanceState = READY,
    cap: int = 32,
    batch_cap: int | None = None,
    inter: int = 0,
    batch: int = 0,
    waiting: int = 0,
    kv_free: int | None = None,
    tpot: float | None = None,
    stale: bool = False,
    ends_at: float | None = None,
    launched_at: float = 0.0,
) -> InstanceView:
    prof = PROFILES[model]
    live = state in (READY, InstanceState.DRAINING)
    return InstanceView(
        id=iid,
        model=model,
        pool=pool,
        state=state,
        gpus=prof.gpus,
        launched_at=launched_at,
        ready_at=launched_at if live else None,
        ends_at=ends_at,
        cap=cap if live else 0,
        batch_cap=(cap if batch_cap is None else batch_cap) if live else 0,
        inflight_interactive=inter,
        inflight_batch=batch,
        running=inter + batch,
        waiting=waiting,
        kv_usage=0.0 if kv_free is None else 1 - kv_free / prof.kv_capacity_tokens,
        kv_free_tokens=prof.kv_capacity_tokens if kv_free is None else kv_free,
        tpot_obs_s=tpot,
        ttft_obs_s=None,
        tokens_per_s=0.0,
        stale=stale,
    )


def load(rate: float = 0.0, mean_input: float = 0.0, mean_output: float = 0.0) -> LoadStats:
    """Steady rates, and no arrivals by second (so no burst: the load rule sizes a steady rate)."""
    return LoadStats(
        rate_1m=rate,
        rate_10m=rate,
        prompt_tokens_1m=rate * mean_input,
        prompt_tokens_10m=rate * mean_input,
        mean_input=mean_input,
        mean_output=mean_output,
    )


def model(
    instances: list[InstanceView],
    *,
    name: str = "m8",
    max_instances: int = 8,
    min_instances: int = 1,
    lead_time_s: float = 100.0,
    interactive_queue: int = 0,
    interactive_queue_tokens: int = 0,
    backlog: tuple[BacklogGroup, ...] = (),
    batch_mean_output: float = 0.0,
    stats: LoadStats | None = None,
) -> ModelView:
    return ModelView(
        name=name,
        slo=SLO,
        gpus_per_instance=PROFILES[name].gpus,
        max_instances=max_instances,
        min_instances=min_instances,
        lead_time_s=lead_time_s,
        interactive_queue=interactive_queue,
        interactive_queue_tokens=interactive_queue_tokens,
        oldest_interactive_wait_s=0.0,
        batch_queue=sum(g.requests for g in backlog),
        backlog=backlog,
        batch_mean_output=batch_mean_output,
        load=stats or load(),
        instances=tuple(instances),
    )


def snap(*models: ModelView, now: float = 0.0, free_gpus: int = 64) -> Snapshot:
    return Snapshot(now=now, models=tuple(models), free_gpus=free_gpus)


def policy(name: str, **params: float) -> Policy:
    return make_policy(name, PROFILES, params)
