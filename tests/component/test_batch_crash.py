"""Durability with real processes: `chirond serve` is killed with SIGKILL twice while a batch of
thousands of lines runs, and restarted each time; the output holds every custom_id exactly once.

After each kill the test also kills the engines the dead daemon left (what systemd does with the
unit's cgroup under KillMode=mixed); the local backend starts fresh ones."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import openai

from tests.support import free_port, write_toml
from tests.support.config import serve_toml
from tests.support.procs import kill9, start_serve

LINES = 3000
KEY = "crash-test-key-0123456789abcdef"


def config(tmp: Path, port: int) -> Path:
    (tmp / "keys").write_text(f"{KEY} alice\n")
    return write_toml(tmp / "chirond.toml", serve_toml(
        port, ports=400, min_instances=2, max_instances=2, sim_speedup=20.0, sim_startup_s=0.2,
        daemon={"log_level": "warning"}, api={"auth": "keys", "keys_file": "keys"},
    ))


class Daemon:
    def __init__(self, cfg: Path, port: int, log: Path) -> None:
        self.cfg, self.port, self.log = cfg, port, log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as err:
            self.proc = await start_serve(self.cfg, err)

    async def kill9(self) -> None:
        assert self.proc is not None
        await kill9(self.proc)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 60)
            except TimeoutError:
                await self.kill9()


async def counts(client: openai.AsyncOpenAI, batch_id: str, timeout_s: float = 60) -> openai.types.Batch:
    """The batch, once the daemon answers (it may be starting)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while True:
        try:
            return await client.batches.retrieve(batch_id)
        except (openai.APIConnectionError, openai.InternalServerError):
            assert loop.time() < end, "the daemon did not answer"
            await asyncio.sleep(0.2)


async def run_until(client: openai.AsyncOpenAI, batch_id: str, done: int, timeout_s: float = 180) -> openai.types.Batch:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while True:
        b = await counts(client, batch_id)
        rc = b.request_counts
        if b.status in ("completed", "failed", "expired", "cancelled") or (rc and rc.completed >= done):
            return b
        assert loop.time() < end, f"stuck at {rc} ({b.status})"
        await asyncio.sleep(0.1)


async def test_two_kill_9s_during_a_batch_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    port = free_port()
    d = Daemon(config(tmp_path, port), port, tmp_path / "chirond.log")
    lines = [
        json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "llama-8b", "max_tokens": 4 + i % 13,
                             "messages": [{"role": "user", "content": f"prompt {i}"}]}})
        for i in range(LINES)
    ]  # fmt: skip
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=30)
    await d.start()
    try:
        for _ in range(300):
            try:
                f = await client.files.create(file=(tmp_path / "in.jsonl").open("rb"), purpose="batch")
                break
            except openai.APIConnectionError:
                await asyncio.sleep(0.1)
        batch = await client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        seen = []
        for stop_at in (LINES // 4, LINES // 2):
            b = await run_until(client, batch.id, stop_at)
            assert b.status == "in_progress", f"finished before the kill: {b.request_counts}"
            await d.kill9()
            seen.append(b.request_counts.completed if b.request_counts else 0)
            await d.start()
        b = await run_until(client, batch.id, LINES + 1, timeout_s=300)
        assert b.status == "completed", b
        assert b.request_counts is not None and b.request_counts.completed == LINES
        assert b.output_file_id is not None
        out = (await client.files.content(b.output_file_id)).text.splitlines()
        ids = [json.loads(x)["custom_id"] for x in out]
        assert len(ids) == LINES
        assert set(ids) == {f"line-{i}" for i in range(LINES)}  # none lost, none twice (len == set size)
        assert b.error_file_id is None
        assert seen[0] >= LINES // 4 and seen[1] >= LINES // 2  # the kills came mid-run
    finally:
        await client.close()
        await d.stop()
