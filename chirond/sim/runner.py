"""The discrete-event simulator: a virtual clock driving the daemon's own dispatcher and policy
against a simulated Slurm partition and simulated vLLM engines."""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from chirond.dispatch import Dispatcher
from chirond.engine import Engine
from chirond.model import (
    Cancel,
    Drain,
    InstanceState,
    InstanceView,
    Launch,
    ModelView,
    Pool,
    ReqClass,
    Request,
    SetBatchCap,
    SetPool,
    Slo,
    Snapshot,
)
from chirond.policy.base import Policy
from chirond.profiles import Profile
from chirond.sim.cluster import Job, SimCluster
from chirond.sim.results import RunResult
from chirond.stats import ArrivalWindow

# event kinds
_ENGINE, _CLUSTER, _READY, _LIMIT, _NODE_DOWN, _NODE_UP, _TICK = range(7)


@dataclass
class ModelSetup:
    name: str
    profile: Profile
    slo: Slo
    cold_start_s: float
    max_instances: int
    min_instances: int
    initial_instances: int
    static_instances: int


@dataclass
class ClusterSetup:
    gpus: int
    gpus_per_node: int
    queue_wait_s: tuple[float, float]
    time_limit_s: float
    failures: list[tuple[float, int | None, float]] = field(default_factory=list)  # at, node, down_s


@dataclass
class SimInstance:
    id: int
    model: str
    pool: Pool
    gpus: int
    job: Job
    state: InstanceState
    launched_at: float
    engine: Engine
    ready_at: float | None = None
    version: int = 0
    # observations since the last tick
    n_done: int = 0
    tpot_sum: float = 0.0
    ttft_sum: float = 0.0
    tokens_mark: int = 0


class Simulation:
    def __init__(
        self,
        *,
        scenario: str,
        models: list[ModelSetup],
        cluster: ClusterSetup,
        requests: list[Request],
        policy: Policy,
        policy_name: str,
        seed: int,
        horizon_s: float,
        tick_s: float,
        progress: Callable[[float, float], None] | None = None,
    ) -> None:
        self.scenario = scenario
        self.models = {m.name: m for m in models}
        self.policy = policy
        self.policy_name = policy_name
        self.seed = seed
        self.horizon_s = horizon_s
        self.tick_s = tick_s
        self.progress = progress
        self.rng = np.random.default_rng([seed, 7])
        self.cluster = SimCluster(
            cluster.gpus, cluster.gpus_per_node, cluster.queue_wait_s, cluster.time_limit_s, self.rng
        )
        self.failures = cluster.failures
        self.requests = sorted(requests, key=lambda r: r.arrival)
        self.dispatcher = Dispatcher(policy.rules, {m.name: m.slo.ttft_s for m in models})
        self.windows = {m.name: ArrivalWindow() for m in models}
        self.batch_out_mean = {m.name: 0.0 for m in models}
        self._batch_out_n = {m.name: 0 for m in models}
        self.instances: dict[int, SimInstance] = {}
        self._next_inst = 1
        self._heap: list[tuple[float, int, int, int, int]] = []
        self._seq = 0
        self.now = 0.0
        self.done = 0
        self.events = 0
        self.launches = 0
        self.cancellations = 0
        self.lost = 0
        self.failure_count = 0
        self.recent_failures: dict[str, list[float]] = {m.name: [] for m in models}
        self.policy_state: object = None
        self.timeline: dict[str, list[float]] = {"t": [], "gpus": []}
        self.log: list[str] = []
        self._dirty: set[str] = set()
        self._touched: set[int] = set()

    # ---------------------------------------------------------------- events

    def _push(self, t: float, kind: int, a: int = 0, b: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, a, b))

    def _push_engine(self, inst: SimInstance) -> None:
        inst.version += 1
        if inst.engine.segment_end < math.inf:
            self._push(inst.engine.segment_end, _ENGINE, inst.id, inst.version)

    # ---------------------------------------------------------------- instances

    def _launch(self, model: str, pool: Pool, now: float, ready: bool = False) -> SimInstance | None:
        setup = self.models[model]
        gpus = setup.profile.gpus
        if ready:
            job = self.cluster.start_now(gpus, now)
            if job is None:
                return None
        else:
            job = self.cluster.submit(gpus, now)
            self._push(job.eligible_at, _CLUSTER)
        args = self.policy.engine_args(model, setup.slo)
        engine = Engine(setup.profile, args.max_num_seqs, args.max_num_batched_tokens, args.priority)
        inst = SimInstance(self._next_inst, model, pool, gpus, job, InstanceState.PENDING, now, engine)
        self._next_inst += 1
        self.instances[inst.id] = inst
        if ready:
            self._started(inst, now)
            self._ready(inst, now)
        return inst

    def _started(self, inst: SimInstance, now: float) -> None:
        inst.state = InstanceState.STARTING
        limit = self.cluster.limit_at(inst.job)
        if limit < math.inf:
            self._push(limit, _LIMIT, inst.id)

    def _ready(self, inst: SimInstance, now: float) -> None:
        inst.state = InstanceState.READY
        inst.ready_at = now
        cap, batch_cap = self.policy.initial_cap(inst.model, inst.pool)
        self.dispatcher.add_instance(inst.id, inst.model, inst.pool, cap, batch_cap)
        self._dirty.add(inst.model)

    def _end(self, inst: SimInstance, now: float, reason: str) -> None:
        """The instance's job ends; whatever it was running goes back to the queues."""
        if inst.id not in self.instances:
            return
        del self.instances[inst.id]
        inst.version += 1  # invalidates its pending engine event
        if inst.id in self.dispatcher.slots:
            lost = self.dispatcher.remove_instance(inst.id)
            self.lost += len(lost)
            if lost:
                self._dirty.add(inst.model)
        self.cluster.end(inst.job, now, reason)
        self._push(now, _CLUSTER)  # freed GPUs may start a pending job

    def _lose(self, inst: SimInstance, now: float, reason: str) -> None:
        self.failure_count += 1
        self.recent_failures[inst.model].append(now)
        self._end(inst, now, reason)

    # ---------------------------------------------------------------- the run

    def run(self) -> RunResult:
        t_wall = time.perf_counter()
        for m in self.models.values():
            n = self.policy.initial_instances(m.name, m.initial_instances, m.static_instances)
            for _ in range(n):
                self._launch(m.name, self.policy.initial_pool, 0.0, ready=True)
        for at, node, down in self.failures:
            idx = node if node is not None else int(self.rng.integers(0, len(self.cluster.nodes)))
            self._push(at, _NODE_DOWN, idx)
            self._push(at + down, _NODE_UP, idx)
        self._push(0.0, _TICK)

        reqs = self.requests
        n_req = len(reqs)
        i = 0
        heap = self._heap
        while True:
            t_arr = reqs[i].arrival if i < n_req else math.inf
            t_ev = heap[0][0] if heap else math.inf
            t = min(t_arr, t_ev)
            if t > self.horizon_s or (self.done >= n_req and i >= n_req) or t == math.inf:
                break
            self.now = t
            self.events += 1
            if t_arr <= t_ev:
                while i < n_req and reqs[i].arrival <= t:
                    r = reqs[i]
                    i += 1
                    if r.cls is ReqClass.INTERACTIVE:
                        self.windows[r.model].arrival(t, r.input_tokens)
                    self.dispatcher.enqueue(r)
                    self._dirty.add(r.model)
            else:
                _, _, kind, a, b = heapq.heappop(heap)
                self._event(kind, a, b, t)
            self._settle(t)
        end = min(self.now, self.horizon_s) if self.done < n_req else self.now
        for inst in list(self.instances.values()):
            self.cluster.end(inst.job, end, "run over")
        return self._result(end, time.perf_counter() - t_wall)

    def _event(self, kind: int, a: int, b: int, t: float) -> None:
        if kind == _ENGINE:
            inst = self.instances.get(a)
            if inst is None or inst.version != b:
                return
            for r in inst.engine.finish_segment():
                self._finished(inst, r)
            self._touched.add(inst.id)
            if inst.state is InstanceState.DRAINING and len(inst.engine) == 0:
                self.cancellations += 1
                self._end(inst, t, "drained")
        elif kind == _TICK:
            self._tick(t)
            if t + self.tick_s <= self.horizon_s:
                self._push(t + self.tick_s, _TICK)
        elif kind == _CLUSTER:
            for job in self.cluster.schedule(t):
                inst = next((x for x in self.instances.values() if x.job is job), None)
                if inst is None:
                    continue
                self._started(inst, t)
                self._push(t + self.models[inst.model].cold_start_s, _READY, inst.id)
            nxt = self.cluster.next_eligible()
            if t < nxt < math.inf:
                self._push(nxt, _CLUSTER)
        elif kind == _READY:
            inst = self.instances.get(a)
            if inst is not None and inst.state is InstanceState.STARTING:
                self._ready(inst, t)
        elif kind == _LIMIT:
            inst = self.instances.get(a)
            if inst is not None:
                self._lose(inst, t, "time limit")
        elif kind == _NODE_DOWN:
            for job in self.cluster.fail_node(a):
                inst = next((x for x in self.instances.values() if x.job is job), None)
                if inst is not None:
                    self._lose(inst, t, "node failure")
        elif kind == _NODE_UP:
            self.cluster.restore_node(a)
            self._push(t, _CLUSTER)

    def _finished(self, inst: SimInstance, r: Request) -> None:
        self.done += 1
        self.dispatcher.complete(r)
        self._dirty.add(r.model)
        inst.n_done += 1
        if r.cls is ReqClass.INTERACTIVE:
            self.windows[r.model].completion(r.output_tokens)
            inst.tpot_sum += r.tpot or 0.0
            inst.ttft_sum += r.ttft or 0.0
        else:
            n = self._batch_out_n[r.model] = self._batch_out_n[r.model] + 1
            m = self.batch_out_mean[r.model]
            self.batch_out_mean[r.model] = m + max(1.0 / n, 0.002) * (r.output_tokens - m)

    def _settle(self, t: float) -> None:
        """After an event: dispatch what can be dispatched, then let touched engines replan."""
        if self._dirty:
            for model in sorted(self._dirty):
                assigned, evicted = self.dispatcher.dispatch(model, t)
                for r, iid in evicted:
                    self.instances[iid].engine.abort(r)
                    self._touched.add(iid)
                for r in assigned:
                    target = r.instance
                    assert target is not None
                    self.instances[target].engine.submit(r)
                    self._touched.add(target)
            self._dirty.clear()
        if self._touched:
            for iid in self._touched:
                inst = self.instances.get(iid)
                if inst is not None and inst.engine.kick(t):
                    self._push_engine(inst)
            self._touched.clear()

    # ---------------------------------------------------------------- control tick

    def _tick(self, t: float) -> None:
        snap = self._snapshot(t)
        decision = self.policy.plan(snap, self.policy_state)
        self.policy_state = decision.state
        for act in decision.actions:
            self._apply(act, t)
        if decision.actions and len(self.log) < 5000:
            self.log.append(f"t={t:8.1f} {decision.reason} -> {', '.join(map(str, decision.actions))}")
        self._sample(t)
        if self.progress is not None:
            self.progress(t, self.horizon_s)

    def _apply(self, act: object, t: float) -> None:
        if isinstance(act, Launch):
            setup = self.models[act.model]
            have = sum(1 for x in self.instances.values() if x.model == act.model)
            for _ in range(act.room(have, setup.max_instances)):
                self._launch(act.model, act.pool, t)
                self.launches += 1
        elif isinstance(act, SetBatchCap):
            if act.instance in self.dispatcher.slots:
                self.dispatcher.set_cap(act.instance, act.cap, act.batch_cap)
                self._dirty.add(self.dispatcher.slots[act.instance].model)
        elif isinstance(act, SetPool):
            inst = self.instances.get(act.instance)
            if inst is not None:
                inst.pool = act.pool
                if act.instance in self.dispatcher.slots:
                    self.dispatcher.set_pool(act.instance, act.pool)
                    self._dirty.add(inst.model)
        elif isinstance(act, Drain):
            inst = self.instances.get(act.instance)
            if inst is None:
                return
            if inst.state is not InstanceState.READY:
                self.cancellations += 1
                self._end(inst, t, "cancelled before ready")
                return
            inst.state = InstanceState.DRAINING
            self.dispatcher.set_routable(inst.id, False)
            if len(inst.engine) == 0:
                self.cancellations += 1
                self._end(inst, t, "drained")
        elif isinstance(act, Cancel):
            inst = self.instances.get(act.instance)
            if inst is not None:
                self.cancellations += 1
                self._end(inst, t, "cancelled")

    def _snapshot(self, t: float) -> Snapshot:
        views: list[ModelView] = []
        for name, setup in self.models.items():
            insts = []
            for x in self.instances.values():
                if x.model != name:
                    continue
                slot = self.dispatcher.slots.get(x.id)
                eng = x.engine
                gen = eng.generation_tokens - x.tokens_mark
                x.tokens_mark = eng.generation_tokens
                insts.append(
                    InstanceView(
                        id=x.id,
                        model=name,
                        pool=x.pool,
                        state=x.state,
                        gpus=x.gpus,
                        launched_at=x.launched_at,
                        ready_at=x.ready_at,
                        ends_at=self.cluster.limit_at(x.job) if x.job.started is not None else None,
                        cap=slot.cap if slot else 0,
                        batch_cap=slot.batch_cap if slot else 0,
                        inflight_interactive=len(slot.inter) if slot else 0,
                        inflight_batch=len(slot.batch) if slot else 0,
                        running=eng.running,
                        waiting=eng.waiting,
                        kv_usage=eng.kv_usage,
                        kv_free_tokens=int(max(0.0, setup.profile.kv_capacity_tokens - eng.kv_used_tokens)),
                        tpot_obs_s=x.tpot_sum / x.n_done if x.n_done and x.tpot_sum else None,
                        ttft_obs_s=x.ttft_sum / x.n_done if x.n_done and x.ttft_sum else None,
                        tokens_per_s=gen / self.tick_s,
                    )
                )
                x.n_done, x.tpot_sum, x.ttft_sum = 0, 0.0, 0.0
            n_inter, n_batch = self.dispatcher.queued(name)
            oldest = self.dispatcher.oldest_interactive(name) if n_inter else None
            fails = [f for f in self.recent_failures[name] if f > t - 600]
            self.recent_failures[name] = fails
            lo, hi = self.cluster.queue_wait_s
            views.append(
                ModelView(
                    name=name,
                    slo=setup.slo,
                    gpus_per_instance=setup.profile.gpus,
                    max_instances=setup.max_instances,
                    min_instances=setup.min_instances,
                    lead_time_s=(lo + hi) / 2 + setup.cold_start_s,
                    interactive_queue=n_inter,
                    interactive_queue_tokens=self.dispatcher.interactive_tokens(name),
                    oldest_interactive_wait_s=0.0 if oldest is None else t - oldest,
                    batch_queue=n_batch,
                    backlog=self.dispatcher.backlog(name),
                    batch_mean_output=self.batch_out_mean[name],
                    load=self.windows[name].stats(t),
                    instances=tuple(sorted(insts, key=lambda v: v.id)),
                    failures_recent=len(fails),
                )
            )
        return Snapshot(now=t, models=tuple(views), free_gpus=self.cluster.free_gpus)

    def _sample(self, t: float) -> None:
        tl = self.timeline
        tl["t"].append(t)
        tl["gpus"].append(self.cluster.gpus_in_use)
        for name in self.models:
            counts = {p: 0 for p in Pool}
            starting = pending = 0
            caps: list[int] = []
            for x in self.instances.values():
                if x.model != name:
                    continue
                if x.state is InstanceState.READY:
                    counts[x.pool] += 1
                    slot = self.dispatcher.slots.get(x.id)
                    if slot:
                        caps.append(slot.cap)
                elif x.state is InstanceState.STARTING:
                    starting += 1
                elif x.state is InstanceState.PENDING:
                    pending += 1
            for p in Pool:
                tl.setdefault(f"{name}/{p.value}", []).append(counts[p])
            qi, qb = self.dispatcher.queued(name)
            for key, v in (
                ("starting", starting),
                ("pending", pending),
                ("queue_interactive", qi),
                ("queue_batch", qb),
                ("cap", float(np.mean(caps)) if caps else 0.0),
            ):
                tl.setdefault(f"{name}/{key}", []).append(v)

    # ---------------------------------------------------------------- result

    def _result(self, end: float, wall: float) -> RunResult:
        names = list(self.models)
        index = {n: k for k, n in enumerate(names)}
        reqs = self.requests
        nan = math.nan

        def col(f: Callable[[Request], float | None]) -> np.ndarray:
            return np.array([nan if (v := f(r)) is None else v for r in reqs], dtype=np.float64)

        requests: dict[str, np.ndarray] = {
            "model": np.array([index[r.model] for r in reqs], dtype=np.int16),
            "cls": np.array([0 if r.cls is ReqClass.INTERACTIVE else 1 for r in reqs], dtype=np.int8),
            "arrival": col(lambda r: r.arrival),
            "first_token": col(lambda r: r.first_token),
            "finish": col(lambda r: r.finish),
            "deadline": col(lambda r: r.deadline),
            "input_tokens": np.array([r.input_tokens for r in reqs], dtype=np.int64),
            "output_tokens": np.array([r.output_tokens for r in reqs], dtype=np.int64),
            "preempted": np.array([r.preempted for r in reqs], dtype=np.int32),
        }
        timeline = {k: np.asarray(v, dtype=np.float64) for k, v in self.timeline.items()}
        return RunResult(
            scenario=self.scenario,
            policy=self.policy_name,
            params=dict(self.policy.params),
            seed=self.seed,
            end_s=end,
            models=names,
            slos={n: m.slo for n, m in self.models.items()},
            requests=requests,
            timeline=timeline,
            gpu_hours=self.cluster.gpu_seconds(end) / 3600.0,
            gpu_hours_lower_bound=gpu_hours_lower_bound(list(self.models.values()), reqs),
            peak_gpus=int(max(self.timeline["gpus"], default=0)),
            launches=self.launches,
            cancellations=self.cancellations,
            preemptions=self.dispatcher.evictions + self.lost,
            failures=self.failure_count,
            wall_s=wall,
            events=self.events,
            log=self.log,
        )


def gpu_hours_lower_bound(models: list[ModelSetup], reqs: list[Request]) -> float:
    """Each model's prefill and decode work at the instance's best throughput (the largest batch
    the KV cache holds at the mean context), plus a cold start for each instance beyond the ones
    present at the start that the work needs to fit in the run's span."""
    total = 0.0
    span = max((r.deadline or r.arrival for r in reqs), default=1.0) or 1.0
    by_model: Mapping[str, list[Request]] = {m.name: [r for r in reqs if r.model == m.name] for m in models}
    for m in models:
        rs = by_model[m.name]
        if not rs:
            continue
        p = m.profile
        tin = float(sum(r.input_tokens for r in rs))
        tout = float(sum(r.output_tokens for r in rs))
        ctx = (tin + tout / 2) / len(rs)
        b = p.max_batch_for_kv(ctx)
        work = p.prefill_s(tin) + tout * p.step_s(b, b * ctx) / b
        needed = math.ceil(work / span)
        extra = max(0, needed - m.initial_instances)
        total += p.gpus * (work + extra * m.cold_start_s)
    return total / 3600.0
