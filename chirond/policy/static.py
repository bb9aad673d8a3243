"""`static`: a plain vLLM deployment. A fixed number of instances per model, vLLM's default batch
size, one first-come-first-served line for every class. Lost instances are replaced."""

from __future__ import annotations

from chirond.model import Decision, DispatchRules, Launch, Ordering, Pool, Routing, Snapshot
from chirond.policy.base import Policy, alive


class StaticPolicy(Policy):
    name = "static"
    rules = DispatchRules(routing=Routing.SHARED, ordering=Ordering.FCFS, preempt_batch=False)
    initial_pool = Pool.MIXED

    def initial_instances(self, model: str, initial: int, static: int) -> int:
        # Configuration, read once when the run is set up (not during planning).
        self._fixed = {**getattr(self, "_fixed", {}), model: static}
        return static

    def plan(self, snap: Snapshot, state: object) -> Decision:
        fixed: dict[str, int] = getattr(self, "_fixed", {})
        actions = []
        for m in snap.models:
            missing = fixed.get(m.name, m.min_instances) - len(alive(m))
            if missing > 0:
                actions.append(Launch(m.name, Pool.MIXED, missing, args=self.engine_args(m.name, m.slo)))
        return Decision(tuple(actions), "replace lost instances" if actions else "fixed", state)
