"""`chiron load`: workload construction, the summary math, the /models fields, the options."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from chirond import loadgen
from chirond.loadgen import (
    Cls,
    InstanceSample,
    LoadConfig,
    Outcome,
    Record,
    StreamError,
    build_workload,
    error_breakdown,
    meets_slo,
    parse_mix,
    percentile,
    prompt_text,
    read_stream,
    resolve_slo,
    sample_from_model,
    scale_events,
    sparkline,
    summarize_class,
)
from chirond.model import ReqClass, Request, Slo
from chirond.sim.workload import load_azure_csv
from chirond.tokens import make_text

AZURE_CONV = Path(__file__).resolve().parents[2] / "chirond" / "data" / "azure2023_conv.csv"
SLO = Slo(ttft_s=1.0, tpot_s=0.1)


def trace(arrivals: list[float] | np.ndarray, ins: int = 100, outs: int = 50) -> list[Request]:
    return [Request(i, "m", ReqClass.INTERACTIVE, float(t), ins + i, outs + i) for i, t in enumerate(arrivals)]


def interactive(w: loadgen.Workload) -> list[loadgen.Planned]:
    return w.of("interactive")


# ---------------------------------------------------------------- workload


def test_rate_takes_the_next_requests_and_fills_the_duration() -> None:
    # one request a second; 2/s for 5 s = the 10 requests from t=10, replayed twice as fast
    w = build_workload(trace(np.arange(100.0)), start_s=10, duration_s=5, rate=2, batch_requests=0)
    reqs = interactive(w)
    assert [r.at for r in reqs] == pytest.approx(np.arange(10) * 0.5)
    assert [r.input_tokens for r in reqs] == [100 + i for i in range(10, 20)]  # rows 10..19
    assert w.trace_window == (10, 20) and w.speedup == pytest.approx(2.0)


def test_rate_scale_replays_a_window_faster() -> None:
    w = build_workload(trace(np.arange(100.0)), start_s=10, duration_s=5, rate_scale=3, batch_requests=0)
    reqs = interactive(w)
    assert len(reqs) == 15  # trace seconds 10..25
    assert [r.at for r in reqs] == pytest.approx(np.arange(15) / 3)
    assert w.trace_window == (10, 25)


def test_time_scaling_keeps_the_trace_shape() -> None:
    rng = np.random.default_rng(1)
    arrivals = np.cumsum(rng.exponential(0.3, size=2000) * rng.choice([0.1, 3.0], size=2000))  # bursty
    w = build_workload(trace(arrivals), start_s=50, duration_s=20, rate=7, batch_requests=0)
    at = np.array([r.at for r in interactive(w)])
    first = int(np.searchsorted(arrivals, 50))
    original = arrivals[first : first + len(at)]
    assert len(at) == 140  # mean rate 7/s over 20 s
    assert np.all(np.diff(at) >= 0) and at[0] >= 0 and at[-1] < 20
    # every gap is the trace's gap divided by the same factor
    assert np.diff(at) * w.speedup == pytest.approx(np.diff(original))
    assert (original[0] - 50) / w.speedup == pytest.approx(at[0])


def test_bundled_trace_at_the_default_rate() -> None:
    w = build_workload(load_azure_csv(AZURE_CONV, model="m"), duration_s=60, rate=5, batch_requests=100)
    reqs = interactive(w)
    assert len(reqs) == 300 and len(w.of("batch")) == 100
    assert all(0 <= r.at < 60 for r in reqs)
    assert [r.id for r in w.requests] == list(range(400))


def test_a_trace_that_runs_out_is_spread_over_the_duration() -> None:
    w = build_workload(trace(np.arange(10.0)), start_s=5, duration_s=10, rate=10, batch_requests=0)
    reqs = interactive(w)
    assert len(reqs) == 5  # only rows 5..9 are left
    assert [r.at for r in reqs] == pytest.approx([0, 2, 4, 6, 8])
    assert all(r.at < 10 for r in reqs)


def test_lengths_are_clipped() -> None:
    tr = trace(np.arange(20.0), ins=1000, outs=300)
    w = build_workload(tr, duration_s=10, rate=1, max_input_tokens=1005, max_output_tokens=302, batch_requests=30)
    for r in w.requests:
        assert r.input_tokens <= 1005 and r.output_tokens <= 302
    assert [r.input_tokens for r in interactive(w)][:7] == [1000, 1001, 1002, 1003, 1004, 1005, 1005]
    assert max(r.output_tokens for r in w.requests) == 302


def test_zero_output_tokens_still_ask_for_one() -> None:
    tr = [Request(0, "m", ReqClass.INTERACTIVE, 0.0, 10, 0)]
    w = build_workload(tr, duration_s=1, rate=1, batch_requests=0)
    assert interactive(w)[0].output_tokens == 1


def test_batch_requests_start_at_zero_from_the_trace_lengths() -> None:
    tr = trace(np.arange(50.0))
    w = build_workload(tr, duration_s=10, rate=1, batch_requests=25)
    batch = w.of("batch")
    assert len(batch) == 25
    assert all(b.at == 0 and b.api == "chat" and not b.stream for b in batch)
    pairs = {(r.input_tokens, r.output_tokens) for r in tr}
    assert {(b.input_tokens, b.output_tokens) for b in batch} <= pairs
    assert len({b.input_tokens for b in batch}) > 5  # drawn, not one row repeated


def test_max_requests_cuts_both_classes_in_proportion() -> None:
    w = build_workload(trace(np.arange(1000.0)), duration_s=100, rate=3, batch_requests=100, max_requests=80)
    assert len(interactive(w)) == 60 and len(w.of("batch")) == 20
    assert [r.at for r in interactive(w)] == sorted(r.at for r in interactive(w))[:60]  # earliest arrivals kept


def test_same_seed_same_workload_other_seed_other_choices() -> None:
    tr = trace(np.arange(500.0))
    a = build_workload(tr, duration_s=100, rate=2, batch_requests=50, seed=3)
    b = build_workload(tr, duration_s=100, rate=2, batch_requests=50, seed=3)
    c = build_workload(tr, duration_s=100, rate=2, batch_requests=50, seed=4)
    assert a == b
    assert [r.input_tokens for r in a.of("batch")] != [r.input_tokens for r in c.of("batch")]
    assert [(r.api, r.stream) for r in interactive(a)] != [(r.api, r.stream) for r in interactive(c)]
    assert [r.at for r in interactive(a)] == [r.at for r in interactive(c)]  # arrivals come from the trace


def test_mix_splits_interactive_requests() -> None:
    mix = parse_mix("chat-stream=80,completions-stream=10,chat=10")
    w = build_workload(trace(np.arange(5000.0)), duration_s=4000, rate=1, batch_requests=0, mix=mix)
    kinds = [(r.api, r.stream) for r in interactive(w)]
    n = len(kinds)
    assert n == 4000
    assert kinds.count(("chat", True)) / n == pytest.approx(0.8, abs=0.03)
    assert kinds.count(("completions", True)) / n == pytest.approx(0.1, abs=0.02)
    assert kinds.count(("chat", False)) / n == pytest.approx(0.1, abs=0.02)
    assert ("completions", False) not in kinds


def test_parse_mix() -> None:
    assert parse_mix("chat-stream=3, chat=1") == {"chat-stream": 0.75, "chat": 0.25}
    assert parse_mix("completions=1,chat=0") == {"completions": 1.0}
    for bad in ("stream=1", "chat-stream", "chat=-1", "chat=0", "chat=x"):
        with pytest.raises(ValueError):
            parse_mix(bad)


def test_prompt_text_is_make_text() -> None:
    for n in (1, 2, 3, 7, 8, 9, 100, 1024, 1025, 4097):
        for seed in (0, 1, 9, 10, 13, 12345):
            assert prompt_text(n, seed) == make_text(n, seed)


# ---------------------------------------------------------------- summary math


def rec(i: int, *, cls: Cls = "interactive", ttft: float | None = 0.5, tpot: float | None = 0.05,
        e2e: float | None = 3.0, tokens: int = 10, outcome: Outcome = "ok", stream: bool = True,
        error: str | None = None) -> Record:
    return Record(i, cls, "chat", stream, 100, tokens, 0.0, sent_s=0.0, ttft_s=ttft, tpot_s=tpot, e2e_s=e2e,
                  completion_tokens=tokens if outcome == "ok" else None, outcome=outcome, error=error)


def test_percentile_is_linear_interpolation() -> None:
    v = [float(x) for x in range(1, 101)]
    assert percentile(v, 50) == pytest.approx(50.5)
    assert percentile(v, 90) == pytest.approx(90.1)
    assert percentile(v, 99) == pytest.approx(99.01)
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None


def test_meets_slo_bounds_are_inclusive() -> None:
    assert meets_slo(rec(0, ttft=1.0, tpot=0.1), SLO)
    assert not meets_slo(rec(0, ttft=1.01, tpot=0.1), SLO)
    assert not meets_slo(rec(0, ttft=0.2, tpot=0.11), SLO)
    assert not meets_slo(rec(0, outcome="error"), SLO)
    assert not meets_slo(rec(0, outcome="unfinished"), SLO)
    assert not meets_slo(rec(0, ttft=None, tpot=None), SLO)  # streamed but no content came


def test_non_streaming_requests_are_held_to_the_end_to_end_bound() -> None:
    # 11 tokens: TTFT 1 s + 10 x 0.1 s = 2 s
    assert meets_slo(rec(0, stream=False, ttft=2.0, tpot=None, e2e=2.0, tokens=11), SLO)
    assert not meets_slo(rec(0, stream=False, ttft=2.05, tpot=None, e2e=2.05, tokens=11), SLO)


def test_summarize_interactive() -> None:
    records = [
        *[rec(i, ttft=0.1 * (i + 1), tpot=0.01 * (i + 1), e2e=1.0 + i) for i in range(10)],  # TTFT .1...1.0
        rec(10, ttft=2.0, tpot=0.01),  # misses TTFT
        rec(11, ttft=0.5, tpot=0.2),  # misses TPOT
        rec(12, stream=False, ttft=1.5, tpot=None, e2e=1.5, tokens=10),  # within 1 + 9 x 0.1
        rec(13, outcome="error", error="HTTP 503", ttft=None, tpot=None, e2e=None),
        rec(14, outcome="unfinished", ttft=None, tpot=None, e2e=None),
        rec(15, outcome="unsent", ttft=None, tpot=None, e2e=None),
        rec(16, cls="batch", stream=False),
    ]
    s = summarize_class("interactive", records, SLO)
    assert (s.requests, s.ok, s.errors, s.unfinished) == (16, 13, 1, 2)
    assert s.attainment == pytest.approx(11 / 16)  # 10 in bounds + the non-streaming one
    ttfts = [0.1 * (i + 1) for i in range(10)] + [2.0, 0.5]  # streaming only
    assert s.ttft_p50_s == pytest.approx(np.percentile(ttfts, 50))
    assert s.ttft_p90_s == pytest.approx(np.percentile(ttfts, 90))
    assert s.ttft_p99_s == pytest.approx(np.percentile(ttfts, 99))
    assert s.tpot_p99_s == pytest.approx(np.percentile([0.01 * (i + 1) for i in range(10)] + [0.01, 0.2], 99))
    assert s.e2e_p50_s == pytest.approx(np.percentile([1.0 + i for i in range(10)] + [3.0, 3.0, 1.5], 50))
    assert s.output_tokens == 130


def test_summarize_batch_counts_successes() -> None:
    records = [rec(i, cls="batch", stream=False, ttft=99.0, e2e=99.0) for i in range(3)]
    records += [rec(3, cls="batch", outcome="error", error="timeout"), rec(4, cls="batch", outcome="unfinished")]
    s = summarize_class("batch", records, SLO)
    assert (s.requests, s.ok, s.errors, s.unfinished) == (5, 3, 1, 1)
    assert s.attainment == pytest.approx(3 / 5)  # slow does not matter for batch
    assert s.ttft_p50_s is None  # no streaming requests
    assert summarize_class("batch", [], SLO).attainment is None


def test_short_responses_are_counted() -> None:
    r = rec(0, tokens=10)
    r.completion_tokens = 7
    assert summarize_class("interactive", [r, rec(1)], SLO).short == 1


def test_error_breakdown() -> None:
    records = [
        rec(0, outcome="error", error="HTTP 503"),
        rec(1, outcome="error", error="HTTP 503", cls="batch"),
        rec(2, outcome="error", error="HTTP 503"),
        rec(3, outcome="error", error="timeout"),
        rec(4, outcome="unfinished", cls="batch"),
        rec(5),
        rec(6, outcome="unsent"),
    ]
    out = error_breakdown(records)
    assert out == {
        "HTTP 503": {"interactive": 2, "batch": 1},
        "timeout": {"interactive": 1},
        "no answer by the end": {"batch": 1},
        "not sent": {"interactive": 1},
    }
    assert next(iter(out)) == "HTTP 503"  # most frequent first


# ---------------------------------------------------------------- streams


async def lines(*items: str) -> AsyncIterator[str]:
    for x in items:
        await asyncio.sleep(0)
        yield x


async def test_read_stream_chat() -> None:
    t = await read_stream(lines(
        'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}', "",
        ": keep-alive comment", "",
        'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}', "",
        'data: {"choices":[{"index":0,"delta":{"content":"b"}}]}', "",
        'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}', "",
        'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2}}', "",
        "data: [DONE]", "",
    ), chat=True)
    assert (t.chunks, t.completion_tokens, t.prompt_tokens) == (2, 2, 7)
    assert t.first is not None and t.last is not None and t.first < t.last


async def test_read_stream_completions_without_usage_counts_chunks() -> None:
    t = await read_stream(lines(
        'data: {"choices":[{"index":0,"text":"x"}]}', "", 'data:{"choices":[{"index":0,"text":"y"}]}', "",
        'data: {"choices":[{"index":0,"text":"","finish_reason":"length"}]}', "",
    ), chat=False)
    assert (t.chunks, t.completion_tokens, t.usage_tokens) == (2, 2, None)


async def test_read_stream_raises_on_an_error_event() -> None:
    with pytest.raises(StreamError, match="instance lost"):
        await read_stream(lines('data: {"choices":[{"delta":{"content":"a"}}]}', "",
                                'data: {"error":{"message":"instance lost"}}', ""), chat=True)
    with pytest.raises(StreamError):
        await read_stream(lines("data: <html>", ""), chat=True)


# ---------------------------------------------------------------- /models and instances


def test_sample_from_chirond_fields_and_plain_vllm() -> None:
    item = {"id": "m", "state": "starting", "instances": {"ready": 0, "starting": 2, "pending": 1, "draining": 0},
            "eta_s": 12.5, "queue": {"interactive": 4, "batch": 30}, "slo": {"ttft_s": 2.0, "tpot_s": 0.2}}
    s = sample_from_model(3.0, item)
    assert s == InstanceSample(3.0, "starting", 0, 2, 1, 0, 4, 30, 12.5)
    assert sample_from_model(3.0, {"id": "m", "object": "model", "owned_by": "vllm"}) is None
    partial = sample_from_model(1.0, {"id": "m", "instances": {"ready": 1}})
    assert partial == InstanceSample(1.0, None, 1, 0, 0, 0, None, None, None)


def test_resolve_slo() -> None:
    adv = {"id": "m", "slo": {"ttft_s": 2.0, "tpot_s": 0.2}}
    assert resolve_slo(LoadConfig(), adv) == (Slo(2.0, 0.2), "endpoint")
    assert resolve_slo(LoadConfig(), {"id": "m"}) == (Slo(1.0, 0.1), "default")
    assert resolve_slo(LoadConfig(), None) == (Slo(1.0, 0.1), "default")
    assert resolve_slo(LoadConfig(ttft_slo_s=0.5), adv) == (Slo(0.5, 0.2), "options")


def sample(t: float, ready: int, starting: int = 0, state: str = "live") -> InstanceSample:
    return InstanceSample(t, state, ready, starting, 0, 0, 0, 0, None)


def test_scale_events_keep_the_changes() -> None:
    samples = [sample(0, 0, state="scaled_to_zero"), sample(1, 0, 1, "starting"), sample(2, 0, 1, "starting"),
               sample(3, 1), sample(4, 1), sample(5, 2), sample(6, 1)]
    assert [e.t for e in scale_events(samples)] == [0, 1, 3, 5, 6]
    assert scale_events([]) == []


def test_sparkline() -> None:
    assert sparkline([0, 1, 2, 4]) == "▁▃▅█"
    assert sparkline([0, 0]) == "▁▁"
    assert sparkline([]) == ""
    line = sparkline([float(i % 7) for i in range(1000)], width=50)
    assert len(line) == 50 and set(line) == {"█"}  # the max of each bucket


# ---------------------------------------------------------------- options


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chiron load", description=loadgen.DESCRIPTION)
    loadgen.add_arguments(p)
    return p


def test_every_option_is_explained() -> None:
    for action in parser()._actions:
        assert action.help and len(action.help) > 10, action.option_strings


def test_config_from_args_defaults() -> None:
    cfg = loadgen.config_from_args(parser().parse_args([]))
    assert cfg.rate == 5.0 and cfg.rate_scale is None
    assert (cfg.duration_s, cfg.drain_s, cfg.max_output_tokens, cfg.batch_requests) == (60.0, 120.0, 256, 100)
    assert cfg.mix == {"chat-stream": 0.8, "completions-stream": 0.1, "chat": 0.1}
    cfg = loadgen.config_from_args(parser().parse_args(["--rate-scale", "2", "--base-url", "http://h:1/v1/"]))
    assert cfg.rate_scale == 2.0 and cfg.base_url == "http://h:1/v1"


def test_bad_options_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--rate", "1", "--rate-scale", "2"], ["--duration-s", "0"], ["--mix", "chat=0"],
                 ["--batch-concurrency", "0"]):
        with pytest.raises(SystemExit):
            parser().parse_args(argv)


def test_main_reports_an_unreachable_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = parser().parse_args(["--base-url", f"http://127.0.0.1:{port}/v1", "--no-progress"])
    assert loadgen.main(args) == 1
    assert f"cannot reach http://127.0.0.1:{port}/v1: is chirond running?" in capsys.readouterr().err
