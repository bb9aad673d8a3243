"""Scaling policies on hand-built snapshots: valid decisions, named behaviours, stale data, purity."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from chirond.model import (
    Action,
    BacklogGroup,
    Cancel,
    Decision,
    Drain,
    InstanceState,
    Launch,
    LoadStats,
    ModelView,
    Pool,
    SetBatchCap,
    SetPool,
    Slo,
    Snapshot,
)
from chirond.policy import REGISTRY, make_policy
from chirond.policy import chirond as chirond_policy
from chirond.policy.base import Policy
from tests.support.policy_inputs import P8, P70, PROFILES, SLO, inst, load, model, policy, snap

POLICIES = sorted(REGISTRY)


def launches(d: Decision, pool: Pool | None = None) -> list[Launch]:
    return [a for a in d.actions if isinstance(a, Launch) and (pool is None or a.pool is pool)]


def drains(d: Decision) -> list[Action]:
    return [a for a in d.actions if isinstance(a, Drain | Cancel)]


# ---------------------------------------------------------------- canonical snapshots

CANONICAL: dict[str, Snapshot] = {
    "empty": snap(model([])),
    "idle": snap(model([inst(1), inst(2)])),
    "interactive-heavy": snap(
        model(
            [inst(1, inter=32, tpot=0.2), inst(2, inter=32, tpot=0.15, pool=Pool.INTERACTIVE)],
            interactive_queue=50,
            interactive_queue_tokens=50 * 800,
            stats=load(rate=20.0, mean_input=800, mean_output=300),
        )
    ),
    "batch-backlog": snap(
        model(
            [inst(1, batch=32)],
            backlog=(BacklogGroup(3600.0, 5000, 5000 * 600), BacklogGroup(7200.0, 5000, 5000 * 600)),
            batch_mean_output=250.0,
        )
    ),
    "starting": snap(
        model(
            [
                inst(1, inter=3),
                inst(2, state=InstanceState.STARTING, launched_at=10.0),
                inst(3, state=InstanceState.PENDING, launched_at=20.0),
                inst(4, state=InstanceState.DRAINING, inter=1),
            ],
            stats=load(rate=2.0, mean_input=500, mean_output=200),
        ),
        now=30.0,
    ),
    "two-models": snap(
        model([inst(1, inter=4, tpot=0.05)], stats=load(rate=1.0, mean_input=300, mean_output=200)),
        model(
            [inst(2, model="m70", pool=Pool.BATCH, batch=10)],
            name="m70",
            max_instances=2,
            backlog=(BacklogGroup(1800.0, 2000, 2000 * 400),),
        ),
        now=60.0,
    ),
    "expiring": snap(model([inst(1, inter=2, ends_at=150.0), inst(2)]), now=100.0),
}


def check_valid(d: Decision, s: Snapshot) -> None:
    assert isinstance(d, Decision)
    assert isinstance(d.reason, str) and d.reason and "\n" not in d.reason
    ids = {i.id for m in s.models for i in m.instances}
    names = {m.name for m in s.models}
    for a in d.actions:
        assert isinstance(a, Launch | Drain | Cancel | SetBatchCap | SetPool), a
        if isinstance(a, Launch):
            assert a.model in names and a.count >= 1 and isinstance(a.pool, Pool)
        else:
            assert a.instance in ids, a
        if isinstance(a, SetBatchCap):
            assert a.cap >= 1
            assert a.batch_cap is None or 0 <= a.batch_cap <= a.cap
        if isinstance(a, SetPool):
            assert isinstance(a.pool, Pool)


def test_registry_names() -> None:
    assert set(REGISTRY) == {"static", "llumnix", "chiron", "chirond"}
    for name, cls in REGISTRY.items():
        assert cls.name == name


def test_unknown_parameter_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown parameter"):
        make_policy("chiron", PROFILES, {"no_such_knob": 1})
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("nope", PROFILES)


@pytest.mark.parametrize("snapshot", list(CANONICAL), ids=list(CANONICAL))
@pytest.mark.parametrize("name", POLICIES)
def test_every_policy_returns_valid_actions(name: str, snapshot: str) -> None:
    s = CANONICAL[snapshot]
    pol = policy(name)
    d = pol.plan(s, None)
    check_valid(d, s)
    # And again on the next tick with the state it handed back.
    later = Snapshot(now=s.now + 60.0, models=s.models, free_gpus=s.free_gpus)
    check_valid(pol.plan(later, d.state), later)


@pytest.mark.parametrize("snapshot", list(CANONICAL), ids=list(CANONICAL))
@pytest.mark.parametrize("name", POLICIES)
def test_policies_are_pure(name: str, snapshot: str) -> None:
    s = CANONICAL[snapshot]
    pol = policy(name)
    assert pol.plan(s, None) == pol.plan(s, None)
    state = pol.plan(s, None).state
    kept = copy.deepcopy(state)
    later = Snapshot(now=s.now + 30.0, models=s.models, free_gpus=s.free_gpus)
    d1 = pol.plan(later, state)
    d2 = pol.plan(later, state)
    assert d1 == d2
    assert state == kept  # the state handed in is not modified
    # A fresh instance of the policy decides the same: nothing is kept on the object.
    assert policy(name).plan(later, kept) == d1


# ---------------------------------------------------------------- chiron


def _interactive(busy: int, total: int, **kw: object) -> Snapshot:
    insts = [inst(i + 1, pool=Pool.INTERACTIVE, inter=1 if i < busy else 0) for i in range(total)]
    return snap(model(insts, **kw))  # type: ignore[arg-type]


def test_chiron_adds_an_interactive_instance_above_ibp_threshold() -> None:
    pol = policy("chiron", mixed_instances=0)
    d = pol.plan(_interactive(2, 3), None)  # ibp 2/3 > 0.6
    assert launches(d) == [Launch("m8", Pool.INTERACTIVE, 1)]
    assert drains(d) == []
    assert "ibp 0.67" in d.reason


@pytest.mark.parametrize(("busy", "total"), [(1, 3), (3, 5), (0, 2)])
def test_chiron_does_not_add_at_or_below_ibp_threshold(busy: int, total: int) -> None:
    pol = policy("chiron", mixed_instances=0)
    d = pol.plan(_interactive(busy, total), None)  # ibp 1/3, 3/5 = 0.6 exactly, 0
    assert launches(d) == []
    # ... and with more than one interactive instance, one idle instance is drained.
    (dr,) = drains(d)
    assert isinstance(dr, Drain) and dr.instance > busy


def test_chiron_respects_max_instances() -> None:
    d = policy("chiron", mixed_instances=0).plan(_interactive(3, 3, max_instances=3), None)
    assert launches(d) == []


def test_chiron_is_locked_while_an_interactive_instance_starts() -> None:
    insts = [inst(i + 1, pool=Pool.INTERACTIVE, inter=1) for i in range(3)]
    insts.append(inst(4, pool=Pool.INTERACTIVE, state=InstanceState.STARTING))
    d = policy("chiron", mixed_instances=0).plan(snap(model(insts)), None)
    assert launches(d) == []


def test_chiron_keeps_a_mixed_pool() -> None:
    d = policy("chiron").plan(_interactive(0, 1), None)
    assert Launch("m8", Pool.MIXED, 1) in launches(d)


def test_chiron_global_step_waits_for_its_interval() -> None:
    pol = policy("chiron", mixed_instances=0)
    d1 = pol.plan(_interactive(2, 3), None)
    later = _interactive(2, 3)
    d2 = pol.plan(Snapshot(now=5.0, models=later.models, free_gpus=64), d1.state)
    assert launches(d2) == []  # global_interval_s = 10
    d3 = pol.plan(Snapshot(now=10.0, models=later.models, free_gpus=64), d2.state)
    assert launches(d3) == [Launch("m8", Pool.INTERACTIVE, 1)]


def test_chiron_lowers_cap_when_tpot_breaks_slo() -> None:
    s = snap(model([inst(1, pool=Pool.INTERACTIVE, cap=32, inter=10, tpot=0.2)]))
    d = policy("chiron").plan(s, None)
    assert SetBatchCap(1, 24) in d.actions  # 32 x 0.75


def test_chiron_raises_cap_with_slack_when_used() -> None:
    s = snap(model([inst(1, pool=Pool.INTERACTIVE, cap=32, inter=30, tpot=0.05)]))
    d = policy("chiron").plan(s, None)
    assert SetBatchCap(1, 40) in d.actions  # 32 + 8
    # Not used (under 90 % of the cap): unchanged.
    s = snap(model([inst(1, pool=Pool.INTERACTIVE, cap=32, inter=10, tpot=0.05)]))
    assert not [a for a in policy("chiron").plan(s, None).actions if isinstance(a, SetBatchCap)]


def test_chiron_adds_a_batch_instance_for_a_backlog() -> None:
    # 10000 requests x 100 tokens / 700 tok/s on one batch instance = 1429 s > 1000 s left.
    s = snap(
        model(
            [inst(1, pool=Pool.INTERACTIVE), inst(2, pool=Pool.BATCH)],
            backlog=(BacklogGroup(1000.0, 10000, 10000 * 300),),
        )
    )
    d = policy("chiron", mixed_instances=0).plan(s, None)
    assert Launch("m8", Pool.BATCH, 1) in d.actions
    s = snap(
        model(
            [inst(1, pool=Pool.INTERACTIVE), inst(2, pool=Pool.BATCH)],
            backlog=(BacklogGroup(2000.0, 10000, 10000 * 300),),
        )
    )
    assert Launch("m8", Pool.BATCH, 1) not in policy("chiron", mixed_instances=0).plan(s, None).actions


# ---------------------------------------------------------------- chirond


def _backlog_snapshot(deadline_in_s: float, requests: int) -> Snapshot:
    return snap(
        model(
            [inst(1)],
            backlog=(BacklogGroup(deadline_in_s, requests, requests * 512),),
            batch_mean_output=256.0,
        )
    )


def test_chirond_launches_for_a_backlog_that_would_miss_its_deadline() -> None:
    # 50000 requests of 512 in / 256 out due in 1 h. One 8B instance does about 3400 output tok/s
    # at its throughput-optimal batch (256 sequences, ~36 ms steps, with prefill interleaved):
    # 50000 x 256 / 3400 = 3800 s of decoding plus 50000 x 512 x 0.075 ms = 1900 s of prefill,
    # more than one instance can do in the 3200 s left after lead time and margin.
    d = policy("chirond").plan(_backlog_snapshot(3600.0, 50_000), None)
    (la,) = launches(d)
    assert la.model == "m8" and la.pool is Pool.MIXED
    assert 1 <= la.count <= 3
    assert drains(d) == []


@pytest.mark.parametrize(("deadline", "requests"), [(7 * 86400.0, 50_000), (3600.0, 100)], ids=["week-away", "small"])
def test_chirond_does_not_launch_when_the_deadline_can_be_met(deadline: float, requests: int) -> None:
    d = policy("chirond").plan(_backlog_snapshot(deadline, requests), None)
    assert launches(d) == []
    assert drains(d) == []


def test_chirond_sizes_interactive_capacity_from_load() -> None:
    quiet = snap(model([inst(1)], stats=load(rate=0.5, mean_input=500, mean_output=200)))
    assert launches(policy("chirond").plan(quiet, None)) == []
    # 40 req/s of 2000-token prompts is 6 s of prefill per second alone: several instances.
    busy = snap(model([inst(1, inter=32)], stats=load(rate=40.0, mean_input=2000, mean_output=200)))
    (la,) = launches(policy("chirond").plan(busy, None))
    assert la.count >= 5


def _bursts(prompt_tokens: float, every_s: int = 20, size: int = 10, span_s: int = 1800) -> LoadStats:
    """`size` prompts of `prompt_tokens` arriving together every `every_s` seconds for `span_s`
    (0.5 req/s at the defaults), as the proxy's arrival window reports them."""
    rate = size / every_s
    recent = tuple((float(age), float(size), float(size * prompt_tokens))
                   for age in range(span_s - every_s, -1, -every_s))
    return dataclasses.replace(load(rate=rate, mean_input=prompt_tokens, mean_output=200), recent=recent,
                               recent_span_s=float(span_s))


def test_chirond_sizes_long_prompts_by_replaying_their_queue() -> None:
    # Ten 20k-token prompts (2 s of prefill each on the 8B, 8 s TTFT SLO) every 20 s: 1.6
    # instances of work, and the largest burst clears in 1.4 instances within its window plus half
    # the TTFT. But on 2 instances the last prompts of each burst wait 3 rounds of prefill and miss;
    # on 3 one still waits 3 rounds; 4 serve every burst within the SLO.
    slo = Slo(ttft_s=8.0, tpot_s=0.1)
    m = dataclasses.replace(model([inst(1)], stats=_bursts(20_000)), slo=slo)
    (la,) = launches(policy("chirond").plan(snap(m, now=1800.0), None))
    assert la.count == 3
    (old,) = launches(policy("chirond", queue_gain_per_gpu_h=0).plan(snap(m, now=1800.0), None))
    assert old.count == 1  # the utilisation target and the burst rule: 2 instances
    # A miss avoided is worth an instance only up to `queue_gain_per_gpu_h` per GPU-hour: the
    # fourth instance avoids one miss per burst (180 an hour on one GPU), not 200.
    (frugal,) = launches(policy("chirond", queue_gain_per_gpu_h=200).plan(snap(m, now=1800.0), None))
    assert frugal.count == 2


def test_chirond_sizes_short_prompts_as_before() -> None:
    # Bursts of 300 500-token prompts: prefill is a small share of the TTFT SLO, the replay
    # is not used, and the utilisation and burst rules size the model as without it.
    slo = Slo(ttft_s=8.0, tpot_s=0.1)
    m = dataclasses.replace(model([inst(1)], stats=_bursts(500, size=300)), slo=slo)
    with_rule = policy("chirond").plan(snap(m, now=1800.0), None)
    without = policy("chirond", queue_gain_per_gpu_h=0).plan(snap(m, now=1800.0), None)
    assert launches(with_rule) and with_rule.actions == without.actions


def _cap_of(d: Decision) -> int:
    (c,) = [a.cap for a in d.actions if isinstance(a, SetBatchCap)]
    return c


def test_chirond_caps_count_batch_churn_only_while_batch_work_waits() -> None:
    # Long interactive prompts (16k), no batch work anywhere: finishing requests are not replaced
    # by batch prompts, so the cap is set by the interactive load alone, not pinned at 8.
    stats = load(rate=0.2, mean_input=16_000, mean_output=200)
    alone = policy("chirond").plan(snap(model([inst(1, inter=2)], stats=stats)), None)
    backlog = (BacklogGroup(deadline=36_000.0, requests=500, input_tokens=500 * 16_000),)
    with_batch = policy("chirond").plan(
        snap(model([inst(1, inter=2)], stats=stats, backlog=backlog, batch_mean_output=200)), None)
    assert _cap_of(with_batch) == 8
    assert _cap_of(alone) >= 3 * _cap_of(with_batch)  # 24: set by the interactive prompts alone


def test_chirond_scales_down_only_after_hold() -> None:
    pol = policy("chirond")
    insts = [inst(1, inter=1), inst(2), inst(3)]
    m = model(insts, stats=load(rate=0.1, mean_input=300, mean_output=100))
    state: object = None
    drained_at = []
    for t in range(0, 121, 5):
        d = pol.plan(snap(m, now=float(t)), state)
        state = d.state
        if drains(d):
            drained_at.append(t)
    assert drained_at[:2] == [60, 120]  # scale_down_hold_s = 60, one instance at a time


def _idle_model(idle_s: float, rate_10m: float = 0.0, min_instances: int = 0,
                idle_timeout_s: float | None = None) -> ModelView:
    stats = dataclasses.replace(load(), rate_10m=rate_10m, idle_s=idle_s)
    m = model([inst(1)], min_instances=min_instances, lead_time_s=240.0, stats=stats)
    return dataclasses.replace(m, idle_timeout_s=idle_timeout_s)


def _drained_by(pol: Policy, m: ModelView, seconds: int) -> bool:
    state: object = None
    for t in range(0, seconds + 1, 5):
        d = pol.plan(snap(m, now=float(t)), state)
        state = d.state
        if drains(d):
            return True
    return False


def test_chirond_scales_an_idle_model_to_zero_after_its_lead_time() -> None:
    # Rent or buy: with min_instances = 0, an instance idle for longer than a cold start (the lead
    # time, 240 s here) goes; one idle for less stays, and so does one whose arrival rate says
    # the next request comes sooner than a cold start.
    pol = policy("chirond")
    assert _drained_by(pol, _idle_model(idle_s=300.0), 120)
    assert not _drained_by(pol, _idle_model(idle_s=100.0), 120)
    assert not _drained_by(pol, _idle_model(idle_s=300.0, rate_10m=0.01), 120)  # next in ~100 s
    assert _drained_by(pol, _idle_model(idle_s=300.0, rate_10m=0.002), 120)  # next in ~500 s
    assert not _drained_by(pol, _idle_model(idle_s=1e9, min_instances=1), 120)
    # A site's idle_timeout_s replaces the lead time as the idle limit, either way.
    assert not _drained_by(pol, _idle_model(idle_s=300.0, idle_timeout_s=600.0), 120)
    assert _drained_by(pol, _idle_model(idle_s=100.0, idle_timeout_s=60.0), 120)


def test_chirond_replaces_an_expiring_instance_ahead_of_time() -> None:
    # Instance 1 ends in 150 s, less than lead time (100 s) + 120 s: replace it first ...
    s = snap(model([inst(1, inter=2, ends_at=250.0)], lead_time_s=100.0), now=100.0)
    d = policy("chirond").plan(s, None)
    assert launches(d) == [Launch("m8", Pool.MIXED, 1, replaces=1)]
    assert drains(d) == []
    # ... then drain it once the replacement serves.
    s = snap(model([inst(1, inter=2, ends_at=250.0), inst(2, launched_at=150.0)]), now=160.0)
    d = policy("chirond").plan(s, None)
    assert Drain(1) in d.actions


def test_chirond_counts_decoding_at_its_caps_throughput() -> None:
    # Short prompts, long answers: decoding is most of the work. The rate is set so that two
    # instances decoding at their cap carry it at 60 %, under the 70 % target; at batch 32 each
    # token costs about twice as much.
    pol, inp, out = policy("chirond"), 200.0, 400.0
    probe = model([inst(1), inst(2)], stats=load(rate=1.0, mean_input=inp, mean_output=out))
    ctx = pol._ctx(probe)
    cap, _ = pol._cap(probe, P8, 2)
    rate = 2 * 0.6 / (P8.prefill_s(inp) + out * P8.step_s(cap, cap * ctx) / cap)
    m = model([inst(1), inst(2)], stats=load(rate=rate, mean_input=inp, mean_output=out))
    cap, tps = pol._cap(m, P8, 2)
    at_32 = rate * (P8.prefill_s(inp) + out * P8.step_s(32, 32 * ctx) / 32)
    assert at_32 / 0.7 > 3  # the old measure's answer, for contrast
    assert pol._needed(m, P8, cap, tps, 0.0)[0] == 2
    assert [a for a in pol.plan(snap(m), None).actions if isinstance(a, Launch | Drain)] == []


def test_largest_burst_is_the_busiest_window_within_the_history() -> None:
    # (age s, requests, prompt tokens) by second, oldest first, as the proxy's window keeps them
    recent = ((300.0, 4.0, 40_000.0), (150.0, 3.0, 9_000.0), (145.0, 2.0, 8_000.0), (100.0, 1.0, 10_000.0),
              (5.0, 1.0, 500.0))
    assert chirond_policy.largest_burst(recent, 400.0) == (40_000.0, 4.0)
    assert chirond_policy.largest_burst(recent, 200.0) == (17_000.0, 5.0)  # 150 and 145 s share 10 s
    assert chirond_policy.largest_burst(recent, 120.0) == (10_000.0, 1.0)
    assert chirond_policy.largest_burst(recent, 5.0) == (0.0, 0.0)  # the last 5 s: ages 0-4
    # seconds 10 s apart are two windows, not one
    assert chirond_policy.largest_burst(((20.0, 1.0, 100.0), (10.0, 1.0, 100.0)), 30.0) == (100.0, 1.0)


def test_chirond_holds_capacity_for_a_burst_for_two_lead_times() -> None:
    # A trickle, and once 400 prompts of 1,000 tokens at the same second: 28.5 s of prefill on the
    # 8B, 2.6 instances to clear them within the burst's 10 s plus half the 2-s TTFT. Instances launched for
    # the burst serve one lead time (100 s) later; they are kept for as long again, not longer.
    def after(age: float, **params: float) -> list[Launch]:
        ld = dataclasses.replace(load(rate=0.1, mean_input=1000, mean_output=100), recent=((age, 400.0, 400_000.0),))
        return launches(policy("chirond", **params).plan(snap(model([inst(1)], lead_time_s=100.0, stats=ld)), None))

    (la,) = after(150.0)
    assert la.count == 2
    assert after(250.0) == []
    assert after(250.0, burst_memory_leads=3.0) == [la]


def test_chirond_hands_over_only_from_an_instance_that_serves() -> None:
    starting = InstanceState.STARTING
    # The successor still starts: instance 1 keeps serving, and no third one is launched.
    s = snap(model([inst(1, inter=2, ends_at=250.0), inst(2, state=starting, launched_at=150.0)]), now=160.0)
    d = policy("chirond").plan(s, None)
    assert drains(d) == [] and launches(d) == []
    # A job whose limit comes before it is even up (limit shorter than start + lead time) gets no
    # successor of its own while it starts: successors would otherwise expire at once, one after
    # another, until the partition was full.
    s = snap(model([inst(1, inter=2), inst(2, state=starting, ends_at=250.0)], min_instances=2), now=160.0)
    assert launches(policy("chirond").plan(s, None)) == []


def test_a_successor_may_pass_max_instances_but_a_plain_launch_may_not() -> None:
    # At max_instances = 1 the successor of an expiring instance still starts (overlap of one).
    s = snap(model([inst(1, inter=2, ends_at=250.0)], max_instances=1, lead_time_s=100.0), now=100.0)
    (launch,) = launches(policy("chirond").plan(s, None))
    assert launch.room(have=1, max_instances=1) == 1
    assert Launch("m8", Pool.MIXED, 3).room(have=1, max_instances=2) == 1
    assert Launch("m8", Pool.MIXED, 3, replaces=1).room(have=2, max_instances=2) == 1


# ---------------------------------------------------------------- llumnix


def _llumnix(kv_free: int, inflight: tuple[int, int] = (10, 10)) -> Snapshot:
    return snap(model([inst(i + 1, inter=inflight[i], kv_free=kv_free) for i in range(2)]))


def _run_llumnix(kv_free: int, inflight: tuple[int, int] = (10, 10)) -> Decision:
    return policy("llumnix").plan(_llumnix(kv_free, inflight), None)


def test_llumnix_launches_when_freeness_below_u() -> None:
    # 2 x 1600 free tokens = 200 blocks over 2 x 50 requests: freeness 2 < U = 10.
    d = policy("llumnix").plan(
        snap(model([inst(i + 1, inter=50, kv_free=1600) for i in range(2)])),
        None,
    )
    assert launches(d) == [Launch("m8", Pool.MIXED, 1)]
    assert drains(d) == []


def test_llumnix_drains_when_freeness_without_one_stays_above_d() -> None:
    # Freeness without the least loaded (instance 2): 27312 blocks / (10 + 5 + 5) requests = 1366.
    d = _run_llumnix(P8.kv_capacity_tokens, inflight=(10, 5))
    assert d.actions == (Drain(2),)


def test_llumnix_holds_between_u_and_d() -> None:
    # 2 x 300 blocks over 20 requests: freeness 30; without one: 300 / 20 = 15 < D = 60.
    d = _run_llumnix(300 * 16)
    assert d.actions == ()


def test_llumnix_counts_queued_work() -> None:
    # Plenty of free KV, but 1000 queued prompts of 1000 tokens want more blocks than are free.
    m = model(
        [inst(1, inter=10), inst(2, inter=10)],
        interactive_queue=1000,
        interactive_queue_tokens=1000 * 1000,
    )
    d = policy("llumnix").plan(snap(m), None)
    assert launches(d) == [Launch("m8", Pool.MIXED, 1)]


def test_llumnix_starts_one_when_nothing_serves() -> None:
    d = policy("llumnix").plan(snap(model([])), None)
    assert launches(d) == [Launch("m8", Pool.MIXED, 1)]


# ---------------------------------------------------------------- static


def test_static_replaces_lost_instances() -> None:
    pol = policy("static")
    assert pol.initial_instances("m8", 1, 3) == 3
    d = pol.plan(snap(model([inst(1)])), None)
    assert d.actions == (Launch("m8", Pool.MIXED, 2),)
    d = pol.plan(snap(model([inst(1), inst(2), inst(3)])), None)
    assert d.actions == ()


# ---------------------------------------------------------------- stale observations


def _excess(stale: bool) -> ModelView:
    """Six idle instances in every pool for a model with no load: every scaling policy wants fewer.
    Instance 2 (idle, the one most policies would pick) is stale when asked."""
    insts = [
        inst(1, pool=Pool.INTERACTIVE, launched_at=0.0),
        inst(2, pool=Pool.INTERACTIVE, launched_at=50.0, stale=stale),
        inst(3, pool=Pool.INTERACTIVE, launched_at=10.0),
        inst(4, pool=Pool.MIXED, launched_at=20.0),
        inst(5, pool=Pool.MIXED, launched_at=30.0),
        inst(6, pool=Pool.BATCH, launched_at=40.0),
    ]
    return model(insts, stats=load(rate=0.05, mean_input=200, mean_output=100))


def _ticks(pol: Policy, m: ModelView, until: float = 300.0, every: float = 5.0) -> list[Action]:
    state: object = None
    out: list[Action] = []
    t = 0.0
    while t <= until:
        d = pol.plan(snap(m, now=t), state)
        state = d.state
        out.extend(d.actions)
        t += every
    return out


@pytest.mark.parametrize("name", POLICIES)
def test_no_policy_scales_down_on_stale_data(name: str) -> None:
    acts = _ticks(policy(name), _excess(stale=True))
    assert [a for a in acts if isinstance(a, Drain | Cancel)] == []


@pytest.mark.parametrize("name", ["chiron", "chirond", "llumnix"])
def test_same_snapshot_without_stale_does_scale_down(name: str) -> None:
    # The control for the test above: these policies do drain the excess when the data is fresh.
    acts = _ticks(policy(name), _excess(stale=False))
    assert [a for a in acts if isinstance(a, Drain)] != []


def test_chiron_does_not_change_a_stale_instances_cap() -> None:
    s = snap(model([inst(1, pool=Pool.INTERACTIVE, cap=32, inter=10, tpot=0.3, stale=True)]))
    assert [a for a in policy("chiron").plan(s, None).actions if isinstance(a, SetBatchCap)] == []


def test_chirond_adds_an_instance_when_interactive_requests_wait_and_holds_it() -> None:
    from dataclasses import replace

    p = policy("chirond", scale_down_hold_s=60.0)
    base = model([inst(1, inter=32)], interactive_queue=12, stats=load(0.5, 500, 100))
    waiting = replace(base, oldest_interactive_wait_s=SLO.ttft_s)  # past half the TTFT SLO
    d = p.plan(snap(waiting, now=100.0), None)
    assert sum(a.count for a in launches(d)) == 1
    # Not while one is on its way.
    starting = replace(waiting, instances=(*waiting.instances, inst(2, state=InstanceState.STARTING)))
    assert not launches(p.plan(snap(starting, now=105.0), d.state))
    # Waiting shorter than half the SLO is not pressure.
    calm = replace(base, oldest_interactive_wait_s=0.1 * SLO.ttft_s)
    assert not launches(p.plan(snap(calm, now=100.0), None))
    # Once the queue is gone the level holds for the hold time, then scale-down may start.
    two = replace(base, interactive_queue=0, instances=(inst(1), inst(2)))
    assert not drains(p.plan(snap(two, now=150.0), d.state))
    st = d.state
    drained_at = []
    for t in (150.0, 170.0, 200.0, 240.0):
        later = p.plan(snap(two, now=t), st)
        st = later.state
        if drains(later):
            drained_at.append(t)
    assert drained_at == [240.0]  # held until 160, then the usual 60 s of hysteresis


def test_chirond_prefill_chunk_grows_with_long_prompts() -> None:
    # The TPOT bound gives the 70B a 512-token chunk; a mean prompt of 20k tokens (3.8 s of
    # prefill, over a quarter of the 10-s TTFT SLO) would pay 40 step overheads: it gets vLLM's
    # chunk. Short prompts keep the TPOT chunk.
    pol = policy("chirond")
    slo = Slo(ttft_s=10.0, tpot_s=0.15)
    tpot_only = pol.engine_args("m70", slo).max_num_batched_tokens
    assert tpot_only == 512
    assert pol.engine_args("m70", slo, mean_input=2000).max_num_batched_tokens == tpot_only
    assert pol.engine_args("m70", slo, mean_input=20_000).max_num_batched_tokens == P70.max_num_batched_tokens
    never = policy("chirond", long_prompt_share=1e9)
    assert never.engine_args("m70", slo, mean_input=20_000).max_num_batched_tokens == 512


def test_chirond_prompt_budget_is_prefill_time_against_the_ttft_slo() -> None:
    # Long batch prompts: those whose prefill takes over 10 % of the TTFT SLO; the budget: the
    # prompt tokens that prefill within 25 % of it (the profile's prefill time, attention included).
    slo = Slo(ttft_s=8.0, tpot_s=0.1)
    b = policy("chirond").prompt_budget("m8", slo)
    assert b is not None
    assert P8.prefill_s(b.long_tokens) <= 0.8 < P8.prefill_s(b.long_tokens + 1)
    assert P8.prefill_s(b.tokens) <= 2.0 < P8.prefill_s(b.tokens + 1)
    assert policy("static").prompt_budget("m8", slo) is None


def test_chirond_replays_at_most_the_newest_requests_of_a_busy_model(monkeypatch: pytest.MonkeyPatch) -> None:
    # A replay is a Python loop run up to max_instances times a tick: a busy model crossing
    # `queue_prompt_share` replays only its newest whole seconds holding REPLAY_MAX_REQUESTS, over
    # the seconds since the newest one left out (measured: 8B, 4k prompts, 2 s TTFT, 10 req/s over
    # 30 minutes, one tick took 32 ms with every request replayed, 8 ms with 10,000).
    monkeypatch.setattr(chirond_policy, "REPLAY_MAX_REQUESTS", 5)
    recent = ((100.0, 5.0, 5000.0), (50.0, 3.0, 300.0), (10.0, 2.0, 200.0))
    arrivals, span = chirond_policy._replayed(recent, 900.0, lambda k, tok: tok / k)
    assert arrivals == [(-50.0, 100.0)] * 3 + [(-10.0, 100.0)] * 2 and span == 100.0
    assert chirond_policy._replayed(recent[1:], 90.0, lambda k, tok: tok / k)[1] == 90.0  # nothing left out
    monkeypatch.setattr(chirond_policy, "REPLAY_MAX_REQUESTS", 1)  # the newest second, whatever it holds
    assert chirond_policy._replayed(recent, 900.0, lambda k, tok: tok / k) == ([(-10.0, 100.0)] * 2, 50.0)
    # In the policy: a model whose older history is left out is sized as one without it.
    monkeypatch.setattr(chirond_policy, "REPLAY_MAX_REQUESTS", 300)
    slo = Slo(ttft_s=8.0, tpot_s=0.1)
    calm = _bursts(20_000, span_s=600)  # 300 requests in the last 10 minutes
    storm = tuple((float(age), 40.0, 40 * 20_000.0) for age in range(1790, 600, -20))
    busy = dataclasses.replace(calm, recent=storm + calm.recent, recent_span_s=1800.0)
    calm = dataclasses.replace(calm, recent_span_s=610.0)  # back to the newest second left out
    # the fourth instance avoids 30 misses in 610 s: 177 an hour (over 1800 s it would be 60)
    pol = policy("chirond", queue_gain_per_gpu_h=100)
    sized = [launches(pol.plan(snap(dataclasses.replace(model([inst(1)], stats=s), slo=slo), now=1800.0), None))
             for s in (calm, busy)]
    assert sized[0] == sized[1] and sized[0][0].count == 3


def test_chirond_queue_replay_never_sizes_below_the_work_it_replays() -> None:
    # Two 20k-token prompts a second (2 s of prefill each on the 8B, 8 s TTFT SLO) for 30 minutes:
    # over 4 instances of work. On 1 or 2 instances the queue only grows and both miss nearly every
    # request, so a third looks worth nothing against the second; the replay starts where the
    # instances keep up with the work.
    slo = Slo(ttft_s=8.0, tpot_s=0.1)
    steady = _bursts(20_000, every_s=1, size=2)
    m = dataclasses.replace(model([inst(1)], stats=steady, max_instances=16), slo=slo)
    need, why = policy("chirond")._needed(m, P8, 64, 1000.0, 1800.0)
    assert "queue" in why and need >= 5, why
def test_chirond_replay_counts_wait_plus_prefill_and_holds_instances_for_the_decode() -> None:
    # (arrival, prefill s) through c first-come-first-served instances, each held for the prefill
    # and the decode share; a request misses when its wait plus its prefill exceeds the TTFT SLO.
    three = [(0.0, 2.0)] * 3
    assert chirond_policy._replay_misses(three, 2, 4.2, 0.0) == 0  # the third waits 2 s: 4 s
    assert chirond_policy._replay_misses(three, 2, 4.2, 0.5) == 1  # it waits 2.5 s: 4.5 s
    assert chirond_policy._replay_misses(three, 3, 1.9, 0.5) == 3  # no wait, but 2 s of prefill
    assert chirond_policy._replay_misses([(0.0, 2.0), (10.0, 2.0)], 1, 2.0, 5.0) == 0  # free again at 7 s


def test_chirond_replay_prices_an_instance_by_its_gpus() -> None:
    # The fourth instance of the bursts above avoids 180 misses an hour: worth it at 50 per
    # GPU-hour on one GPU, not on four (45 per GPU-hour).
    slo = Slo(ttft_s=8.0, tpot_s=0.1)
    m = dataclasses.replace(model([inst(1)], stats=_bursts(20_000)), slo=slo)
    pol = policy("chirond", queue_gain_per_gpu_h=50)
    (one_gpu,) = launches(pol.plan(snap(m, now=1800.0), None))
    (four_gpus,) = launches(pol.plan(snap(dataclasses.replace(m, gpus_per_instance=4), now=1800.0), None))
    assert (one_gpu.count, four_gpus.count) == (3, 2)
