"""chirond.sim.report: exact metrics on hand-built runs, JSON, markdown, table and plots."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from chirond.model import ReqClass, Request, Slo
from chirond.profiles import load_profile
from chirond.sim.report import (
    print_table,
    summarize,
    write_markdown,
    write_plots,
    write_requests,
    write_run_logs,
    write_summary,
)
from chirond.sim.results import RunResult
from chirond.sim.runner import ModelSetup, gpu_hours_lower_bound

NAN = math.nan

# model, cls, arrival, first_token, finish, deadline, output_tokens   (a: TTFT 1 s, TPOT 0.1 s;
# b: TTFT 2 s, TPOT 0.05 s)
ROWS = [
    (0, 0, 0.0, 0.5, 0.95, NAN, 10),  # 0 a: ttft .5, tpot .05 -> met
    (0, 0, 0.0, 1.5, 2.0, NAN, 11),  # 1 a: ttft 1.5 -> miss
    (0, 0, 0.0, 0.2, 1.0, NAN, 5),  # 2 a: tpot .2 -> miss
    (0, 0, 0.0, NAN, NAN, NAN, 7),  # 3 a: never served -> miss
    (0, 0, 1.0, 1.8, 1.8, NAN, 1),  # 4 a: one token: ttft .8, tpot 0 -> met
    (1, 0, 0.0, 1.0, 1.08, NAN, 3),  # 5 b: ttft 1, tpot .04 -> met
    (1, 0, 0.0, 3.0, 3.01, NAN, 2),  # 6 b: ttft 3 -> miss (tpot .01)
    (1, 0, 0.0, 0.5, NAN, NAN, 20),  # 7 b: first token, never finished -> miss
    (0, 1, 0.0, 5.0, 10.0, 20.0, 100),  # 8 a batch: met
    (0, 1, 0.0, 5.0, 30.0, 20.0, 100),  # 9 a batch: late
    (1, 1, 0.0, NAN, NAN, 20.0, 40),  # 10 b batch: never served
    (1, 1, 0.0, 1.0, 15.0, 15.0, 50),  # 11 b batch: exactly on the deadline -> met
]


def _requests(rows: list[tuple[int, int, float, float, float, float, int]]) -> dict[str, np.ndarray]:
    cols = list(zip(*rows, strict=True)) if rows else [()] * 7
    n = len(rows)
    return {
        "id": np.arange(100, 100 + n, dtype=np.int64),
        "model": np.array(cols[0], dtype=np.int16),
        "cls": np.array(cols[1], dtype=np.int8),
        "arrival": np.array(cols[2], dtype=np.float64),
        "first_token": np.array(cols[3], dtype=np.float64),
        "finish": np.array(cols[4], dtype=np.float64),
        "deadline": np.array(cols[5], dtype=np.float64),
        "input_tokens": np.full(n, 100, dtype=np.int32),
        "output_tokens": np.array(cols[6], dtype=np.int32),
        "preempted": np.zeros(n, dtype=np.int32),
    }


def _timeline() -> dict[str, np.ndarray]:
    # Model "b" never used any pool: all its keys are missing.
    return {
        "t": np.array([0.0, 60.0, 120.0, 180.0, 240.0]),
        "a/interactive": np.array([1, 2, 2, 1, 1]),
        "a/batch": np.array([0, 1, 3, 3, 0]),
        "a/starting": np.array([1, 2, 0, 0, 0]),
        "a/queue_interactive": np.array([0, 5, 2, 0, 0]),
        "a/queue_batch": np.array([0, 10000, 300, 2, 0]),  # spans decades: symlog
        "gpus": np.array([2, 5, 5, 4, 1]),
    }


def _run(
    policy: str = "alpha",
    rows: list[tuple[int, int, float, float, float, float, int]] | None = None,
    gpu_hours: float = 4.0,
    lower_bound: float = 2.5,
    params: dict[str, object] | None = None,
) -> RunResult:
    return RunResult(
        scenario="unit",
        policy=policy,
        params=params if params is not None else {"U": np.float64(0.8), "D": NAN, "n": np.int64(3)},
        seed=7,
        end_s=240.0,
        models=["a", "b"],
        slos={"a": Slo(ttft_s=1.0, tpot_s=0.1), "b": Slo(ttft_s=2.0, tpot_s=0.05)},
        requests=_requests(ROWS if rows is None else rows),
        timeline=_timeline(),
        gpu_hours=gpu_hours,
        gpu_hours_lower_bound=lower_bound,
        peak_gpus=5,
        launches=4,
        cancellations=2,
        preemptions=1,
        failures=0,
        wall_s=1.25,
        events=1234,
    )


def test_requests_csv_has_one_row_per_request_with_its_outcome(tmp_path: Path) -> None:
    run = _run()
    run.requests["preempted"][3] = 2
    run.requests["preempted"][5] = -1  # not known (a replay)
    rows = list(csv.DictReader(write_requests([run], tmp_path / "requests.csv").open()))
    assert len(rows) == len(ROWS)
    assert [r["id"] for r in rows[-1:]] == ["104"]  # by arrival: the one arriving at 1 s comes last
    by_id = {int(r["id"]) - 100: r for r in rows}
    assert {r["policy"] for r in rows} == {"alpha"}
    assert (by_id[0]["model"], by_id[0]["class"], by_id[8]["class"]) == ("a", "interactive", "batch")
    assert float(by_id[0]["ttft_s"]) == pytest.approx(0.5) and float(by_id[0]["tpot_s"]) == pytest.approx(0.05)
    assert by_id[3]["first_token_s"] == by_id[3]["finish_s"] == by_id[3]["ttft_s"] == ""  # never served
    assert by_id[3]["preempted"] == "2" and by_id[5]["preempted"] == "" and by_id[0]["preempted"] == "0"
    assert by_id[8]["ttft_s"] == "" and float(by_id[8]["deadline_s"]) == 20.0 and by_id[0]["deadline_s"] == ""
    # The summary's rule, request by request: interactive 0, 4, 5; batch 8 and 11 (on its deadline)
    assert sorted(k for k, r in by_id.items() if r["slo_met"] == "1") == [0, 4, 5, 8, 11]
    s = summarize(run)
    inter = [r for r in rows if r["class"] == "interactive"]
    assert sum(r["slo_met"] == "1" for r in inter) / len(inter) == pytest.approx(s["interactive_attainment"])


def test_requests_csv_only_when_asked(tmp_path: Path) -> None:
    # One row per request is about 100 bytes (160 MB for paper's five policies): opt-in.
    plain = [p.name for p in write_run_logs([_run()], tmp_path / "plain")]
    asked = [p.name for p in write_run_logs([_run()], tmp_path / "asked", requests=True)]
    assert plain == ["decisions.log"] and not (tmp_path / "plain" / "requests.csv").exists()
    assert asked == ["decisions.log", "requests.csv"] and (tmp_path / "asked" / "requests.csv").is_file()


def test_summary_exact_values() -> None:
    s = summarize(_run())
    assert s["policy"] == "alpha"
    assert s["interactive_attainment"] == pytest.approx(3 / 8)
    assert s["batch_attainment"] == pytest.approx(2 / 4)
    # TTFT over requests with a first token: sorted .2 .5 .5 .8 1 1.5 3
    assert s["ttft_p50_s"] == pytest.approx(0.8)
    assert s["ttft_p99_s"] == pytest.approx(1.5 + 0.94 * 1.5)
    # TPOT over finished interactive requests: sorted 0 .01 .04 .05 .05 .2
    assert s["tpot_p50_s"] == pytest.approx(0.045)
    assert s["tpot_p99_s"] == pytest.approx(0.05 + 0.95 * 0.15)
    assert s["output_tokens"] == 10 + 11 + 5 + 1 + 3 + 2 + 100 + 100 + 50
    assert s["unfinished"] == 3
    assert s["gpu_hours"] == 4.0
    assert s["gpu_hours_lower_bound"] == 2.5
    assert s["gpu_hours_ratio"] == pytest.approx(1.6)
    assert s["goodput_per_gpu_hour"] == pytest.approx(5 / 4)
    assert s["tokens_per_gpu_hour"] == pytest.approx(282 / 4)
    for key, val in (("peak_gpus", 5), ("launches", 4), ("cancellations", 2), ("preemptions", 1)):
        assert s[key] == val
    assert (s["failures"], s["wall_s"], s["events"]) == (0, 1.25, 1234)
    assert s["params"] == {"U": 0.8, "D": None, "n": 3}

    a, b = s["per_model"]["a"], s["per_model"]["b"]
    assert a["interactive_attainment"] == pytest.approx(2 / 5)
    assert a["batch_attainment"] == pytest.approx(1 / 2)
    assert a["requests"] == 7
    assert a["ttft_p99_s"] == pytest.approx(0.8 + 0.97 * 0.7)  # .2 .5 .8 1.5
    assert b["interactive_attainment"] == pytest.approx(1 / 3)
    assert b["batch_attainment"] == pytest.approx(1 / 2)
    assert b["requests"] == 5
    assert b["tpot_p99_s"] == pytest.approx(0.01 + 0.99 * 0.03)  # .04 .01
    json.dumps(s, allow_nan=False)  # JSON-able as is


def test_summary_empty_classes() -> None:
    # No batch requests, no served interactive ones, no GPU time.
    rows = [(0, 0, 0.0, NAN, NAN, NAN, 5), (1, 0, 1.0, NAN, NAN, NAN, 1)]
    s = summarize(_run(rows=rows, gpu_hours=0.0, lower_bound=0.0))
    assert s["interactive_attainment"] == 0.0
    assert s["batch_attainment"] == 1.0
    for key in ("ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s"):
        assert s[key] is None
    assert s["goodput_per_gpu_hour"] is None
    assert s["gpu_hours_ratio"] is None
    assert s["output_tokens"] == 0
    assert s["unfinished"] == 2
    assert s["per_model"]["a"]["ttft_p99_s"] is None

    empty = summarize(_run(rows=[]))
    assert (empty["interactive_attainment"], empty["batch_attainment"]) == (1.0, 1.0)
    assert empty["per_model"]["b"]["requests"] == 0


def test_summary_matches_per_request_definition() -> None:
    """Vectorised attainment equals the per-request `Request.ttft`/`tpot` definition."""
    rng = np.random.default_rng(3)
    n = 3000
    cls = rng.integers(0, 2, n)
    arrival = rng.uniform(0, 100, n)
    first = arrival + rng.exponential(1.0, n)
    out = rng.integers(1, 40, n)
    finish = first + rng.exponential(0.06, n) * np.maximum(out - 1, 0)
    served = rng.random(n) < 0.9
    first[~served] = NAN
    finish[~served | (rng.random(n) < 0.05)] = NAN
    deadline = np.where(cls == 1, arrival + rng.uniform(0, 10, n), NAN)
    model = rng.integers(0, 2, n)
    rows = [(int(model[i]), int(cls[i]), arrival[i], first[i], finish[i], deadline[i], int(out[i])) for i in range(n)]
    run = _run(rows=rows)
    s = summarize(run)

    met_i = met_b = n_i = n_b = 0
    for i in range(n):
        name = run.models[model[i]]
        r = Request(
            id=i,
            model=name,
            cls=ReqClass.BATCH if cls[i] else ReqClass.INTERACTIVE,
            arrival=arrival[i],
            input_tokens=100,
            output_tokens=int(out[i]),
            first_token=None if math.isnan(first[i]) else first[i],
            finish=None if math.isnan(finish[i]) else finish[i],
            deadline=None if math.isnan(deadline[i]) else deadline[i],
        )
        if r.cls is ReqClass.INTERACTIVE:
            n_i += 1
            ttft, tpot, slo = r.ttft, r.tpot, run.slos[name]
            met_i += ttft is not None and tpot is not None and ttft <= slo.ttft_s and tpot <= slo.tpot_s
        else:
            n_b += 1
            assert r.deadline is not None
            met_b += r.finish is not None and r.finish <= r.deadline
    assert 0 < met_i < n_i and 0 < met_b < n_b
    assert s["interactive_attainment"] == pytest.approx(met_i / n_i)
    assert s["batch_attainment"] == pytest.approx(met_b / n_b)


def test_write_summary_json(tmp_path: Path) -> None:
    sums = [summarize(_run("alpha")), summarize(_run("beta", gpu_hours=3.0))]
    sums[1]["extra"] = float("nan")  # NaN anywhere must become null
    path = write_summary(sums, tmp_path / "out" / "nested")
    assert path == tmp_path / "out" / "nested" / "summary.json"
    text = path.read_text()
    assert "NaN" not in text
    data = json.loads(text)
    assert [d["policy"] for d in data] == ["alpha", "beta"]
    for key in (
        "policy", "params", "interactive_attainment", "batch_attainment", "gpu_hours",
        "gpu_hours_lower_bound", "gpu_hours_ratio", "peak_gpus", "launches", "cancellations",
        "preemptions", "failures", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s",
        "output_tokens", "goodput_per_gpu_hour", "tokens_per_gpu_hour", "unfinished", "wall_s",
        "events", "per_model",
    ):  # fmt: skip
        assert key in data[0], key
    assert data[1]["extra"] is None
    assert data[0]["params"]["D"] is None
    assert data[0]["interactive_attainment"] == pytest.approx(0.375)
    assert set(data[0]["per_model"]["a"]) >= {
        "interactive_attainment", "batch_attainment", "ttft_p99_s", "tpot_p99_s", "requests",
    }  # fmt: skip


def test_print_table_lists_policies() -> None:
    sums = [summarize(_run("alpha")), summarize(_run("beta-tuned", gpu_hours=3.0))]
    buf = io.StringIO()
    print_table(sums, Console(file=buf, width=220), title="unit scenario")
    out = buf.getvalue()
    assert "alpha" in out and "beta-tuned" in out
    assert "unit scenario" in out
    assert "37.50" in out  # interactive %
    assert out.count("lower bound") == 1 and "2.5 GPU-h" in out


def test_markdown(tmp_path: Path) -> None:
    sums = [summarize(_run("alpha")), summarize(_run("beta", rows=ROWS[:1], gpu_hours=3.0))]
    plots = [tmp_path / "plots" / "gpus.png"]
    path = write_markdown(sums, tmp_path / "doc" / "results.md", plots)
    text = path.read_text()
    lines = text.splitlines()
    assert lines[0].startswith("| Policy |") and "TPOT p99 ms" in lines[0]
    alpha = next(ln for ln in lines if ln.startswith("| alpha"))
    beta = next(ln for ln in lines if ln.startswith("| beta"))
    # beta: 1/1 interactive met and the fewest GPU-hours -> both bold; alpha neither.
    assert "**100.00**" in beta and "**3.0**" in beta
    assert "**" not in alpha
    assert "](../plots/gpus.png)" in text


def test_write_plots(tmp_path: Path) -> None:
    runs = [_run("alpha"), _run("beta", gpu_hours=3.0)]
    paths = write_plots(runs, tmp_path / "plots")
    names = {p.name for p in paths}
    assert names == {"instances.png", "gpus.png", "queues.png", "latency.png", "attainment.png"}
    for p in paths:
        assert p.parent == tmp_path / "plots"
        data = p.read_bytes()
        assert len(data) > 1000
        assert data[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_plots_empty_run(tmp_path: Path) -> None:
    run = _run(rows=[])
    run.timeline = {"t": np.zeros(0)}
    assert len(write_plots([run], tmp_path)) == 5


def test_gpu_hours_lower_bound_counts_min_instances() -> None:
    # 100 tiny requests over an hour: their work is seconds of GPU time, but a model that must
    # keep 2 instances running pays 2 x its GPUs x the hour.
    prof = load_profile(Path(__file__).resolve().parents[2] / "profiles" / "llama-3.1-8b_a100-80gb_tp1.toml")
    reqs = [Request(i, "m", ReqClass.INTERACTIVE, 36.0 * i, 100, 10) for i in range(101)]  # the last at 1 h

    def bound(min_instances: int) -> float:
        setup = ModelSetup("m", prof, Slo(2.0, 0.1), 60.0, 8, min_instances, min_instances, min_instances)
        return gpu_hours_lower_bound([setup], reqs)

    assert bound(0) < 0.05
    assert bound(2) == pytest.approx(2 * prof.gpus * 1.0)
