"""The fault-injection suite's tools (tests/faults): `chirond serve` as a real process that can
be killed -9 and restarted, a small tmpfs state directory that can be filled and freed or made
read-only, and the checks every fault ends with (every accepted line answered exactly once, usage
kept, /health and a new request answered without a restart)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.support import free_port, write_toml
from tests.support.config import serve_toml
from tests.support.procs import kill9, start_serve

KEY = "fault-test-key-0123456789abcdef"
MODEL = "llama-8b"
END = ("completed", "failed", "expired", "cancelled")


def write_config(tmp: Path, state_dir: Path, **daemon: Any) -> tuple[Path, int]:
    port = free_port()
    (tmp / "keys").write_text(f"{KEY} alice\n")
    cfg = write_toml(tmp / "chirond.toml", serve_toml(
        port, ports=400, min_instances=1, max_instances=1, sim_speedup=20.0, sim_startup_s=0.2,
        daemon={"log_level": "info", "state_dir": str(state_dir), **daemon},
        api={"auth": "keys", "keys_file": "keys"},
    ))
    return cfg, port


class ServeProcess:
    """`chirond serve --config CFG`; its log appended to `log`."""

    def __init__(self, cfg: Path, port: int, log: Path) -> None:
        self.cfg, self.port, self.log = cfg, port, log
        self.proc: asyncio.subprocess.Process | None = None
        self.url = f"http://127.0.0.1:{port}/v1"

    async def start(self) -> None:
        with self.log.open("ab") as err:
            self.proc = await start_serve(self.cfg, err)
        await self.wait_healthy()

    async def wait_healthy(self, timeout_s: float = 60) -> None:
        async with aiohttp.ClientSession() as s:
            for _ in range(int(timeout_s * 10)):
                assert self.proc is not None and self.proc.returncode is None, self.log.read_text()[-3000:]
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with s.get(self.url + "/models", headers={"Authorization": f"Bearer {KEY}"}) as r:
                        if r.status == 200 and any(m.get("state") == "live" for m in (await r.json())["data"]):
                            return
                await asyncio.sleep(0.1)
        raise AssertionError(f"chirond not live after {timeout_s} s: {self.log.read_text()[-3000:]}")

    async def kill9(self) -> None:
        assert self.proc is not None
        await kill9(self.proc)

    async def stop(self) -> int:
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), 60)
        except TimeoutError:
            await self.kill9()
            return -9

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url, api_key=KEY, max_retries=0, timeout=30)


@contextlib.asynccontextmanager
async def serving(tmp: Path, state_dir: Path) -> AsyncIterator[tuple[ServeProcess, openai.AsyncOpenAI]]:
    """A started `chirond serve` (write_config's) on `state_dir` and a client; stopped at the end,
    which must exit 0."""
    cfg, port = write_config(tmp, state_dir)
    d = ServeProcess(cfg, port, tmp / "daemon.log")
    await d.start()
    c = d.client()
    try:
        yield d, c
    finally:
        await c.close()
        rc = await d.stop()
    assert rc == 0, d.log.read_text()[-2000:]


def chat_line(i: int, max_tokens: int = 4) -> str:
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": max_tokens,
            "ignore_eos": True}
    return json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})


async def submit(c: openai.AsyncOpenAI, tmp: Path, n: int, max_tokens: int = 4, window: str = "24h") -> str:
    path = tmp / f"in-{n}.jsonl"
    path.write_text("\n".join(chat_line(i, max_tokens) for i in range(n)) + "\n")
    f = await c.files.create(file=path.open("rb"), purpose="batch")
    b = await c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                               completion_window=window)  # type: ignore[arg-type]
    return b.id


async def wait_batch(c: openai.AsyncOpenAI, batch_id: str, timeout_s: float = 180) -> Any:
    for _ in range(int(timeout_s * 5)):
        with contextlib.suppress(openai.APIConnectionError, openai.InternalServerError):
            b = await c.batches.retrieve(batch_id)
            if b.status in END:
                return b
        await asyncio.sleep(0.2)
    raise AssertionError(f"batch {batch_id} not finished after {timeout_s} s")


async def answered_once(c: openai.AsyncOpenAI, b: Any, n: int) -> None:
    """Every one of the n lines is in the output or the error file, exactly once."""
    ids: list[str] = []
    for fid in (b.output_file_id, b.error_file_id):
        if fid:
            ids += [json.loads(x)["custom_id"] for x in (await c.files.content(fid)).text.splitlines() if x]
    assert len(ids) == n and sorted(ids) == sorted(f"req-{i}" for i in range(n)), (len(ids), len(set(ids)))
    rc = b.request_counts
    assert rc.total == n and rc.completed + rc.failed == n


async def serves(d: ServeProcess) -> None:
    """/health and a new chat request answered, by the same process (no restart)."""
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{d.port}/health") as r:
        assert r.status == 200, (r.status, await r.text())
    c = d.client()
    try:
        r2 = await c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert r2.choices[0].message.content
    finally:
        await c.close()


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted on `path` (root and CAP_SYS_ADMIN; the test is skipped without)."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root and CAP_SYS_ADMIN): {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def usage_requests(state_dir: Path) -> int:
    """Requests recorded in chirond.db's usage table (read after the daemon stopped)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(state_dir / "chirond.db")) as db:
        return int(db.execute("SELECT coalesce(sum(requests), 0) FROM usage_daily").fetchone()[0])
