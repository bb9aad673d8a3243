"""What every policy is: a pure `plan(snapshot, state) -> Decision`, plus how the dispatcher serves
its queues. Policies read the profiles they are built with and the snapshot; nothing else."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

from chirond.model import (
    Decision,
    DispatchRules,
    Drain,
    EngineArgs,
    InstanceState,
    InstanceView,
    ModelView,
    Pool,
    PromptBudget,
    Slo,
    Snapshot,
)
from chirond.profiles import Profile


class Policy(ABC):
    name: str = ""
    rules: DispatchRules = DispatchRules()
    initial_pool: Pool = Pool.INTERACTIVE  # pool of the instances present when the run starts
    defaults: ClassVar[dict[str, float]] = {}

    def __init__(self, profiles: Mapping[str, Profile], params: Mapping[str, object] | None = None) -> None:
        self.profiles = dict(profiles)
        params = dict(params or {})
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise ValueError(
                f"policy {self.name}: unknown parameter(s) {', '.join(sorted(unknown))}; "
                f"valid: {', '.join(sorted(self.defaults)) or 'none'}"
            )
        self.params: dict[str, float] = {k: float(params.get(k, v)) for k, v in self.defaults.items()}  # type: ignore[arg-type]

    def initial_cap(self, model: str, pool: Pool) -> tuple[int, int]:
        """(cap, batch_cap) of a new instance until the policy sets another."""
        cap = self.profiles[model].max_num_seqs
        return cap, cap

    def prompt_budget(self, model: str, slo: Slo) -> PromptBudget | None:
        """How many prompt tokens awaiting their first token an instance of `model` may hold
        before it is sent no more long batch prompts (None: no limit, as behind a plain proxy)."""
        return None

    def initial_instances(self, model: str, initial: int, static: int) -> int:
        return initial

    def engine_args(self, model: str, slo: Slo, mean_input: float = 0.0) -> EngineArgs:
        """Engine flags for new instances of `model` (vLLM's defaults unless a policy knows
        better); `mean_input` is the observed mean prompt length (0 before any traffic)."""
        prof = self.profiles[model]
        return EngineArgs(prof.max_num_seqs, prof.max_num_batched_tokens, priority=False)

    @abstractmethod
    def plan(self, snap: Snapshot, state: object) -> Decision:
        """Pure: no I/O, no clock reads; `snap.now` is the time."""


# ---------------------------------------------------------------- helpers shared by policies


def alive(m: ModelView) -> list[InstanceView]:
    """Instances that serve or will serve (not draining)."""
    return [i for i in m.instances if i.state is not InstanceState.DRAINING]


def in_pool(m: ModelView, *pools: Pool) -> list[InstanceView]:
    return [i for i in alive(m) if i.pool in pools]


def hand_over(m: ModelView, need: int, now: float) -> tuple[list[Drain], list[InstanceView], int]:
    """Jobs about to reach their time limit (closer than the lead time plus 2 minutes) are replaced
    ahead of time: they do not count towards `need`, so their successors are launched now, and they
    are drained once `need` others serve. Only serving ones: one still starting would have a
    successor no earlier, and where a job's limit is shorter than its start plus the lead time,
    each successor would expire at once and launch the next, until the partition is full.
    (drains, the instances that count, how many expire)."""
    serving = alive(m)
    expiring = [i for i in serving if i.state is InstanceState.READY and i.ends_at is not None
                and i.ends_at - now < m.lead_time_s + 120]
    kept = [i for i in serving if i not in expiring]
    drains: list[Drain] = []
    if expiring and len(kept) >= need and all(i.state is InstanceState.READY for i in kept):
        drains = [Drain(i.id) for i in expiring]
    return drains, kept, len(expiring)


def any_stale(m: ModelView) -> bool:
    return any(i.stale for i in m.instances)


def pick_to_drain(candidates: list[InstanceView]) -> InstanceView | None:
    """Never a stale one; prefer one not yet serving, then the least loaded."""
    ok = [i for i in candidates if not i.stale]
    if not ok:
        return None
    return min(ok, key=lambda i: (i.state is InstanceState.READY, i.inflight, -i.launched_at))
