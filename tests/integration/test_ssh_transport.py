"""SshTransport against the loopback cluster's sshd: SlurmCli over SSH, strict host keys, a job
reached through forward(), scrape_over_ssh, and an outage of a throwaway sshd of the test's own."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import asyncssh
import pytest

from chirond.cluster.probe import ProbeError, parse_vllm_metrics
from chirond.cluster.slurm import SlurmCli, TransportError
from chirond.cluster.ssh import SshTransport, scrape_over_ssh
from chirond.config import SshConfig
from tests.support import free_port
from tests.support.loopback import LoopbackCluster, job_state, run, wait_state
from tests.support.sshd import ThrowawaySshd

ROOT = Path(__file__).resolve().parents[2]
METRICS = ROOT / "tests" / "data" / "vllm_metrics" / "vllm-0.10.2.txt"


def ssh_cfg(c: LoopbackCluster, **kw: object) -> SshConfig:
    args: dict[str, object] = dict(host=c.ssh_host, port=c.ssh_port, user=c.ssh_user, key_file=c.ssh_key,
                                   known_hosts=c.known_hosts, connect_timeout_s=5.0, command_timeout_s=15.0)
    args.update(kw)
    return SshConfig(**args)  # type: ignore[arg-type]


@pytest.fixture
async def transport(loopback_cluster: LoopbackCluster) -> AsyncIterator[SshTransport]:
    t = SshTransport(ssh_cfg(loopback_cluster))
    try:
        yield t
    finally:
        await t.close()




async def test_slurm_cli_over_ssh(loopback_cluster: LoopbackCluster, transport: SshTransport) -> None:
    c = loopback_cluster
    cli = SlurmCli(transport, user=c.ssh_user)
    assert not transport.connected  # lazy
    nodes = await cli.sinfo(c.partition)
    assert transport.connected and transport.connects == 1 and transport.connect_s is not None
    assert {n.name for n in nodes} >= set(c.nodes)
    assert all(c.partition in n.partitions and n.gpus_total == c.gpus_per_node for n in nodes if n.name in c.nodes)
    q = await cli.squeue()
    assert q.source in ("json", "text")
    assert all(j.user == c.ssh_user for j in q.jobs.values())
    who = await transport.run(["id", "-un"], 5)
    assert (who.returncode, who.stdout.strip()) == (0, c.ssh_user)
    # argv words reach the program as they are: nothing is expanded by the login shell
    words = ["a b", "$(id -u)", "`id`", ";", "it's", "*", "$HOME"]
    echo = await transport.run(["printf", "%s\\n", *words], 5)
    assert echo.stdout.splitlines() == words
    assert transport.connects == 1  # one connection carried everything
    # a timeout is an error for that command only
    with pytest.raises(TransportError, match="did not finish within"):
        await transport.run(["sleep", "10"], 0.5)
    assert (await transport.run(["true"], 5)).returncode == 0 and transport.connects == 1


async def test_host_key_mismatch_is_refused(loopback_cluster: LoopbackCluster, tmp_path: Path) -> None:
    c = loopback_cluster
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[{c.ssh_host}]:{c.ssh_port} {other}\n")
    t = SshTransport(ssh_cfg(c, known_hosts=wrong))
    try:
        with pytest.raises(TransportError, match=r"ssh to 127\.0\.0\.1 unavailable: host key not verifiable"):
            await t.run(["true"], 5)
        assert not t.connected and "host key" in (t.last_error or "")
        empty = tmp_path / "empty_known_hosts"
        empty.write_text("")
        t2 = SshTransport(ssh_cfg(c, known_hosts=empty))
        with pytest.raises(TransportError, match="host key not verifiable"):
            await t2.run(["true"], 5)
        await t2.close()
    finally:
        await t.close()


@pytest.fixture
def served_metrics() -> Iterator[Path]:
    """A directory the test user can read, holding `metrics` (a vLLM fixture)."""
    d = Path(tempfile.mkdtemp(prefix="chirond-it-ssh-"))
    try:
        d.chmod(0o755)
        shutil.copy(METRICS, d / "metrics")
        (d / "metrics").chmod(0o644)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def test_job_over_ssh_reachable_through_forward_and_scraped(
    loopback_cluster: LoopbackCluster, transport: SshTransport, served_metrics: Path
) -> None:
    c = loopback_cluster
    cli = SlurmCli(transport, user=c.ssh_user, min_squeue_interval_s=0.0)
    port = free_port()
    script = f"#!/bin/sh\nexec python3 -m http.server {port} --bind 127.0.0.1 --directory {served_metrics}\n"
    job_id = await cli.sbatch(script, [f"--partition={c.partition}", "--job-name=chirond-it-ssh-fwd", "--time=5",
                                       f"--gres=gpu:{c.gpu_type}:1", "--output=/dev/null"])
    try:
        local = await transport.forward("127.0.0.1", port)
        assert await transport.forward("127.0.0.1", port) == local  # one listener per target
        url = f"http://127.0.0.1:{local}/metrics"
        deadline = time.monotonic() + 20
        body = ""
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=3)) as resp:
                        if resp.status == 200:
                            body = await resp.text()
                            break
                except (aiohttp.ClientError, TimeoutError):
                    pass
                assert time.monotonic() < deadline, f"job {job_id} ({job_state(job_id)}) not reachable via {url}"
                await asyncio.sleep(0.1)
            start = time.monotonic()
            async with session.get(url) as resp:
                assert resp.status == 200
            print(f"GET /metrics through the tunnel: {(time.monotonic() - start) * 1000:.1f} ms")
        assert body == METRICS.read_text()
        q = await cli.squeue()
        assert q.jobs[job_id].state == "RUNNING" and q.jobs[job_id].user == c.ssh_user

        want = parse_vllm_metrics(METRICS.read_text())
        for fetcher in ("curl", "python3"):
            transport.fetcher = None if fetcher == "curl" else "python3"
            start = time.monotonic()
            assert await scrape_over_ssh(transport, "127.0.0.1", port, 5.0) == want
            print(f"scrape_over_ssh with {fetcher}: {(time.monotonic() - start) * 1000:.1f} ms")
            assert transport.fetcher == fetcher
        transport.fetcher = "curl"
        with pytest.raises(ProbeError, match=r"curl exit 7: "):
            await scrape_over_ssh(transport, "127.0.0.1", free_port(), 2.0)
    finally:
        assert await cli.scancel(job_id) or True
        run("scancel", job_id, check=False)
        wait_state(job_id, "CANCELLED", "COMPLETED", "FAILED", "")
    await transport.close()
    assert not transport.connected


# ---------------------------------------------------------------------------------- an outage


@pytest.fixture
def own_sshd(loopback_cluster: LoopbackCluster, tmp_path: Path) -> Iterator[ThrowawaySshd]:
    if not os.access(loopback_cluster.state_dir / "ssh" / "ssh_host_ed25519_key", os.R_OK):
        pytest.skip("cannot read the loopback sshd's host key to start a second sshd")
    d = ThrowawaySshd(loopback_cluster, tmp_path)
    try:
        yield d
    finally:
        d.kill()


async def test_nothing_listening_fails_fast(loopback_cluster: LoopbackCluster) -> None:
    t = SshTransport(ssh_cfg(loopback_cluster, port=free_port()))
    start = time.monotonic()
    with pytest.raises(TransportError, match=r"^ssh to 127\.0\.0\.1 unavailable: "):
        await t.run(["true"], 5)
    with pytest.raises(TransportError, match="next try in"):  # in the backoff: refused without trying
        await t.run(["true"], 5)
    assert time.monotonic() - start < 1.0 and not t.connected and t.last_error
    await t.close()


async def test_outage_and_reconnect(loopback_cluster: LoopbackCluster, own_sshd: ThrowawaySshd) -> None:
    c = loopback_cluster
    own_sshd.start()
    t = SshTransport(ssh_cfg(c, port=own_sshd.port, known_hosts=own_sshd.known_hosts, keepalive_s=1.0))
    try:
        assert (await t.run(["id", "-un"], 5)).stdout.strip() == c.ssh_user
        assert t.connected
        own_sshd.kill()  # the listener and the connection's server process
        # the transport notices the closed connection; every call fails at once while it is down
        deadline = time.monotonic() + 5
        errors = 0
        while time.monotonic() < deadline and errors < 3:
            start = time.monotonic()
            try:
                await t.run(["true"], 5)
            except TransportError as e:
                assert str(e).startswith("ssh to 127.0.0.1 unavailable: "), e
                assert time.monotonic() - start < 1.0, "a run during the outage blocked"
                errors += 1
            await asyncio.sleep(0.2)
        assert errors >= 3 and not t.connected and t.last_error
        own_sshd.start()  # back on the same port
        deadline = time.monotonic() + 15  # the backoff is at most a few seconds by now
        while True:
            try:
                res = await t.run(["id", "-un"], 5)
                break
            except TransportError:
                assert time.monotonic() < deadline, f"no reconnect within 15 s: {t.last_error}"
                await asyncio.sleep(0.1)
        assert res.stdout.strip() == c.ssh_user and t.connected and t.last_error is None and t.connects == 2
    finally:
        await t.close()
