"""Slurm's commands and the engines' metrics over SSH to a login node (asyncssh).

`SshTransport` is a `Transport` (chirond/cluster/transport.py): `SlurmCli(SshTransport(cfg), user)` runs
sbatch/squeue/scancel/sinfo on the login node instead of this machine. One multiplexed connection
carries every command (a channel each, at most `max_sessions` at a time); it is opened on first use
and reused. Host keys are always checked against `known_hosts`; authentication is by key only.

When the connection cannot be opened or is lost, the transport waits before trying again: 0.5 s,
doubling to 30 s, reset by a success. A command asked for while it waits fails at once with
`TransportError("ssh to HOST unavailable: ...")`, so the control loop never blocks on a dead login
node; `connected` and `last_error` say where it stands.

`scrape_over_ssh` reads an engine's /metrics from the login node (curl, or python3 where curl is
missing); `SshTransport.forward` opens a local port forwarded through the connection to an engine.
Constructing anything here does no I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shlex
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncssh

from chirond.cluster.probe import EngineStats, ProbeError, parse_vllm_metrics
from chirond.cluster.transport import CommandResult, TransportError
from chirond.config import SshConfig, parse_jump_host

__all__ = ["SshConfig", "SshTransport", "backoff_delay", "remote_command", "scrape_over_ssh"]

log = logging.getLogger(__name__)

BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 30.0
_URL_HOST = re.compile(r"[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]")


def remote_command(argv: Sequence[str]) -> str:
    """The command line the login node's shell runs for `argv`: every word quoted, so nothing in
    an argument (spaces, `;`, `$(...)`, quotes) is interpreted."""
    if not argv:
        raise ValueError("empty argv")
    return shlex.join(argv)


def backoff_delay(failures: int, initial_s: float = BACKOFF_INITIAL_S, max_s: float = BACKOFF_MAX_S) -> float:
    """How long to wait before the next connection attempt after `failures` (>= 1) in a row."""
    return min(max_s, initial_s * 2 ** max(0, failures - 1))


Connector = Callable[[], Awaitable[Any]]  # opens a connection (an SSHClientConnection, or a fake in tests)


class SshTransport:
    """Commands on a login node over one SSH connection. `connector` and `clock` are for tests."""

    def __init__(
        self,
        cfg: SshConfig,
        *,
        max_sessions: int = 8,  # concurrent channels (OpenSSH's MaxSessions is 10 by default)
        connector: Connector | None = None,
        clock: Callable[[], float] = time.monotonic,
        backoff_initial_s: float = BACKOFF_INITIAL_S,
        backoff_max_s: float = BACKOFF_MAX_S,
    ) -> None:
        self.cfg = cfg
        self.last_error: str | None = None
        self.connects = 0  # connections opened (for status and tests)
        self.connect_s: float | None = None  # how long the last successful connect took
        self.fetcher: str | None = None  # "curl" or "python3", found on first scrape_over_ssh
        self._connector = connector or self._open
        self._clock = clock
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._conn: Any = None
        self._jump: Any = None
        self._failures = 0
        self._retry_at = 0.0
        self._lock = asyncio.Lock()
        self._sessions = asyncio.Semaphore(max_sessions)
        self._forwards: dict[tuple[str, int], Any] = {}
        self._closed = False

    # --- status

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    @property
    def target(self) -> str:
        user = f"{self.cfg.user}@" if self.cfg.user else ""
        return f"{user}{self.cfg.host}:{self.cfg.port}"

    def retry_in(self) -> float:
        """Seconds until the next connection attempt is allowed (0 = now)."""
        return max(0.0, self._retry_at - self._clock())

    # --- the connection

    async def _open(self) -> asyncssh.SSHClientConnection:
        c = self.cfg
        opts: dict[str, Any] = dict(
            client_keys=[str(c.key_file)], known_hosts=str(c.known_hosts), agent_path=None, config=None,
            preferred_auth="publickey", connect_timeout=c.connect_timeout_s, login_timeout=c.connect_timeout_s,
            keepalive_interval=c.keepalive_s, keepalive_count_max=3, password=None, kbdint_auth=False,
        )
        tunnel: Any = ()
        if c.jump_host:
            j_user, j_host, j_port = parse_jump_host(c.jump_host)
            self._jump = await asyncssh.connect(j_host, j_port, username=j_user or c.user or (), **opts)
            tunnel = self._jump
        try:
            return await asyncssh.connect(c.host, c.port, tunnel=tunnel, username=c.user or (), **opts)
        except BaseException:
            await self._close_jump()
            raise

    async def _close_jump(self) -> None:
        jump, self._jump = self._jump, None
        if jump is not None:
            jump.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(jump.wait_closed(), 2.0)

    def _unavailable(self) -> TransportError:
        wait = self.retry_in()
        when = f"; next try in {wait:.1f}s" if wait > 0 else ""
        return TransportError(f"ssh to {self.cfg.host} unavailable: {self.last_error or 'not connected'}{when}")

    def _failed(self, reason: str) -> None:
        """A connect failed or the connection was lost: wait before the next attempt."""
        self._failures += 1
        self.last_error = reason
        self._retry_at = self._clock() + backoff_delay(self._failures, *self._backoff)
        log.warning("ssh to %s: %s (next try in %.1fs)", self.target, reason, self.retry_in())

    async def _drop(self, reason: str) -> None:
        """Forget a connection that failed under a command (its forwards die with it)."""
        conn, self._conn = self._conn, None
        self._forwards.clear()
        if conn is not None:
            conn.close()
            self._failed(reason)
        await self._close_jump()

    async def _connection(self) -> Any:
        if self._closed:
            raise TransportError(f"ssh to {self.cfg.host}: transport closed")
        if self.connected:
            return self._conn
        if self._conn is not None:  # closed under us (keepalive, server went away)
            await self._drop("connection lost")
        if self.retry_in() > 0:
            raise self._unavailable()
        async with self._lock:  # one connect at a time; the others share its result
            if self.connected:
                return self._conn
            if self.retry_in() > 0:
                raise self._unavailable()
            start = time.monotonic()
            try:
                conn = await asyncio.wait_for(self._connector(), self.cfg.connect_timeout_s + 1.0)
            except asyncio.CancelledError:
                raise
            except (OSError, asyncssh.Error, TimeoutError, ValueError) as e:
                self._failed(_describe(e))
                raise self._unavailable() from e
            if self._closed:
                conn.close()
                raise TransportError(f"ssh to {self.cfg.host}: transport closed")
            self._conn = conn
            self._failures = 0
            self._retry_at = 0.0
            self.last_error = None
            self.connects += 1
            self.connect_s = time.monotonic() - start
            log.info("ssh to %s: connected in %.3fs", self.target, self.connect_s)
            return conn

    # --- Transport

    async def run(self, argv: Sequence[str], timeout_s: float, input: bytes | None = None) -> CommandResult:
        cmd = remote_command(argv)
        conn = await self._connection()
        timeout_s = min(timeout_s, self.cfg.command_timeout_s)
        start = time.monotonic()
        try:
            async with self._sessions:
                res = await conn.run(cmd, input=input, timeout=timeout_s, encoding=None, check=False)
        except asyncssh.TimeoutError:
            raise TransportError(f"{_show(argv)} did not finish within {timeout_s:g}s over ssh; closed",
                                 argv=argv) from None
        except (asyncssh.ChannelOpenError, asyncssh.DisconnectError, asyncssh.ConnectionLost, OSError) as e:
            if isinstance(e, asyncssh.ChannelOpenError) and self.connected:
                raise TransportError(f"ssh to {self.cfg.host}: cannot run {_show(argv)}: {_describe(e)}",
                                     argv=argv) from e
            await self._drop(_describe(e))
            raise TransportError(f"ssh to {self.cfg.host} unavailable: {_describe(e)}", argv=argv) from e
        rc = res.returncode if res.returncode is not None else 255
        return CommandResult(tuple(argv), rc, _text(res.stdout), _text(res.stderr), time.monotonic() - start)

    async def forward(self, host: str, port: int) -> int:
        """A local port on 127.0.0.1 forwarded through the connection to host:port (as the login
        node reaches it). One listener per target, reused; all close with the transport or a
        reconnect (ask again after a TransportError)."""
        listener = self._forwards.get((host, port))
        if listener is not None and self.connected:
            return int(listener.get_port())
        conn = await self._connection()
        try:
            listener = await conn.forward_local_port("127.0.0.1", 0, host, port)
        except (asyncssh.Error, OSError) as e:
            raise TransportError(f"ssh to {self.cfg.host}: cannot forward to {host}:{port}: {_describe(e)}") from e
        self._forwards[(host, port)] = listener
        return int(listener.get_port())

    async def close_forward(self, host: str, port: int) -> None:
        listener = self._forwards.pop((host, port), None)
        if listener is not None:
            listener.close()

    async def close(self) -> None:
        """Close the forwards and the connection; the transport cannot be used afterwards."""
        self._closed = True
        for listener in self._forwards.values():
            listener.close()
        self._forwards.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 2.0)
        await self._close_jump()


def _describe(e: BaseException) -> str:
    if isinstance(e, asyncssh.HostKeyNotVerifiable):
        return f"host key not verifiable (check known_hosts): {e}"
    if isinstance(e, asyncssh.PermissionDenied):
        return f"authentication refused: {e}"
    if isinstance(e, TimeoutError) and not str(e):
        return "connect timed out"
    return str(e) or type(e).__name__


def _text(v: object) -> str:
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    return "" if v is None else str(v)


def _show(argv: Sequence[str]) -> str:
    return " ".join(argv[:3]) + (" ..." if len(argv) > 3 else "")


# --- metrics over the login node ---------------------------------------------------------------------

# Prints the page to stdout; on failure a one-line reason to stderr and exit 1 (curl -f's contract).
_PY_FETCH = (
    "import sys, urllib.request\n"
    "try:\n"
    "    with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as r:\n"
    "        sys.stdout.buffer.write(r.read())\n"
    "except Exception as e:\n"
    "    sys.stderr.write(str(e)); sys.exit(1)\n"
)
_CURL_EXIT = {6: "cannot resolve host", 7: "connection refused", 22: "HTTP error", 28: "timeout", 52: "empty reply"}


def fetch_argv(fetcher: str, url: str, timeout_s: float) -> list[str]:
    if fetcher == "curl":
        return ["curl", "-sSf", "--max-time", f"{timeout_s:g}", url]
    return ["python3", "-c", _PY_FETCH, url, f"{timeout_s:g}"]


async def _detect_fetcher(transport: SshTransport, timeout_s: float) -> str:
    if transport.fetcher is None:
        try:
            res = await transport.run(["sh", "-c", "command -v curl"], timeout_s)
        except TransportError as e:
            raise ProbeError(str(e)) from e
        transport.fetcher = "curl" if res.returncode == 0 and res.stdout.strip() else "python3"
    return transport.fetcher


async def scrape_over_ssh(transport: SshTransport, host: str, port: int, timeout_s: float) -> EngineStats:
    """GET http://host:port/metrics from the login node and parse it. Every failure is a ProbeError
    naming the URL: the SSH connection, the fetch (curl's reason), or not a vLLM page."""
    if not _URL_HOST.fullmatch(host) or not 1 <= port <= 65535:
        raise ProbeError(f"bad engine address {host!r}:{port}")
    url = f"http://{host}:{port}/metrics"
    fetcher = await _detect_fetcher(transport, timeout_s + 5.0)
    try:
        res = await transport.run(fetch_argv(fetcher, url, timeout_s), timeout_s + 5.0)
    except TransportError as e:
        raise ProbeError(f"{url}: {e}") from e
    if res.returncode != 0:
        why = res.stderr.strip() or _CURL_EXIT.get(res.returncode, "") or "failed"
        raise ProbeError(f"{url}: {fetcher} exit {res.returncode}: {why}")
    try:
        return parse_vllm_metrics(res.stdout)
    except ProbeError as e:
        raise ProbeError(f"{url}: {e}") from e
