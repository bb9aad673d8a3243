"""A Slurm controller and one node of one test only, so the test can stop slurmctld (a Slurm
outage) without touching the loopback cluster other tests share: the loopback's slurm.conf with
its own cluster name, ports, state, spool, PID and log files, and one fake-GPU node `fault01`.
It needs the loopback cluster's munged (and packages); clients reach it with SLURM_CONF=`conf`.
`close()` cancels its jobs and stops only the daemons it started, by their PID files."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.loopback import LoopbackCluster
from tests.support.net import free_port

NODE = "fault01"
GPUS = 4
_OWN_KEYS = ("ClusterName", "SlurmctldPort", "StateSaveLocation", "SlurmdSpoolDir", "SlurmctldPidFile",
             "SlurmdPidFile", "SlurmctldLogFile", "SlurmdLogFile", "JobCompLoc")


class OwnSlurm:
    def __init__(self, c: LoopbackCluster) -> None:
        # A short path: slurmstepd's sockets live in the spool directory (sun_path holds 107 bytes).
        self.dir = Path(tempfile.mkdtemp(prefix="chf-", dir="/tmp"))
        self.partition = c.partition
        self.gpu_type = c.gpu_type
        d = self.dir
        for sub in ("state", "spool", "run", "log", "dev"):
            (d / sub).mkdir()
        for i in range(GPUS):
            (d / "dev" / f"nvidia{i}").symlink_to("/dev/null")
        (d / "spool" / NODE).mkdir()
        own = {"ClusterName": "chirond-fault", "SlurmctldPort": str(free_port()), "StateSaveLocation": str(d / "state"),
               "SlurmdSpoolDir": str(d / "spool" / "%n"), "SlurmctldPidFile": str(d / "run" / "slurmctld.pid"),
               "SlurmdPidFile": str(d / "run" / "slurmd-%n.pid"), "SlurmctldLogFile": str(d / "log" / "slurmctld.log"),
               "SlurmdLogFile": str(d / "log" / "slurmd-%n.log"), "JobCompLoc": str(d / "log" / "jobcomp.txt")}
        shared = (c.state_dir / "etc" / "slurm.conf").read_text().splitlines()
        lines = [ln for ln in shared if not ln.startswith(tuple(f"{k}=" for k in _OWN_KEYS))
                 and not ln.startswith(("NodeName=", "PartitionName="))]
        host = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
        lines += [f"{k}={v}" for k, v in own.items()]
        lines += [f"NodeName={NODE} NodeHostname={host} NodeAddr=127.0.0.1 Port={free_port()} CPUs=16 "
                  f"RealMemory=65536 Gres=gpu:{c.gpu_type}:{GPUS} State=UNKNOWN",
                  f"PartitionName={c.partition} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP"]
        self.conf = d / "slurm.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        (d / "gres.conf").write_text(f"AutoDetect=off\nNodeName={NODE} Name=gpu Type={c.gpu_type} "
                                     f"File={d / 'dev'}/nvidia[0-{GPUS - 1}]\n")
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.ctld_pid_file = d / "run" / "slurmctld.pid"
        self.slurmd_pid_file = d / "run" / f"slurmd-{NODE}.pid"

    def run(self, *cmd: str, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
        """A Slurm client against this controller."""
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, env=self.env)

    def start(self) -> None:
        self.start_ctld()
        self._daemon("/usr/sbin/slurmd", "-f", str(self.conf), "-N", NODE)
        deadline = time.monotonic() + 30
        while self.run("sinfo", "-h", "-n", NODE, "-o", "%t").stdout.strip() not in ("idle", "mix"):
            assert time.monotonic() < deadline, f"{NODE} not idle within 30 s: {self.logs()}"
            time.sleep(0.3)

    def start_ctld(self) -> None:
        self._daemon("/usr/sbin/slurmctld", "-f", str(self.conf))
        deadline = time.monotonic() + 30
        while "is UP" not in self.run("scontrol", "ping").stdout:
            assert time.monotonic() < deadline, f"own slurmctld does not answer: {self.logs()}"
            time.sleep(0.2)

    def stop_ctld(self) -> None:
        """SIGTERM to this test's slurmctld (it saves its state), and wait until it is gone."""
        _stop(self.ctld_pid_file)

    @property
    def ctld_running(self) -> bool:
        return _pid(self.ctld_pid_file) is not None

    def close(self) -> None:
        """Cancel every job, stop slurmd and slurmctld, remove the directory."""
        try:
            if not self.ctld_running:
                with contextlib.suppress(AssertionError, OSError, subprocess.SubprocessError):
                    self.start_ctld()
            if self.ctld_running:
                jobs = self.run("squeue", "-h", "-o", "%A").stdout.split()
                if jobs:
                    self.run("scancel", *jobs)
                deadline = time.monotonic() + 20
                while self.run("squeue", "-h", "-t", "running,completing", "-o", "%A").stdout.strip():
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.3)
        finally:
            _stop(self.slurmd_pid_file)
            _stop(self.ctld_pid_file)
            shutil.rmtree(self.dir, ignore_errors=True)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted((self.dir / "log").glob("*.log")))

    def _daemon(self, *argv: str) -> None:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False, env=self.env,
                           stdin=subprocess.DEVNULL)
        assert r.returncode == 0, f"{argv[0]} did not start: {r.stderr} {self.logs()}"


def _pid(pid_file: Path) -> int | None:
    """The live process a PID file names, or None."""
    try:
        pid = int(pid_file.read_text().split()[0])
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError, IndexError):
        return None
    return None if state == "Z" or not name.startswith("slurm") else pid  # not a reused pid


def _stop(pid_file: Path) -> None:
    pid = _pid(pid_file)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _pid(pid_file) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    if (pid := _pid(pid_file)) is not None:  # type: ignore[assignment]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
