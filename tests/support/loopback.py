"""The loopback Slurm 22.05 cluster and sshd on 127.0.0.1 (`bash scripts/loopback-cluster.sh up`):
where its pieces are, running Slurm's clients, job states. The fixtures are in tests/integration/conftest.py."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

UP_HINT = "run: bash scripts/loopback-cluster.sh up"
USABLE_NODE_STATES = {"idle", "mix"}


@dataclass(frozen=True)
class LoopbackCluster:
    """Where the loopback cluster's pieces are (from <state dir>/cluster.json)."""

    state_dir: Path
    cluster: str
    partition: str
    nodes: tuple[str, ...]
    gpu_type: str
    gpus_per_node: int
    ssh_host: str
    ssh_port: int
    ssh_user: str
    ssh_key: Path
    known_hosts: Path
    log_dir: Path


def state_dir() -> Path:
    return Path(os.environ.get("CHIROND_LOOPBACK_DIR", "/tmp/chirond-loopback"))


def run(*cmd: str, timeout: float = 15.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command (a Slurm client, usually); raise with its stderr when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> rc {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _load(sd: Path) -> LoopbackCluster:
    info = json.loads((sd / "cluster.json").read_text())
    return LoopbackCluster(
        state_dir=Path(info["state_dir"]),
        cluster=info["cluster"],
        partition=info["partition"],
        nodes=tuple(info["nodes"]),
        gpu_type=info["gpu_type"],
        gpus_per_node=int(info["gpus_per_node"]),
        ssh_host=info["ssh_host"],
        ssh_port=int(info["ssh_port"]),
        ssh_user=info["ssh_user"],
        ssh_key=Path(info["ssh_key"]),
        known_hosts=Path(info["known_hosts"]),
        log_dir=Path(info["log_dir"]),
    )


def cluster_problem(sd: Path) -> tuple[str | None, LoopbackCluster | None]:
    """What keeps the cluster from being used, or None."""
    if not (sd / "cluster.json").is_file():
        return f"no {sd / 'cluster.json'}", None
    try:
        c = _load(sd)
    except (ValueError, KeyError) as e:
        return f"unreadable {sd / 'cluster.json'}: {e!r}", None
    if shutil.which("sinfo") is None:
        return "no sinfo on PATH (Slurm not installed)", c
    try:
        proc = run("sinfo", "-h", "-N", "-p", c.partition, "-o", "%N %t", timeout=10, check=False)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 10 s", c
    if proc.returncode != 0:
        return f"sinfo failed: {proc.stderr.strip()}", c
    states = dict(line.split() for line in proc.stdout.splitlines() if line.strip())
    bad = {n: states.get(n, "missing") for n in c.nodes if states.get(n) not in USABLE_NODE_STATES}
    if bad:
        return f"nodes not idle/mixed: {bad}", c
    if not os.access(c.ssh_key, os.R_OK) or not c.known_hosts.is_file():
        return f"cannot read the SSH key {c.ssh_key} or known_hosts {c.known_hosts}", c
    try:
        socket.create_connection((c.ssh_host, c.ssh_port), timeout=3).close()
    except OSError as e:
        return f"sshd on {c.ssh_host}:{c.ssh_port} does not answer: {e}", c
    return None, c


# ---------------------------------------------------------------------------------------- Slurm jobs


def job_state(job_id: str) -> str:
    """The job's state in squeue -t all ('' once it has left squeue)."""
    return run("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T", check=False).stdout.strip()


def wait_state(job_id: str, *states: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        s = job_state(job_id)
        if s in states:
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} is {s or 'gone'!r} after {timeout} s, not {states}")
        time.sleep(0.1)


class SlurmJobs:
    """Submits jobs with sbatch; the fixture cancels whatever is left at teardown."""

    def __init__(self, cluster: LoopbackCluster, workdir: Path) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.ids: list[str] = []

    def submit(self, *args: str, wrap: str) -> str:
        out = run("sbatch", "--parsable", "-p", self.cluster.partition, "-D", str(self.workdir), "--time=5",
                  *args, "--wrap", wrap).stdout.strip()
        job_id = out.split(";")[0]
        assert job_id.isdigit(), f"sbatch --parsable printed {out!r}"
        self.ids.append(job_id)
        return job_id

    def cancel_all(self) -> None:
        if not self.ids:
            return
        run("scancel", *self.ids, check=False)
        deadline = time.monotonic() + 15
        active = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED"}
        while time.monotonic() < deadline:
            if not any(job_state(j) in active for j in self.ids):
                return
            time.sleep(0.2)
        raise AssertionError(f"jobs still active after scancel: {[(j, job_state(j)) for j in self.ids]}")
