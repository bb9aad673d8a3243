"""A job that Slurm requeues after it ran (RUNNING -> PENDING, same job id; `scontrol requeue`,
preemption or node failure with --requeue): the backend drops its address and reports it PENDING at
least once, then reads only the new run's address file; the daemon takes the instance out of the
ready set (its requests requeued, a failure counted) and lets it come back through starting."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from chirond.cluster.backend import JobFacts, JobState
from chirond.cluster.instances import DaemonInstance
from chirond.config import load_config
from chirond.daemon import Daemon
from chirond.model import EngineArgs, InstanceState, Pool
from tests.support import FakeBackend
from tests.support.config import SLURM_STATIC_TOML as TOML
from tests.support.slurm import T0, FakeLocalSlurm, spec, sq_job, squeue_json, started

ARGS = EngineArgs(16, 2048)  # the engine flags of the test's instances


def addr_file(tmp_path: Path, job_id: str, port: int, started_at: float) -> None:
    (tmp_path / "jobs" / f"{job_id}.addr.json").write_text(json.dumps(
        {"job_id": job_id, "instance_id": 7, "host": "127.0.0.1", "port": port, "node": "gpu01",
         "started_at": started_at}))  # fmt: skip


def job(state: str, restarts: int) -> tuple[int, str, str]:
    return squeue_json({**sq_job(11, "chirond-llama-8b-7", "x", state), "restart_cnt": restarts})


async def test_backend_reports_a_requeued_job_pending_and_reads_only_the_new_address(tmp_path: Path) -> None:
    b, fake, clock = await started(tmp_path, fake=FakeLocalSlurm())
    fake.sbatch_ids("11")
    await b.submit(spec())
    addr_file(tmp_path, "11", 20123, T0 - 9)
    fake.default["squeue"] = job("RUNNING", 0)
    clock.t += 1
    f = (await b.poll())["11"]
    assert (f.state, f.port) == (JobState.RUNNING, 20123)

    # Requeued: pending again under the same id; the old address file is still there.
    fake.default["squeue"] = job("PENDING", 1)
    clock.t += 2.5
    f = (await b.poll())["11"]
    assert (f.state, f.host, f.port) == (JobState.PENDING, None, None)
    assert f.detail.startswith("requeued (restart 1)")
    # Running again: the old file is not the new run's address.
    fake.default["squeue"] = job("RUNNING", 1)
    clock.t += 2.5
    f = (await b.poll())["11"]
    assert (f.state, f.port) == (JobState.RUNNING, None)
    addr_file(tmp_path, "11", 20456, T0 + 5)  # the new run writes its own
    clock.t += 2.5
    assert (await b.poll())["11"].port == 20456


async def test_a_job_requeued_and_running_again_between_two_polls_is_reported_pending_once(tmp_path: Path) -> None:
    b, fake, clock = await started(tmp_path, fake=FakeLocalSlurm())
    fake.sbatch_ids("11")
    await b.submit(spec())
    addr_file(tmp_path, "11", 20123, T0 - 9)
    fake.default["squeue"] = job("RUNNING", 0)
    clock.t += 1
    assert (await b.poll())["11"].port == 20123
    addr_file(tmp_path, "11", 20456, T0 + 2)
    fake.default["squeue"] = job("RUNNING", 1)  # only the restart count tells
    clock.t += 2.5
    assert (await b.poll())["11"].state is JobState.PENDING
    clock.t += 2.5
    f = (await b.poll())["11"]
    assert (f.state, f.port) == (JobState.RUNNING, 20456)


async def test_running_to_pending_without_a_restart_count_is_a_requeue_too(tmp_path: Path) -> None:
    b, fake, clock = await started(tmp_path, fake=FakeLocalSlurm())
    fake.sbatch_ids("11")
    await b.submit(spec())
    addr_file(tmp_path, "11", 20123, T0 - 9)
    fake.default["squeue"] = job("RUNNING", 0)
    clock.t += 1
    await b.poll()
    fake.default["squeue"] = job("PENDING", 0)  # squeue's text format has no restart count
    clock.t += 2.5
    f = (await b.poll())["11"]
    assert (f.state, f.port) == (JobState.PENDING, None)
    fake.default["squeue"] = job("RUNNING", 0)
    clock.t += 2.5
    assert (await b.poll())["11"].port is None  # still the old file


# ---------------------------------------------------------------- the daemon


@pytest.fixture
async def health_port() -> AsyncIterator[int]:
    """An engine stand-in that answers /health on 127.0.0.1."""
    app = web.Application()

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/health", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1]
    await runner.cleanup()


async def wait(cond: Any, what: str) -> None:
    for _ in range(200):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("draining", [False, True])
async def test_daemon_takes_a_requeued_instance_out_and_back_through_starting(
    tmp_path: Path, health_port: int, draining: bool
) -> None:
    (tmp_path / "chirond.toml").write_text(TOML)
    b = FakeBackend()
    d = Daemon(load_config(tmp_path / "chirond.toml"), backend=b)
    inst = DaemonInstance(
        1,
        "m",
        Pool.MIXED,
        1,
        ARGS,
        d.clock(),
        1.0,
        job_id="11",
        job_state=JobState.RUNNING,
        host="127.0.0.1",
        port=1,
        running_since=d.clock(),
        ends_at=d.clock() + 600,
    )
    d.instances[1] = inst
    d.fleet.control.next_id = 2
    d.fleet._ready(inst)
    if draining:
        inst.drain_requested_at = d.clock()
    assert 1 in d.dispatcher.slots and inst.state is (InstanceState.DRAINING if draining else InstanceState.READY)
    async with aiohttp.ClientSession() as session:
        d.fleet._session = session
        try:
            b.facts["11"] = JobFacts("11", 1, JobState.PENDING, detail="requeued (restart 1): PENDING")
            d.fleet._apply_facts(await b.poll(), d.clock())
            # Out of the ready set: no slot (its requests went back to the queues), no address, a failure.
            assert 1 not in d.dispatcher.slots and d.fleet.instance_url(1) is None
            assert (inst.host, inst.ends_at, inst.ready_at) == (None, None, None)
            assert len(d.fleet.control.obs.failures["m"]) == 1
            if draining:  # it was on its way out anyway: cancelled, not brought back
                await wait(lambda: b.cancelled == ["11"], "the cancel")
                return
            assert inst.state is InstanceState.PENDING
            # It runs again at a new address: starting, then ready after a health check there.
            b.facts["11"] = JobFacts(
                "11", 1, JobState.RUNNING, "127.0.0.1", health_port, started_at=T0, ends_at=T0 + 600
            )
            await wait(lambda: inst.state is InstanceState.READY, "the instance to be ready again")
            assert d.fleet.instance_url(1) == f"http://127.0.0.1:{health_port}" and 1 in d.dispatcher.slots
            assert b.cancelled == [] and inst.ends_at is not None
        finally:
            for t in list(d.fleet._tasks):
                t.cancel()
            await asyncio.gather(*d.fleet._tasks, return_exceptions=True)
