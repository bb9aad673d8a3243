"""The local backend's Slurm emulation (dry runs, `chirond replay`): queue waits, time limits that
kill the engine and are reported as the job's end, and jobs that wait for GPUs instead of being
refused. Real child processes (sleepers); waits are bounded polls, no timing is asserted beyond
"before" and "after"."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chirond.cluster.backend import JobFacts, JobState, LaunchSpec
from chirond.cluster.local import LocalBackend
from chirond.config import LocalBackendConfig

SLEEP = (sys.executable, "-c", "import time; time.sleep(120)")


def spec(instance_id: int, gpus: int = 1) -> LaunchSpec:
    return LaunchSpec(instance_id=instance_id, model="m", argv=SLEEP, gpus=gpus)


async def state_of(b: LocalBackend, job_id: str) -> JobFacts:
    facts = (await b.poll()).get(job_id)
    assert facts is not None, job_id
    return facts


async def until_state(b: LocalBackend, job_id: str, state: JobState, tries: int = 300) -> JobFacts:
    for _ in range(tries):
        f = await state_of(b, job_id)
        if f.state is state:
            return f
        await asyncio.sleep(0.05)
    raise AssertionError(f"{job_id} never reached {state}")


@pytest.fixture
async def made(tmp_path: Path) -> AsyncIterator[list[LocalBackend]]:
    backends: list[LocalBackend] = []
    try:
        yield backends
    finally:
        for b in backends:
            await b.stop()  # no sleeper survives a failed test


def make(made: list[LocalBackend], tmp_path: Path, speedup: float = 1.0, **kw: object) -> LocalBackend:
    cfg = LocalBackendConfig(**{"gpus": 2, "port_range": (23100, 23199), **kw})  # type: ignore[arg-type]
    b = LocalBackend(cfg, tmp_path / "state", speedup=speedup, stop_grace_s=0.5)
    made.append(b)
    return b


async def test_queue_wait_keeps_the_job_pending_then_runs_it(made: list[LocalBackend], tmp_path: Path) -> None:
    # 10 daemon-clock seconds at speedup 10: one real second
    b = make(made, tmp_path, speedup=10.0, queue_wait_s=(10.0, 10.0))
    await b.start()
    t0 = time.monotonic()
    job = await b.submit(spec(1))
    assert job.startswith("local-wait-")
    assert (await state_of(b, job)).state is JobState.PENDING
    assert b.free_gpus() == 1  # a waiting job holds its GPU unless it queues for GPUs
    f = await until_state(b, job, JobState.RUNNING)
    assert time.monotonic() - t0 >= 0.9
    assert f.port is not None and f.started_at is not None


async def test_time_limit_kills_and_is_reported(made: list[LocalBackend], tmp_path: Path) -> None:
    b = make(made, tmp_path, speedup=20.0, time_limit_s=20.0)  # one real second
    await b.start()
    job = await b.submit(spec(1))
    f = await state_of(b, job)
    assert f.state is JobState.RUNNING
    assert f.ends_at is not None and f.started_at is not None
    assert f.ends_at - f.started_at == pytest.approx(1.0)  # wall time: the daemon converts it
    ended = await until_state(b, job, JobState.ENDED, tries=200)
    assert ended.detail == "time limit"
    assert b.free_gpus() == 2


async def test_cancel_while_pending_never_starts(made: list[LocalBackend], tmp_path: Path) -> None:
    b = make(made, tmp_path, speedup=1.0, queue_wait_s=(30.0, 30.0))
    await b.start()
    job = await b.submit(spec(1))
    await b.cancel(job, 0.1)
    f = await state_of(b, job)
    assert (f.state, f.detail) == (JobState.ENDED, "cancelled while pending")
    assert b.free_gpus() == 2


async def test_queue_when_full_waits_for_gpus(made: list[LocalBackend], tmp_path: Path) -> None:
    b = make(made, tmp_path, queue_when_full=True)
    await b.start()
    first = await b.submit(spec(1, gpus=2))
    assert (await state_of(b, first)).state is JobState.RUNNING
    second = await b.submit(spec(2, gpus=1))  # refused without queue_when_full
    assert (await state_of(b, second)).state is JobState.PENDING
    await asyncio.sleep(0.2)
    assert (await state_of(b, second)).state is JobState.PENDING
    await b.cancel(first, 0.1)
    await until_state(b, second, JobState.RUNNING)


async def test_without_queue_when_full_a_launch_that_does_not_fit_is_refused(
    made: list[LocalBackend], tmp_path: Path
) -> None:
    from chirond.cluster.backend import BackendError

    b = make(made, tmp_path)
    await b.start()
    await b.submit(spec(1, gpus=2))
    with pytest.raises(BackendError, match="needs 1 GPU"):
        await b.submit(spec(2, gpus=1))
