"""`llumnix`: Llumnix's load-based scaling (OSDI'24) without live migration, which stock vLLM
lacks. Load per instance is its *freeness*: (free KV blocks - blocks wanted by waiting requests) /
(running + waiting requests). Every `interval_s` it adds an instance when the average freeness
is below U and removes one when the average without the least loaded instance would stay above D.
Requests are dispatched to the least loaded instance, interactive before batch; the batch size is
vLLM's default. Untuned: U=10, D=60. `llumnix-tuned` sweeps U (see `chirond.sim.compare`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from chirond.model import (
    Decision,
    DispatchRules,
    Drain,
    InstanceState,
    Launch,
    ModelView,
    Ordering,
    Pool,
    Routing,
    Snapshot,
)
from chirond.policy.base import Policy, alive, any_stale, pick_to_drain


@dataclass(frozen=True)
class LlumnixState:
    last: dict[str, float]


def freeness(m: ModelView, block_tokens: int, without: int | None = None) -> float | None:
    """Average freeness over serving instances, counting the proxy's queue as waiting work spread
    over them (what Llumnix would see, since it dispatches every request at once)."""
    live = [i for i in m.instances if i.state is InstanceState.READY and i.id != without]
    if not live:
        return None
    queued_tokens = m.interactive_queue_tokens + sum(g.input_tokens for g in m.backlog)
    queued = m.interactive_queue + m.batch_queue
    free = sum(i.kv_free_tokens for i in live) / block_tokens
    if without is not None:  # its requests would move to the others
        gone = next(i for i in m.instances if i.id == without)
        queued += gone.running + gone.waiting
    wanted = queued_tokens / block_tokens + sum(i.waiting for i in live) * m.load.mean_input / block_tokens
    load = queued + sum(i.running + i.waiting for i in live)
    return (free - wanted) / max(1, load)


class LlumnixPolicy(Policy):
    name = "llumnix"
    rules = DispatchRules(routing=Routing.SHARED, ordering=Ordering.PRIORITY, preempt_batch=False)
    initial_pool = Pool.MIXED
    defaults: ClassVar[dict[str, float]] = {
        "scale_up_below": 10.0,
        "scale_down_above": 60.0,
        "interval_s": 10.0,
    }

    def plan(self, snap: Snapshot, state: object) -> Decision:
        st = state if isinstance(state, LlumnixState) else LlumnixState({})
        last = dict(st.last)
        u, d = self.params["scale_up_below"], self.params["scale_down_above"]
        actions: list[Launch | Drain] = []
        reasons = []
        for m in snap.models:
            if snap.now - last.get(m.name, -1e9) < self.params["interval_s"]:
                continue
            last[m.name] = snap.now
            block = self.profiles[m.name].block_tokens
            f = freeness(m, block)
            serving = alive(m)
            if f is None:
                if not serving:
                    actions.append(Launch(m.name, Pool.MIXED, args=self.engine_args(m.name, m.slo)))
                continue
            if f < u and len(serving) < m.max_instances:
                actions.append(Launch(m.name, Pool.MIXED, args=self.engine_args(m.name, m.slo)))
                reasons.append(f"{m.name} freeness {f:.0f}<{u:.0f}")
                continue
            ready = [i for i in serving if i.state is InstanceState.READY]
            if len(serving) > m.min_instances and not any_stale(m) and len(ready) > 1:
                victim = pick_to_drain(ready)
                if victim is not None:
                    f_less = freeness(m, block, without=victim.id)
                    if f_less is not None and f_less > d:
                        actions.append(Drain(victim.id))
                        reasons.append(f"{m.name} freeness without one {f_less:.0f}>{d:.0f}")
        return Decision(tuple(actions), "; ".join(reasons) or "hold", LlumnixState(last))
