"""The daemon measures Slurm's queue wait (submit to running) per model and adds it to the lead
time the policy plans with; a job adopted from an earlier run or requeued does not count again."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from chirond.cluster.backend import JobFacts, JobState
from chirond.cluster.instances import DaemonInstance
from chirond.config import load_config
from chirond.control.observations import QUEUE_WAIT_WEIGHT
from chirond.daemon import Daemon
from chirond.engines import startup_s
from chirond.model import EngineArgs, Pool
from tests.support import FakeBackend
from tests.support.config import SLURM_STATIC_TOML as TOML

ARGS = EngineArgs(16, 2048)  # the engine flags of the test's instances


async def test_queue_wait_moves_the_lead_time(tmp_path: Path) -> None:
    (tmp_path / "chirond.toml").write_text(TOML)
    b = FakeBackend()
    d = Daemon(load_config(tmp_path / "chirond.toml"), backend=b)
    now = d.clock()
    base = startup_s(d.cfg.models["m"])
    assert d.fleet.snapshot(now).model("m").lead_time_s == base
    waited = DaemonInstance(1, "m", Pool.MIXED, 1, ARGS, now - 40.0, 1.0, job_id="11")
    adopted = DaemonInstance(2, "m", Pool.MIXED, 1, ARGS, now - 900.0, 1.0, job_id="12", queue_wait_known=True)
    d.instances.update({1: waited, 2: adopted})
    async with aiohttp.ClientSession() as session:
        d.fleet._session = session  # the health checks the running jobs start
        for job in ("11", "12"):
            b.facts[job] = JobFacts(job, 1, JobState.RUNNING, host="127.0.0.1", port=1)
        d.fleet._apply_facts(await b.poll(), now)
        assert d.fleet.control.obs.queue_wait["m"] == QUEUE_WAIT_WEIGHT * 40.0  # the adopted job's 900 s is not a wait
        assert d.fleet.snapshot(now).model("m").lead_time_s == base + QUEUE_WAIT_WEIGHT * 40.0
        # Requeued and running again: the same job's second start is not a new queue wait.
        b.facts["11"] = JobFacts("11", 1, JobState.PENDING, detail="requeued")
        d.fleet._apply_facts(await b.poll(), now + 1)
        b.facts["11"] = JobFacts("11", 1, JobState.RUNNING, host="127.0.0.1", port=1)
        d.fleet._apply_facts(await b.poll(), now + 100)
        assert d.fleet.control.obs.queue_wait["m"] == QUEUE_WAIT_WEIGHT * 40.0
        for t in list(d.fleet._tasks):
            t.cancel()
    d.users.close()
    d.batch.store.close()


async def test_the_daemon_reads_hourly_floors_by_the_local_time_of_its_wall_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    import chirond.fleet

    floor = ", ".join(["1"] * 12 + ["3"] + ["1"] * 11)  # 3 from 12:00 to 13:00
    (tmp_path / "chirond.toml").write_text(TOML + f"max_instances = 4\nmin_instances_by_hour = [{floor}]\n")
    seen: list[float] = []
    at = {"day_s": 12.5 * 3600}

    def local(t: float) -> float:
        seen.append(t)
        return at["day_s"]

    monkeypatch.setattr(chirond.fleet, "local_day_s", local)
    d = Daemon(load_config(tmp_path / "chirond.toml"), backend=FakeBackend())
    now = d.clock()
    assert d.fleet.snapshot(now).model("m").min_instances == 3
    assert abs(seen[-1] - time.time()) < 60  # the daemon's instant as wall-clock time, not its monotonic clock
    at["day_s"] = 9 * 3600
    assert d.fleet.snapshot(now).model("m").min_instances == 1
    # `chiron status` shows the floor the last tick planned with
    from chirond.ops.operations import status_of

    assert status_of(d)["models"][0]["floor"] is None  # no tick yet
    at["day_s"] = 12.5 * 3600
    await d.fleet.tick()
    assert status_of(d)["models"][0]["floor"] == 3
    for t in list(d.fleet._tasks):
        t.cancel()
    d.users.close()
    d.batch.store.close()
