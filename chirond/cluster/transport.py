"""The one place where chirond runs a Slurm command: a `Transport` runs one argv (no shell) and
returns what it printed. `LocalTransport` runs it as a child process of the daemon; `SshTransport`
(chirond/cluster/ssh.py) on a login node over SSH. `SlurmCli` (chirond/cluster/slurm_cli.py) builds
the argv and calls `run`; nothing else starts Slurm's commands.

The errors of Slurm's commands live here too, at the bottom of the import graph: `SlurmError` (a
command failed or printed something unusable), `TransportError` (it could not run, or not in time).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal as _signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["CommandResult", "LocalTransport", "SlurmError", "Transport", "TransportError", "show_argv"]


@dataclass(frozen=True, slots=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float


class SlurmError(RuntimeError):
    """A Slurm command failed or said something we cannot use. The message names the command and
    carries its stderr."""

    def __init__(self, message: str, *, argv: Sequence[str] = (), returncode: int | None = None, stderr: str = ""):
        super().__init__(message)
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr


class TransportError(SlurmError):
    """The command could not run at all, or did not finish in time (and was killed)."""



class Transport(Protocol):
    """Runs one command (no shell) and returns what it printed. Raises TransportError when it
    cannot run it or it outlives `timeout_s`; a non-zero exit is a result, not an error."""

    async def run(self, argv: Sequence[str], timeout_s: float, input: bytes | None = None) -> CommandResult: ...


class LocalTransport:
    """Commands as child processes of the daemon. `env` adds to the daemon's environment (e.g.
    SLURM_CONF for a test cluster)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = None if env is None else {**os.environ, **env}

    async def run(self, argv: Sequence[str], timeout_s: float, input: bytes | None = None) -> CommandResult:
        if not argv:
            raise ValueError("empty argv")
        start = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env,
                start_new_session=True,  # its own group: a kill on timeout reaches whatever it started
            )
        except OSError as e:
            raise TransportError(f"cannot run {argv[0]!r}: {e}", argv=argv) from e
        try:
            out, err = await asyncio.wait_for(proc.communicate(input), timeout_s)
        except TimeoutError:
            _kill_group(proc.pid)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5.0)
            raise TransportError(f"{show_argv(argv)} did not finish within {timeout_s:g}s; killed", argv=argv) from None
        except BaseException:  # cancelled: leave nothing running behind us
            _kill_group(proc.pid)
            raise
        assert proc.returncode is not None
        return CommandResult(
            tuple(argv), proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"),
            time.monotonic() - start,
        )




def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, _signal.SIGKILL)


def show_argv(argv: Sequence[str]) -> str:
    """The start of a command line, for messages."""
    return " ".join(argv[:3]) + (" ..." if len(argv) > 3 else "")

