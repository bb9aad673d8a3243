"""Does `chirond fake-vllm`, run in real time over HTTP, reproduce the engine model it is built on?

A fixed load (60 requests, prompt and output lengths from a seeded RNG, Poisson arrivals, exact
output lengths through `ignore_eos`) is sent at its arrival times to a server subprocess running
`--speedup 10` (about 3 s). The server's own /metrics, scaled back to engine time (x speedup), are
compared with `chirond.engine.replay` of the same requests:

* mean TTFT (histogram sum / count) within +-25 %; mean per-request TPOT, mean end-to-end latency and
  the generation throughput (output tokens over the span from the first arrival to the last finish)
  within +-10 % (relative);
* token and request counters are exact.

Where deviations come from, all of them wall-clock effects multiplied by the speedup: the client
sends late (event-loop and HTTP latency delay each arrival), the server's timer fires a little after
each segment end and the HTTP round trip adds to every latency, and tokens inside a decode segment
are reported at most every 5 ms (coalescing; it shifts no latency the metrics record except the
inter-token spread). TTFT, the shortest time, is the most sensitive: a 1 ms wall delay is 10 ms of
engine time against a mean of about 250 ms. Measured on the 2-core development machine: TTFT
+0..+12 % (up to +18 % with both cores kept busy by other processes), TPOT -2..0 %, e2e 0..+1 %,
throughput -1..0 %.
"""

from __future__ import annotations

import asyncio
import math
import random
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chirond.engine import Engine, replay
from chirond.model import ReqClass, Request
from chirond.profiles import load_profile
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
PROFILE_PATH = ROOT / "profiles" / "llama-3.1-8b_a100-80gb_tp1.toml"
PROFILE = load_profile(PROFILE_PATH)
MODEL = "fid"
SPEEDUP = 10.0
N_REQUESTS = 60
RATE_PER_S = 2.0  # engine time
TOLERANCE = {"ttft": 0.25, "tpot": 0.10, "e2e": 0.10, "throughput": 0.10}


def workload(seed: int = 7) -> list[Request]:
    rng = random.Random(seed)
    t, out = 0.0, []
    for i in range(N_REQUESTS):
        t += rng.expovariate(RATE_PER_S)
        out.append(Request(i, MODEL, ReqClass.INTERACTIVE, t, rng.randint(500, 3000), rng.randint(20, 300)))
    return out


async def wait_healthy(session: aiohttp.ClientSession, url: str, proc: asyncio.subprocess.Process) -> None:
    for _ in range(200):  # up to ~10 s
        if proc.returncode is not None:
            raise AssertionError(f"fake-vllm exited with {proc.returncode}")
        try:
            async with session.get(f"{url}/health") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("fake-vllm did not become healthy")


def metric_values(text: str) -> dict[str, float]:
    """Sample name (with labels other than model_name/engine appended) -> value."""
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            extra = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k not in ("model_name", "engine"))
            out[s.name + (f"{{{extra}}}" if extra else "")] = s.value
    return out


async def run_load(reqs: list[Request]) -> tuple[dict[str, float], float]:
    """Send `reqs` at their arrival times (engine seconds / SPEEDUP); returns the server's metrics
    and the wall span from the first send to the last answer."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chirond.fakevllm", "--profile", str(PROFILE_PATH), "--model", MODEL,
        "--port", str(port), "--speedup", str(SPEEDUP), "--startup-s", "0",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await wait_healthy(session, url, proc)
            finished: list[float] = []

            async def one(r: Request, t0: float) -> None:
                await asyncio.sleep(max(0.0, t0 + r.arrival / SPEEDUP - time.monotonic()))
                body = {"model": MODEL, "prompt": [7] * r.input_tokens, "max_tokens": r.output_tokens,
                        "ignore_eos": True}
                async with session.post(f"{url}/v1/completions", json=body) as resp:
                    assert resp.status == 200, await resp.text()
                    data = await resp.json()
                assert data["usage"]["completion_tokens"] == r.output_tokens
                finished.append(time.monotonic())

            t0 = time.monotonic() + 0.05
            await asyncio.gather(*(one(r, t0) for r in reqs))
            span = max(finished) - (t0 + reqs[0].arrival / SPEEDUP)
            async with session.get(f"{url}/metrics") as resp:
                metrics = metric_values(await resp.text())
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
    return metrics, span


def rel(measured: float, expected: float) -> float:
    return (measured - expected) / expected


async def test_metrics_match_engine_replay() -> None:
    reqs = workload()
    metrics, span_wall = await run_load(reqs)

    model = workload()
    replay(PROFILE, model)
    ttft = sum(r.ttft or 0.0 for r in model) / len(model)
    tpot = sum(r.tpot or 0.0 for r in model) / len(model)
    e2e = sum((r.finish or 0.0) - r.arrival for r in model) / len(model)
    out_tokens = sum(r.output_tokens for r in model)
    throughput = out_tokens / (max(r.finish or 0.0 for r in model) - model[0].arrival)

    m = metrics
    assert m["vllm:time_to_first_token_seconds_count"] == N_REQUESTS
    assert m["vllm:generation_tokens_total"] == out_tokens
    assert m["vllm:prompt_tokens_total"] == sum(r.input_tokens for r in model)
    assert m["vllm:request_success_total{finished_reason=length}"] == N_REQUESTS
    got = {
        "ttft": m["vllm:time_to_first_token_seconds_sum"] / N_REQUESTS * SPEEDUP,
        "tpot": m["vllm:request_time_per_output_token_seconds_sum"] / N_REQUESTS * SPEEDUP,
        "e2e": m["vllm:e2e_request_latency_seconds_sum"] / N_REQUESTS * SPEEDUP,
        "throughput": out_tokens / (span_wall * SPEEDUP),
    }
    want = {"ttft": ttft, "tpot": tpot, "e2e": e2e, "throughput": throughput}
    devs = {k: rel(got[k], want[k]) for k in want}
    report = ", ".join(f"{k} {got[k]:.4g} vs {want[k]:.4g} ({devs[k]:+.1%})" for k in want)
    print(report)
    for k, d in devs.items():
        assert abs(d) <= TOLERANCE[k], f"{k} off by {d:+.1%}: {report}"


def test_generated_tracks_the_engine_step_by_step() -> None:
    """`Engine.generated` (what the server streams inside a decode segment) never goes back, adds up
    to the engine's own token count (`generation_tokens_by`) inside segments and at their ends, and
    reaches each request's full length."""
    reqs = workload(3)[:30]
    eng = Engine(PROFILE)
    seen = {r.id: 0 for r in reqs}
    i, now = 0, 0.0
    for _ in range(100_000):
        if i >= len(reqs) and not eng.busy:
            break
        if i < len(reqs) and reqs[i].arrival <= eng.segment_end:
            now = reqs[i].arrival
            eng.submit(reqs[i])
            i += 1
            eng.kick(now)
        else:
            end = eng.segment_end
            # Probe inside the segment, then at its end.
            for t in (now + (end - now) / 3, end):
                for r in reqs[:i]:
                    g = eng.generated(r, t)
                    assert seen[r.id] <= g <= r.output_tokens
                    seen[r.id] = g
                assert sum(seen.values()) == eng.generation_tokens_by(t)
            eng.finish_segment()
            now = end
            assert sum(eng.generated(r, end) for r in reqs[:i]) == eng.generation_tokens
            eng.kick(now)
    assert all(r.finish is not None for r in reqs)
    assert all(eng.generated(r, math.inf) == r.output_tokens for r in reqs)


if __name__ == "__main__":  # measure the deviations: python tests/component/test_fakevllm_fidelity.py
    pytest.main([__file__, "-q", "-s", "-k", "replay"])
