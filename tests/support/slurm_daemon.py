"""An in-process daemon whose backend is the loopback Slurm cluster (tests/support/loopback.py):
its config, the jobs it owns in squeue, and cleaning up after it."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from chirond.cluster.slurm_backend import SlurmBackend
from chirond.config import (
    ApiConfig,
    Config,
    DaemonConfig,
    LifecycleConfig,
    LocalBackendConfig,
    ModelConfig,
    SlurmBackendConfig,
)
from chirond.daemon import Daemon
from chirond.model import Slo
from chirond.profiles import load_profile
from tests.support.loopback import LoopbackCluster, run
from tests.support.paths import PROFILE_8B
from tests.support.wait import wait_for

MODEL = "llama-8b"
ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED"}


def slurm_settings(tmp: Path, c: LoopbackCluster) -> SlurmBackendConfig:
    # All fake nodes are 127.0.0.1: the engine binds there and the address file says so.
    return SlurmBackendConfig(
        partition=c.partition, gres_type=c.gpu_type, time_limit_s=600, signal_before_end_s=60, run_dir=tmp / "jobs",
        python=sys.executable, port_range=(31000, 31999), bind_host="127.0.0.1", advertise_host="127.0.0.1",
        squeue_min_interval_s=0.5, command_timeout_s=15,
    )


def daemon_config(tmp: Path, c: LoopbackCluster) -> Config:
    profile = load_profile(PROFILE_8B)
    model = ModelConfig(name=MODEL, profile_path=PROFILE_8B, profile=profile, slo=Slo(ttft_s=2.0, tpot_s=0.2),
                        min_instances=1, max_instances=1, initial_instances=1, sim_speedup=4.0, sim_startup_s=0.5)
    return Config(
        path=tmp / "test.toml",
        daemon=DaemonConfig(listen_host="127.0.0.1", listen_port=0, state_dir=tmp / "state", tick_s=0.5,
                            scrape_timeout_s=1.0, stale_after_s=3.0, policy="static", backend="slurm"),
        api=ApiConfig(auth="open", max_wait_s=60.0, retry_after_s=1),
        local=LocalBackendConfig(),
        lifecycle=LifecycleConfig(health_timeout_s=60.0, drain_timeout_s=10.0, stop_grace_s=5.0),
        models={MODEL: model},
        slurm=slurm_settings(tmp, c),
    )


def tagged_jobs(daemon_id: str) -> dict[str, str]:
    """Job id -> state of every job in squeue that carries this daemon's ownership tag."""
    out = run("squeue", "-h", "-t", "all", "-o", "%i|%T|%k").stdout
    jobs = {}
    for line in out.splitlines():
        job_id, state, comment = line.split("|", 2)
        if comment.startswith(f"chirond:{daemon_id}:"):
            jobs[job_id] = state
    return jobs


def cancel_leftovers(daemon_id: str | None) -> list[str]:
    """scancel whatever of this daemon is still active; returns those job ids."""
    if daemon_id is None:
        return []
    left = [j for j, s in tagged_jobs(daemon_id).items() if s in ACTIVE]
    if left:
        run("scancel", *left, check=False)
    return left


async def wait_inactive(daemon_id: str, timeout_s: float = 15.0) -> None:
    await wait_for(lambda: not any(s in ACTIVE for s in tagged_jobs(daemon_id).values()), timeout_s,
                   f"the jobs of daemon {daemon_id} to end")


@contextlib.asynccontextmanager
async def running(cfg: Config) -> AsyncIterator[Daemon]:
    """A started daemon; stopped at the end, with no job of it left active."""
    d = Daemon(cfg)
    b = d.backend
    assert isinstance(b, SlurmBackend)
    try:
        await d.start()
        yield d
        await d.stop()
        assert b.daemon_id is not None
        await wait_inactive(b.daemon_id)
    finally:
        cancel_leftovers(b.daemon_id)
