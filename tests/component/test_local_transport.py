"""The local transport runs Slurm's commands for real: child processes, their output, stdin,
and a timeout that ends the whole process group."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from chirond.cluster.transport import LocalTransport, TransportError


async def test_local_transport_runs_commands() -> None:
    tr = LocalTransport(env={"CHIROND_TEST_VALUE": "hello"})
    r = await tr.run(["sh", "-c", 'echo "$CHIROND_TEST_VALUE"; echo oops >&2; exit 3'], 10)
    assert (r.returncode, r.stdout, r.stderr) == (3, "hello\n", "oops\n")
    assert r.argv[0] == "sh" and r.duration_s >= 0
    r = await tr.run(["cat"], 10, input=b"on stdin")
    assert r.stdout == "on stdin"
    with pytest.raises(TransportError, match="cannot run"):
        await tr.run(["/nonexistent/squeue"], 10)


async def test_local_transport_kills_on_timeout(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    start = time.monotonic()
    with pytest.raises(TransportError, match=r"did not finish within 0\.3s"):
        # A grandchild holding the pipes open: only killing the whole group ends the command.
        await LocalTransport().run(["sh", "-c", f"sleep 30 & echo $! > {pidfile}; wait"], 0.3)
    assert time.monotonic() - start < 5
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail(f"sleep {pid} survived the timeout")
