"""Child processes of the tests: `chirond serve` and what /proc says about pids."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import IO, Any


async def start_serve(cfg: Path, stderr: IO[Any] | int = asyncio.subprocess.PIPE) -> asyncio.subprocess.Process:
    """`python -m chirond serve --config CFG`, stdout to /dev/null. For a long run pass an open
    file as `stderr`: a full pipe would block the daemon."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chirond", "serve", "--config", str(cfg),
        stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
    )  # fmt: skip


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def children(pid: int) -> list[int]:
    """Direct children of `pid` (e.g. the engines of the local backend)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


async def kill9(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL a daemon, then the engines it left (what systemd does to the unit's cgroup)."""
    engines = children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    for pid in engines:  # each engine leads its own process group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
