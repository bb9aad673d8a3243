"""The control tick and the lifecycle rules, once for both worlds. Each tick: lifecycle rules
(drains that finished or timed out, instances that never became healthy) -> snapshot -> policy ->
reconcile. A world (the daemon's fleet, the simulator) implements `Actuator` and feeds facts in
through `running`, `ready`, `requeued`, `ended` and `request_left`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from chirond.control.instance import Instance
from chirond.control.observations import Observations
from chirond.control.snapshot import Backlog, ModelSpec, build_snapshot
from chirond.dispatch import Dispatcher
from chirond.model import (
    Action,
    Cancel,
    Decision,
    Drain,
    EngineArgs,
    InstanceState,
    Launch,
    Pool,
    SetBatchCap,
    SetPool,
    Snapshot,
)
from chirond.policy.base import Policy


@dataclass(frozen=True, slots=True)
class Timeouts:
    drain_s: float  # a draining instance is stopped after this long, idle or not
    start_s: float  # running -> healthy; beyond it the instance is cancelled as failed
    stale_after_s: float  # samples not refreshed this long mark the instance stale


class Actuator(Protocol):
    """What a decision does in one world: Slurm or local processes, or the simulated partition."""

    def launch(self, inst: Instance) -> bool:
        """Start the job of a new instance (registered already). False: refused at once."""

    def cancel(self, inst: Instance, reason: str) -> None:
        """Stop its job (cancel_sent_at is set); its requests go back to the queues."""

    def kick(self, model: str) -> None:
        """Caps, pools or routability of `model`'s instances changed: dispatch again."""

    def new_instance(self, inst_id: int, model: str, pool: Pool, args: EngineArgs, now: float) -> Instance:
        """The world's record for a new instance."""


class ControlLoop:
    def __init__(
        self,
        policy: Policy,
        dispatcher: Dispatcher,
        specs: Mapping[str, ModelSpec],
        actuator: Actuator,
        backlog: Backlog,
        timeouts: Timeouts,
        origin: float = 0.0,
        day_clock: Callable[[float], float] | None = None,
    ) -> None:
        self.policy = policy
        self.dispatcher = dispatcher
        self.specs = dict(specs)
        self.actuator = actuator
        self.backlog = backlog
        self.timeouts = timeouts
        self.origin = origin  # printed times are relative to it
        self.day_clock = day_clock  # instant -> seconds since midnight (None: the simulator's)
        self.obs = Observations(self.specs)
        self.instances: dict[int, Instance] = {}
        self.policy_state: object = None
        self.next_id = 1
        self.launched = dict.fromkeys(self.specs, 0)  # per model, decided by the policy (not the initial ones)
        self.log: list[str] = []  # every tick line whose decision changed something
        self.keep_log = True

    # ---------------------------------------------------------------- the tick

    def tick(self, now: float, free_gpus: int) -> tuple[Snapshot, Decision]:
        self.lifecycle(now)
        snap = self.snapshot(now, free_gpus)
        decision = self.policy.plan(snap, self.policy_state)
        self.policy_state = decision.state
        for act in decision.actions:
            self.apply(act, now)
        if decision.actions and self.keep_log:
            self.log.append(self.describe(snap, decision))
        return snap, decision

    @property
    def launches(self) -> int:
        return sum(self.launched.values())

    def snapshot(self, now: float, free_gpus: int) -> Snapshot:
        return build_snapshot(now, self.specs, self.instances.values(), self.dispatcher, self.obs,
                              self.backlog, free_gpus, self.timeouts.stale_after_s, self.day_clock)

    def describe(self, snap: Snapshot, decision: Decision) -> str:
        """The tick's one line, the same in both worlds."""
        acts = ", ".join(map(format_action, decision.actions)) or "no action"
        return f"t={snap.now - self.origin:.1f} {digest(snap)} | {decision.reason} | {acts}"

    def lifecycle(self, now: float) -> None:
        t = self.timeouts
        for inst in list(self.instances.values()):
            if inst.cancel_sent_at is not None:
                continue
            if inst.drain_requested_at is not None:
                if now - inst.drain_requested_at >= t.drain_s:
                    self.stop(inst, now, "drain timeout")
                else:
                    self.request_left(inst.id, now)
            elif inst.ready_at is None and inst.running_since is not None and now - inst.running_since >= t.start_s:
                self.obs.failure(inst.model, now)
                self.stop(inst, now, f"not healthy within {t.start_s:.0f} s")

    # ---------------------------------------------------------------- reconcile

    def initial_launches(self, adopted: Mapping[str, int]) -> list[Launch]:
        """What a run starts with: the policy's initial instances (at least min_instances), less
        the jobs adopted from an earlier run."""
        out = []
        for name, m in self.specs.items():
            n = max(self.policy.initial_instances(name, m.initial_instances, m.static_instances), m.min_instances)
            missing = n - adopted.get(name, 0)
            if missing > 0:
                out.append(Launch(name, self.policy.initial_pool, missing, args=self.policy.engine_args(name, m.slo)))
        return out

    def apply(self, act: Action, now: float) -> None:
        if isinstance(act, Launch):
            self.launch(act, now)
            return
        inst = self.instances.get(act.instance)
        if inst is None:
            return
        if isinstance(act, SetBatchCap):
            if inst.id in self.dispatcher.slots:
                self.dispatcher.set_cap(inst.id, act.cap, act.batch_cap)
                self.actuator.kick(inst.model)
        elif isinstance(act, SetPool):
            inst.pool = act.pool
            if inst.id in self.dispatcher.slots:
                self.dispatcher.set_pool(inst.id, act.pool)
                self.actuator.kick(inst.model)
        elif isinstance(act, Drain):
            if inst.drain_requested_at is not None:
                return  # draining already: its timeout runs from the first request
            if inst.state is not InstanceState.READY:
                self.stop(inst, now, "not needed before ready")
            elif inst.drain_requested_at is None:
                inst.drain_requested_at = now
                self.dispatcher.set_routable(inst.id, False)
                self.request_left(inst.id, now)
        elif isinstance(act, Cancel):
            self.stop(inst, now, "cancelled by policy")

    def launch(self, act: Launch, now: float, counted: bool = True) -> int:
        """Start the instances a Launch asks for, within max_instances; returns how many started."""
        if act.args is None:
            raise ValueError(f"{act}: a Launch must carry its engine arguments")
        spec = self.specs[act.model]
        have = sum(1 for x in self.instances.values() if x.model == act.model)
        started = 0
        for _ in range(act.room(have, spec.max_instances)):
            inst = self.actuator.new_instance(self.next_id, act.model, act.pool, act.args, now)
            inst.expected_ready_s = self.obs.queue_wait[act.model] + spec.startup_s
            inst.counted = counted
            self.instances[inst.id] = inst
            if not self.actuator.launch(inst):
                del self.instances[inst.id]
                break
            self.next_id += 1
            started += 1
            self.launched[act.model] += counted
        return started

    def refused(self, inst: Instance) -> None:
        """The backend refused a launch the actuator had accepted (it learns later): forget it."""
        if self.instances.pop(inst.id, None) is not None:
            self.launched[inst.model] -= inst.counted

    def stop(self, inst: Instance, now: float, reason: str) -> None:
        if inst.cancel_sent_at is None:
            inst.cancel_sent_at = now
            self.actuator.cancel(inst, reason)

    # ---------------------------------------------------------------- facts from the world

    def adopt(self, inst: Instance) -> None:
        """A job an earlier run left, taken over under its old id."""
        inst.queue_wait_known = True  # submitted by an earlier run: its wait is not known
        self.instances[inst.id] = inst
        self.next_id = max(self.next_id, inst.id + 1)

    def running(self, inst: Instance, now: float, ends_at: float | None) -> None:
        inst.running_since = now
        inst.ends_at = ends_at
        self.obs.running(inst, now)

    def ready(self, inst: Instance, now: float) -> tuple[int, int]:
        """First healthy: it joins the dispatcher with the policy's initial cap."""
        inst.ready_at = now
        cap, batch_cap = self.policy.initial_cap(inst.model, inst.pool)
        budget = self.policy.prompt_budget(inst.model, self.specs[inst.model].slo)
        self.dispatcher.add_instance(inst.id, inst.model, inst.pool, cap, batch_cap, budget)
        self.actuator.kick(inst.model)
        return cap, batch_cap

    def requeued(self, inst: Instance, now: float) -> bool:
        """Its job went back to the scheduler's queue: it starts over as pending, unless it was
        draining (then it is stopped). Returns whether it waits to run again."""
        inst.back_to_queue()
        if inst.cancel_sent_at is None:
            self.obs.failure(inst.model, now)
        if inst.drain_requested_at is not None:
            self.stop(inst, now, "requeued while draining")
        return inst.cancel_sent_at is None

    def ended(self, inst: Instance, now: float) -> bool:
        """Its job is over. Returns whether that was a failure (nobody asked it to stop)."""
        self.instances.pop(inst.id, None)
        failed = inst.cancel_sent_at is None
        if failed:
            self.obs.failure(inst.model, now)
        return failed

    def request_left(self, inst_id: int, now: float) -> None:
        """A request left the instance (finished, failed, moved): a draining instance that has
        nothing left stops now."""
        inst = self.instances.get(inst_id)
        if inst is None or inst.drain_requested_at is None or inst.cancel_sent_at is not None:
            return
        slot = self.dispatcher.slots.get(inst_id)
        if slot is None or slot.inflight == 0:
            self.stop(inst, now, "drained")


# ---------------------------------------------------------------- printing


def digest(snap: Snapshot) -> str:
    parts = []
    for m in snap.models:
        by: dict[str, int] = {}
        for i in m.instances:
            by[i.state.value[0]] = by.get(i.state.value[0], 0) + 1
        inst = "".join(f"{n}{k}" for k, n in sorted(by.items())) or "0"
        caps = "/".join(str(i.cap) for i in m.instances if i.state is InstanceState.READY) or "-"
        parts.append(f"{m.name}[q={m.interactive_queue}/{m.batch_queue} inst={inst} cap={caps} "
                     f"rate={m.load.rate_1m:.1f}/s]")
    return " ".join(parts)


def format_action(a: Action) -> str:
    if isinstance(a, Launch):
        extra = f", replacing {a.replaces}" if a.replaces else ""
        return f"launch {a.count} {a.model} ({a.pool.value}{extra})"
    if isinstance(a, SetBatchCap):
        return f"cap {a.instance}={a.cap}" + (f"/{a.batch_cap}" if a.batch_cap is not None else "")
    if isinstance(a, SetPool):
        return f"pool {a.instance}={a.pool.value}"
    return f"{type(a).__name__.lower()} {a.instance}"
