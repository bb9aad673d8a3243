"""The daemon with [backend.slurm.ssh], without a network: metrics/traffic keys (errors name the key
path), scrapes over a fake SSH transport, an outage that makes the instance stale while the
chirond policy (min 0, zero load) drains nothing, recovery, and the tunnel's URLs."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import pytest

from chirond.cluster.backend import JobFacts, JobState
from chirond.cluster.instances import DaemonInstance
from chirond.cluster.slurm import CommandResult, TransportError
from chirond.cluster.ssh import SshTransport
from chirond.config import ConfigError, load_config
from chirond.daemon import Daemon
from chirond.model import EngineArgs, Pool
from tests.support import ROOT, Clock, FakeBackend

ARGS = EngineArgs(16, 2048)  # the engine flags of the test's instances

METRICS = (ROOT / "tests" / "data" / "vllm_metrics" / "vllm-0.10.2.txt").read_text()

TOML = """
[daemon]
backend = "slurm"
policy = "chirond"
policy_params = {{ scale_down_hold_s = 5.0 }}
tick_s = 1
stale_after_s = 2.0
state_dir = "state"
[api]
auth = "open"
[backend.slurm]
partition = "a100"
[backend.slurm.ssh]
host = "login1"
key_file = "id"
known_hosts = "kh"
{ssh}
[models.m]
profile = "llama-3.1-8b_a100-80gb_tp1"
slo = {{ ttft_s = 1.0, tpot_s = 0.1 }}
min_instances = 0
initial_instances = 1
"""


def write(tmp_path: Path, ssh: str = "") -> Path:
    (tmp_path / "id").write_text("key\n")
    (tmp_path / "kh").write_text("[login1]:22 ssh-ed25519 AAAA\n")
    path = tmp_path / "chirond.toml"
    path.write_text(TOML.format(ssh=ssh))
    return path


# ---------------------------------------------------------------- config


def test_metrics_and_traffic_defaults_and_values(tmp_path: Path) -> None:
    s = load_config(write(tmp_path)).slurm.ssh  # type: ignore[union-attr]
    assert s is not None and (s.metrics, s.traffic) == ("ssh", "direct")
    s = load_config(write(tmp_path, 'metrics = "direct"\ntraffic = "tunnel"')).slurm.ssh  # type: ignore[union-attr]
    assert s is not None and (s.metrics, s.traffic) == ("direct", "tunnel")


@pytest.mark.parametrize("line, key, reason", [
    ('metrics = "http"', "metrics", "must be one of ssh, direct, got 'http'"),
    ("metrics = 1", "metrics", "must be a non-empty string"),
    ('traffic = "socks"', "traffic", "must be one of direct, tunnel, got 'socks'"),
    ('traffic = ""', "traffic", "must be a non-empty string"),
])
def test_metrics_and_traffic_errors_name_the_key_path(tmp_path: Path, line: str, key: str, reason: str) -> None:
    path = write(tmp_path, line)
    with pytest.raises(ConfigError, match=re.escape(f"{path}: backend.slurm.ssh.{key}: {reason}")):
        load_config(path)


# ---------------------------------------------------------------- fakes


class FakeSsh(SshTransport):
    """Answers `command -v curl` and curl with the metrics page; every call fails while `down`.
    forward() hands out a new local port per connection 'generation' (as after a reconnect)."""

    def __init__(self, cfg: object) -> None:
        super().__init__(cfg)  # type: ignore[arg-type]
        self.down = False
        self.runs: list[tuple[str, ...]] = []
        self.generation = 1
        self.forwarded: dict[tuple[str, int], int] = {}
        self.closed_forwards: list[tuple[str, int]] = []

    async def run(self, argv: Sequence[str], timeout_s: float, input: bytes | None = None) -> CommandResult:
        if self.down:
            raise TransportError("ssh to login1 unavailable: connection refused; next try in 1.0s")
        self.runs.append(tuple(argv))
        if argv[0] == "sh":
            return CommandResult(tuple(argv), 0, "/usr/bin/curl\n", "", 0.0)
        return CommandResult(tuple(argv), 0, METRICS, "", 0.0)

    async def forward(self, host: str, port: int) -> int:
        if self.down:
            raise TransportError("ssh to login1 unavailable")
        self.forwarded[(host, port)] = 40000 + self.generation
        return self.forwarded[(host, port)]

    async def close_forward(self, host: str, port: int) -> None:
        self.closed_forwards.append((host, port))


def make(tmp_path: Path, ssh: str = "") -> tuple[Daemon, FakeBackend, FakeSsh, Clock, DaemonInstance]:
    cfg = load_config(write(tmp_path, ssh))
    assert cfg.slurm is not None and cfg.slurm.ssh is not None
    t = FakeSsh(cfg.slurm.ssh)
    b = FakeBackend(t)
    clock = Clock()
    d = Daemon(cfg, backend=b, clock=clock, ssh=t)  # type: ignore[arg-type]
    inst = DaemonInstance(1, "m", Pool.MIXED, 1, ARGS, clock.t, 1.0, job_id="101", job_state=JobState.RUNNING,
                    host="gpu01", port=20001, running_since=clock.t)
    b.facts["101"] = JobFacts("101", 1, JobState.RUNNING, "gpu01", 20001)
    d.instances[1] = inst
    d.fleet.control.next_id = 2
    d.fleet._ready(inst)
    return d, b, t, clock, inst


async def ticks(d: Daemon, clock: Clock, n: int, step: float = 1.0) -> None:
    for _ in range(n):
        clock.t += step
        await d.tick()


# ---------------------------------------------------------------- metrics over SSH, outage, recovery


async def test_ssh_outage_marks_stale_and_nothing_is_drained(tmp_path: Path) -> None:
    d, b, t, clock, inst = make(tmp_path)
    assert d.fleet.ssh is t and d.fleet.ssh_metrics and not d.fleet.ssh_tunnel
    async with aiohttp.ClientSession() as session:
        d.fleet._session = session  # the direct path is never used here (the engine's address does not resolve)
        await ticks(d, clock, 1)
        assert inst.scraped_at is not None and d.fleet.ssh_scrapes == 1
        assert [a[0] for a in t.runs] == ["sh", "curl"] and t.runs[1][-1] == "http://gpu01:20001/metrics"
        assert d.fleet.instance_url(1) == "http://gpu01:20001"  # traffic = "direct"
        assert not d.fleet.snapshot(clock.t).models[0].instances[0].stale

        t.down = True
        await ticks(d, clock, 1)
        assert inst.stale_since == clock.t and not d.fleet.snapshot(clock.t).models[0].instances[0].stale
        # zero load and min_instances 0: the policy would drain after the 5 s hold, but the data is stale (from 2 s)
        await ticks(d, clock, 1)
        for _ in range(10):
            await ticks(d, clock, 1)
            assert d.fleet.snapshot(clock.t).models[0].instances[0].stale
            assert inst.drain_requested_at is None
        assert inst.drain_requested_at is None and inst.cancel_sent_at is None and b.cancelled == []
        assert list(d.instances) == [1]

        t.down = False  # reconnected: the next scrape clears it
        await ticks(d, clock, 1)
        assert inst.stale_since is None and not d.fleet.snapshot(clock.t).models[0].instances[0].stale
        # control: with fresh data the same policy does drain the idle instance after its hold
        await ticks(d, clock, 7)
        assert inst.drain_requested_at is not None or b.cancelled == ["101"]


async def test_metrics_direct_does_not_use_ssh(tmp_path: Path) -> None:
    d, _b, t, clock, inst = make(tmp_path, 'metrics = "direct"')
    assert not d.fleet.ssh_metrics
    async with aiohttp.ClientSession() as session:
        d.fleet._session = session
        inst.host = "127.0.0.1"
        inst.port = 1  # nothing listens: a direct scrape fails at once
        await ticks(d, clock, 1)
    assert t.runs == [] and d.fleet.ssh_scrapes == 0 and inst.stale_since is not None


async def test_tunnel_urls_reforward_and_close(tmp_path: Path) -> None:
    d, _b, t, clock, inst = make(tmp_path, 'traffic = "tunnel"')
    assert d.fleet.ssh_tunnel and d.fleet.instance_url(1) is None  # no tunnel yet
    async with aiohttp.ClientSession() as session:
        d.fleet._session = session
        await ticks(d, clock, 1)
        assert d.fleet.instance_url(1) == "http://127.0.0.1:40001" and t.forwarded == {("gpu01", 20001): 40001}
        t.down = True
        await ticks(d, clock, 1)
        assert d.fleet.instance_url(1) == "http://127.0.0.1:40001"  # kept: a request there fails and marks it
        t.down, t.generation = False, 2  # a reconnect: the listener is new
        await ticks(d, clock, 1)
        assert d.fleet.instance_url(1) == "http://127.0.0.1:40002"
        d.fleet._end(inst, clock.t, "test")
        assert d.fleet.instance_url(1) is None
        for task in list(d.fleet._tasks):
            await task
    assert t.closed_forwards == [("gpu01", 20001)]
