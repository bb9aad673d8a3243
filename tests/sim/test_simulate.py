"""End-to-end simulation on a tiny scenario: every request finishes, runs are reproducible, and the
run survives a node failure and short job time limits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from chirond.cluster.local import LocalBackend
from chirond.config import LocalBackendConfig
from chirond.policy import make_policy
from chirond.profiles import load_profile
from chirond.sim.compare import compare, run_one, setups
from chirond.sim.report import summarize
from chirond.sim.results import RunResult
from chirond.sim.runner import Simulation
from chirond.sim.scenario import build_workload, load_scenario

ROOT = Path(__file__).resolve().parents[2]
PROFILE_8B = ROOT / "profiles" / "llama-3.1-8b_a100-80gb_tp1.toml"
POLICIES = ["static", "chirond"]
INTERACTIVE_RATE, INTERACTIVE_S, BACKLOG = 3.0, 300, 2000


def scenario_text(*, cluster_extra: str = "", duration_s: int = INTERACTIVE_S) -> str:
    return f"""\
name = "tiny"
seed = 7
horizon_s = 3000

[cluster]
gpus = 8
gpus_per_node = 4
{cluster_extra}

[models.llama-8b]
profile = "{PROFILE_8B}"
slo = {{ ttft_s = 2.0, tpot_s = 0.1 }}

[[models.llama-8b.workload]]
kind = "poisson"
rate_per_s = {INTERACTIVE_RATE}
duration_s = {duration_s}

[[models.llama-8b.workload]]
kind = "backlog"
requests = {BACKLOG}
deadline_s = 1200
"""


def run(tmp_path: Path, text: str, name: str = "s.toml") -> dict[str, RunResult]:
    path = tmp_path / name
    path.write_text(text)
    results = compare(load_scenario(path), POLICIES, jobs=1)
    assert [r.policy for r in results] == POLICIES
    return {r.policy: r for r in results}


def assert_all_finished(r: RunResult, cut: bool = False) -> None:
    """Every request finished; with `cut`, but for interactive streams under way on an instance
    that was lost (the proxy cannot resume those for their client): they fail, after a first token."""
    req = r.requests
    done = np.isfinite(req["finish"])
    if cut:
        assert (req["cls"][~done] == 0).all(), f"{r.policy}: a batch request did not finish"
        done |= np.isfinite(req["first_token"])
    assert done.all(), f"{r.policy}: {np.count_nonzero(~done)} unfinished"
    assert np.isfinite(req["first_token"]).all()
    assert (req["first_token"] >= req["arrival"]).all()
    fin = np.isfinite(req["finish"])
    assert (req["finish"][fin] >= req["first_token"][fin]).all()
    assert summarize(r)["unfinished"] == np.count_nonzero(~fin)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunResult]:
    return run(tmp_path_factory.mktemp("base"), scenario_text())


SUMMARY_KEYS = {
    "policy",
    "scenario",
    "seed",
    "params",
    "end_s",
    "requests",
    "interactive_requests",
    "batch_requests",
    "interactive_attainment",
    "batch_attainment",
    "gpu_hours",
    "gpu_hours_lower_bound",
    "gpu_hours_ratio",
    "peak_gpus",
    "launches",
    "cancellations",
    "preemptions",
    "failures",
    "ttft_p50_s",
    "ttft_p99_s",
    "tpot_p50_s",
    "tpot_p99_s",
    "output_tokens",
    "goodput_per_gpu_hour",
    "tokens_per_gpu_hour",
    "unfinished",
    "wall_s",
    "events",
    "per_model",
}


def test_every_request_finishes(base: dict[str, RunResult]) -> None:
    for r in base.values():
        assert_all_finished(r)
        n = len(r.requests["arrival"])
        n_batch = int(np.count_nonzero(r.requests["cls"] == 1))
        assert n_batch == BACKLOG
        # Poisson at 3/s for 300 s: 900 expected, well within 5 standard deviations (150).
        assert abs((n - n_batch) - INTERACTIVE_RATE * INTERACTIVE_S) < 150


def test_summary_keys_and_values(base: dict[str, RunResult]) -> None:
    for r in base.values():
        s = summarize(r)
        assert set(s) >= SUMMARY_KEYS
        assert s["scenario"] == "tiny" and s["seed"] == 7
        assert s["requests"] == s["interactive_requests"] + s["batch_requests"]
        assert s["batch_requests"] == BACKLOG
        assert s["output_tokens"] == int(r.requests["output_tokens"].sum())
        assert set(s["per_model"]) == {"llama-8b"}
        assert s["per_model"]["llama-8b"]["requests"] == s["requests"]
        assert 0.0 <= s["interactive_attainment"] <= 1.0
        assert s["failures"] == 0
        assert s["peak_gpus"] <= 8


def test_per_model_launches_and_gpu_hours_add_up() -> None:
    # two models of 1 and 4 GPUs per instance (benchmarks/scenarios/replay-check.toml, under a second)
    sc = load_scenario(ROOT / "benchmarks" / "scenarios" / "replay-check.toml")
    r = run_one(sc, "chirond")
    per = summarize(r)["per_model"]
    assert set(per) == {"llama-8b", "llama-70b"}
    assert sum(m["launches"] for m in per.values()) == r.launches > 0
    assert sum(m["gpu_hours"] for m in per.values()) == pytest.approx(r.gpu_hours)
    assert all(m["gpu_hours"] > 0 for m in per.values())


def test_decisions_are_logged_readably_and_every_one_kept(base: dict[str, RunResult]) -> None:
    r = base["chirond"]
    assert r.log and all(line.startswith("t=") and " | " in line for line in r.log)
    assert not any("Launch(" in line or "<Pool" in line for line in r.log)


def test_chirond_meets_batch_deadlines(base: dict[str, RunResult]) -> None:
    s = summarize(base["chirond"])
    assert s["batch_attainment"] == 1.0
    assert s["per_model"]["llama-8b"]["batch_attainment"] == 1.0
    req = base["chirond"].requests
    batch = req["cls"] == 1
    assert (req["finish"][batch] <= req["deadline"][batch]).all()


def test_chirond_serves_interactive_better_than_static(base: dict[str, RunResult]) -> None:
    # Static is one instance serving both classes first come first served; chirond scales and
    # puts interactive requests first.
    assert summarize(base["chirond"])["interactive_attainment"] > summarize(base["static"])["interactive_attainment"]


def test_gpu_hours_at_least_the_lower_bound(base: dict[str, RunResult]) -> None:
    for r in base.values():
        assert r.gpu_hours_lower_bound > 0
        assert r.gpu_hours >= r.gpu_hours_lower_bound
        # GPU-hours cannot exceed every GPU for the whole run.
        assert r.gpu_hours <= 8 * r.end_s / 3600


def test_static_runs_a_fixed_instance(base: dict[str, RunResult]) -> None:
    r = base["static"]
    assert r.launches == 0 and r.cancellations == 0
    assert r.peak_gpus == 1
    # One GPU for the whole run.
    assert r.gpu_hours == pytest.approx(r.end_s / 3600)


def _strip(s: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in s.items() if k != "wall_s"}  # real time: the one thing that may differ


def test_same_seed_same_results(tmp_path: Path, base: dict[str, RunResult]) -> None:
    again = run(tmp_path, scenario_text())
    for p in POLICIES:
        assert _strip(summarize(again[p])) == _strip(summarize(base[p]))
        for k, col in base[p].requests.items():
            np.testing.assert_array_equal(again[p].requests[k], col, err_msg=k)
        assert again[p].log == base[p].log


def test_node_failure_requeues_work(tmp_path: Path) -> None:
    text = scenario_text(cluster_extra="\n[[cluster.failures]]\nat_s = 100\nnode = 0\n")
    res = run(tmp_path, text)
    for p, r in res.items():
        assert_all_finished(r, cut=True)
        s = summarize(r)
        assert s["failures"] >= 1, p
        # The instance on node 0 was busy at t=100: its requests were lost and requeued.
        assert s["preemptions"] >= 1, p
        assert int(r.requests["preempted"].sum()) >= 1, p
        assert s["launches"] >= 1, p  # lost capacity is replaced
    # A static deployment of one instance had all its work on node 0.
    assert summarize(res["static"])["failures"] == 1
    # chirond's interactive streams under way on node 0 failed with it (as the daemon's proxy fails
    # them); static had only batch work under way there, which was requeued
    assert summarize(res["chirond"])["unfinished"] >= 1


def test_short_time_limit_triggers_replacements(tmp_path: Path) -> None:
    # Interactive arrivals for 1000 s: the run outlives the 400 s job limit twice.
    res = run(tmp_path, scenario_text(cluster_extra="time_limit_s = 400", duration_s=1000))
    for r in res.values():
        assert_all_finished(r, cut=r.policy != "chirond")  # chirond hands over before the limit
        assert r.end_s > 800
    st = res["static"]
    # Static's instance hits its limit at 400 s and 800 s and is replaced each time.
    assert st.failures == 2
    assert st.launches == 2
    # ... counted from when the initial instance was launched: before t = 0, by the mean queue wait
    # and its cold start (it is ready at t = 0), as a daemon's initial fleet is
    first = float(next(line for line in st.log if "launch" in line).split()[0][2:])
    cold = load_profile(PROFILE_8B).cold_start_s
    assert 400 - cold - 5 <= first <= 400 - cold + 5
    ch = res["chirond"]
    # chirond replaces instances ahead of their limit (lead time + 120 s before it) and drains the
    # old ones, which finish their work long before the limit: nothing is lost to it.
    assert ch.launches >= 2
    assert ch.cancellations >= 1
    assert ch.failures == 0
    assert ch.gpu_hours_lower_bound <= ch.gpu_hours <= 8 * ch.end_s / 3600
    assert summarize(ch)["batch_attainment"] == 1.0


def test_the_initial_fleet_starts_as_the_daemon_starts_it(tmp_path: Path) -> None:
    # `chirond replay` starts the daemon, whose initial instances wait in the local backend's
    # emulated queue and start cold; the trace begins when the slowest is ready, and the control
    # loop has ticked every tick_s since the daemon started. The simulator starts its fleet the same
    # way, and draws every job's queue wait from the same sequence as that backend, in launch order.
    path = tmp_path / "s.toml"
    path.write_text(scenario_text(cluster_extra="queue_wait_s = [0, 30]\ntime_limit_s = 400", duration_s=1000)
                    .replace("[models.llama-8b]\n", "[models.llama-8b]\ninitial_instances = 2\n"))
    sc = load_scenario(path)
    models, cluster, profiles = setups(sc)
    work = build_workload(sc, np.random.default_rng(sc.seed))
    sim = Simulation(scenario=sc.name, models=models, cluster=cluster, requests=[r for rs in work.values() for r in rs],
                     policy=make_policy("static", profiles, {}), policy_name="static", seed=sc.seed,
                     horizon_s=sc.horizon_s, tick_s=sc.tick_s)
    res = sim.run()
    local = LocalBackend(LocalBackendConfig(queue_wait_s=(0.0, 30.0), seed=sc.seed), tmp_path)
    draws = [local._queue_wait() for _ in range(len(sim.cluster.jobs))]  # the backend's next waits, in order
    jobs = sorted(sim.cluster.jobs.values(), key=lambda j: j.id)
    cold = models[0].cold_start_s
    initial, later = jobs[:2], jobs[2:]
    launched_at = -max(d + cold for d in draws[:2])  # the slowest is ready at t = 0
    assert [j.limit_from for j in initial] == pytest.approx([launched_at + d for d in draws[:2]])
    assert later and [j.eligible_at - j.submitted for j in later] == pytest.approx(draws[2:])
    # Decisions fall on the daemon's tick grid, which started with the launch (the log prints 0.1 s)
    first = float(res.log[0].split()[0][2:])
    ticks = (first - launched_at) / sc.tick_s
    assert ticks == pytest.approx(round(ticks), abs=0.05 / sc.tick_s)


def test_an_hourly_floor_is_launched_one_lead_time_ahead_and_held_through_its_hour(tmp_path: Path) -> None:
    """A floor of 3 in the second hour: chirond launches for it one lead time ahead and drains to 1
    after it, where the run without it holds 1 for this trickle all along."""
    text = f"""\
name = "floor"
seed = 3
horizon_s = 9000
[cluster]
gpus = 4
queue_wait_s = [60, 60]
[models.m]
profile = "{PROFILE_8B}"
cold_start_s = 60
slo = {{ ttft_s = 2.0, tpot_s = 0.1 }}
{{floor}}
[[models.m.workload]]
kind = "poisson"
rate_per_s = 0.2
duration_s = 9000
lengths = {{{{ input_tokens = 200, output_tokens = 50 }}}}
"""
    schedule = "min_instances_by_hour = [1, 3" + ", 1" * 22 + "]"  # 3 from 1 h to 2 h
    ready = {}
    for name, floor in (("with", schedule), ("without", "")):
        path = tmp_path / f"{name}.toml"
        path.write_text(text.replace("{floor}", floor).replace("{{", "{").replace("}}", "}"))
        tl = run_one(load_scenario(path), "chirond", {}).timeline
        t = np.asarray(tl["t"])
        held = np.asarray(tl["m/mixed"]) + np.asarray(tl["m/interactive"])
        ready[name] = [int(held[np.searchsorted(t, at)]) for at in (3000.0, 3700.0, 7100.0, 7400.0)]
        if name == "with":
            first = t[np.argmax(held == 3)]
    assert ready["without"] == [1, 1, 1, 1]
    assert ready["with"] == [1, 3, 3, 1]  # not long before its lead time; ready with the hour; drained after
    # launched one lead time ahead, as the model estimates it: here the cold start alone (no queue
    # wait measured yet), so the instances come a queue wait (60 s) after the hour begins
    assert 3600.0 <= first <= 3680.0, first


def test_a_floor_learned_from_the_history_day_is_held_in_the_run(tmp_path: Path) -> None:
    """`learned_floor_price` with `history_seed`: the floor is learned from the workload drawn with
    that seed, as `chirond learn-floor` learns it from a day of the daemon's traffic, and the run
    then holds it: two instances are ready as the busy hour begins, where without it one is."""
    from chirond.sim.compare import with_learned_floors
    from chirond.sim.hindsight import learn_floor
    from chirond.sim.scenario import ScenarioError

    text = f"""\
name = "learned"
seed = 3
history_seed = 5
horizon_s = 10800
[cluster]
gpus = 8
gpus_per_node = 1
queue_wait_s = [30, 30]
[models.m]
profile = "{PROFILE_8B}"
cold_start_s = 60
slo = {{ ttft_s = 2.0, tpot_s = 0.1 }}
{{learn}}
[[models.m.workload]]
kind = "curve"
points = [[0, 0.2], [3600, 0.2], [3601, 8.0], [7200, 8.0], [7201, 0.2], [10800, 0.2]]
cv = 1.0
duration_s = 10800
lengths = {{{{ input_tokens = 2000, output_tokens = 50 }}}}
"""
    held = {}
    for name, learn in (("with", "learned_floor_price = 5"), ("without", "")):
        path = tmp_path / f"{name}.toml"
        path.write_text(text.replace("{learn}", learn).replace("{{", "{").replace("}}", "}"))
        sc = load_scenario(path)
        if name == "with":
            learned = with_learned_floors(sc)
            setup = setups(sc)[0][0]
            want, _ = learn_floor(build_workload(sc, np.random.default_rng(5))["m"], setup,
                                  make_policy("chirond", {"m": setup.profile}), 5.0, tick_s=sc.tick_s)
            assert learned.models[0].min_instances_by_hour == want
            assert want[:2] == (1, 2) and learned.models[0].learned_floor_price == 0.0  # learned once
            with pytest.raises(ScenarioError, match="history_seed 5 is the seed the run is judged on"):
                run_one(sc, "chirond", {}, seed=5)
            trace = tmp_path / "t.csv"
            trace.write_text("arrival_s,input_tokens,output_tokens\n0,10,10\n")
            with pytest.raises(ScenarioError, match="--trace m: the model learns its floor from the history day"):
                run_one(sc, "chirond", {}, traces={"m": trace})
        tl = run_one(sc, "chirond", {}).timeline
        t = np.asarray(tl["t"])
        ready = np.asarray(tl["m/mixed"]) + np.asarray(tl["m/interactive"])
        held[name] = int(ready[np.searchsorted(t, 3650.0)])
    assert held == {"with": 2, "without": 1}
