"""The fixed-deployment frontier: combination, Pareto set and matching worked out by hand, the
fixed policy's filter, and a sweep of a tiny scenario."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chirond.cli import chirond_main
from chirond.control.observations import Observations
from chirond.control.snapshot import ModelSpec, build_snapshot, dispatcher_backlog
from chirond.dispatch import Dispatcher
from chirond.model import Cancel, Decision, Drain, EngineArgs, Launch, Pool, SetBatchCap, SetPool, Slo, Snapshot
from chirond.policy.base import Policy
from chirond.profiles import load_profile
from chirond.sim.frontier import FixedPolicy, Point, ceiling, cheapest_matching, combine, pareto, sweep
from chirond.sim.scenario import load_scenario
from tests.support.paths import PROFILE_8B
from tests.support.policy_inputs import P8, inst, load, model, policy, snap

# Two models; a: 1 GPU per instance, b: 4. Attainment counts: (met, total). Every run ends at 1 h.
A = [Point("a", 1, 1, 60, 100, 10, 10, 1.0, 3600.0), Point("a", 2, 2, 90, 100, 10, 10, 2.0, 3600.0),
     Point("a", 3, 3, 100, 100, 10, 10, 3.0, 3600.0)]
B = [Point("b", 1, 4, 20, 100, 0, 10, 4.0, 3600.0), Point("b", 2, 8, 80, 100, 10, 10, 8.0, 3600.0)]


def test_combine_keeps_what_fits_and_counts_every_request() -> None:
    deps = combine({"a": A, "b": B}, gpus=10)
    assert sorted(tuple(d["instances"].values()) for d in deps) == [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1)]
    d = next(d for d in deps if d["instances"] == {"a": 2, "b": 2})
    assert d["interactive_attainment"] == pytest.approx(170 / 200)  # (90 + 80) / 200
    assert d["batch_attainment"] == 1.0 and d["gpu_hours"] == 10.0


def test_a_fixed_deployment_holds_every_instance_until_its_last_request() -> None:
    # a's work ends at 30 min on 2 GPUs (1.0 GPU-h), b's at 2 h on 4 (8.0 GPU-h): together the
    # deployment runs 2 h, and a's 2 GPUs stay up, idle, for the 1.5 h after its end.
    a = Point("a", 2, 2, 90, 100, 10, 10, 1.0, 1800.0)
    b = Point("b", 1, 4, 80, 100, 10, 10, 8.0, 7200.0)
    (d,) = combine({"a": [a], "b": [b]}, gpus=10)
    assert d["gpu_hours"] == pytest.approx(1.0 + 2 * 1.5 + 8.0)
    assert ceiling({"a": [a], "b": [b]})["gpu_hours"] == pytest.approx(12.0)


def test_pareto_and_cheapest_matching_by_hand() -> None:
    front = pareto(combine({"a": A, "b": B}, gpus=10))
    # by GPU-hours: (1,1) 5.0 h 40 %/50 %; (2,1) 6.0 h 55 %/50 %; (3,1) 7.0 h 60 %/50 %;
    # (1,2) 9.0 h 70 %/100 %; (2,2) 10.0 h 85 %/100 %: each beats the cheaper ones on something
    assert [tuple(d["instances"].values()) for d in front] == [(1, 1), (2, 1), (3, 1), (1, 2), (2, 2)]
    assert cheapest_matching(front, 0.55, 0.5) == 6.0
    assert cheapest_matching(front, 0.55, 1.0) == 9.0
    assert cheapest_matching(front, 0.9, 1.0) is None
    dominated = [{"instances": {"a": 9}, "interactive_attainment": 0.5, "batch_attainment": 0.5, "gpu_hours": 8.0}]
    assert pareto([*front, *dominated]) == front


def test_ceiling_takes_each_models_best_count() -> None:
    top = ceiling({"a": A, "b": B})
    assert top["instances"] == {"a": 3, "b": 2}
    assert top["interactive_attainment"] == pytest.approx(180 / 200) and top["gpu_hours"] == 11.0


class Busy(Policy):
    name = "busy"

    def plan(self, snap: Snapshot, state: object) -> Decision:
        args = EngineArgs(8, 512)
        return Decision((Launch("m", Pool.MIXED, 3, args=args), Drain(1), Cancel(2), SetBatchCap(1, 4),
                         SetPool(2, Pool.BATCH)), "busy")


def test_fixed_policy_filters_scaling_and_replaces_lost_instances() -> None:
    prof = load_profile(PROFILE_8B)
    inner = Busy({"m": prof})
    fixed = FixedPolicy(inner, {"m": 2})
    assert fixed.initial_instances("m", 5, 7) == 2 and fixed.rules == inner.rules
    # a snapshot of model m with no instance left: both are replaced, and the inner policy's
    # launch, drain and cancel are dropped; its caps and pools stay
    d = Dispatcher(inner.rules, {"m": 1.0})
    spec = ModelSpec("m", Slo(1.0, 0.1), prof, 0, 8, 60.0)
    snap = build_snapshot(0.0, {"m": spec}, [], d, Observations(["m"]), dispatcher_backlog(d), 8, 15.0)
    acts = fixed.plan(snap, None).actions
    assert acts[:2] == (SetBatchCap(1, 4), SetPool(2, Pool.BATCH))
    assert acts[2:] == (Launch("m", inner.initial_pool, 2),) and acts[2].args is not None


def test_a_fixed_deployment_hands_over_before_a_time_limit_as_a_policy_does() -> None:
    # The same hand-over as chirond's (tests/unit/test_policies.py): instance 1 ends in 150 s,
    # under the lead time (100 s) + 120 s, so its successor is launched now ...
    fixed = FixedPolicy(policy("chirond"), {"m8": 2})
    s = snap(model([inst(1, ends_at=250.0), inst(2)], lead_time_s=100.0), now=100.0)
    assert [a for a in fixed.plan(s, None).actions if isinstance(a, Launch | Drain)] == [
        Launch("m8", Pool.MIXED, 1, replaces=1)]
    # ... and it is drained once the successor serves, with no more launched.
    s = snap(model([inst(1, ends_at=250.0), inst(2), inst(3, launched_at=150.0)], lead_time_s=100.0), now=160.0)
    assert [a for a in fixed.plan(s, None).actions if isinstance(a, Launch | Drain)] == [Drain(1)]


def test_a_fixed_deployment_sets_caps_for_the_instances_it_has() -> None:
    # Load for three 8B instances on one: chirond alone sets the caps for the three it launches (the
    # prompt load spread over them: 144); fixed at one instance, the cap is one instance's (104).
    pol = policy("chirond")
    m = model([inst(1)], stats=load(rate=8.0, mean_input=2000, mean_output=200))
    one = pol._cap(m, P8, 1)[0]
    (own,) = [a for a in pol.plan(snap(m), None).actions if isinstance(a, SetBatchCap)]
    assert own.cap > one
    (fixed,) = [a for a in FixedPolicy(pol, {"m8": 1}).plan(snap(m), None).actions if isinstance(a, SetBatchCap)]
    assert fixed.cap == one


def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(f"""
name = "tiny"
seed = 5
horizon_s = 900
[cluster]
gpus = 3
[models.m]
profile = "{PROFILE_8B}"
slo = {{ ttft_s = 1.0, tpot_s = 0.1 }}
[[models.m.workload]]
kind = "poisson"
rate_per_s = 6.0
duration_s = 300
lengths = {{ input_tokens = 2000, output_tokens = 200 }}
""")
    return path


def test_sweep_of_a_tiny_scenario(tmp_path: Path) -> None:
    sc = load_scenario(tiny(tmp_path))
    points = sweep(sc, "chirond", jobs=1)
    ps = points["m"]
    assert [p.n for p in ps] == list(range(1, len(ps) + 1)) and len(ps) <= 3
    assert all(p.gpus == p.n for p in ps) and all(p.inter_total == ps[0].inter_total > 0 for p in ps)
    assert ps[-1].inter_met >= ps[0].inter_met  # more instances serve at least as well
    assert ps[-1].gpu_hours > ps[0].gpu_hours
    assert all(300 <= p.end_s <= 900 for p in ps)  # the last arrival, at most the horizon
    front = pareto(combine(points, sc.cluster.gpus))
    assert front and front[0]["instances"] == {"m": 1}
    assert all(d["interactive_attainment"] <= ceiling(points)["interactive_attainment"] for d in front)


def test_simulate_frontier_writes_it_into_the_summary(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert chirond_main(["simulate", str(tiny(tmp_path)), "--policies", "chirond,static", "--frontier",
                         "--jobs", "1", "--out", str(out)]) == 0
    summaries = json.loads((out / "summary.json").read_text())
    for s in summaries:
        assert s["frontier"] and s["ceiling"]["instances"]
        best = cheapest_matching(s["frontier"], s["interactive_attainment"], s["batch_attainment"])
        assert s["frontier_gpu_hours"] == best
        assert s["frontier_ratio"] == (None if best is None else pytest.approx(s["gpu_hours"] / best))
    assert (out / "frontier.png").stat().st_size > 0
