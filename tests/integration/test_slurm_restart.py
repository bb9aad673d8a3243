"""Restart safety on the loopback cluster: `chirond serve` (a real process) on the Slurm backend runs
two instances, is killed with SIGKILL, and a new process with the same config and state directory
adopts both jobs (same job ids, nothing new submitted), serves through them, and on SIGTERM exits 0
leaving no job behind."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai

from tests.support import PROFILE_8B, free_port
from tests.support.loopback import LoopbackCluster
from tests.support.procs import start_serve
from tests.support.slurm_daemon import ACTIVE, cancel_leftovers, tagged_jobs

MODEL = "llama-8b"


def write_config(tmp: Path, c: LoopbackCluster, port: int) -> Path:
    path = tmp / "chirond.toml"
    path.write_text(f"""
[daemon]
backend = "slurm"
listen_host = "127.0.0.1"
listen_port = {port}
state_dir = "{tmp / 'state'}"
tick_s = 0.5
policy = "static"
scrape_timeout_s = 0.5

[api]
auth = "open"

[backend.slurm]
partition = "{c.partition}"
gres_type = "{c.gpu_type}"
time_limit_s = 600
signal_before_end_s = 60
run_dir = "{tmp / 'jobs'}"
python = "{sys.executable}"
port_range = [32000, 32999]
bind_host = "127.0.0.1"
advertise_host = "127.0.0.1"
squeue_min_interval_s = 0.5
command_timeout_s = 15

[models.{MODEL}]
profile = "{PROFILE_8B}"
slo = {{ ttft_s = 2.0, tpot_s = 0.2 }}
min_instances = 2
max_instances = 2
initial_instances = 2
sim_speedup = 4.0
sim_startup_s = 0.5
""")
    return path


async def serve(cfg: Path, log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as f:  # a file, not a pipe: a full pipe would block the daemon
        return await start_serve(cfg, f)


async def model_status(base: str) -> dict[str, Any] | None:
    try:
        async with aiohttp.ClientSession() as s, s.get(base + "/v1/models") as r:
            data: dict[str, Any] = (await r.json())["data"][0]
            return data
    except (aiohttp.ClientError, OSError):
        return None


async def wait_ready(base: str, proc: asyncio.subprocess.Process, n: int, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while True:
        assert proc.returncode is None, f"chirond exited with {proc.returncode}"
        st = await model_status(base)
        if st is not None and st["state"] == "live" and st["instances"]["ready"] == n:
            return
        assert time.monotonic() < end, f"not {n} ready instances after {timeout_s} s: {st}"
        await asyncio.sleep(0.1)


async def wait_jobs(daemon_id: str, want: set[str], timeout_s: float) -> dict[str, str]:
    """Until the active jobs of this daemon are in a state of `want` (and at least one is)."""
    end = time.monotonic() + timeout_s
    while True:
        jobs = {j: s for j, s in tagged_jobs(daemon_id).items() if s in ACTIVE}
        if jobs and set(jobs.values()) <= want:
            return jobs
        assert time.monotonic() < end, f"jobs of daemon {daemon_id} after {timeout_s} s: {jobs}"
        await asyncio.sleep(0.1)


async def test_kill_9_and_restart_adopts_the_jobs_and_submits_none(
    loopback_cluster: LoopbackCluster, tmp_path: Path
) -> None:
    port = free_port()
    cfg = write_config(tmp_path, loopback_cluster, port)
    base = f"http://127.0.0.1:{port}"
    log1, log2 = tmp_path / "first.log", tmp_path / "second.log"
    procs: list[asyncio.subprocess.Process] = []
    daemon_id: str | None = None
    try:
        procs.append(first := await serve(cfg, log1))
        await wait_ready(base, first, 2, 30)
        daemon_id = (tmp_path / "state" / "daemon-id").read_text().strip()
        before = await wait_jobs(daemon_id, {"RUNNING"}, 10)
        assert len(before) == 2

        first.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(first.wait(), 10) == -signal.SIGKILL
        assert {j: s for j, s in tagged_jobs(daemon_id).items() if s in ACTIVE} == before  # the jobs live on

        procs.append(second := await serve(cfg, log2))
        await wait_ready(base, second, 2, 30)
        after = {j: s for j, s in tagged_jobs(daemon_id).items() if s in ACTIVE}
        assert after == before  # the same two jobs: adopted, none submitted, none cancelled
        text = log2.read_text()
        assert text.count("adopted job ") == 2 and "submitted job" not in text and "orphan" not in text

        c = openai.AsyncOpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=30)
        r = await c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Still there?"}],
                                            max_tokens=8, extra_body={"ignore_eos": True})
        assert r.usage is not None and r.usage.completion_tokens == 8

        second.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(second.wait(), 30) == 0
        end = time.monotonic() + 15
        while any(s in ACTIVE for s in tagged_jobs(daemon_id).values()):
            assert time.monotonic() < end, f"jobs left after stop: {tagged_jobs(daemon_id)}"
            await asyncio.sleep(0.1)
        assert "chirond stopped" in log2.read_text()
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
        if daemon_id is None and (tmp_path / "state" / "daemon-id").is_file():
            daemon_id = (tmp_path / "state" / "daemon-id").read_text().strip()
        cancel_leftovers(daemon_id)
