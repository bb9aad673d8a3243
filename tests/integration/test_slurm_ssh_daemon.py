"""The daemon with [backend.slurm.ssh] on the loopback cluster, through an sshd of this test's own
(so it can be killed): Slurm's commands and the engine's /metrics go over SSH (metrics = "ssh"),
requests go straight to node:port (traffic = "direct"). Killing the sshd makes the instance stale,
and the chirond policy drains nothing while it is, although it would with fresh data (min 0, zero
load); restarting the sshd on the same port brings the transport and fresh data back.

The jobs run as root (the login account): the shared sshd's user cannot run this interpreter, so
this sshd lets root in with a key of the test's own (PermitRootLogin prohibit-password)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

import chirond.fleet as fleet_mod
from chirond.cluster.slurm_backend import SlurmBackend
from chirond.config import (
    ApiConfig,
    Config,
    DaemonConfig,
    LifecycleConfig,
    LocalBackendConfig,
    ModelConfig,
    SlurmBackendConfig,
    SshConfig,
)
from chirond.daemon import Daemon
from chirond.model import Slo
from chirond.profiles import load_profile
from chirond.stats import ArrivalWindow
from tests.support import PROFILE_8B, wait_for
from tests.support.loopback import LoopbackCluster, run
from tests.support.slurm_daemon import ACTIVE, tagged_jobs
from tests.support.sshd import RootSshd, root_sshd_problem

MODEL = "llama-8b"
STALE_AFTER_S = 2.0


@pytest.fixture
def root_sshd(loopback_cluster: LoopbackCluster, tmp_path: Path) -> Iterator[RootSshd]:
    if (problem := root_sshd_problem(loopback_cluster)) is not None:
        pytest.skip(problem)
    d = RootSshd(loopback_cluster, tmp_path)
    d.start()
    try:
        yield d
    finally:
        d.kill()


def daemon_config(tmp: Path, c: LoopbackCluster, sshd: RootSshd) -> Config:
    profile = load_profile(PROFILE_8B)
    model = ModelConfig(name=MODEL, profile_path=PROFILE_8B, profile=profile, slo=Slo(ttft_s=2.0, tpot_s=0.2),
                        min_instances=1, max_instances=1, initial_instances=1, sim_speedup=4.0, sim_startup_s=0.5)
    ssh = SshConfig(host="127.0.0.1", port=sshd.port, user="root", key_file=sshd.key_file,
                    known_hosts=sshd.known_hosts, connect_timeout_s=3.0, command_timeout_s=10.0, keepalive_s=1.0,
                    metrics="ssh", traffic="direct")
    (tmp / "jobs").mkdir()
    slurm = SlurmBackendConfig(
        partition=c.partition, gres_type=c.gpu_type, time_limit_s=600, signal_before_end_s=60, run_dir=tmp / "jobs",
        python=sys.executable, port_range=(32000, 32999), bind_host="127.0.0.1", advertise_host="127.0.0.1",
        squeue_min_interval_s=0.5, command_timeout_s=10, ssh=ssh,
    )
    return Config(
        path=tmp / "test.toml",
        daemon=DaemonConfig(listen_host="127.0.0.1", listen_port=0, state_dir=tmp / "state", tick_s=0.5,
                            scrape_timeout_s=1.0, stale_after_s=STALE_AFTER_S, policy="chirond", backend="slurm",
                            policy_params={"scale_down_hold_s": 1.0}),
        api=ApiConfig(auth="open", max_wait_s=60.0, retry_after_s=1),
        local=LocalBackendConfig(),
        lifecycle=LifecycleConfig(health_timeout_s=60.0, drain_timeout_s=10.0, stop_grace_s=3.0),
        models={MODEL: model},
        slurm=slurm,
    )


@pytest.fixture
async def ssh_daemon(
    loopback_cluster: LoopbackCluster, root_sshd: RootSshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Daemon, list[str]]]:
    direct: list[str] = []
    real_scrape = fleet_mod.scrape

    async def counting_scrape(*args: Any, **kw: Any) -> Any:
        direct.append(str(args[1]))
        return await real_scrape(*args, **kw)

    monkeypatch.setattr(fleet_mod, "scrape", counting_scrape)
    d = Daemon(daemon_config(tmp_path, loopback_cluster, root_sshd))
    b = d.backend
    assert isinstance(b, SlurmBackend) and b.ssh is not None and d.fleet.ssh is b.ssh
    try:
        await d.start()
        yield d, direct
    finally:
        try:
            if root_sshd.proc is None:
                root_sshd.start()  # stop() scancels over SSH
            await asyncio.wait_for(d.stop(), 60)
        finally:
            if b.daemon_id is not None:
                left = [j for j, s in tagged_jobs(b.daemon_id).items() if s in ACTIVE]
                if left:
                    run("scancel", *left, check=False)
                end = time.monotonic() + 15
                while any(s in ACTIVE for s in tagged_jobs(b.daemon_id).values()) and time.monotonic() < end:
                    await asyncio.sleep(0.2)


def is_stale(d: Daemon) -> bool:
    views = d.fleet.snapshot(d.clock()).models[0].instances
    return bool(views) and all(v.stale for v in views)


async def test_metrics_over_ssh_outage_is_stale_without_scale_down(
    ssh_daemon: tuple[Daemon, list[str]], root_sshd: RootSshd
) -> None:
    d, direct = ssh_daemon
    assert d.fleet.ssh is not None and d.fleet.ssh_metrics and not d.fleet.ssh_tunnel
    ssh = d.fleet.ssh

    # (a) ready; metrics over SSH (never scraped directly); requests straight to node:port
    await wait_for(lambda: any(i.ready_at is not None for i in d.instances.values()), 40, "a ready instance")
    (inst,) = d.instances.values()
    await wait_for(lambda: inst.scraped_at is not None, 10, "metrics over ssh")
    assert d.fleet.ssh_scrapes >= 1 and ssh.connects >= 1 and direct == [] and ssh.fetcher in ("curl", "python3")
    assert d.fleet.instance_url(inst.id) == f"http://127.0.0.1:{inst.port}"
    c = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{d.port}/v1", api_key="none", max_retries=0, timeout=30)
    r = await c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello over SSH."}],
                                        max_tokens=8, extra_body={"ignore_eos": True})
    assert r.usage is not None and r.usage.completion_tokens == 8
    assert inst.id in d.instances and not is_stale(d)

    # (b) the sshd goes away: stale after stale_after_s, and then, with min 0 and zero load, no drain
    scrapes_before = d.fleet.ssh_scrapes
    root_sshd.kill()
    await wait_for(lambda: is_stale(d), STALE_AFTER_S + 10, "the instance to be stale")
    assert not ssh.connected and ssh.last_error and d.fleet.ssh_scrapes > scrapes_before
    d.set_limits(MODEL, 0, d.cfg.models[MODEL].max_instances)
    d.fleet.control.obs.windows[MODEL] = ArrivalWindow()  # zero load: with fresh data the policy would drain down to 0
    ticks = d.ticks
    await wait_for(lambda: d.ticks >= ticks + 8, 15, "8 ticks during the outage")
    assert is_stale(d)
    assert list(d.instances) == [inst.id] and inst.drain_requested_at is None and inst.cancel_sent_at is None
    assert direct == []

    # (c) back on the same port: the transport reconnects (after its backoff), data is fresh again
    connects = ssh.connects
    root_sshd.start()
    await wait_for(lambda: ssh.connected and inst.stale_since is None, 40, "reconnect and a fresh scrape")
    assert ssh.connects > connects and not is_stale(d)
    # control: with fresh data the same policy now drains the idle instance
    await wait_for(lambda: inst.drain_requested_at is not None or inst.id not in d.instances, 15,
                     "the policy to drain the idle instance once its data is fresh")
    assert direct == []
