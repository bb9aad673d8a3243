"""An sshd of one test only, so it can be killed to make an SSH outage: the shared loopback sshd's
host key and settings on another port, plus whatever lines the test adds (e.g. letting root in).
Killed with its per-connection processes; the shared sshd on 2222 is never touched."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import asyncssh

from tests.support.loopback import LoopbackCluster
from tests.support.net import free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


class ThrowawaySshd:
    def __init__(self, c: LoopbackCluster, workdir: Path, extra: Sequence[str] = ()) -> None:
        """`extra` lines come first and win (sshd takes a keyword's first value); the shared
        config's lines for the same keywords are dropped."""
        self.port = free_port()
        own = [f"Port {self.port}", f"PidFile {workdir / 'sshd.pid'}", *extra]
        keywords = tuple(line.split()[0] + " " for line in own)
        shared = (c.state_dir / "ssh" / "sshd_config").read_text().splitlines()
        self.config = workdir / "sshd_config"
        self.config.write_text("\n".join([*own, *(ln for ln in shared if not ln.startswith(keywords))]) + "\n")
        host_pub = (c.state_dir / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()
        self.known_hosts = workdir / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self.log = workdir / "sshd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stdout=log, stderr=log,
                                         start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert self.proc.poll() is None, f"sshd exited: {self.log.read_text()}"
                assert time.monotonic() < deadline, "own sshd did not listen within 10 s"
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is None:
            return
        # sshd's per-connection processes call setsid(): find them by parent before the listener goes
        for pid in [*_descendants(self.proc.pid), self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=5)
        self.proc = None


class RootSshd(ThrowawaySshd):
    """A throwaway sshd that lets root in with the test's own key (`key_file`): Slurm jobs then run
    as root, who can run this interpreter. Sessions get HOME=`workdir`/home, so root's own rc files
    (bash reads ~/.bashrc under sshd; a slow one delays every command) stay out, plus `env`."""

    def __init__(self, c: LoopbackCluster, workdir: Path, env: Mapping[str, str] | None = None) -> None:
        key = asyncssh.generate_private_key("ssh-ed25519")
        self.key_file = workdir / "id_ed25519"
        key.write_private_key(str(self.key_file))
        self.key_file.chmod(0o600)
        auth = workdir / "authorized_keys"
        auth.write_bytes(key.export_public_key())
        auth.chmod(0o600)
        home = workdir / "home"
        home.mkdir(exist_ok=True)
        setenv = " ".join(f"{k}={v}" for k, v in {"HOME": str(home), **(env or {})}.items())
        super().__init__(c, workdir, ["AllowUsers root", "PermitRootLogin prohibit-password",
                                      f"AuthorizedKeysFile {auth}", "StrictModes no", f"SetEnv {setenv}"])


def root_sshd_problem(c: LoopbackCluster) -> str | None:
    """Why this process cannot run a RootSshd, or None."""
    if os.geteuid() != 0 or not os.access(c.state_dir / "ssh" / "ssh_host_ed25519_key", os.R_OK):
        return "needs root (its own sshd letting root in, and the loopback sshd's host key)"
    return None


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out
