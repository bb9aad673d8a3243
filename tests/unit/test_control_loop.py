"""The control loop shared by the daemon and the simulator: reconcile and lifecycle rules against a
recording actuator, on a clock the test moves."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from chirond.control.instance import Instance
from chirond.control.loop import ControlLoop, Timeouts, format_action
from chirond.control.snapshot import DAY_S, ModelSpec, dispatcher_backlog, hourly_floor
from chirond.dispatch import Dispatcher
from chirond.model import (
    Cancel,
    Decision,
    Drain,
    EngineArgs,
    InstanceState,
    Launch,
    Pool,
    PromptBudget,
    ReqClass,
    Request,
    SetBatchCap,
    SetPool,
    Slo,
    Snapshot,
)
from chirond.policy.base import Policy
from chirond.profiles import load_profile
from chirond.sim.frontier import FixedPolicy

ROOT = Path(__file__).resolve().parents[2]
P8 = load_profile(ROOT / "profiles" / "llama-3.1-8b_a100-80gb_tp1.toml")
SLO = Slo(1.0, 0.1)
ARGS = EngineArgs(64, 1024, priority=True)


class Recorder:
    """An actuator that records what the loop asks; `refuse` makes launches fail."""

    def __init__(self) -> None:
        self.launched: list[int] = []
        self.tried = 0
        self.cancelled: list[tuple[int, str]] = []
        self.kicked: list[str] = []
        self.refuse = False

    def new_instance(self, inst_id: int, model: str, pool: Pool, args: EngineArgs, now: float) -> Instance:
        return Instance(inst_id, model, pool, 1, args, now)

    def launch(self, inst: Instance) -> bool:
        self.tried += 1
        if self.refuse:
            return False
        self.launched.append(inst.id)
        return True

    def cancel(self, inst: Instance, reason: str) -> None:
        self.cancelled.append((inst.id, reason))

    def kick(self, model: str) -> None:
        self.kicked.append(model)


class Scripted(Policy):
    """A policy that returns the actions the test gives it."""

    name = "scripted"

    def __init__(self) -> None:
        super().__init__({"m": P8})
        self.next: tuple = ()

    def plan(self, snap: Snapshot, state: object) -> Decision:
        acts, self.next = self.next, ()
        return Decision(acts, "scripted")


TIMEOUTS = Timeouts(drain_s=30.0, start_s=100.0, stale_after_s=15.0)


def make(timeouts: Timeouts = TIMEOUTS, max_instances: int = 3):  # type: ignore[no-untyped-def]
    policy = Scripted()
    dispatcher = Dispatcher(policy.rules, {"m": SLO.ttft_s})
    act = Recorder()
    specs = {"m": ModelSpec("m", SLO, P8, 0, max_instances, 60.0, 1, 1)}
    loop = ControlLoop(policy, dispatcher, specs, act, dispatcher_backlog(dispatcher), timeouts)
    return loop, act, policy, dispatcher


def ready_instance(loop: ControlLoop, now: float = 0.0) -> Instance:
    loop.launch(Launch("m", Pool.MIXED, 1, args=ARGS), now)
    inst = loop.instances[max(loop.instances)]
    loop.running(inst, now, None)
    loop.ready(inst, now)
    return inst


def test_launch_respects_max_instances_and_carries_engine_args() -> None:
    loop, act, _, _ = make(max_instances=2)
    assert loop.launch(Launch("m", Pool.MIXED, 5, args=ARGS), 0.0) == 2
    assert act.launched == [1, 2] and all(i.args is ARGS for i in loop.instances.values())
    assert loop.launches == 2
    # a successor near a time limit may pass the cap
    assert loop.launch(Launch("m", Pool.MIXED, 1, replaces=1, args=ARGS), 1.0) == 1


def test_a_refused_launch_leaves_no_record_and_stops_the_rest() -> None:
    loop, act, _, _ = make()
    act.refuse = True
    assert loop.launch(Launch("m", Pool.MIXED, 3, args=ARGS), 0.0) == 0
    assert loop.instances == {} and loop.next_id == 1 and act.tried == 1 and loop.launches == 0


def test_a_launch_refused_later_is_forgotten_and_not_counted() -> None:
    loop, _, _, _ = make()
    loop.launch(Launch("m", Pool.MIXED, 2, args=ARGS), 0.0)
    loop.refused(loop.instances[2])  # the backend said no after the actuator took it
    assert list(loop.instances) == [1] and loop.launches == 1
    (first,) = loop.initial_launches({})
    loop.launch(first, 1.0, counted=False)
    loop.refused(loop.instances[3])
    assert loop.launches == 1  # an initial instance was never counted


def test_a_new_instance_expects_the_lead_time() -> None:
    loop, _, _, _ = make()
    loop.obs.queue_wait["m"] = 12.0
    loop.launch(Launch("m", Pool.MIXED, 1, args=ARGS), 0.0)
    assert loop.instances[1].expected_ready_s == 12.0 + 60.0  # measured queue wait + start-up


def test_initial_launches_count_adopted_jobs() -> None:
    loop, _, _, _ = make()
    (first,) = loop.initial_launches({})
    assert (first.model, first.count) == ("m", 1) and first.args is not None
    assert loop.initial_launches({"m": 1}) == []


def test_drain_stops_when_the_last_request_leaves() -> None:
    loop, act, policy, dispatcher = make()
    inst = ready_instance(loop)
    r = Request(1, "m", ReqClass.INTERACTIVE, 0.0, 10, 10)
    dispatcher.enqueue(r)
    dispatcher.dispatch("m", 0.0)
    policy.next = (Drain(inst.id),)
    loop.tick(1.0, 8)
    assert inst.state is InstanceState.DRAINING and act.cancelled == []  # one request still runs
    dispatcher.complete(r)
    loop.request_left(inst.id, 2.0)
    assert act.cancelled == [(inst.id, "drained")] and inst.cancel_sent_at == 2.0
    assert loop.ended(inst, 3.0) is False and loop.obs.failures["m"] == []  # asked to stop: no failure


def test_drain_timeout_stops_a_busy_instance() -> None:
    loop, act, policy, dispatcher = make()
    inst = ready_instance(loop)
    dispatcher.enqueue(Request(1, "m", ReqClass.INTERACTIVE, 0.0, 10, 10))
    dispatcher.dispatch("m", 0.0)
    policy.next = (Drain(inst.id),)
    loop.tick(1.0, 8)
    loop.tick(20.0, 8)
    assert act.cancelled == []
    loop.tick(31.0, 8)
    assert act.cancelled == [(inst.id, "drain timeout")]


def test_an_instance_that_never_becomes_healthy_is_cancelled_as_a_failure() -> None:
    loop, act, _, _ = make()
    loop.launch(Launch("m", Pool.MIXED, 1, args=ARGS), 0.0)
    inst = loop.instances[1]
    loop.tick(500.0, 8)  # pending in the queue for long: no start timeout while queued
    assert act.cancelled == []
    loop.running(inst, 500.0, None)
    loop.tick(599.0, 8)
    assert act.cancelled == []
    loop.tick(600.0, 8)
    assert act.cancelled == [(1, "not healthy within 100 s")] and loop.obs.failures["m"] == [600.0]


def test_a_second_drain_does_not_cut_the_first_short() -> None:
    loop, act, policy, dispatcher = make()
    inst = ready_instance(loop)
    dispatcher.enqueue(Request(1, "m", ReqClass.INTERACTIVE, 0.0, 10, 10))
    dispatcher.dispatch("m", 0.0)
    policy.next = (Drain(inst.id),)
    loop.tick(1.0, 8)
    policy.next = (Drain(inst.id),)
    loop.tick(2.0, 8)
    assert act.cancelled == [] and inst.drain_requested_at == 1.0


def test_an_end_nobody_asked_for_is_one_failure() -> None:
    loop, _, _, _ = make()
    inst = ready_instance(loop)
    assert loop.ended(inst, 5.0) is True and loop.obs.failures["m"] == [5.0]
    # a start timeout is one failure, and the job's end after the cancel is not another
    loop.launch(Launch("m", Pool.MIXED, 1, args=ARGS), 10.0)
    late = loop.instances[max(loop.instances)]
    loop.running(late, 10.0, None)
    loop.tick(110.0, 8)
    assert loop.ended(late, 111.0) is False and loop.obs.failures["m"] == [5.0, 110.0]


def test_instances_being_stopped_leave_the_snapshot() -> None:
    loop, _, policy, _ = make()
    inst = ready_instance(loop)
    policy.next = (Cancel(inst.id),)
    loop.tick(1.0, 8)
    assert loop.snapshot(2.0, 8).model("m").instances == ()
    assert inst.id in loop.instances  # until its job is seen to end


def test_drain_before_ready_cancels_and_cancel_is_sent_once() -> None:
    loop, act, policy, _ = make()
    loop.launch(Launch("m", Pool.MIXED, 1, args=ARGS), 0.0)
    policy.next = (Drain(1), Cancel(1))
    loop.tick(1.0, 8)
    assert act.cancelled == [(1, "not needed before ready")]


def test_caps_and_pools_reach_the_dispatcher() -> None:
    loop, act, policy, dispatcher = make()
    inst = ready_instance(loop)
    policy.next = (SetBatchCap(inst.id, 7, 3), SetPool(inst.id, Pool.BATCH))
    loop.tick(1.0, 8)
    slot = dispatcher.slots[inst.id]
    assert (slot.cap, slot.batch_cap, slot.pool, inst.pool) == (7, 3, Pool.BATCH, Pool.BATCH)
    assert act.kicked.count("m") >= 2


def test_requeue_starts_over_and_a_draining_one_is_stopped() -> None:
    loop, act, _, _ = make()
    inst = ready_instance(loop)
    inst.running, inst.kv_usage = 5, 0.5
    assert loop.requeued(inst, 10.0) is True
    assert inst.state is InstanceState.PENDING and (inst.running, inst.kv_usage) == (0, 0.0)
    assert loop.obs.failures["m"] == [10.0]
    other = ready_instance(loop, 11.0)
    other.drain_requested_at = 12.0
    assert loop.requeued(other, 13.0) is False and act.cancelled == [(other.id, "requeued while draining")]
    assert loop.requeued(other, 14.0) is False and loop.obs.failures["m"] == [10.0, 13.0]  # stopped: no failure


def test_observations_reach_the_snapshot_once_and_only_interactive() -> None:
    loop, _, _, _ = make()
    inst = ready_instance(loop)
    done = Request(1, "m", ReqClass.INTERACTIVE, 0.0, 10, 11, first_token=0.5, finish=1.5)
    loop.obs.completed(done, inst)
    loop.obs.completed(Request(2, "m", ReqClass.BATCH, 0.0, 10, 100, first_token=9.0, finish=19.0), inst)
    view = loop.snapshot(2.0, 8).model("m").instances[0]
    assert (view.ttft_obs_s, view.tpot_obs_s) == (0.5, 0.1)
    assert loop.snapshot(3.0, 8).model("m").instances[0].ttft_obs_s is None  # taken by the last tick
    assert loop.obs.batch_out_mean["m"] == 100.0


def test_the_tick_line_prints_actions_readably() -> None:
    loop, _, policy, _ = make()
    policy.next = (Launch("m", Pool.MIXED, 2, replaces=1, args=ARGS),)
    loop.tick(5.0, 8)
    (line,) = loop.log
    assert line.startswith("t=5.0 m[") and line.endswith("| scripted | launch 2 m (mixed, replacing 1)")
    assert format_action(SetBatchCap(3, 8, 2)) == "cap 3=8/2" and format_action(Drain(4)) == "drain 4"


def test_a_ready_instance_joins_with_the_policys_prompt_budget() -> None:
    # The limit on long batch prompts holds from the moment an instance joins the dispatcher
    # (a backlog would fill it before the next tick), for the policy and its fixed deployments.
    budget = PromptBudget(long_tokens=1000, tokens=5000)

    class Budgeted(Scripted):
        def prompt_budget(self, model: str, slo: Slo) -> PromptBudget | None:
            return budget

    for policy in (Budgeted(), FixedPolicy(Budgeted(), {"m": 1})):
        dispatcher = Dispatcher(policy.rules, {"m": SLO.ttft_s})
        specs = {"m": ModelSpec("m", SLO, P8, 0, 3, 60.0, 1, 1)}
        loop = ControlLoop(policy, dispatcher, specs, Recorder(), dispatcher_backlog(dispatcher), TIMEOUTS)
        inst = ready_instance(loop)
        assert dispatcher.slots[inst.id].prompt_budget == budget


# 1 instance at night, 3 from 08:00, 5 from 12:00 to 14:00, 2 from 18:00
SCHEDULE = (1,) * 8 + (3,) * 4 + (5,) * 2 + (3,) * 4 + (2,) * 6


def test_the_hourly_floor_is_in_place_one_lead_time_before_its_hour_and_until_it_ends() -> None:
    spec = ModelSpec("m", SLO, P8, 0, 4, 60.0, min_instances_by_hour=SCHEDULE)
    hour = 3600.0
    assert hourly_floor(spec, 7 * hour, 600.0) == 1  # 07:00, 08:00's 3 more than a lead time away
    assert hourly_floor(spec, 8 * hour - 600.0, 600.0) == 3  # 07:50: launched to be ready at 08:00
    assert hourly_floor(spec, 14 * hour - 1.0, 600.0) == 4  # 13:59: the hour's 5, held to max_instances
    assert hourly_floor(spec, 14 * hour, 600.0) == 3  # 14:00: down
    assert hourly_floor(spec, 6 * hour + 1800.0, 7200.0) == 3  # a lead of 2 h from 06:30 reaches 08:00
    # every hour in between counts: from 11:30 to 14:00, 12:00-14:00's 5, neither end's 3
    assert hourly_floor(replace(spec, max_instances=6), 11.5 * hour, 9000.0) == 5
    assert hourly_floor(spec, 23 * hour + 3500.0, 600.0) == 2  # 23:58: today's 2, tomorrow's 00:00 1
    night = replace(spec, min_instances_by_hour=(4,) + (1,) * 23)
    assert hourly_floor(night, 23 * hour + 3500.0, 600.0) == 4  # past midnight: tomorrow's first hour
    assert hourly_floor(night, DAY_S + 5 * hour, 600.0) == 1  # any day
    assert hourly_floor(replace(spec, min_instances=2), 3 * hour, 600.0) == 2  # min_instances stays under it
    assert hourly_floor(replace(spec, min_instances_by_hour=()), 12 * hour, 600.0) == 0


def test_the_snapshot_reads_the_floor_at_the_loops_time_of_day() -> None:
    loop, _, _, _ = make(max_instances=6)
    loop.specs["m"] = replace(loop.specs["m"], min_instances_by_hour=SCHEDULE)
    # the simulator's clock: midnight at 0, the floor of day 2 as of day 1
    assert loop.snapshot(DAY_S + 12.5 * 3600, 8).model("m").min_instances == 5
    assert loop.snapshot(3 * 3600, 8).model("m").min_instances == 1
    # the daemon's: its own clock of the day (here 12:30 whatever the loop's time)
    loop.day_clock = lambda now: 12.5 * 3600
    assert loop.snapshot(3 * 3600, 8).model("m").min_instances == 5
    # a clock 10 times faster than the wall (replay): the 60-s lead is 6 s of the day ahead
    loop.day_clock = lambda now: now / 10 % DAY_S
    assert loop.snapshot((8 * 3600 - 5) * 10, 8).model("m").min_instances == 3
    assert loop.snapshot((8 * 3600 - 30) * 10, 8).model("m").min_instances == 1
