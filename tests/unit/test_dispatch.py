"""The dispatcher: pools, caps, preemption of batch work, queue orderings, instance loss, backlog."""

from __future__ import annotations

import itertools

import pytest

from chirond.dispatch import Dispatcher
from chirond.model import BacklogGroup, DispatchRules, Ordering, Pool, PromptBudget, ReqClass, Request, Routing

M = "m"
TTFT = 2.0
_ids = itertools.count()


def inter(arrival: float = 0.0, tokens: int = 100) -> Request:
    return Request(next(_ids), M, ReqClass.INTERACTIVE, arrival, tokens, 10)


def batch(deadline: float, arrival: float = 0.0, tokens: int = 100) -> Request:
    return Request(next(_ids), M, ReqClass.BATCH, arrival, tokens, 10, deadline=deadline)


def make(
    routing: Routing = Routing.POOLS,
    ordering: Ordering = Ordering.PRIORITY,
    preempt_batch: bool = True,
    pack_interactive: bool = False,
) -> Dispatcher:
    return Dispatcher(DispatchRules(routing, ordering, preempt_batch, pack_interactive), {M: TTFT})


def where(reqs: list[Request]) -> list[int | None]:
    return [r.instance for r in reqs]


# ---------------------------------------------------------------- pools and caps


def test_interactive_fills_the_interactive_pool_before_mixed() -> None:
    d = make()
    d.add_instance(1, M, Pool.MIXED, cap=4)
    d.add_instance(2, M, Pool.INTERACTIVE, cap=2)
    d.add_instance(3, M, Pool.BATCH, cap=4)
    rs = [inter(float(i)) for i in range(5)]
    for r in rs:
        d.enqueue(r)
    assigned, evicted = d.dispatch(M, 10.0)
    assert assigned == rs
    assert where(rs) == [2, 2, 1, 1, 1]  # interactive pool's 2 slots, then mixed headroom
    assert evicted == []
    assert all(r.dispatched == 10.0 for r in rs)
    assert d.queued(M) == (0, 0)


def test_caps_are_respected_and_the_rest_waits() -> None:
    d = make()
    d.add_instance(1, M, Pool.INTERACTIVE, cap=2)
    d.add_instance(2, M, Pool.MIXED, cap=3)
    d.add_instance(3, M, Pool.BATCH, cap=8)  # never takes interactive work
    rs = [inter(float(i), tokens=10 + i) for i in range(9)]
    for r in rs:
        d.enqueue(r)
    assigned, _ = d.dispatch(M, 0.0)
    assert len(assigned) == 5
    assert len(d.slots[1].inter) == 2 and len(d.slots[2].inter) == 3 and d.slots[3].inflight == 0
    assert d.queued(M) == (4, 0)
    assert d.interactive_tokens(M) == sum(r.input_tokens for r in rs[5:])
    assert d.oldest_interactive(M) == 5.0
    # A completion frees exactly one slot.
    d.complete(rs[0])
    assigned, _ = d.dispatch(M, 1.0)
    assert assigned == [rs[5]] and rs[5].instance == 1
    assert d.queued(M) == (3, 0)


def test_least_loaded_versus_packing() -> None:
    for pack, expect in ((False, [1, 2, 1, 2]), (True, [1, 1, 1, 1])):
        d = make(pack_interactive=pack)
        d.add_instance(1, M, Pool.INTERACTIVE, cap=4)
        d.add_instance(2, M, Pool.INTERACTIVE, cap=4)
        rs = [inter(float(i)) for i in range(4)]
        for r in rs:
            d.enqueue(r)
        d.dispatch(M, 0.0)
        assert where(rs) == expect, pack


def test_batch_goes_to_batch_pool_then_mixed_up_to_batch_cap() -> None:
    d = make()
    d.add_instance(1, M, Pool.INTERACTIVE, cap=8)
    d.add_instance(2, M, Pool.MIXED, cap=4, batch_cap=1)
    d.add_instance(3, M, Pool.BATCH, cap=2)
    rs = [batch(deadline=100.0 + i) for i in range(5)]
    for r in rs:
        d.enqueue(r)
    assigned, _ = d.dispatch(M, 0.0)
    assert where(rs) == [3, 3, 2, None, None]
    assert assigned == rs[:3]
    assert d.queued(M) == (0, 2)
    assert d.slots[1].inflight == 0
    # Raising the mixed instance's batch cap lets more in, up to its cap.
    d.set_cap(2, 4, batch_cap=3)
    d.dispatch(M, 1.0)
    assert where(rs) == [3, 3, 2, 2, 2]


def test_set_cap_clamps() -> None:
    d = make()
    d.add_instance(1, M, Pool.MIXED, cap=4)
    d.set_cap(1, 0, batch_cap=9)
    assert (d.slots[1].cap, d.slots[1].batch_cap) == (1, 1)
    d.set_cap(1, 10, batch_cap=-3)
    assert (d.slots[1].cap, d.slots[1].batch_cap) == (10, 0)
    d.set_cap(1, 6)
    assert (d.slots[1].cap, d.slots[1].batch_cap) == (6, 6)


def test_unroutable_instance_gets_nothing() -> None:
    d = make()
    d.add_instance(1, M, Pool.MIXED, cap=4)
    d.set_routable(1, False)
    r = inter()
    d.enqueue(r)
    assert d.dispatch(M, 0.0) == ([], [])
    d.set_routable(1, True)
    assert d.dispatch(M, 0.0)[0] == [r]


def test_shared_routing_ignores_pools() -> None:
    d = make(routing=Routing.SHARED)
    d.add_instance(1, M, Pool.BATCH, cap=1)
    d.add_instance(2, M, Pool.INTERACTIVE, cap=1)
    i, b = inter(), batch(50.0)
    d.enqueue(b)
    d.enqueue(i)
    d.dispatch(M, 0.0)
    assert {i.instance, b.instance} == {1, 2}


# ---------------------------------------------------------------- preemption


def _mixed_full_of_batch(d: Dispatcher) -> list[Request]:
    """Instance 1 (mixed, cap 3) gets three batch requests in three dispatches; the last one
    dispatched has the earliest deadline, so "most recent" and "latest deadline" differ."""
    d.add_instance(1, M, Pool.MIXED, cap=3)
    bs = [batch(300.0), batch(200.0), batch(100.0)]
    for t, b in enumerate(bs):
        d.enqueue(b)
        assigned, _ = d.dispatch(M, float(t))
        assert assigned == [b]
    return bs


def test_interactive_evicts_the_most_recently_dispatched_batch_request() -> None:
    d = make()
    bs = _mixed_full_of_batch(d)
    r = inter(5.0)
    d.enqueue(r)
    assigned, evicted = d.dispatch(M, 5.0)
    assert assigned == [r] and r.instance == 1
    assert evicted == [(bs[2], 1)]
    victim = bs[2]
    assert victim.preempted == 1 and victim.instance is None
    assert [b.preempted for b in bs[:2]] == [0, 0]
    assert d.evictions == 1
    assert d.queued(M) == (0, 1)  # requeued
    assert d.backlog(M) == (BacklogGroup(100.0, 1, 100),)
    assert list(d.slots[1].batch) == [bs[0].id, bs[1].id]
    # When the interactive request completes, the evicted one comes back.
    d.complete(r)
    assigned, evicted = d.dispatch(M, 6.0)
    assert assigned == [victim] and evicted == []
    assert victim.instance == 1 and victim.dispatched == 6.0


def test_no_eviction_without_preempt_batch() -> None:
    d = make(preempt_batch=False)
    _mixed_full_of_batch(d)
    r = inter(5.0)
    d.enqueue(r)
    assert d.dispatch(M, 5.0) == ([], [])
    assert d.evictions == 0 and d.queued(M) == (1, 0)


def test_an_unpreemptible_batch_request_is_passed_over() -> None:
    """An unstreamed pass-through cannot be resumed: the eviction takes the next most recent one."""
    d = make()
    bs = _mixed_full_of_batch(d)
    bs[2].preemptible = False
    r = inter(5.0)
    d.enqueue(r)
    assert d.dispatch(M, 5.0) == ([r], [(bs[1], 1)])
    d2 = make()
    for b in _mixed_full_of_batch(d2):
        b.preemptible = False
    r2 = inter(5.0)
    d2.enqueue(r2)
    assert d2.dispatch(M, 5.0) == ([], [])  # only unpreemptible batch work: the interactive one waits


def test_batch_pool_work_is_not_evicted() -> None:
    d = make()
    d.add_instance(1, M, Pool.BATCH, cap=2)
    for b in (batch(10.0), batch(20.0)):
        d.enqueue(b)
    d.dispatch(M, 0.0)
    r = inter(1.0)
    d.enqueue(r)
    assert d.dispatch(M, 1.0) == ([], [])
    assert d.evictions == 0


def test_eviction_picks_the_mixed_instance_with_most_batch_work() -> None:
    d = make()
    d.add_instance(1, M, Pool.MIXED, cap=2)
    d.add_instance(2, M, Pool.MIXED, cap=2)
    d.enqueue(batch(10.0))
    d.enqueue(inter(0.0))
    d.enqueue(batch(20.0))
    d.enqueue(batch(30.0))
    d.dispatch(M, 0.0)
    assert sorted((len(s.inter), len(s.batch)) for s in d.slots.values()) == [(0, 2), (1, 1)]
    busiest = next(s.id for s in d.slots.values() if len(s.batch) == 2)
    d.enqueue(inter(1.0))
    _, evicted = d.dispatch(M, 1.0)
    assert [iid for _, iid in evicted] == [busiest]


# ---------------------------------------------------------------- orderings


def test_fcfs_serves_by_arrival_across_classes() -> None:
    d = make(routing=Routing.SHARED, ordering=Ordering.FCFS, preempt_batch=False)
    d.add_instance(1, M, Pool.MIXED, cap=2)
    b0, i1, b2, i3 = batch(500.0, arrival=0.0), inter(1.0), batch(600.0, arrival=2.0), inter(3.0)
    for r in (b0, i1, b2, i3):
        d.enqueue(r)
    assigned, _ = d.dispatch(M, 4.0)
    assert assigned == [b0, i1]
    d.complete(b0)
    d.complete(i1)
    assigned, _ = d.dispatch(M, 5.0)
    assert assigned == [b2, i3]


def test_fcfs_is_by_arrival_whatever_the_batch_deadlines() -> None:
    # "One queue by arrival time, whatever the class": a batch request's deadline plays no part.
    d = make(routing=Routing.SHARED, ordering=Ordering.FCFS, preempt_batch=False)
    d.add_instance(1, M, Pool.MIXED, cap=3)
    b0 = batch(1000.0, arrival=0.0)
    i1 = inter(0.5)
    b2 = batch(10.0, arrival=1.0)  # earlier deadline, later arrival
    for r in (b0, i1, b2):
        d.enqueue(r)
    assigned, _ = d.dispatch(M, 2.0)
    assert assigned == [b0, i1, b2]


def test_priority_serves_interactive_before_batch() -> None:
    d = make()
    d.add_instance(1, M, Pool.MIXED, cap=2)
    b0, i1, i2 = batch(500.0, arrival=0.0), inter(1.0), inter(2.0)
    for r in (b0, i1, i2):
        d.enqueue(r)
    assigned, _ = d.dispatch(M, 4.0)
    assert assigned == [i1, i2]


def test_slo_ordering_serves_shortest_prompt_first() -> None:
    d = make(ordering=Ordering.SLO)
    d.add_instance(1, M, Pool.MIXED, cap=1)
    long_, short, mid = inter(0.0, 500), inter(0.1, 100), inter(0.2, 300)
    for r in (long_, short, mid):
        d.enqueue(r)
    order = []
    for t in (0.5, 0.6, 0.7):
        assigned, _ = d.dispatch(M, t)
        assert len(assigned) == 1
        order.append(assigned[0])
        d.complete(assigned[0])
    assert order == [short, mid, long_]


def test_slo_ordering_moves_late_requests_behind_feasible_ones() -> None:
    d = make(ordering=Ordering.SLO)
    d.add_instance(1, M, Pool.MIXED, cap=1)
    old = inter(0.0, 10)  # short, but at t=6 it waited past the 2 s TTFT SLO
    new = inter(5.0, 1000)  # long, still feasible
    d.enqueue(old)
    d.enqueue(new)
    assert d.oldest_interactive(M) == 0.0
    assigned, _ = d.dispatch(M, 6.0)
    assert assigned == [new]
    d.complete(new)
    assigned, _ = d.dispatch(M, 7.0)
    assert assigned == [old]  # served once nothing feasible waits
    assert d.queued(M) == (0, 0) and d.interactive_tokens(M) == 0


def test_slo_ordering_without_late_requests_is_by_length() -> None:
    # Same two requests, dispatched early: both feasible, the short one first.
    d = make(ordering=Ordering.SLO)
    d.add_instance(1, M, Pool.MIXED, cap=1)
    old, new = inter(0.0, 10), inter(0.5, 1000)
    d.enqueue(new)
    d.enqueue(old)
    assert d.dispatch(M, 1.0)[0] == [old]


def test_edf_serves_batch_by_deadline() -> None:
    d = make()
    d.add_instance(1, M, Pool.BATCH, cap=1)
    late, early, mid = batch(300.0, arrival=0.0), batch(100.0, arrival=1.0), batch(200.0, arrival=2.0)
    for r in (late, early, mid):
        d.enqueue(r)
    order = []
    for t in (3.0, 4.0, 5.0):
        assigned, _ = d.dispatch(M, t)
        order.extend(assigned)
        for r in assigned:
            d.complete(r)
    assert order == [early, mid, late]


# ---------------------------------------------------------------- instance loss and backlog


def test_remove_instance_requeues_in_flight_requests() -> None:
    d = make()
    d.add_instance(1, M, Pool.MIXED, cap=3)
    i0, i1, b = inter(0.0), inter(1.0), batch(100.0)
    for r in (i0, i1, b):
        d.enqueue(r)
    d.dispatch(M, 2.0)
    waiting = inter(3.0)
    d.enqueue(waiting)
    lost = d.remove_instance(1)
    assert sorted(r.id for r in lost) == sorted(r.id for r in (i0, i1, b))
    assert all(r.preempted == 1 and r.instance is None for r in lost)
    assert 1 not in d.slots and d.queues[M].slots == []
    assert d.queued(M) == (3, 1)
    assert d.backlog(M) == (BacklogGroup(100.0, 1, 100),)
    assert d.dispatch(M, 4.0) == ([], [])  # no instance left
    # The lost interactive requests go back ahead of the one that was waiting.
    d.add_instance(2, M, Pool.MIXED, cap=2)
    assigned, _ = d.dispatch(M, 5.0)
    assert {r.id for r in assigned} == {i0.id, i1.id}
    assert all(r.instance == 2 for r in assigned)
    with pytest.raises(KeyError):
        d.remove_instance(1)


def test_complete_frees_the_slot_of_its_instance() -> None:
    d = make()
    d.add_instance(1, M, Pool.MIXED, cap=2)
    r, b = inter(), batch(10.0)
    d.enqueue(r)
    d.enqueue(b)
    d.dispatch(M, 0.0)
    slot = d.complete(r)
    assert slot is d.slots[1]
    assert slot.inflight == 1 and list(slot.batch) == [b.id]
    assert d.complete(inter()) is None  # never dispatched


def test_backlog_groups_by_deadline() -> None:
    d = make()
    for tok in (10, 20, 30):
        d.enqueue(batch(100.0, tokens=tok))
    d.enqueue(batch(50.0, tokens=5))
    d.enqueue(batch(50.0, tokens=7))
    d.enqueue(inter(0.0, 999))  # not batch: not in the backlog
    assert d.backlog(M) == (BacklogGroup(50.0, 2, 12), BacklogGroup(100.0, 3, 60))
    d.add_instance(1, M, Pool.BATCH, cap=1)
    d.dispatch(M, 0.0)
    # EDF takes one of the deadline-50 requests (the one enqueued first: same deadline, arrival).
    assert d.backlog(M) == (BacklogGroup(50.0, 1, 7), BacklogGroup(100.0, 3, 60))
    d.set_cap(1, 2)
    d.dispatch(M, 1.0)
    assert d.backlog(M) == (BacklogGroup(100.0, 3, 60),)


def test_batch_without_deadline_goes_last() -> None:
    d = make()
    d.add_instance(1, M, Pool.BATCH, cap=1)
    nodl = Request(next(_ids), M, ReqClass.BATCH, 0.0, 10, 10)
    due = batch(1e9, arrival=1.0)
    d.enqueue(nodl)
    d.enqueue(due)
    assert d.backlog(M)[-1].deadline == float("inf")
    assert d.dispatch(M, 2.0)[0] == [due]


def test_withdraw_takes_requests_back_from_queues_and_instances() -> None:
    from chirond.dispatch import Dispatcher
    from chirond.model import DispatchRules, Ordering, Pool, ReqClass, Request

    for ordering in (Ordering.PRIORITY, Ordering.SLO):
        d = Dispatcher(DispatchRules(ordering=ordering), {"m": 1.0})
        a = Request(1, "m", ReqClass.INTERACTIVE, 0.0, 100, 10)
        b = Request(2, "m", ReqClass.INTERACTIVE, 0.1, 50, 10)
        c = Request(3, "m", ReqClass.BATCH, 0.2, 70, 10, deadline=100.0)
        for r in (a, b, c):
            d.enqueue(r)
        assert d.withdraw(b)
        assert d.queued("m") == (1, 1)
        assert d.interactive_tokens("m") == 100
        assert d.withdraw(c)
        assert d.backlog("m") == ()
        assert not d.withdraw(c)  # already gone
        d.add_instance(7, "m", Pool.INTERACTIVE, cap=4)
        assigned, _ = d.dispatch("m", 1.0)
        assert assigned == [a] and len(d.slots[7].inter) == 1
        assert d.withdraw(a)
        assert len(d.slots[7].inter) == 0


# ---------------------------------------------------------------- engine-side priority


def test_engine_priority_short_first_aged_by_one_ttft_slo() -> None:
    d = Dispatcher(DispatchRules(short_first_tokens=4096), {M: TTFT})
    long_ = inter(arrival=10.0, tokens=8192)  # yields a whole TTFT SLO (2 s)
    short_later = inter(arrival=11.0, tokens=100)  # arrived 1 s later: goes first
    short_too_late = inter(arrival=12.5, tokens=100)  # arrived 2.5 s later: after the long one
    half = inter(arrival=10.0, tokens=2048)  # yields half an SLO
    b = batch(deadline=5.0, arrival=0.0)
    for r in (long_, short_later, short_too_late, half, b):
        d.enqueue(r)
    order = sorted((long_, short_later, short_too_late, half, b), key=lambda r: (r.priority, r.arrival))
    assert order == [half, short_later, long_, short_too_late, b]
    assert half.priority == 11_000 and long_.priority == 12_000


def test_engine_priority_by_class_only_without_short_first() -> None:
    d = make()
    r, b = inter(arrival=50.0, tokens=9000), batch(deadline=1.0)
    d.enqueue(r)
    d.enqueue(b)
    assert r.priority == 0 < b.priority


def test_route_by_prefill_sends_a_new_request_past_a_long_prompt() -> None:
    # Instance 1 holds one 30k-token prompt not yet answered; instance 2 holds three short ones.
    # By requests in flight the next goes to 1; by outstanding prompt work, to 2. Once the long
    # prompt has its first token, 1 is the lighter again.
    for by_prefill, expect in ((False, 1), (True, 2)):
        d = Dispatcher(DispatchRules(route_by_prefill=by_prefill), {M: TTFT})
        d.add_instance(1, M, Pool.MIXED, cap=16)
        d.add_instance(2, M, Pool.MIXED, cap=16)
        long_ = inter(0.0, tokens=30_000)
        d.enqueue(long_)
        d.dispatch(M, 0.0)
        assert long_.instance == 1
        shorts = [inter(0.1, tokens=200) for _ in range(3)]
        for r in shorts:
            r.instance = None
            d.enqueue(r)
            d.dispatch(M, 0.1)
        if by_prefill:
            assert [r.instance for r in shorts] == [2, 2, 2]
        new = inter(0.2, tokens=100)
        d.enqueue(new)
        d.dispatch(M, 0.2)
        assert new.instance == expect
    long_.first_token = 1.0
    later = inter(1.1, tokens=100)
    d.enqueue(later)
    d.dispatch(M, 1.1)
    assert later.instance == 1
    assert d.slots[1].prefill_outstanding() == 100 and d.slots[2].prefill_outstanding() == 700


def test_prefill_outstanding_is_exact_across_eviction_and_return() -> None:
    # A batch prompt evicted while still in prefill no longer counts on its instance; sent back
    # there, it counts once; finished, not at all (whatever order the prompts leave in).
    d = Dispatcher(DispatchRules(route_by_prefill=True), {M: TTFT})
    d.add_instance(1, M, Pool.MIXED, cap=2, batch_cap=2)
    b1, b2 = batch(100.0, tokens=20_000), batch(100.0, tokens=5_000)
    d.enqueue(b1)
    d.enqueue(b2)
    d.dispatch(M, 0.0)
    assert d.slots[1].prefill_outstanding() == 25_000
    r = inter(1.0, tokens=300)
    d.enqueue(r)
    _, evicted = d.dispatch(M, 1.0)
    assert [v.id for v, _ in evicted] == [b2.id]
    assert d.slots[1].prefill_outstanding() == 20_300
    d.complete(r)  # answered before the long prompt ahead of it: no longer outstanding
    assert d.slots[1].prefill_outstanding() == 20_000
    d.dispatch(M, 2.0)  # b2 comes back to the only instance
    assert b2.instance == 1 and d.slots[1].prefill_outstanding() == 25_000
    b1.first_token = 3.0
    assert d.slots[1].prefill_outstanding() == 5_000


def test_prompt_budget_holds_long_batch_prompts_back_not_short_ones() -> None:
    # A 10k-token batch prompt already awaits its first token: the next long one (at least 4k
    # tokens) waits in chirond's queue while 8k or more are outstanding; a short one still goes;
    # once the first has its first token, the long one goes too. Without a budget it goes at once.
    for budget in (PromptBudget(long_tokens=4_000, tokens=8_000), None):
        d = Dispatcher(DispatchRules(), {M: TTFT})
        d.add_instance(1, M, Pool.MIXED, cap=16, prompt_budget=budget)
        first = batch(100.0, tokens=10_000)
        d.enqueue(first)
        d.dispatch(M, 0.0)
        long_ = batch(100.0, arrival=1.0, tokens=6_000)
        d.enqueue(long_)
        d.dispatch(M, 1.0)
        assert (long_.instance is None) == (budget is not None)
        if budget is None:
            continue
        short = batch(50.0, arrival=2.0, tokens=500)  # earlier deadline: first in line
        d.enqueue(short)
        d.dispatch(M, 2.0)
        assert short.instance == 1 and long_.instance is None
        first.first_token = 3.0
        short.first_token = 3.0
        d.dispatch(M, 3.0)
        assert long_.instance == 1
