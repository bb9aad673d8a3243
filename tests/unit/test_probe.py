"""The vLLM /metrics parser (chirond.cluster.probe) against recorded texts of three vLLM generations,
hand-made edge cases, random registries rendered by prometheus_client, and a live HTTP scrape."""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from chirond.cluster.probe import EngineStats, ProbeError, parse_vllm_metrics, scrape

DATA = Path(__file__).resolve().parents[1] / "data" / "vllm_metrics"

# Worked out by hand from the values in tests/data/vllm_metrics/generate.py.
EXPECTED = {
    # Two data-parallel engines: gauges and counters add up, KV usage is their mean.
    "vllm-0.33.0-dp2.txt": EngineStats(
        running=3 + 2,
        waiting=1 + 0,
        kv_usage=(0.25 + 0.5) / 2,
        preemptions=2,
        prompt_tokens=12000 + 8000,
        generation_tokens=3400 + 2600,
        requests_finished=(40 + 5 + 1) + (30 + 2),
        ttft_sum=0.05 + 0.2 + 1.5 + 0.1 + 0.3,
        ttft_count=5,
        itl_sum=0.02 + 0.03 + 0.04 + 0.05 + 0.025 + 0.035,
        itl_count=6,
        req_tpot_sum=0.03 + 0.04 + 0.03,
        req_tpot_count=3,
        e2e_sum=2.0 + 3.5 + 1.0,
        e2e_count=3,
        queue_sum=0.01 + 0.5 + 0.0,
        queue_count=3,
        num_gpu_blocks=2 * 20000,
        block_size=16,
        model_names=("meta-llama/Llama-3.1-8B-Instruct",),
    ),
    # Old and new names carry the same observations; counted once. No per-request TPOT before 0.11.
    "vllm-0.10.2.txt": EngineStats(
        running=7,
        waiting=4,
        kv_usage=0.8125,
        preemptions=3,
        prompt_tokens=51234,
        generation_tokens=17890,
        requests_finished=100 + 20 + 3,
        ttft_sum=0.2 + 0.4 + 0.9 + 3.0,
        ttft_count=4,
        itl_sum=0.03 + 0.05 + 0.07,
        itl_count=3,
        e2e_sum=17.0,
        e2e_count=2,
        queue_sum=2.1,
        queue_count=2,
        num_gpu_blocks=30000,
        block_size=16,
        model_names=("Qwen/Qwen2.5-7B-Instruct",),
    ),
    # V0: swapped requests count as waiting; ITL from time_per_output_token; no engine label.
    "vllm-0.8.5-v0.txt": EngineStats(
        running=6,
        waiting=2 + 1,
        kv_usage=0.9,
        preemptions=5,
        prompt_tokens=9000,
        generation_tokens=4000,
        requests_finished=50 + 7,
        ttft_sum=0.3 + 0.6,
        ttft_count=2,
        itl_sum=0.04 + 0.06 + 0.08,
        itl_count=3,
        e2e_sum=4.0,
        e2e_count=1,
        queue_sum=1.0,
        queue_count=1,
        num_gpu_blocks=25000,
        block_size=16,
        model_names=("mistralai/Mistral-7B-Instruct-v0.3",),
    ),
}


def assert_stats(got: EngineStats, want: EngineStats) -> None:
    for f in EngineStats.__dataclass_fields__:
        g, w = getattr(got, f), getattr(want, f)
        if isinstance(w, float | int) and not isinstance(w, bool):
            assert g == pytest.approx(w, rel=1e-12, abs=1e-12), f
        else:
            assert g == w, f


@pytest.mark.parametrize("fname", sorted(EXPECTED))
def test_recorded_texts(fname: str) -> None:
    assert_stats(parse_vllm_metrics((DATA / fname).read_text()), EXPECTED[fname])


def test_fixtures_are_what_the_names_say() -> None:
    """Guards the fixtures themselves, so a regenerated file cannot silently lose what a test relies on."""
    new = (DATA / "vllm-0.33.0-dp2.txt").read_text()
    both = (DATA / "vllm-0.10.2.txt").read_text()
    v0 = (DATA / "vllm-0.8.5-v0.txt").read_text()
    assert 'engine="1"' in new and "vllm:gpu_cache_usage_perc" not in new and "_created{" in new
    assert "vllm:gpu_cache_usage_perc{" in both and "vllm:kv_cache_usage_perc{" in both
    assert "vllm:time_per_output_token_seconds_sum{" in both and "vllm:inter_token_latency_seconds_sum{" in both
    assert "engine=" not in v0 and "vllm:num_requests_swapped{" in v0 and "vllm:kv_cache_usage_perc" not in v0


def test_new_name_wins_over_old() -> None:
    text = "\n".join(
        [
            'vllm:gpu_cache_usage_perc{model_name="m",engine="0"} 0.9',
            'vllm:kv_cache_usage_perc{model_name="m",engine="0"} 0.4',
            'vllm:time_per_output_token_seconds_sum{model_name="m",engine="0"} 9.0',
            'vllm:time_per_output_token_seconds_count{model_name="m",engine="0"} 90',
            'vllm:inter_token_latency_seconds_sum{model_name="m",engine="0"} 1.0',
            'vllm:inter_token_latency_seconds_count{model_name="m",engine="0"} 10',
        ]
    )
    s = parse_vllm_metrics(text)
    assert (s.kv_usage, s.itl_sum, s.itl_count) == (0.4, 1.0, 10.0)


def test_old_names_alone_are_used() -> None:
    text = (
        'vllm:gpu_cache_usage_perc{model_name="m"} 0.9\n'
        'vllm:time_per_output_token_seconds_sum{model_name="m"} 9.0\n'
        'vllm:time_per_output_token_seconds_count{model_name="m"} 90\n'
    )
    s = parse_vllm_metrics(text)
    assert (s.kv_usage, s.itl_sum, s.itl_count) == (0.9, 9.0, 90.0)


def test_sums_over_engines_and_models() -> None:
    lines = []
    for model, engine, running, kv in [("a", "0", 1, 0.1), ("a", "1", 2, 0.2), ("b", "0", 4, 0.6)]:
        lab = f'{{model_name="{model}",engine="{engine}"}}'
        lines += [f"vllm:num_requests_running{lab} {running}", f"vllm:kv_cache_usage_perc{lab} {kv}"]
        lines += [f'vllm:request_success_total{{model_name="{model}",engine="{engine}",finished_reason="stop"}} 5']
    s = parse_vllm_metrics("\n".join(lines))
    assert s.running == 7
    assert s.kv_usage == pytest.approx(0.3)
    assert s.requests_finished == 15
    assert s.model_names == ("a", "b")


def test_tolerates_comments_blank_lines_created_nan_timestamps_crlf() -> None:
    text = "\r\n".join(
        [
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
            "# TYPE vllm:prompt_tokens_total counter",
            "",
            'vllm:prompt_tokens_total{model_name="m",engine="0"} 100.0 1700000000000',
            'vllm:prompt_tokens_created{model_name="m",engine="0"} 1.7e+09',
            "   ",
            'vllm:num_requests_running{model_name="m",engine="0"} NaN',
            'vllm:num_requests_running{model_name="m",engine="1"} 2',
            'vllm:num_requests_waiting{model_name="m",engine="0"} +Inf',
            'vllm:num_requests_waiting{model_name="m",engine="1"} -Inf',
            'vllm:generation_tokens_total{model_name="m",engine="0"} not-a-number',
            'vllm:generation_tokens_total{model_name="m",engine="0" 7',  # broken label set
            "vllm:num_preemptions_total\t4",
            'vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="m",engine="0"} 3.0',
            'vllm:e2e_request_latency_seconds_count{model_name="m",engine="0"} 3.0',
            'vllm:num_requests_waiting_by_reason{reason="capacity"} 99',  # not num_requests_waiting
            "# EOF",
        ]
    )
    s = parse_vllm_metrics(text)
    assert s.prompt_tokens == 100.0  # _created (a timestamp) is not added
    assert s.running == 2.0  # NaN skipped
    assert s.waiting == 0.0  # infinities skipped, by_reason not mistaken for it
    assert s.generation_tokens == 0.0
    assert s.preemptions == 4.0
    assert (s.e2e_sum, s.e2e_count) == (0.0, 3.0)


def test_escaped_and_awkward_label_values() -> None:
    weird = 'a "quoted" \\ back}slash, brace\nnewline'
    esc = weird.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    text = (
        f'vllm:num_requests_running{{engine="0",model_name="{esc}"}} 3\n'
        'vllm:num_requests_waiting{model_name="x} y, z=\\"w",engine="0"} 5\n'
        'vllm:generation_tokens_total{model_name="a}b",engine="0"} 11\n'
        'vllm:prompt_tokens_total{model_name="m"} 8 # {trace_id="x"} 1.0\n'  # OpenMetrics exemplar
    )
    s = parse_vllm_metrics(text)
    assert s.running == 3 and s.waiting == 5 and s.generation_tokens == 11 and s.prompt_tokens == 8
    assert s.model_names == (weird, 'x} y, z="w')


def test_missing_metrics_are_zero_and_cache_info_optional() -> None:
    s = parse_vllm_metrics('vllm:num_requests_running{model_name="m",engine="0"} 1\n')
    assert s == EngineStats(running=1.0, model_names=("m",))
    assert s.num_gpu_blocks is None and s.block_size is None
    # Declared families without children (no traffic yet): a vLLM page, all zeros.
    assert parse_vllm_metrics("# HELP vllm:num_requests_running x\n# TYPE vllm:num_requests_running gauge\n") == (
        EngineStats()
    )
    # num_gpu_blocks not known yet renders as "None".
    s = parse_vllm_metrics('vllm:cache_config_info{block_size="16",num_gpu_blocks="None",engine="0"} 1.0\n')
    assert (s.num_gpu_blocks, s.block_size) == (None, 16)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>",
        '# HELP python_gc_objects_collected_total x\npython_gc_objects_collected_total{generation="0"} 5.0\n',
        '{"object":"error","message":"Not Found"}',
        "\x00\x01garbage vllm: without a metric",
    ],
)
def test_not_vllm_raises(text: str) -> None:
    with pytest.raises(ProbeError):
        parse_vllm_metrics(text)


def test_multiprocess_mode_text() -> None:
    """--api-server-count > 1: MultiProcessCollector output has no _created and no python_/process_ series."""
    text = (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="m"} 4.0\n'
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
        "# TYPE vllm:prompt_tokens_total counter\n"
        'vllm:prompt_tokens_total{engine="0",model_name="m"} 10.0\n'
    )
    s = parse_vllm_metrics(text)
    assert (s.running, s.prompt_tokens) == (4.0, 10.0)


# --- random registries rendered by prometheus_client ------------------------------------------------

finite = st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False)
fraction = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
durations = st.lists(st.floats(min_value=0.0, max_value=1e4, allow_nan=False), max_size=6)
label_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12)
series = st.fixed_dictionaries(
    {
        "running": finite,
        "waiting": finite,
        "kv": fraction,
        "prompt": finite,
        "gen": finite,
        "stop": finite,
        "length": finite,
        "ttft": durations,
        "itl": durations,
        "e2e": durations,
    }
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    v0=st.booleans(),
    models=st.lists(label_text, min_size=1, max_size=2, unique=True),
    engines=st.lists(series, min_size=1, max_size=3),
)
def test_random_registry_round_trips(v0: bool, models: list[str], engines: list[dict]) -> None:
    reg = CollectorRegistry()
    labelnames = ["model_name"] if v0 else ["model_name", "engine"]
    running = Gauge("vllm:num_requests_running", "r", labelnames, registry=reg)
    waiting = Gauge("vllm:num_requests_waiting", "w", labelnames, registry=reg)
    kv_name = "vllm:gpu_cache_usage_perc" if v0 else "vllm:kv_cache_usage_perc"
    kv = Gauge(kv_name, "kv", labelnames, registry=reg)
    prompt = Counter("vllm:prompt_tokens" + ("_total" if v0 else ""), "p", labelnames, registry=reg)
    gen = Counter("vllm:generation_tokens", "g", labelnames, registry=reg)
    success = Counter("vllm:request_success", "s", [*labelnames, "finished_reason"], registry=reg)
    ttft = Histogram("vllm:time_to_first_token_seconds", "t", labelnames, registry=reg, buckets=[0.1, 1.0])
    itl_name = "vllm:time_per_output_token_seconds" if v0 else "vllm:inter_token_latency_seconds"
    itl = Histogram(itl_name, "i", labelnames, registry=reg, buckets=[0.01, 0.1])
    e2e = Histogram("vllm:e2e_request_latency_seconds", "e", labelnames, registry=reg, buckets=[1.0, 10.0])

    # V0 has no engine label: one series per model, so engines beyond the first collapse onto it there.
    used: list[tuple[str, dict]] = []
    for m_i, model in enumerate(models):
        for e_i, e in enumerate(engines):
            if v0 and e_i > 0:
                break
            lv = [model] if v0 else [model, str(e_i)]
            running.labels(*lv).set(e["running"])
            waiting.labels(*lv).set(e["waiting"])
            kv.labels(*lv).set(e["kv"])
            prompt.labels(*lv).inc(e["prompt"])
            gen.labels(*lv).inc(e["gen"] + m_i)
            success.labels(*lv, "stop").inc(e["stop"])
            success.labels(*lv, "length").inc(e["length"])
            for h, key in ((ttft, "ttft"), (itl, "itl"), (e2e, "e2e")):
                for x in e[key]:
                    h.labels(*lv).observe(x)
            used.append((model, e | {"gen": e["gen"] + m_i}))

    s = parse_vllm_metrics(generate_latest(reg).decode())

    def total(key: str) -> float:
        return math.fsum(e[key] for _, e in used)

    def approx(x: float) -> object:
        return pytest.approx(x, rel=1e-9, abs=1e-9)

    assert s.model_names == tuple(models)
    assert s.running == approx(total("running"))
    assert s.waiting == approx(total("waiting"))
    assert s.kv_usage == approx(total("kv") / len(used))
    assert s.prompt_tokens == approx(total("prompt"))
    assert s.generation_tokens == approx(total("gen"))
    assert s.requests_finished == approx(total("stop") + total("length"))
    assert s.ttft_count == sum(len(e["ttft"]) for _, e in used)
    assert s.ttft_sum == approx(math.fsum(x for _, e in used for x in e["ttft"]))
    assert s.itl_count == sum(len(e["itl"]) for _, e in used)
    assert s.itl_sum == approx(math.fsum(x for _, e in used for x in e["itl"]))
    assert s.e2e_count == sum(len(e["e2e"]) for _, e in used)
    assert s.e2e_sum == approx(math.fsum(x for _, e in used for x in e["e2e"]))


# --- scrape over HTTP -------------------------------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[str]:
    """A local HTTP server: /ok/metrics serves a recorded text; others fail in various ways."""
    text = (DATA / "vllm-0.33.0-dp2.txt").read_text()
    release = asyncio.Event()

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text=text, content_type="text/plain")

    async def broken(_: web.Request) -> web.Response:
        return web.Response(status=503, text="engine dead")

    async def html(_: web.Request) -> web.Response:
        return web.Response(text="<html>hello</html>", content_type="text/html")

    async def slow(_: web.Request) -> web.Response:
        await release.wait()  # until the test ends: the client must give up first
        return web.Response(text=text)

    app = web.Application()
    app.router.add_get("/ok/metrics", ok)
    app.router.add_get("/broken/metrics", broken)
    app.router.add_get("/html/metrics", html)
    app.router.add_get("/slow/metrics", slow)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        release.set()
        await runner.cleanup()


async def test_scrape_ok(server: str) -> None:
    async with aiohttp.ClientSession() as session:
        s = await scrape(session, server + "/ok/", 5.0)
    assert_stats(s, EXPECTED["vllm-0.33.0-dp2.txt"])


@pytest.mark.parametrize(
    ("path", "timeout", "message"),
    [("/broken", 5.0, "HTTP 503"), ("/html", 5.0, "no vLLM metric"), ("/slow", 0.2, "timeout")],
)
async def test_scrape_failures(server: str, path: str, timeout: float, message: str) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ProbeError, match=message):
            await scrape(session, server + path, timeout)


async def test_scrape_connection_refused() -> None:
    with socket.socket() as sock:  # a port that was just free and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ProbeError, match="connection error"):
            await scrape(session, f"http://127.0.0.1:{port}", 5.0)
