"""`chirond serve` as a real process: it starts from a config file, serves, and on SIGTERM lets the
request in flight finish, refuses new ones, stops its instances and exits 0."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import openai

from chirond.tokens import make_text
from tests.support import free_port, write_toml
from tests.support.config import serve_toml
from tests.support.procs import alive, start_serve


async def test_serve_process_drains_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_toml(tmp_path / "chirond.toml", serve_toml(port))
    proc = await start_serve(cfg)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(300):  # bounded: 30 s
                try:
                    async with s.get(base + "/v1/models") as r:
                        if (await r.json())["data"][0]["state"] == "live":
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("chirond did not become live")
        c = openai.AsyncOpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=30)
        stream = await c.chat.completions.create(
            model="llama-8b", messages=[{"role": "user", "content": make_text(20)}], max_tokens=60, stream=True,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        first = await stream.__anext__()
        assert first.choices[0].delta.role == "assistant"
        state = tmp_path / "state" / "instances"
        assert any(state.iterdir())  # the instance's log is there
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        # New requests are refused while the one in flight finishes.
        async with aiohttp.ClientSession() as s, s.get(base + "/health") as r:
            assert r.status == 503
        text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
        assert len(text) == 60 * 4  # every token arrived
        rc = await asyncio.wait_for(proc.wait(), 30)
        assert rc == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.stderr is not None
    log = (await proc.stderr.read()).decode()
    assert "tick " in log and "chirond stopped" in log
    pids = [int(p) for line in log.splitlines() if "launched as job local-" in line
            for p in [line.rsplit("local-", 1)[1].split()[0]]]
    assert pids and not any(alive(p) for p in pids)
