"""`chiron`: the Chiron paper (Patke et al., arXiv 2501.08090) as reconstructed in
docs/policies.md from its abstract, the authors' QLM code and SageServe's re-implementation.

- Local: each instance's batch cap starts at `initial_cap`; every `local_interval_s` it shrinks
  by `cap_decrease` when the observed TPOT breaks the SLO, and grows by `cap_step` while there is
  slack (TPOT below `slack` x SLO) and the instance is using its cap.
- Global, interactive (SageServe): ibp = (interactive + mixed instances running at least one
  interactive request) / (interactive + mixed instances); above `ibp_threshold` add one
  interactive instance, otherwise remove one; one step at a time, locked until it completes.
  Interactive requests are packed onto the fullest interactive instance with room, then overflow
  to the mixed pool, where they preempt batch work.
- Global, batch (QLM's estimator): drain time = queued requests x `est_tokens_per_request` /
  (per-instance tokens/s x batch instances); above the time left to the earliest deadline, add a
  batch instance; remove batch instances once the batch queue is empty.
- A mixed pool of `mixed_instances` per model is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from chirond.model import (
    Action,
    Decision,
    DispatchRules,
    Drain,
    InstanceState,
    Launch,
    ModelView,
    Ordering,
    Pool,
    Routing,
    SetBatchCap,
    Snapshot,
)
from chirond.policy.base import Policy, any_stale, in_pool, pick_to_drain


@dataclass(frozen=True)
class ChironState:
    last_local: float
    last_global: dict[str, float]


class ChironPolicy(Policy):
    name = "chiron"
    rules = DispatchRules(routing=Routing.POOLS, ordering=Ordering.PRIORITY, preempt_batch=True, pack_interactive=True)
    initial_pool = Pool.INTERACTIVE
    defaults: ClassVar[dict[str, float]] = {
        "initial_cap": 32.0,
        "cap_step": 8.0,
        "cap_decrease": 0.75,
        "slack": 0.8,
        "local_interval_s": 5.0,
        "global_interval_s": 10.0,
        "ibp_threshold": 0.6,
        "mixed_instances": 1.0,
        "est_tokens_per_request": 100.0,
        # QLM's per-instance throughput constants: 700 tok/s for Llama-8B on one GPU, 300 tok/s
        # for the 70B model on a multi-GPU instance.
        "tokens_per_s_single_gpu": 700.0,
        "tokens_per_s_multi_gpu": 300.0,
    }

    def initial_cap(self, model: str, pool: Pool) -> tuple[int, int]:
        cap = min(int(self.params["initial_cap"]), self.profiles[model].max_num_seqs)
        return cap, cap

    def plan(self, snap: Snapshot, state: object) -> Decision:
        st = state if isinstance(state, ChironState) else ChironState(-1e9, {})
        p = self.params
        actions: list[Action] = []
        reasons: list[str] = []
        last_local = st.last_local
        if snap.now - st.last_local >= p["local_interval_s"]:
            last_local = snap.now
            for m in snap.models:
                actions.extend(self._local(m))
        last_global = dict(st.last_global)
        for m in snap.models:
            if snap.now - last_global.get(m.name, -1e9) < p["global_interval_s"]:
                continue
            last_global[m.name] = snap.now
            acts, why = self._global(m, snap.now)
            actions.extend(acts)
            if why:
                reasons.append(why)
        return Decision(tuple(actions), "; ".join(reasons) or "hold", ChironState(last_local, last_global))

    def _local(self, m: ModelView) -> list[Action]:
        p = self.params
        ceiling = self.profiles[m.name].max_num_seqs
        out: list[Action] = []
        for i in m.instances:
            if i.state is not InstanceState.READY or i.stale:
                continue
            cap = i.cap
            if i.tpot_obs_s is not None and i.tpot_obs_s > m.slo.tpot_s:
                cap = max(1, int(cap * p["cap_decrease"]))
            elif i.inflight >= 0.9 * i.cap and (i.tpot_obs_s is None or i.tpot_obs_s < p["slack"] * m.slo.tpot_s):
                cap = min(ceiling, cap + int(p["cap_step"]))
            if cap != i.cap:
                out.append(SetBatchCap(i.id, cap))
        return out

    def _global(self, m: ModelView, now: float) -> tuple[list[Action], str]:
        p = self.params
        out: list[Action] = []
        why: list[str] = []
        inter = in_pool(m, Pool.INTERACTIVE)
        mixed = in_pool(m, Pool.MIXED)
        batch = in_pool(m, Pool.BATCH)
        stale = any_stale(m)

        if len(mixed) < int(p["mixed_instances"]):
            out.append(Launch(m.name, Pool.MIXED, args=self.engine_args(m.name, m.slo)))

        # Interactive backpressure, locked while a start or stop is in progress.
        locked = any(i.state is not InstanceState.READY for i in m.instances if i.pool is Pool.INTERACTIVE)
        serving = [i for i in inter + mixed if i.state is InstanceState.READY]
        if serving and not locked:
            busy = sum(1 for i in serving if i.inflight_interactive > 0)
            ibp = busy / len(serving)
            if ibp > p["ibp_threshold"] and len(inter) + len(mixed) < m.max_instances:
                out.append(Launch(m.name, Pool.INTERACTIVE, args=self.engine_args(m.name, m.slo)))
                why.append(f"{m.name} ibp {ibp:.2f} > {p['ibp_threshold']}")
            elif len(inter) > max(1, m.min_instances) and not stale:
                victim = pick_to_drain([i for i in inter if i.state is InstanceState.READY])
                if victim is not None:
                    out.append(Drain(victim.id))
                    why.append(f"{m.name} ibp {ibp:.2f} <= {p['ibp_threshold']}")

        # Batch backpressure.
        b_locked = any(i.state is not InstanceState.READY for i in batch)
        if m.batch_queue > 0 and m.backlog and not b_locked:
            tps = p["tokens_per_s_single_gpu"] if m.gpus_per_instance == 1 else p["tokens_per_s_multi_gpu"]
            drain = m.batch_queue * p["est_tokens_per_request"] / (tps * max(1, len(batch)))
            left = m.backlog[0].deadline - now
            if (drain > left or not batch) and len(m.instances) < m.max_instances:
                out.append(Launch(m.name, Pool.BATCH, args=self.engine_args(m.name, m.slo)))
                why.append(f"{m.name} batch drain {drain:.0f}s > {left:.0f}s left")
        elif m.batch_queue == 0 and batch and not stale:
            victim = pick_to_drain(batch)
            if victim is not None:
                out.append(Drain(victim.id))
                why.append(f"{m.name} batch queue empty")
        return out, "; ".join(why)
