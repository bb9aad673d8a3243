"""The Slurm backend end to end on the loopback cluster: a daemon in the test's event loop submits
real jobs (the simulated vLLM server inside slurm/chirond-instance.sbatch), serves the `openai`
client through them, replaces a job cancelled behind its back, and leaves no job behind; cancel's
TERM reaches the engine; `chirond check-config` refuses an unknown partition."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import openai
import pytest

from chirond.cli import chirond_main
from chirond.cluster.backend import BackendError, JobFacts, JobState, LaunchSpec
from chirond.cluster.slurm_backend import SlurmBackend
from chirond.config import SlurmBackendConfig
from chirond.daemon import Daemon
from chirond.engines import engine_command
from chirond.model import EngineArgs
from tests.support import wait_for
from tests.support.daemon import ready
from tests.support.loopback import LoopbackCluster, job_state, run
from tests.support.slurm_daemon import MODEL, cancel_leftovers, daemon_config, running, slurm_settings, wait_inactive


@pytest.fixture
async def slurm_daemon(loopback_cluster: LoopbackCluster, tmp_path: Path) -> AsyncIterator[Daemon]:
    # the backend is a SlurmBackend (daemon.backend = "slurm"); stop() cancels its jobs: none may be left running
    async with running(daemon_config(tmp_path, loopback_cluster)) as d:
        yield d


async def chat(c: openai.AsyncOpenAI) -> None:
    """One chat completion and one streamed, through chirond."""
    r = await c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello, Slurm."}],
                                        max_tokens=8, extra_body={"ignore_eos": True})
    assert r.usage is not None and r.usage.completion_tokens == 8 and r.choices[0].message.content
    stream = await c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Stream, please."}],
                                             max_tokens=6, stream=True, extra_body={"ignore_eos": True})
    chunks = [ch async for ch in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_daemon_serves_through_slurm_jobs_and_replaces_a_cancelled_one(
    slurm_daemon: Daemon, loopback_cluster: LoopbackCluster
) -> None:
    d = slurm_daemon
    b = d.backend
    assert isinstance(b, SlurmBackend) and d.cfg.slurm is not None
    await wait_for(lambda: len(ready(d)) == 1, 30, "the first instance to be ready")
    (inst,) = d.instances.values()
    assert inst.job_id is not None and inst.job_id.isdigit() and inst.ready_at is not None
    print(f"sbatch to ready: {inst.ready_at - inst.launched_at:.2f} s")  # shown with -s
    assert (inst.host, job_state(inst.job_id)) == ("127.0.0.1", "RUNNING")
    fields = run("squeue", "-h", "-j", inst.job_id, "-o", "%j|%k|%b|%P").stdout.strip()
    assert fields == (f"chirond-{MODEL}-{inst.id}|chirond:{b.daemon_id}:{inst.id}|"
                      f"gres:gpu:{loopback_cluster.gpu_type}:1|{loopback_cluster.partition}")

    c = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{d.port}/v1", api_key="none", max_retries=0, timeout=30)
    await chat(c)

    # scancel behind the daemon's back: it sees the job end, counts a failure, and the static
    # policy submits a replacement that becomes ready.
    first = inst.job_id
    run("scancel", first)
    obs = d.fleet.control.obs
    await wait_for(lambda: len(obs.failures[MODEL]) == 1 and first not in ready(d), 15, "the daemon to see the end")
    await wait_for(lambda: len(ready(d)) == 1, 30, "a replacement instance")
    (second,) = ready(d)
    assert second != first and job_state(first) == "CANCELLED"
    job_log = next(b.run_dir.glob(f"chirond-{MODEL}-*-{first}.log")).read_text()
    assert "SIGTERM: forwarding to the engine" in job_log  # scancel's TERM reached the engine via the trap
    await chat(c)
    await c.close()
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{d.port}/v1/models") as resp:
        status = (await resp.json())["data"][0]
    assert status["state"] == "live"


async def until_ended(b: SlurmBackend, job_id: str, timeout_s: float) -> JobFacts:
    end = time.monotonic() + timeout_s
    while True:
        f = (await b.poll()).get(job_id)
        if f is not None and f.state is JobState.ENDED:
            return f
        assert time.monotonic() < end, f"job {job_id} did not end within {timeout_s} s: {f}"
        await asyncio.sleep(0.1)


async def test_cancel_lets_the_engine_drain_and_scancels_one_that_ignores_term(
    loopback_cluster: LoopbackCluster, tmp_path: Path
) -> None:
    b = SlurmBackend(slurm_settings(tmp_path, loopback_cluster), tmp_path / "state")
    await b.start()
    try:
        cfg = daemon_config(tmp_path, loopback_cluster).models[MODEL]
        engine = await b.submit(LaunchSpec(1, MODEL, engine_command(cfg, EngineArgs(16, 2048, False))))
        stubborn = await b.submit(LaunchSpec(2, "stubborn", ("bash", "-c", "trap '' TERM; sleep 300 & wait")))
        end = time.monotonic() + 30
        url = None
        while url is None:
            f = await b.poll()
            running = [f[j] for j in (engine, stubborn) if f[j].state is JobState.RUNNING and f[j].port]
            if len(running) == 2:
                url = f"http://{f[engine].host}:{f[engine].port}/health"
            assert time.monotonic() < end, f"jobs not both running with an address: {f}"
            await asyncio.sleep(0.1)
        async with aiohttp.ClientSession() as s:
            while not await healthy(s, url):
                assert time.monotonic() < end, "the engine's /health never answered"
                await asyncio.sleep(0.1)

        await b.cancel(engine, 10.0)
        await b.cancel(stubborn, 1.0)
        drained = await until_ended(b, engine, 15)
        killed = await until_ended(b, stubborn, 20)
        # The engine got TERM through the batch shell and exited 0 by itself: COMPLETED, not killed.
        assert drained.detail == "COMPLETED: exit code 0"
        engine_log = next((tmp_path / "jobs").glob(f"chirond-{MODEL}-1-{engine}.log")).read_text()
        assert "SIGTERM: forwarding to the engine" in engine_log and "engine exited with status 0" in engine_log
        # The one that ignored TERM was scancelled after its 1 s grace.
        assert killed.detail.startswith("CANCELLED"), killed
    finally:
        await b.stop()
        assert b.daemon_id is not None
        cancel_leftovers(b.daemon_id)
        await wait_inactive(b.daemon_id)


async def healthy(s: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with s.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
            return r.status == 200
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False


CHECK_CONFIG = """
[daemon]
backend = "slurm"
state_dir = "state"
[api]
auth = "open"
[backend.slurm]
partition = "{partition}"
[models.m]
profile = "llama-3.1-8b_a100-80gb_tp1"
slo = {{ ttft_s = 1.0, tpot_s = 0.1 }}
"""


async def test_unknown_partition_fails_check_config_and_start(
    loopback_cluster: LoopbackCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "chirond.toml"
    path.write_text(CHECK_CONFIG.format(partition="h100"))
    assert await asyncio.to_thread(chirond_main, ["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"backend.slurm.partition: no partition 'h100' in this cluster (sinfo lists: {loopback_cluster.partition})" \
        in err

    path.write_text(CHECK_CONFIG.format(partition=loopback_cluster.partition))
    assert await asyncio.to_thread(chirond_main, ["check-config", str(path)]) == 0
    assert f"partition {loopback_cluster.partition}: " in capsys.readouterr().out

    b = SlurmBackend(SlurmBackendConfig(partition="h100", run_dir=tmp_path / "jobs"), tmp_path / "state")
    with pytest.raises(BackendError, match="no partition 'h100'"):
        await b.start()
