"""chirond.batch.fair: deficit round-robin gives users about equal tokens whatever their item
sizes, carries credit across calls, drops users that run dry, and serves items above a quantum."""

from __future__ import annotations

import pytest

from chirond.batch.fair import DeficitRoundRobin


def serve(drr: DeficitRoundRobin, costs: dict[str, list[int]], picks: int) -> dict[str, int]:
    got = dict.fromkeys(costs, 0)
    queues = {u: list(c) for u, c in costs.items()}
    for _ in range(picks):
        heads = {u: q[0] for u, q in queues.items() if q}
        u = drr.pick(heads)
        if u is None:
            break
        got[u] += queues[u].pop(0)
    return got


def test_equal_tokens_for_unequal_item_sizes() -> None:
    got = serve(DeficitRoundRobin(100), {"a": [10] * 10_000, "b": [90] * 10_000, "c": [45] * 10_000}, 3000)
    spread = max(got.values()) - min(got.values())
    assert spread <= 100 + 90, got
    assert min(got.values()) > 10_000


def test_empty_and_users_that_run_dry() -> None:
    drr = DeficitRoundRobin(50)
    assert drr.pick({}) is None
    got = serve(drr, {"a": [10] * 3, "b": [10] * 100}, 50)
    assert got == {"a": 30, "b": 470}
    assert "a" not in drr.deficit  # left the ring with its credit


def test_item_larger_than_the_quantum_is_served() -> None:
    drr = DeficitRoundRobin(10)
    got = serve(drr, {"a": [1000], "b": [5] * 1000}, 300)
    assert got["a"] == 1000 and got["b"] > 0


def test_credit_carries_across_calls() -> None:
    drr = DeficitRoundRobin(100)
    order = [drr.pick({"a": 60, "b": 60}) for _ in range(6)]
    assert order == ["a", "b", "a", "a", "b", "b"]  # a keeps 40 of credit, then serves two


def test_bad_quantum() -> None:
    with pytest.raises(ValueError):
        DeficitRoundRobin(0)
