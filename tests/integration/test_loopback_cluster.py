"""Smoke tests of the loopback Slurm cluster and sshd: what chirond's Slurm backend will rely on."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import socket
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

try:
    import asyncssh
except ImportError:  # asyncssh is a dependency of chirond's Slurm backend
    if os.environ.get("CHIROND_SKIP_INTEGRATION") == "1":
        pytest.skip("CHIROND_SKIP_INTEGRATION=1", allow_module_level=True)
    raise

from tests.support.loopback import LoopbackCluster, SlurmJobs, job_state, run, wait_state

# A stand-in for a vLLM server: binds a free port on 127.0.0.1 (all fake nodes share that address),
# reports host:port through a file, and answers GET with what Slurm gave the job.
SERVER = r"""
import http.server, json, os, sys

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({k: os.environ.get(k) for k in (
            "SLURM_JOB_ID", "SLURMD_NODENAME", "CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
host, port = srv.server_address[:2]
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(f"{host}:{port}\n")
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
srv.serve_forever()
"""


def start_server_job(jobs: SlurmJobs, name: str, *args: str) -> tuple[str, Path]:
    server = jobs.workdir / "server.py"
    server.write_text(SERVER)
    addr_file = jobs.workdir / f"{name}.addr"
    job_id = jobs.submit("-J", name, "-o", str(jobs.workdir / f"{name}.out"), *args,
                         wrap=f"exec {shlex.join([sys.executable, str(server), str(addr_file)])}")
    return job_id, addr_file


def wait_addr(jobs: SlurmJobs, job_id: str, addr_file: Path, timeout: float = 20.0) -> tuple[str, int]:
    deadline = time.monotonic() + timeout
    while not addr_file.exists():
        state = job_state(job_id)
        if state not in ("PENDING", "CONFIGURING", "RUNNING"):
            out = next(jobs.workdir.glob("*.out"), None)
            log = out.read_text() if out else ""
            raise AssertionError(f"job {job_id} is {state or 'gone'!r} before its server started:\n{log}")
        assert time.monotonic() < deadline, f"job {job_id} ({state}) wrote no address in {timeout} s"
        time.sleep(0.05)
    host, _, port = addr_file.read_text().strip().rpartition(":")
    return host, int(port)


def get_json(host: str, port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{host}:{port}/", timeout=5) as resp:
        return json.loads(resp.read())


def refuses(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return True
    return False


def test_gpu_job_serves_http_and_scancel_ends_it(loopback_cluster: LoopbackCluster, slurm_jobs: SlurmJobs) -> None:
    c = loopback_cluster
    job_id, addr_file = start_server_job(slurm_jobs, "chirond-it-http", f"--gres=gpu:{c.gpu_type}:1")
    host, port = wait_addr(slurm_jobs, job_id, addr_file)
    assert host == "127.0.0.1"

    env = get_json(host, port)
    assert env["SLURM_JOB_ID"] == job_id
    assert env["SLURMD_NODENAME"] in c.nodes
    cvd = env["CUDA_VISIBLE_DEVICES"]
    assert cvd is not None and cvd.isdigit() and int(cvd) < c.gpus_per_node, env

    fields = run("squeue", "-h", "-j", job_id, "-o", "%T|%N|%b").stdout.strip().split("|")
    assert fields == ["RUNNING", env["SLURMD_NODENAME"], f"gres:gpu:{c.gpu_type}:1"]

    run("scancel", job_id)
    wait_state(job_id, "CANCELLED")
    deadline = time.monotonic() + 5
    while not refuses(host, port):
        assert time.monotonic() < deadline, f"the server of cancelled job {job_id} still answers on {port}"
        time.sleep(0.05)


def test_one_job_on_each_node_at_once(loopback_cluster: LoopbackCluster, slurm_jobs: SlurmJobs) -> None:
    c = loopback_cluster
    assert len(c.nodes) >= 2
    pinned = {node: start_server_job(slurm_jobs, f"chirond-it-{node}", f"--gres=gpu:{c.gpu_type}:1", "-w", node)
              for node in c.nodes[:2]}
    addrs = {node: wait_addr(slurm_jobs, job_id, f) for node, (job_id, f) in pinned.items()}
    assert len({port for _, port in addrs.values()}) == 2, addrs
    for node, (host, port) in addrs.items():
        env = get_json(host, port)
        assert env["SLURMD_NODENAME"] == node
        assert env["SLURM_JOB_ID"] == pinned[node][0]
        assert env["CUDA_VISIBLE_DEVICES"]
    ids = ",".join(job_id for job_id, _ in pinned.values())
    running = run("squeue", "-h", "-j", ids, "-t", "running", "-o", "%i %N").stdout.split()
    assert sorted(zip(running[::2], running[1::2], strict=True)) == sorted(
        (job_id, node) for node, (job_id, _) in pinned.items())


async def _connect(c: LoopbackCluster, known_hosts: Path) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(c.ssh_host, port=c.ssh_port, username=c.ssh_user,
                                  client_keys=[str(c.ssh_key)], known_hosts=str(known_hosts),
                                  agent_path=None, config=None, connect_timeout=10)


async def test_ssh_command_with_strict_host_key(loopback_cluster: LoopbackCluster) -> None:
    c = loopback_cluster
    async with await _connect(c, c.known_hosts) as conn:
        r = await conn.run("id -un && sinfo -h -o %P", check=True, timeout=10)
    assert str(r.stdout).split() == [c.ssh_user, f"{c.partition}*"]


async def test_ssh_rejects_an_unknown_host_key(loopback_cluster: LoopbackCluster, tmp_path: Path) -> None:
    c = loopback_cluster
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[{c.ssh_host}]:{c.ssh_port} {other}\n")
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        async with await _connect(c, wrong):
            pass


async def test_sbatch_over_ssh_as_the_test_user(loopback_cluster: LoopbackCluster) -> None:
    """The path chirond takes: submit, poll and read the output as the cluster user over SSH."""
    c = loopback_cluster
    async with await _connect(c, c.known_hosts) as conn:
        r = await conn.run(f"sbatch --parsable -p {c.partition} --gres=gpu:{c.gpu_type}:1 --time=1 "
                           "-J chirond-it-ssh -o chirond-it-ssh-%j.out --wrap 'echo gpus=$CUDA_VISIBLE_DEVICES'",
                           check=True, timeout=10)
        job_id = str(r.stdout).strip().split(";")[0]
        assert job_id.isdigit(), r.stdout
        try:
            deadline = time.monotonic() + 15
            while (state := str((await conn.run(f"squeue -h -t all -j {job_id} -o %T", timeout=10)).stdout).strip()) \
                    != "COMPLETED":
                assert state in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"), f"job {job_id}: {state!r}"
                assert time.monotonic() < deadline, f"job {job_id} still {state} after 15 s"
                await asyncio.sleep(0.1)
            out = await conn.run(f"cat chirond-it-ssh-{job_id}.out && rm -f chirond-it-ssh-{job_id}.out",
                                 check=True, timeout=10)
            assert str(out.stdout).strip().removeprefix("gpus=").isdigit(), out.stdout
        finally:
            await conn.run(f"scancel {job_id}", timeout=10)

