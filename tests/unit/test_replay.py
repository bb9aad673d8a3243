"""The pure parts of `chirond replay`: the generated config, request bodies, batch windows, the
result built from a recording, and the lag verdict. Nothing here starts a process."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from chirond.config import ConfigError, load_config
from chirond.model import ReqClass, Request
from chirond.replay.driver import BatchRun, Recording, Sent
from chirond.replay.plan import (
    batch_files,
    batch_jsonl,
    completion_body,
    daemon_config,
    lag_verdict,
    make_plan,
    window_for,
)
from chirond.replay.result import batch_finish_times, build_result, integrate_hours, timeline
from chirond.sim.report import summarize, write_requests
from chirond.sim.scenario import ScenarioError, load_scenario
from chirond.tokens import count_prompt

ROOT = Path(__file__).resolve().parents[2]
PROFILE_8B = ROOT / "profiles" / "llama-3.1-8b_a100-80gb_tp1.toml"
PROFILE_70B = ROOT / "profiles" / "llama-3.1-70b_a100-80gb_tp4.toml"


def scenario(tmp_path: Path, extra: str = "") -> Path:
    p = tmp_path / "sc.toml"
    p.write_text(f"""
name = "t"
horizon_s = 600
tick_s = 2.0
[cluster]
gpus = 12
queue_wait_s = [5, 20]
time_limit_s = 300
[models.small]
profile = "{PROFILE_8B}"
cold_start_s = 40
slo = {{ ttft_s = 2.0, tpot_s = 0.1 }}
min_instances = 1
initial_instances = 1
static_instances = 3
max_gpus = 6
[[models.small.workload]]
kind = "poisson"
rate_per_s = 1.0
duration_s = 60
lengths = {{ input_tokens = 100, output_tokens = 20 }}
[[models.small.workload]]
kind = "backlog"
requests = 10
deadline_s = 300
lengths = {{ input_tokens = 50, output_tokens = 10 }}
[models.big]
profile = "{PROFILE_70B}"
slo = {{ ttft_s = 5.0, tpot_s = 0.15 }}
min_instances = 1
{extra}
""")
    return p


def plan_for(tmp_path: Path, policy: str = "chirond", speedup: float = 10.0, extra: str = ""):  # type: ignore[no-untyped-def]
    from chirond.sim.scenario import build_workload

    sc = load_scenario(scenario(tmp_path, extra))
    reqs = [r for rs in build_workload(sc, np.random.default_rng(sc.seed)).values() for r in rs]
    return make_plan(sc, policy, reqs, speedup, sc.seed)


def test_generated_config_is_valid_and_carries_the_scenario(tmp_path: Path) -> None:
    plan = plan_for(tmp_path)
    path = tmp_path / "gen.toml"
    path.write_text(daemon_config(plan, listen_port=45678, port_range=(21000, 21399), state_dir=tmp_path / "st"))
    cfg = load_config(path)
    d, loc = cfg.daemon, cfg.local
    assert (d.clock_speedup, d.tick_s, d.policy, d.backend, d.listen_port) == (10.0, 2.0, "chirond", "local", 45678)
    assert cfg.api.auth == "open"
    # One client address sends everything: the port's connection guards must not cut it off.
    assert cfg.api.max_connections_per_client == cfg.api.max_connections == 1000
    assert cfg.api.idle_timeout_s >= plan.scenario.horizon_s
    assert (loc.gpus, loc.queue_wait_s, loc.time_limit_s, loc.queue_when_full) == (12, (5.0, 20.0), 300.0, True)
    small, big = cfg.models["small"], cfg.models["big"]
    assert (small.min_instances, small.initial_instances, small.max_instances) == (1, 1, 6)
    assert big.max_instances == 3  # 12 GPUs // 4 per instance
    assert small.sim_speedup == 10.0
    assert small.sim_startup_s == pytest.approx(4.0)  # 40 s cold start / 10, in real seconds
    assert big.sim_startup_s == pytest.approx(plan.model("big").profile.cold_start_s / 10)
    assert (small.slo.ttft_s, small.slo.tpot_s) == (2.0, 0.1)
    assert "30s" in cfg.batch.windows and "24h" in cfg.batch.windows  # 300 s deadline / 10


def test_static_starts_with_its_fixed_count(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, policy="static")
    assert plan.model("small").initial_instances == 3


def test_sweeps_and_unknown_policies_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="sweep"):
        plan_for(tmp_path, policy="llumnix-tuned")
    with pytest.raises(ScenarioError, match="unknown policy"):
        plan_for(tmp_path, policy="nope")


def test_hourly_floors_are_refused_not_dropped(tmp_path: Path) -> None:
    # the daemon would read them by its local clock, which a replay K times faster does not follow
    with pytest.raises(ScenarioError, match=r"models\.big\.min_instances_by_hour: replay does not run"):
        plan_for(tmp_path, extra="min_instances_by_hour = [1" + ", 2" * 23 + "]")
    # and a floor the simulator would learn from the scenario's history day
    from dataclasses import replace

    sc = load_scenario(scenario(tmp_path, ""))
    learning = replace(sc, history_seed=9, models=tuple(replace(m, learned_floor_price=30.0) for m in sc.models))
    with pytest.raises(ScenarioError, match=r"models\.\w+\.learned_floor_price: replay does not run"):
        make_plan(learning, "chirond", [], 10.0, sc.seed)


def test_completion_body_has_exact_lengths() -> None:
    body = completion_body("m", 137, 42, stream=True, salt=5)
    assert count_prompt(body["prompt"]) == 137
    assert (body["max_tokens"], body["ignore_eos"], body["stream"]) == (42, True, True)
    assert body["stream_options"] == {"include_usage": True}
    assert "stream" not in completion_body("m", 3, 1, stream=False)


def test_batch_files_group_by_arrival_and_deadline() -> None:
    reqs = [Request(i, "m", ReqClass.BATCH, 0.0, 10, 5, deadline=600.0) for i in range(3)]
    reqs.append(Request(9, "m", ReqClass.BATCH, 100.0, 10, 5, deadline=1300.0))
    files = batch_files(reqs, 10.0)
    assert [(f.arrival, f.deadline_s, f.window, len(f.requests)) for f in files] == [
        (0.0, 600.0, "60s", 3), (100.0, 1200.0, "120s", 1)]
    lines = [json.loads(x) for x in batch_jsonl(files[0]).decode().splitlines()]
    assert [x["custom_id"] for x in lines] == ["r0", "r1", "r2"]
    assert lines[0]["body"]["max_tokens"] == 5 and lines[0]["url"] == "/v1/completions"


def test_window_rounds_to_whole_real_seconds() -> None:
    assert window_for(1200, 5) == ("240s", 1200.0)
    assert window_for(1000, 3) == ("333s", 999.0)
    assert window_for(2, 10) == ("1s", 10.0)  # at least a second
    warnings: list[str] = []
    batch_files([Request(0, "m", ReqClass.BATCH, 0.0, 1, 1, deadline=2.0)], 10.0, warnings)
    assert warnings and "10 s on the daemon's clock" in warnings[0]


def test_lag_verdict() -> None:
    ok = lag_verdict(speedup=5, slo_ttft_s=[2.0, 5.0], client_lag_p99_s=0.1, client_loop_lag_max_s=0.15,
                     daemon_loop_lag_max_s=None, fraction=0.1)
    assert ok.trustworthy and ok.limit_s == pytest.approx(0.2)
    bad = lag_verdict(speedup=5, slo_ttft_s=[2.0, 5.0], client_lag_p99_s=0.1, client_loop_lag_max_s=0.1,
                      daemon_loop_lag_max_s=0.5, fraction=0.1)
    assert not bad.trustworthy and "daemon event-loop lag" in bad.reasons[0]
    assert not lag_verdict(speedup=5, slo_ttft_s=[2.0], client_lag_p99_s=0.3, client_loop_lag_max_s=0.0,
                           daemon_loop_lag_max_s=0.0, fraction=0.1).trustworthy


def test_batch_finish_times_follow_the_polls() -> None:
    assert batch_finish_times([(1.0, 0), (2.0, 2), (3.0, 3)], 4, 9.0) == [2.0, 2.0, 3.0, 9.0]
    assert batch_finish_times([(1.0, 5)], 2, 9.0) == [1.0, 1.0]


def test_integrate_hours_holds_each_sample_until_the_next() -> None:
    t = np.array([0.0, 1800.0, 3600.0])
    v = np.array([2.0, 4.0, 100.0])
    assert integrate_hours(t, v, 3600.0) == pytest.approx(1.0 + 2.0)
    assert integrate_hours(t, v, 1800.0) == pytest.approx(1.0)


def _sample(ready: float, starting: float, pending: float, launches: float, cap: float = 8.0) -> dict:
    lab = lambda **kw: tuple(sorted(kw.items()))  # noqa: E731
    s = {
        ("chirond_instances", lab(model="small", pool="mixed", state="ready")): ready,
        ("chirond_instances", lab(model="small", pool="mixed", state="starting")): starting,
        ("chirond_instances", lab(model="small", pool="mixed", state="pending")): pending,
        ("chirond_scaling_actions_total", lab(model="small", action="launch")): launches,
        ("chirond_queue_length", lab(model="small", **{"class": "interactive"})): 3.0,
        ("chirond_instance_batch_cap", lab(model="small", instance="1")): cap,
    }
    return s


def test_result_has_the_simulators_shape(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, speedup=10.0)
    k = plan.speedup
    sent = [Sent(r.arrival / k, sent=r.arrival / k + 0.001, first=r.arrival / k + 0.05,
                 finish=r.arrival / k + 0.1, status=200, tokens=r.output_tokens) for r in plan.interactive]
    sent[0].first = sent[0].finish = math.nan  # one never answered
    batches = [BatchRun(b, "batch_1", 0.0, "completed", [(1.0, 4), (2.0, 10)],
                        {f"r{r.id}": 200 for r in b.requests}) for b in plan.batches]
    start = _sample(1, 0, 0, 2)  # before the start: the initial instance and one successor the policy decided
    scrapes = [(-1.0, _sample(0, 1, 1, 2)), (0.0, start), (36.0, _sample(2, 1, 1, 5)), (72.0, _sample(1, 0, 0, 5))]
    rec = Recording(sent, batches, scrapes, [0.001], end=72.0, timed_out=True)  # the horizon passed
    result, _reqs = build_result(plan, rec, start_sample=start, wall_s=80.0, failures=1, log=["x"], lower_bound=0.5)
    s = summarize(result)
    n_int = len(plan.interactive)
    assert s["interactive_requests"] == n_int and s["batch_requests"] == 10
    assert s["interactive_attainment"] == pytest.approx((n_int - 1) / n_int)
    assert s["batch_attainment"] == 1.0  # finished at 20 s, deadline 300 s
    assert s["unfinished"] == 1
    assert s["launches"] == 4  # the policy's: 5 submitted in all, less the 1 initial instance
    assert s["failures"] == 1
    # GPUs past pending: 1 from 0 to 360 s, 3 from 360 to 720 s (the end: the horizon, one unanswered)
    assert result.end_s == 600.0
    assert s["gpu_hours"] == pytest.approx((1 * 360 + 3 * 240) / 3600)
    assert s["peak_gpus"] == 3
    tl = timeline(plan, scrapes)
    assert list(tl["t"]) == [0.0, 360.0, 720.0]  # daemon seconds; scrapes before the start left out
    assert list(tl["small/mixed"]) == [1.0, 2.0, 1.0]
    assert list(tl["small/pending"]) == [0.0, 1.0, 0.0]
    assert list(tl["small/queue_interactive"]) == [3.0, 3.0, 3.0]


def test_replayed_requests_keep_the_workloads_ids(tmp_path: Path) -> None:
    # so that requests.csv of a replay and of the simulation join request by request
    plan = plan_for(tmp_path, speedup=10.0)
    k = plan.speedup
    sent = [Sent(r.arrival / k, sent=r.arrival / k, first=r.arrival / k + 0.05, finish=r.arrival / k + 0.1,
                 status=200, tokens=r.output_tokens) for r in plan.interactive]
    batches = [BatchRun(b, "batch_1", 0.0, "completed", [(1.0, 10)], {f"r{r.id}": 200 for r in b.requests})
               for b in plan.batches]
    start = _sample(1, 0, 0, 1)
    rec = Recording(sent, batches, [(0.0, start), (50.0, _sample(1, 0, 0, 1))], [0.001], end=70.0)
    result, _reqs = build_result(plan, rec, start_sample=start, wall_s=80.0, failures=0, log=[], lower_bound=0.5)
    want = [r.id for r in plan.interactive] + [r.id for b in plan.batches for r in b.requests]
    assert list(result.requests["id"]) == want and len(set(want)) == len(want)
    assert set(result.requests["preempted"]) == {-1}  # the client does not see evictions: not 0
    rows = list(csv.DictReader(write_requests([result], tmp_path / "requests.csv").open()))
    assert sorted(int(r["id"]) for r in rows) == sorted(want)
    assert {r["preempted"] for r in rows} == {""}


def test_bad_local_emulation_keys_are_refused(tmp_path: Path) -> None:
    plan = plan_for(tmp_path)
    text = daemon_config(plan, listen_port=45678, port_range=(21000, 21399), state_dir=tmp_path / "st")
    path = tmp_path / "bad.toml"
    path.write_text(text.replace("queue_wait_s = [5.0, 20.0]", "queue_wait_s = [20.0, 5.0]"))
    with pytest.raises(ConfigError, match=r"backend\.local\.queue_wait_s"):
        load_config(path)
    path.write_text(text.replace("time_limit_s = 300.0", "time_limit_s = -1"))
    with pytest.raises(ConfigError, match=r"backend\.local\.time_limit_s"):
        load_config(path)


def test_a_run_that_did_not_time_out_ends_with_its_last_answer(tmp_path: Path) -> None:
    # as the simulator: a failed request is over too, so the run ends at the last finish, not when
    # the client stopped collecting outputs
    plan = plan_for(tmp_path, speedup=10.0)
    k = plan.speedup
    sent = [Sent(r.arrival / k, sent=r.arrival / k, first=r.arrival / k + 0.05, finish=r.arrival / k + 0.1,
                 status=200, tokens=r.output_tokens) for r in plan.interactive]
    sent[0].first = sent[0].finish = math.nan  # failed
    batches = [BatchRun(b, "batch_1", 0.0, "completed", [(1.0, 10)], {f"r{r.id}": 200 for r in b.requests})
               for b in plan.batches]
    start = _sample(1, 0, 0, 1)
    rec = Recording(sent, batches, [(0.0, start), (50.0, _sample(1, 0, 0, 1))], [0.001], end=70.0)
    result, reqs = build_result(plan, rec, start_sample=start, wall_s=80.0, failures=0, log=[], lower_bound=0.5)
    last = max(x.finish for x in reqs if x.finish is not None)
    assert result.end_s == pytest.approx(last) and last < 70.0 * k

