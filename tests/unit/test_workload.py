from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from chirond.model import ReqClass
from chirond.sim.scenario import ScenarioError
from chirond.sim.workload import (
    batch_backlog,
    curve_arrivals,
    diurnal_points,
    fixed_lengths,
    gamma_arrivals,
    load_azure_csv,
    load_trace,
    make_requests,
    poisson_arrivals,
    sample_lengths,
    sharegpt_lengths,
)

DATA = Path(__file__).resolve().parents[2] / "chirond" / "data"
AZURE_CONV = DATA / "azure2023_conv.csv"


# ---------------------------------------------------------------- Azure


def test_azure_bundled_conv_trace() -> None:
    reqs = load_azure_csv(AZURE_CONV, model="m")
    assert len(reqs) == 19_366
    arrivals = np.array([r.arrival for r in reqs])
    assert arrivals[0] == 0.0
    assert np.all(np.diff(arrivals) >= 0)
    # 18:15:46.6805900 -> 19:14:08.4025270
    assert arrivals[-1] == pytest.approx(3501.721937, abs=1e-6)
    assert [r.id for r in reqs[:3]] == [0, 1, 2]
    assert all(r.cls is ReqClass.INTERACTIVE and r.deadline is None and r.model == "m" for r in reqs)
    assert min(r.input_tokens for r in reqs) >= 1
    assert min(r.output_tokens for r in reqs) >= 1
    assert (reqs[0].input_tokens, reqs[0].output_tokens) == (374, 44)


def test_azure_time_scale_start_limit_and_batch() -> None:
    reqs = load_azure_csv(
        AZURE_CONV, model="m", cls=ReqClass.BATCH, start_s=100.0, time_scale=2.0, limit=50, deadline_s=60.0
    )
    assert len(reqs) == 50
    assert reqs[0].arrival == 100.0
    # second row is 4.314579 s after the first
    assert reqs[1].arrival == pytest.approx(100.0 + 4.314579 / 2, abs=1e-6)
    assert all(r.cls is ReqClass.BATCH and r.deadline == pytest.approx(r.arrival + 60.0) for r in reqs)
    with pytest.raises(ValueError, match="deadline"):
        load_azure_csv(AZURE_CONV, model="m", cls=ReqClass.BATCH)


def test_azure_seven_digit_fractions_midnight_and_zero_output(tmp_path: Path) -> None:
    p = tmp_path / "az.csv"
    p.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 23:59:59.9999999,10,0\n2023-11-17 00:00:01.0000001,20,5\n"
    )
    reqs = load_azure_csv(p, model="m")
    assert [r.arrival for r in reqs] == [0.0, pytest.approx(1.0000002, abs=1e-9)]
    assert [r.output_tokens for r in reqs] == [1, 5]


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("", ":1:", "empty"),
        ("time,in,out\n1,2,3\n", ":1:", "TIMESTAMP"),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 10:00:00.0,1,1\nyesterday,1,1\n",
            ":3:",
            "TIMESTAMP",
        ),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 10:00:00.0,x,1\n", ":2:", "ContextTokens"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 10:00:00.0,5,-1\n", ":2:", "GeneratedTokens"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n", ":2:", "no requests"),
    ],
)
def test_azure_errors_name_file_and_line(tmp_path: Path, text: str, where: str, what: str) -> None:
    p = tmp_path / "bad_azure.csv"
    p.write_text(text)
    with pytest.raises(ScenarioError) as e:
        load_azure_csv(p, model="m")
    msg = str(e.value)
    assert msg.startswith(str(p) + where), msg
    assert what in msg


# ---------------------------------------------------------------- generic traces


def test_generic_csv_with_classes_and_deadlines(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text(
        "arrival_s,input_tokens,output_tokens,class,deadline_s,note\n"
        "5.0,100,10,batch,60,x\n"
        "1.5,200,0,,,y\n"
        "3,300,30,interactive,,z\n"
    )
    reqs = load_trace(p, model="m", start_s=10.0)
    assert [r.arrival for r in reqs] == [11.5, 13.0, 15.0]
    assert [r.id for r in reqs] == [0, 1, 2]
    assert [r.cls for r in reqs] == [ReqClass.INTERACTIVE, ReqClass.INTERACTIVE, ReqClass.BATCH]
    assert [r.deadline for r in reqs] == [None, None, 75.0]
    assert [(r.input_tokens, r.output_tokens) for r in reqs] == [(200, 1), (300, 30), (100, 10)]


def test_generic_trace_default_class_and_deadline(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text("arrival_s,input_tokens,output_tokens,deadline_s\n0,1,1,\n2,1,1,5\n")
    reqs = load_trace(p, model="m", default_cls=ReqClass.BATCH, default_deadline_s=100.0)
    assert [r.deadline for r in reqs] == [100.0, 7.0]


@pytest.mark.parametrize("name", ["t.jsonl", "t.json", "t.txt"])
def test_generic_jsonl(tmp_path: Path, name: str) -> None:
    p = tmp_path / name
    rows = [
        {"arrival_s": 2.0, "input_tokens": 50, "output_tokens": 5, "class": "batch", "deadline_s": 30},
        {"arrival_s": 0.25, "input_tokens": 70, "output_tokens": 7},
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    reqs = load_trace(p, model="m")
    assert [(r.arrival, r.cls, r.deadline, r.input_tokens) for r in reqs] == [
        (0.25, ReqClass.INTERACTIVE, None, 70),
        (2.0, ReqClass.BATCH, 32.0, 50),
    ]


_HDR = "arrival_s,input_tokens,output_tokens,class,deadline_s\n"


@pytest.mark.parametrize(
    ("name", "text", "where", "what"),
    [
        ("t.csv", "", ":1:", "empty"),
        ("t.csv", "arrival_s,input_tokens\n1,2\n", ":1:", "output_tokens"),
        ("t.csv", _HDR, ":2:", "no requests"),
        ("t.csv", _HDR + "0,1,1,,\n1,abc,1,,\n", ":3:", "input_tokens: not an integer: 'abc'"),
        ("t.csv", _HDR + "0,1.5,1,,\n", ":2:", "input_tokens: not an integer"),
        ("t.csv", _HDR + "0,1,-3,,\n", ":2:", "output_tokens: negative"),
        ("t.csv", _HDR + "-1,1,1,,\n", ":2:", "arrival_s: negative"),
        ("t.csv", _HDR + "0,1,1,,\nx,1,1,,\n", ":3:", "arrival_s: not a number"),
        ("t.csv", _HDR + "0,1,1,batch,\n", ":2:", "deadline_s: missing"),
        ("t.csv", _HDR + "0,1,1,interactive,5\n", ":2:", "deadline_s"),
        ("t.csv", _HDR + "0,1,1,urgent,\n", ":2:", "class"),
        ("t.csv", _HDR + "0,1,1\n", ":2:", "expected 5 fields"),
        (
            "t.jsonl",
            '{"arrival_s": 0, "input_tokens": 1, "output_tokens": 1}\n{"arrival_s": 1,\n',
            ":2:",
            "JSON",
        ),
        ("t.jsonl", '{"arrival_s": 0, "input_tokens": 1}\n', ":1:", "output_tokens: missing"),
        (
            "t.jsonl",
            '\n\n{"arrival_s": 0, "input_tokens": true, "output_tokens": 1}\n',
            ":3:",
            "input_tokens",
        ),
        ("t.jsonl", "[1, 2]\n", ":1:", "JSON object"),
    ],
)
def test_trace_errors_name_file_and_line(tmp_path: Path, name: str, text: str, where: str, what: str) -> None:
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ScenarioError) as e:
        load_trace(p, model="m")
    msg = str(e.value)
    assert msg.startswith(str(p) + where), msg
    assert what in msg, msg


def test_trace_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.csv"
    with pytest.raises(ScenarioError, match=r"nope\.csv: no such file"):
        load_trace(p, model="m")


# ---------------------------------------------------------------- lengths


def test_sharegpt_lengths() -> None:
    ins, outs = sharegpt_lengths(np.random.default_rng(0), 50_000)
    assert ins.shape == outs.shape == (50_000,)
    assert ins.min() >= 1 and outs.min() >= 1 and ins.max() <= 1024 and outs.max() <= 1024
    # the bundled sample's means are 377.1 / 418.6
    assert ins.mean() == pytest.approx(377.1, rel=0.03)
    assert outs.mean() == pytest.approx(418.6, rel=0.03)
    again = sharegpt_lengths(np.random.default_rng(0), 50_000)
    assert np.array_equal(ins, again[0]) and np.array_equal(outs, again[1])
    ins[:] = 0  # callers own their arrays; the cached table is not touched
    assert sharegpt_lengths(np.random.default_rng(0), 10)[0].min() >= 1


def test_fixed_lengths() -> None:
    ins, outs = fixed_lengths(3, 128, 16)
    assert ins.tolist() == [128, 128, 128] and outs.tolist() == [16, 16, 16]


# ---------------------------------------------------------------- arrival processes


def _check_window(t: np.ndarray, start: float, duration: float) -> None:
    assert np.all(np.diff(t) >= 0)
    assert t.min() >= start and t.max() < start + duration


def test_poisson_rate() -> None:
    t = poisson_arrivals(np.random.default_rng(1), 20.0, 1000.0, start_s=50.0)
    _check_window(t, 50.0, 1000.0)
    assert len(t) == pytest.approx(20_000, rel=0.02)  # sd is 0.7%
    gaps = np.diff(t)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)
    assert len(poisson_arrivals(np.random.default_rng(1), 0.0, 1000.0)) == 0


@pytest.mark.parametrize("cv", [0.5, 3.0])
def test_gamma_rate_and_cv(cv: float) -> None:
    t = gamma_arrivals(np.random.default_rng(2), 10.0, cv, 20_000.0, start_s=5.0)
    _check_window(t, 5.0, 20_000.0)
    assert len(t) == pytest.approx(200_000, rel=0.03)
    gaps = np.diff(t)
    assert gaps.mean() == pytest.approx(0.1, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.1)


def test_gamma_cv_zero_is_evenly_spaced() -> None:
    t = gamma_arrivals(np.random.default_rng(0), 2.0, 0.0, 10.0)
    assert t.tolist() == pytest.approx([0.5 * k for k in range(1, 20)])


def test_curve_follows_linear_rate() -> None:
    # rate 100 -> 300 over [0, 1000): expected 75,000 in the first half, 125,000 in the second
    t = curve_arrivals(np.random.default_rng(3), [(0, 100.0), (1000, 300.0)], 1000.0, start_s=10.0)
    _check_window(t, 10.0, 1000.0)
    first = int(np.sum(t < 510.0))
    assert first == pytest.approx(75_000, rel=0.015)
    assert len(t) - first == pytest.approx(125_000, rel=0.015)
    # finer: each decile's count matches the integral of the rate
    counts = np.histogram(t - 10.0, bins=10, range=(0, 1000))[0]
    edges = np.arange(0, 1001, 100)
    expect = (100 + 0.2 * edges[:-1] + 100 + 0.2 * edges[1:]) / 2 * 100
    assert np.all(np.abs(counts - expect) < 5 * np.sqrt(expect))


def test_curve_holds_ends_and_zero_segments() -> None:
    rng = np.random.default_rng(4)
    t = curve_arrivals(rng, [(0, 0.0), (100, 0.0), (101, 50.0), (200, 50.0)], 400.0)
    assert t.min() > 100.0
    # after t=200 the last rate (50/s) is held: ~10,000 in [200, 400)
    assert int(np.sum(t >= 200)) == pytest.approx(10_000, rel=0.05)
    assert len(curve_arrivals(rng, [(0, 0.0)], 100.0)) == 0
    with pytest.raises(ValueError, match="increasing"):
        curve_arrivals(rng, [(10, 1.0), (5, 1.0)], 100.0)


def test_curve_handles_millions() -> None:
    t = curve_arrivals(np.random.default_rng(5), [(0, 500.0), (3600, 1500.0)], 3600.0)
    assert len(t) == pytest.approx(3_600_000, rel=0.01)
    assert np.all(np.diff(t) >= 0)


def test_diurnal_points_shape() -> None:
    pts = diurnal_points(10.0, 2.0, period_s=1000.0, peak_at_s=250.0, span_s=2500.0)
    ts = np.array([p[0] for p in pts])
    rates = np.array([p[1] for p in pts])
    assert ts[0] == 0.0 and ts[-1] >= 2500.0
    assert rates.max() == pytest.approx(10.0) and rates.min() == pytest.approx(2.0)
    assert np.interp(250.0, ts, rates) == pytest.approx(10.0)
    assert np.interp(750.0, ts, rates) == pytest.approx(2.0)
    assert np.interp(1250.0, ts, rates) == pytest.approx(10.0)
    # default: peak mid-period, one period
    d = diurnal_points(4.0, 0.0, period_s=100.0)
    assert d[0][1] == pytest.approx(0.0) and d[-1][0] == pytest.approx(100.0)
    assert max(d, key=lambda p: p[1])[0] == pytest.approx(50.0)
    # used as a curve, the mean rate is the midpoint
    t = curve_arrivals(np.random.default_rng(6), d, 100.0)
    assert len(t) == pytest.approx(200, abs=60)


# ---------------------------------------------------------------- backlog / building


def test_batch_backlog() -> None:
    reqs = batch_backlog(np.random.default_rng(7), 1000, model="m", at_s=30.0, deadline_s=600.0, lengths=(64, 8))
    assert len(reqs) == 1000
    assert all(r.cls is ReqClass.BATCH for r in reqs)
    assert {r.arrival for r in reqs} == {30.0}
    assert {r.deadline for r in reqs} == {630.0}
    assert {(r.input_tokens, r.output_tokens) for r in reqs} == {(64, 8)}
    assert [r.id for r in reqs] == list(range(1000))
    with pytest.raises(ValueError):
        batch_backlog(np.random.default_rng(7), 10, model="m", at_s=0.0, deadline_s=0.0)


def test_large_backlog() -> None:
    # The paper's workloads need ~700k batch requests (its speed is measured in benchmarks/).
    reqs = batch_backlog(np.random.default_rng(8), 700_000, model="m", at_s=0.0, deadline_s=7200.0)
    assert len(reqs) == 700_000 and reqs[-1].id == 699_999
    assert type(reqs[0].input_tokens) is int and type(reqs[0].arrival) is float


def test_make_requests_first_id_and_lengths_check() -> None:
    reqs = make_requests(
        "m", ReqClass.INTERACTIVE, np.array([1.0, 2.0]), np.array([3, 4]), np.array([5, 6]), first_id=10
    )
    assert [(r.id, r.arrival, r.input_tokens, r.output_tokens) for r in reqs] == [
        (10, 1.0, 3, 5),
        (11, 2.0, 4, 6),
    ]
    with pytest.raises(ValueError):
        make_requests("m", ReqClass.INTERACTIVE, np.array([1.0]), np.array([1, 2]), np.array([1, 2]))


def test_curve_with_cv_keeps_the_rate_and_is_burstier() -> None:
    # A gamma renewal process run in operational time: the same expected count per segment of
    # the curve, but gaps with a larger coefficient of variation than Poisson's.
    pts = [(0, 20.0), (1000, 60.0)]
    poisson = curve_arrivals(np.random.default_rng(5), pts, 1000.0)
    bursty = curve_arrivals(np.random.default_rng(5), pts, 1000.0, cv=3.0)
    _check_window(bursty, 0.0, 1000.0)
    assert len(bursty) == pytest.approx(40_000, rel=0.1)
    assert int(np.sum(bursty < 500.0)) == pytest.approx(15_000, rel=0.15)

    def gap_cv(t: np.ndarray) -> float:
        g = np.diff(t[t < 100.0])  # nearly flat rate there
        return float(np.std(g) / np.mean(g))

    assert gap_cv(poisson) == pytest.approx(1.0, abs=0.1)
    assert gap_cv(bursty) > 2.0


def test_length_tables_and_ranges() -> None:
    rng = np.random.default_rng(6)
    ins, outs = sample_lengths(rng, 2000, "azure-code")
    assert 1500 < ins.mean() < 2600 and outs.mean() < 60  # the code trace: long prompts, short answers
    ins, outs = sample_lengths(rng, 2000, ((8192, 32768), 100))
    assert ins.min() >= 8192 and ins.max() <= 32768 and ins.std() > 5000
    assert set(outs.tolist()) == {100}
    with pytest.raises(ValueError, match="lengths must be one of"):
        sample_lengths(rng, 1, "nope")
