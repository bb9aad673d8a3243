"""Fault injection (issue 13): slurmctld and sshd go away for a minute (slurmctld alone first,
then both) while `chirond serve` runs two instances on the loopback Slurm cluster, Slurm's commands
and the engines' /metrics over SSH, requests straight to node:port. Throughout, authenticated chat
requests succeed and a batch runs to the end; while squeue and the scrapes fail, the daemon decides
no drain, cancel or launch, even once its limits say one instance is enough (fresh data would drain
one); when both come back it recovers by itself: fresh data, that drain, /health and new requests,
with no restart.

The controller is one of this test's own (tests/support/own_slurm.py: the loopback's settings, its
own ports and state), and so is the sshd (tests/support/sshd.py), so stopping them disturbs no other
test using the shared loopback cluster. Skipped, with the reason, when that cluster cannot be
started or this is not root."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from chirond.control_cli import call
from tests.support import faults as f
from tests.support import free_port, write_toml
from tests.support.loopback import LoopbackCluster, cluster_problem, state_dir
from tests.support.own_slurm import OwnSlurm
from tests.support.paths import PROFILE_8B, ROOT
from tests.support.sshd import RootSshd, root_sshd_problem
from tests.support.toml import Inline

OUTAGE_S = 60.0
CTLD_ONLY_S = 20.0  # of which slurmctld alone is down
CHAT_EVERY_S = 0.5
# What the daemon logs when it decides to stop, replace or launch an instance, or thinks one gone.
ACTS = re.compile(r"\| (?:[^|]*, )?(?:drain|cancel|launch) \d"  # a tick line's actions
                  r"| stopping: |submitted job|launched as job|instance refused"
                  r"|instance \d+ \([^)]*\) (?:ended|failed): |lost its engine")


def usable_loopback() -> LoopbackCluster:
    """The loopback cluster, brought up when it is not (its script is idempotent); a skip with
    the reason when it cannot be."""
    if os.environ.get("CHIROND_SKIP_INTEGRATION") == "1":
        pytest.skip("CHIROND_SKIP_INTEGRATION=1")
    problem, c = cluster_problem(state_dir())
    if problem is not None:
        try:
            r = subprocess.run(["bash", str(ROOT / "scripts" / "loopback-cluster.sh"), "up"], capture_output=True,
                               text=True, timeout=300, check=False)
            why = r.stderr[-600:]
        except (OSError, subprocess.TimeoutExpired) as e:
            why = str(e)
        problem, c = cluster_problem(state_dir())
        if problem is not None or c is None:
            pytest.skip(f"the loopback Slurm cluster cannot be started ({problem}): {why}")
    assert c is not None
    if (p := root_sshd_problem(c)) is not None:
        pytest.skip(p)
    return c


def serve_config(tmp: Path, slurm: OwnSlurm, sshd: RootSshd) -> tuple[Path, int]:
    port = free_port()
    (tmp / "keys").write_text(f"{f.KEY} alice\n")
    (tmp / "jobs").mkdir()
    ssh = {"host": "127.0.0.1", "port": sshd.port, "user": "root", "key_file": str(sshd.key_file),
           "known_hosts": str(sshd.known_hosts), "connect_timeout_s": 3.0, "command_timeout_s": 5.0,
           "keepalive_s": 1.0, "metrics": "ssh", "traffic": "direct"}
    cfg = write_toml(tmp / "chirond.toml", {
        "daemon": {"listen_port": port, "state_dir": str(tmp / "state"), "backend": "slurm", "policy": "chirond",
                   "tick_s": 1.0, "scrape_timeout_s": 1.0, "stale_after_s": 2.0, "log_level": "info",
                   "policy_params": {"scale_down_hold_s": 2.0}},
        "api": {"auth": "keys", "keys_file": "keys"},
        "lifecycle": {"health_timeout_s": 60.0, "drain_timeout_s": 10.0, "stop_grace_s": 3.0},
        "backend": {"slurm": {
            "partition": slurm.partition, "gres_type": slurm.gpu_type, "time_limit_s": 600, "signal_before_end_s": 60,
            "run_dir": str(tmp / "jobs"), "python": sys.executable, "port_range": [33000, 33999],
            "bind_host": "127.0.0.1", "advertise_host": "127.0.0.1", "squeue_min_interval_s": 0.5,
            "command_timeout_s": 5.0, "ssh": ssh,
        }},
        "models": {f.MODEL: {
            "profile": str(PROFILE_8B), "slo": Inline(ttft_s=2.0, tpot_s=0.2), "min_instances": 2,
            "max_instances": 2, "sim_speedup": 20.0, "sim_startup_s": 0.3,
        }},
    })  # fmt: skip
    return cfg, port


def jobs(slurm: OwnSlurm) -> dict[str, str]:
    """Job id -> state of every job the own controller lists."""
    out = slurm.run("squeue", "-h", "-t", "all", "-o", "%i|%T").stdout
    return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)


async def chat_loop(c: openai.AsyncOpenAI, results: list[str], stop: asyncio.Event) -> None:
    """One authenticated chat request every CHAT_EVERY_S until `stop` (bounded by it); each result
    is "ok" or what went wrong."""
    i = 0
    while not stop.is_set():
        i += 1
        try:
            r = await c.chat.completions.create(model=f.MODEL, messages=[{"role": "user", "content": f"hi {i}"}],
                                                max_tokens=4)
            results.append("ok" if r.choices[0].message.content else "empty answer")
        except openai.OpenAIError as e:
            results.append(repr(e))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), CHAT_EVERY_S)


def since(log: Path, mark: int) -> str:
    """The daemon's log from byte `mark` on."""
    return log.read_bytes()[mark:].decode(errors="replace")


async def until(test: Callable[[], bool], timeout_s: float, what: str, log: Path) -> None:
    for _ in range(int(timeout_s * 5)):  # bounded
        if test():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout_s} s; daemon log:\n{log.read_text()[-3000:]}")


async def test_slurmctld_and_sshd_outage_serving_continues_nothing_decided_on_stale_data(tmp_path: Path) -> None:
    c = usable_loopback()
    slurm = OwnSlurm(c)
    # The jobs and the daemon's SSH sessions reach the own controller; the jobs import this chirond.
    sshd = RootSshd(c, tmp_path, {"SLURM_CONF": str(slurm.conf), "PYTHONPATH": str(ROOT)})
    d: f.ServeProcess | None = None
    log = tmp_path / "daemon.log"
    try:
        slurm.start()
        sshd.start()
        cfg, port = serve_config(tmp_path, slurm, sshd)
        d = f.ServeProcess(cfg, port, log)
        await d.start()
        await until(lambda: since(log, 0).count(" ready at ") >= 2, 60, "two ready instances", log)
        before = {j: s for j, s in jobs(slurm).items() if s == "RUNNING"}
        assert len(before) == 2, before
        client = d.client()
        results: list[str] = []
        stop = asyncio.Event()
        chats = asyncio.create_task(chat_loop(client, results, stop))
        try:
            n = 300
            bid = await f.submit(client, tmp_path, n, max_tokens=4)

            # The outage: slurmctld first (squeue fails over a live SSH connection; the controller saves
            # its state on SIGTERM, as on a restart), then sshd too (every command and scrape fails).
            mark = len(log.read_bytes())
            started = time.monotonic()
            slurm.stop_ctld()
            await until(lambda: "squeue failed" in since(log, mark), 30, "squeue failing", log)
            await asyncio.sleep(max(0.0, CTLD_ONLY_S - (time.monotonic() - started)))
            ssh_mark = len(log.read_bytes())
            sshd.kill()
            await until(lambda: "scrape failed" in since(log, ssh_mark), 20, "scrapes failing", log)
            await asyncio.sleep(3)  # stale now (stale_after_s 2)
            # One instance is now enough: with fresh data the policy would drain the other.
            sock = tmp_path / "state" / "control.sock"
            await asyncio.to_thread(call, sock, "limits", model=f.MODEL, min_instances=1)
            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - started)))
            await f.serves(d)  # /health and a chat at the end of the outage too
            during = since(log, mark)
            acted = [ln for ln in during.splitlines() if ACTS.search(ln)]
            assert not acted, acted
            assert results and all(r == "ok" for r in results), [r for r in results if r != "ok"]
        finally:
            if not slurm.ctld_running:
                slurm.start_ctld()
            if sshd.proc is None:
                sshd.start()  # the same port: the daemon's transport reconnects after its backoff
        print(f"\noutage {time.monotonic() - started:.0f} s: {len(results)} chat requests, all answered")

        # Recovery by itself: the drain that fresh data calls for, one job kept running throughout.
        recovered = len(log.read_bytes())
        await until(lambda: " stopping: " in since(log, recovered), 90, "a drain on fresh data", log)
        await until(lambda: sum(s == "RUNNING" for s in jobs(slurm).values()) == 1, 30, "one job left", log)
        kept = [j for j, s in jobs(slurm).items() if s == "RUNNING"]
        assert set(kept) <= set(before), (kept, before)  # a job from before the outage, never replaced
        b = await f.wait_batch(client, bid)
        assert b.status == "completed"
        await f.answered_once(client, b, n)
        stop.set()
        await chats
        assert all(r == "ok" for r in results), [r for r in results if r != "ok"]
        await f.serves(d)
        await client.close()
        assert await d.stop() == 0, d.log.read_text()[-3000:]
        assert f.usage_requests(tmp_path / "state") >= n + len(results)
    finally:
        try:
            if d is not None:
                await d.stop()
        finally:
            sshd.kill()
            slurm.close()
