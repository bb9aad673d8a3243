"""The discrete-event simulator: a virtual clock driving the daemon's own control loop (snapshot,
policy, reconciler, lifecycle rules; chirond/control/) and dispatcher against a simulated Slurm
partition and simulated vLLM engines."""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from chirond.config import DaemonConfig, LifecycleConfig
from chirond.control.instance import Instance
from chirond.control.loop import ControlLoop, Timeouts
from chirond.control.snapshot import ModelSpec, dispatcher_backlog
from chirond.dispatch import Dispatcher
from chirond.engine import Engine
from chirond.model import EngineArgs, InstanceState, Launch, Pool, ReqClass, Request, Slo
from chirond.policy.base import Policy
from chirond.profiles import Profile
from chirond.sim.cluster import Job, SimCluster
from chirond.sim.results import RunResult, request_columns

# The daemon's defaults ([lifecycle], daemon.stale_after_s): the simulator runs the same rules.
DEFAULT_TIMEOUTS = Timeouts(
    drain_s=LifecycleConfig().drain_timeout_s,
    start_s=LifecycleConfig().health_timeout_s,
    stale_after_s=DaemonConfig().stale_after_s,
)

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
    min_instances_by_hour: tuple[int, ...] = ()  # a floor per hour from the start (midnight)


@dataclass
class ClusterSetup:
    gpus: int
    gpus_per_node: int
    queue_wait_s: tuple[float, float]
    time_limit_s: float
    failures: list[tuple[float, int | None, float]] = field(default_factory=list)  # at, node, down_s


@dataclass(eq=False)
class SimInstance(Instance):
    job: Job | None = None
    engine: Engine | None = None
    version: int = 0  # bumped to invalidate its pending engine event
    tokens_mark: int = 0  # generation tokens at the previous tick


class Simulation:
    """The world of the simulator: it implements the control loop's `Actuator` against a
    simulated partition and engines; the tick, lifecycle rules and reconciler are the daemon's."""

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
        timeouts: Timeouts | None = None,
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
        specs = {
            m.name: ModelSpec(m.name, m.slo, m.profile, m.min_instances, m.max_instances, m.cold_start_s,
                              m.initial_instances, m.static_instances, min_instances_by_hour=m.min_instances_by_hour)
            for m in models
        }
        self.control = ControlLoop(
            policy, self.dispatcher, specs, self, dispatcher_backlog(self.dispatcher), timeouts or DEFAULT_TIMEOUTS
        )
        self.instances = self.control.instances
        self._heap: list[tuple[float, int, int, int, int]] = []
        self._seq = 0
        self.now = 0.0
        self.done = 0
        self.events = 0
        self.cancellations = 0
        self.lost = 0
        self.cut_streams = 0  # interactive streams that failed with their instance
        self.failure_count = 0
        self.timeline: dict[str, list[float]] = {"t": [], "gpus": []}
        self._dirty: set[str] = set()
        self._touched: set[int] = set()
        self._warm = False  # launches start at once, warm (the instances present at t = 0)
        self._fleet: deque[tuple[float, float]] = deque()  # their (queue wait, cold start), in launch order
        self._jobs: list[tuple[str, Job]] = []  # every job with its model, for GPU-hours per model

    # ---------------------------------------------------------------- events

    def _push(self, t: float, kind: int, a: int = 0, b: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, a, b))

    def _push_engine(self, inst: SimInstance) -> None:
        inst.version += 1
        assert inst.engine is not None
        if inst.engine.segment_end < math.inf:
            self._push(inst.engine.segment_end, _ENGINE, inst.id, inst.version)

    # ---------------------------------------------------------------- the actuator

    def new_instance(self, inst_id: int, model: str, pool: Pool, args: EngineArgs, now: float) -> SimInstance:
        setup = self.models[model]
        engine = Engine(setup.profile, args.max_num_seqs, args.max_num_batched_tokens, args.priority)
        return SimInstance(inst_id, model, pool, setup.profile.gpus, args, now, engine=engine)

    def launch(self, inst: Instance) -> bool:
        assert isinstance(inst, SimInstance)
        now = inst.launched_at
        if self._warm:
            wait, cold = self._fleet.popleft()
            inst.job = self.cluster.start_now(inst.gpus, 0.0, since=now + wait)
            if inst.job is None:
                return False
            self._running(inst, now + wait)
            self.control.ready(inst, now + wait + cold)
        else:
            inst.job = self.cluster.submit(inst.gpus, now)
            self._push(inst.job.eligible_at, _CLUSTER)
        self._jobs.append((inst.model, inst.job))
        return True

    def cancel(self, inst: Instance, reason: str) -> None:
        """Simulated scancel: the job ends at once."""
        assert isinstance(inst, SimInstance)
        self.cancellations += 1
        self._end(inst, self.now, reason)

    def kick(self, model: str) -> None:
        self._dirty.add(model)

    # ---------------------------------------------------------------- instances

    def _running(self, inst: SimInstance, now: float) -> None:
        assert inst.job is not None
        limit = self.cluster.limit_at(inst.job)
        self.control.running(inst, now, limit if limit < math.inf else None)
        if limit < math.inf:
            self._push(limit, _LIMIT, inst.id)

    def _end(self, inst: SimInstance, now: float, reason: str) -> None:
        """The instance's job ends; whatever it was running goes back to the queues."""
        if inst.id not in self.instances:
            return
        if self.control.ended(inst, now):
            self.failure_count += 1
        inst.version += 1  # invalidates its pending engine event
        if inst.id in self.dispatcher.slots:
            lost = self.dispatcher.remove_instance(inst.id)
            self.lost += len(lost)
            for r in lost:
                # A stream already under way cannot go on elsewhere for its client (the proxy
                # resumes batch work and answers not yet begun, not a cut stream): it fails.
                if r.cls is ReqClass.INTERACTIVE and r.first_token is not None and self.dispatcher.withdraw(r):
                    self.done += 1
                    self.cut_streams += 1
            if lost:
                self._dirty.add(inst.model)
        assert inst.job is not None
        self.cluster.end(inst.job, now, reason)
        self._push(now, _CLUSTER)  # freed GPUs may start a pending job

    def _job_instance(self, job: Job) -> SimInstance | None:
        for x in self.instances.values():
            if isinstance(x, SimInstance) and x.job is job:
                return x
        return None

    # ---------------------------------------------------------------- the run

    def run(self) -> RunResult:
        t_wall = time.perf_counter()
        launched_at = self._start_fleet(self.control.initial_launches({}))
        for at, node, down in self.failures:
            idx = node if node is not None else int(self.rng.integers(0, len(self.cluster.nodes)))
            self._push(at, _NODE_DOWN, idx)
            self._push(at + down, _NODE_UP, idx)
        # The control loop has ticked since the fleet's launch (with nothing to do before t = 0).
        self._push(launched_at % self.tick_s if self.tick_s > 0 else 0.0, _TICK)

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
                    self.control.obs.arrival(r)
                    self.dispatcher.enqueue(r)
                    self._dirty.add(r.model)
            else:
                _, _, kind, a, b = heapq.heappop(heap)
                self._event(kind, a, b, t)
            self._settle(t)
        end = min(self.now, self.horizon_s) if self.done < n_req else self.now
        for inst in list(self.instances.values()):
            assert isinstance(inst, SimInstance) and inst.job is not None
            self.cluster.end(inst.job, end, "run over")
        return self._result(end, time.perf_counter() - t_wall)

    def _start_fleet(self, initial: list[Launch]) -> float:
        """The instances present at t = 0, launched as a daemon launches its initial fleet: each
        waits in the queue (its wait drawn as every job's, in launch order, as `chirond replay`'s
        local backend draws them) and starts cold; the workload meets the fleet once the slowest
        is ready (`chirond replay` starts its trace then). So they were launched before t = 0,
        their time limits count from when each started running, their GPU time from t = 0."""
        self._fleet = deque((self.cluster.queue_wait(), self.models[a.model].cold_start_s)
                            for a in initial for _ in range(a.count))
        launched_at = -max((w + c for w, c in self._fleet), default=0.0)
        self._warm = True
        for act in initial:
            self.control.launch(act, launched_at, counted=False)
        self._warm = False
        return launched_at

    def _event(self, kind: int, a: int, b: int, t: float) -> None:
        if kind == _ENGINE:
            inst = self.instances.get(a)
            if not isinstance(inst, SimInstance) or inst.version != b:
                return
            assert inst.engine is not None
            for r in inst.engine.finish_segment():
                self._finished(inst, r, t)
            self._touched.add(inst.id)
        elif kind == _TICK:
            self._tick(t)
            if t + self.tick_s <= self.horizon_s:
                self._push(t + self.tick_s, _TICK)
        elif kind == _CLUSTER:
            for job in self.cluster.schedule(t):
                inst = self._job_instance(job)
                if inst is None:
                    continue
                self._running(inst, t)
                self._push(t + self.models[inst.model].cold_start_s, _READY, inst.id)
            nxt = self.cluster.next_eligible()
            if t < nxt < math.inf:
                self._push(nxt, _CLUSTER)
        elif kind == _READY:
            inst = self.instances.get(a)
            if inst is not None and inst.state is InstanceState.STARTING and inst.cancel_sent_at is None:
                self.control.ready(inst, t)
        elif kind in (_LIMIT, _NODE_DOWN):
            jobs = self.cluster.fail_node(a) if kind == _NODE_DOWN else None
            for inst in list(self.instances.values()):
                assert isinstance(inst, SimInstance)
                if (inst.id == a) if jobs is None else (inst.job in jobs):
                    self._end(inst, t, "time limit" if jobs is None else "node failure")
        elif kind == _NODE_UP:
            self.cluster.restore_node(a)
            self._push(t, _CLUSTER)

    def _finished(self, inst: SimInstance, r: Request, t: float) -> None:
        self.done += 1
        self.dispatcher.complete(r)
        self._dirty.add(r.model)
        self.control.obs.completed(r, inst)
        self.control.request_left(inst.id, t)

    def _settle(self, t: float) -> None:
        """After an event: dispatch what can be dispatched, then let touched engines replan."""
        if self._dirty:
            for model in sorted(self._dirty):
                assigned, evicted = self.dispatcher.dispatch(model, t)
                for r, iid in evicted:
                    self._engine(iid).abort(r)
                    self._touched.add(iid)
                for r in assigned:
                    target = r.instance
                    assert target is not None
                    self._engine(target).submit(r)
                    self._touched.add(target)
            self._dirty.clear()
        if self._touched:
            for iid in self._touched:
                inst = self.instances.get(iid)
                if isinstance(inst, SimInstance) and inst.engine is not None and inst.engine.kick(t):
                    self._push_engine(inst)
            self._touched.clear()

    def _engine(self, inst_id: int) -> Engine:
        inst = self.instances[inst_id]
        assert isinstance(inst, SimInstance) and inst.engine is not None
        return inst.engine

    # ---------------------------------------------------------------- control tick

    def _tick(self, t: float) -> None:
        for x in self.instances.values():  # the engine samples a scrape would bring
            assert isinstance(x, SimInstance) and x.engine is not None
            eng = x.engine
            x.running, x.waiting, x.kv_usage = eng.running, eng.waiting, eng.kv_usage
            x.tokens_per_s = (eng.generation_tokens - x.tokens_mark) / self.tick_s
            x.tokens_mark = eng.generation_tokens
        self.control.tick(t, self.cluster.free_gpus)
        self._sample(t)
        if self.progress is not None:
            self.progress(t, self.horizon_s)

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
        requests = request_columns(self.requests, names)
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
            gpu_hours_lower_bound=gpu_hours_lower_bound(list(self.models.values()), self.requests),
            peak_gpus=int(max(self.timeline["gpus"], default=0)),
            launches=self.control.launches,
            cancellations=self.cancellations,
            preemptions=self.dispatcher.evictions + self.lost,
            failures=self.failure_count,
            wall_s=wall,
            events=self.events,
            log=self.control.log,
            launches_by_model=dict(self.control.launched),
            gpu_hours_by_model=self._gpu_hours_by_model(end),
        )

    def _gpu_hours_by_model(self, end: float) -> dict[str, float]:
        out = dict.fromkeys(self.models, 0.0)
        for model, job in self._jobs:
            if job.started is not None:
                out[model] += job.gpus * ((job.ended if job.ended is not None else end) - job.started) / 3600.0
        return out


def gpu_hours_lower_bound(models: list[ModelSetup], reqs: list[Request]) -> float:
    """Each model's prefill and decode work at the instance's best throughput (the largest batch
    the KV cache holds at the mean context), plus a cold start for each instance beyond the ones
    present at the start that the work needs to fit in the run's span; and never less than the
    model's `min_instances` running until the last request arrives, which every policy pays."""
    total = 0.0
    span = max((r.deadline or r.arrival for r in reqs), default=1.0) or 1.0
    last_arrival = max((r.arrival for r in reqs), default=0.0)
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
        work = p.prefill_s(tin, tin / len(rs)) + tout * p.step_s(b, b * ctx) / b
        needed = math.ceil(work / span)
        extra = max(0, needed - m.initial_instances)
        total += p.gpus * max(work + extra * m.cold_start_s, m.min_instances * last_arrival)
    return total / 3600.0
