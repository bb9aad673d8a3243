"""Request ids and the access log over real HTTP: every answer (stream, JSON, error, scrape) carries
`x-request-id`, a client's own id is kept, and each request leaves one access line with its id."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import pytest

from chirond.daemon import Daemon
from tests.support import wait_for

MODEL = "llama-8b"


def _access(caplog: pytest.LogCaptureFixture, rid: str) -> dict[str, Any]:
    lines = [r for r in caplog.records if r.name == "chirond.access" and r.fields["request_id"] == rid]
    assert len(lines) == 1, f"one access line for {rid}, got {len(lines)}"
    fields: dict[str, Any] = lines[0].fields
    return fields


async def test_every_answer_carries_a_request_id_that_the_access_log_names(
    daemon_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="chirond")
    d: Daemon = await daemon_factory()
    base = f"http://127.0.0.1:{d.port}"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": True}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/v1/chat/completions", json=body, headers={"X-Request-Id": "mine-1"}) as r:
            assert r.status == 200 and r.headers["x-request-id"] == "mine-1"
            assert b"[DONE]" in await r.read()
        async with s.post(f"{base}/v1/chat/completions", json={**body, "stream": False}) as r:
            assert r.status == 200
            generated = r.headers["x-request-id"]
            assert generated.startswith("req-")
        ids = {generated}
        for method, path, payload, status in [
            ("POST", "/v1/chat/completions", {**body, "model": "nope"}, 404),
            ("GET", "/no/such/route", None, 404),
            ("GET", "/metrics", None, 200),
            ("GET", "/v1/models", None, 200),
        ]:
            # a header that is not a sane token is replaced, not echoed
            async with s.request(method, base + path, json=payload, headers={"X-Request-Id": "bad id\t"}) as r:
                assert r.status == status
                rid = r.headers["x-request-id"]
                assert rid.startswith("req-") and rid not in ids
                ids.add(rid)
    streamed = _access(caplog, "mine-1")
    assert streamed["status"] == 200 and streamed["model"] == MODEL and streamed["class"] == "interactive"
    assert streamed["user"] == "anonymous" and streamed["tokens_out"] == 5 and streamed["tokens_in"] > 0
    assert streamed["instance"] is not None and streamed["attempts"] == 1
    assert streamed["ttft_s"] is not None and streamed["e2e_s"] >= streamed["ttft_s"] >= streamed["queue_s"] >= 0
    assert _access(caplog, generated)["tokens_out"] == 5
    unknown = [f for f in (r.fields for r in caplog.records if r.name == "chirond.access") if f["status"] == 404]
    assert {f["path"] for f in unknown} == {"/v1/chat/completions", "/no/such/route"}
    assert next(f for f in unknown if f["path"] == "/v1/chat/completions")["model"] == "nope"
    assert next(r for r in caplog.records if r.name == "chirond.access" and r.fields["path"] == "/metrics").levelno \
        == logging.DEBUG  # scrapes stay out of the INFO log
    # Tick lines: INFO when an instance changed state (the first ticks), DEBUG when nothing changed.
    await wait_for(lambda: d.ticks >= 6, 30, "six ticks")
    ticks = [r for r in caplog.records if r.name == "chirond" and r.getMessage().startswith("tick ")]
    assert {r.levelno for r in ticks} == {logging.INFO, logging.DEBUG}
    assert all(r.getMessage().endswith("| no action") for r in ticks if r.levelno == logging.DEBUG)
