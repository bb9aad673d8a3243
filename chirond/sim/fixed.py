"""A fixed deployment as a policy: another policy's per-instance mechanisms at fixed instance
counts, warm from the start (the frontier's deployments, and the hindsight a learned floor reads)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from chirond.model import Decision, Launch, SetBatchCap, SetPool, Snapshot
from chirond.policy.base import Policy, hand_over


class FixedPolicy(Policy):
    """`inner`'s per-instance decisions (caps, pools) at fixed instance counts: its launches,
    drains and cancels are dropped; an instance lost (a node failure) is replaced, and one near its
    job time limit is replaced ahead of time and drained once its successor serves, as a policy's
    are (`hand_over`): a fixed deployment is not a fleet that goes short every few hours."""

    def __init__(self, inner: Policy, counts: Mapping[str, int]) -> None:
        super().__init__(inner.profiles)
        self.inner = inner
        self.counts = dict(counts)
        self.name = f"{inner.name}-fixed"
        self.rules = inner.rules
        self.initial_pool = inner.initial_pool
        self.params = dict(inner.params)

    def initial_cap(self, model: str, pool: Any) -> tuple[int, int]:
        return self.inner.initial_cap(model, pool)

    def initial_instances(self, model: str, initial: int, static: int) -> int:
        return self.counts.get(model, 0)

    def prompt_budget(self, model: str, slo: Any) -> Any:
        return self.inner.prompt_budget(model, slo)

    def engine_args(self, model: str, slo: Any, mean_input: float = 0.0) -> Any:
        return self.inner.engine_args(model, slo, mean_input)

    def plan(self, snap: Snapshot, state: object) -> Decision:
        # The inner policy plans as for a site that set min_instances = max_instances = n, so its
        # caps are for the n instances there are, not for a fleet it would have scaled to (and the
        # frontier does not move with the inner policy's sizing rules).
        pinned = tuple(replace(m, min_instances=self.counts.get(m.name, 0), max_instances=self.counts.get(m.name, 0))
                       for m in snap.models)
        d = self.inner.plan(replace(snap, models=pinned), state)
        acts: list[Any] = [a for a in d.actions if isinstance(a, SetBatchCap | SetPool)]
        for m in snap.models:
            n = self.counts.get(m.name, 0)
            drains, kept, expiring = hand_over(m, n, snap.now)
            acts.extend(drains)
            if len(kept) < n:
                args = self.engine_args(m.name, m.slo, m.load.mean_input)
                acts.append(Launch(m.name, self.initial_pool, n - len(kept), replaces=expiring, args=args))
        return Decision(tuple(acts), d.reason, d.state)
