"""The systemd notify protocol (sd_notify(3)), dependency-free: tell systemd when the daemon is
ready, what it is doing, that it is stopping or reloading, and that it is alive (the watchdog).

Under a `Type=notify` unit systemd passes `NOTIFY_SOCKET` (a filesystem path, or an abstract
socket name when it starts with '@'), and with `WatchdogSec=` also `WATCHDOG_USEC` and
`WATCHDOG_PID`. Each message is one datagram of newline-separated `KEY=VALUE` assignments.
Everything here is a no-op when the daemon does not run under systemd, and nothing raises into
the caller: a failed send is logged once at debug level and reported as False.

    notifier = Notifier(unset_environment=True)   # reads the environment; no I/O yet
    ... start serving ...
    notifier.ready("serving on 127.0.0.1:8000")   # opens the socket on first use
    asyncio.create_task(watchdog_loop(notifier, healthy=lambda: ...))
    ... on SIGTERM ...
    notifier.stopping()
    notifier.close()
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, MutableMapping
from types import TracebackType

log = logging.getLogger(__name__)

ENV_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """A client of systemd's notification socket, configured from `environ` (default `os.environ`).

    `unset_environment=True` removes the three variables from `environ` after reading them, as
    sd_notify(3) recommends, so that child processes (the local backend's engines) do not inherit
    them. `pid` is this process's id for the `WATCHDOG_PID` check (default `os.getpid()`)."""

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        *,
        unset_environment: bool = False,
        pid: int | None = None,
    ) -> None:
        env: Mapping[str, str] = os.environ if environ is None else environ
        self._address: str | None = _parse_socket(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_usec = _parse_watchdog(
            env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", ""), os.getpid() if pid is None else pid
        )
        if unset_environment:
            target: MutableMapping[str, str] | None = None
            if environ is None:
                target = os.environ
            elif isinstance(environ, MutableMapping):
                target = environ
            if target is not None:
                for k in ENV_VARS:
                    target.pop(k, None)
        self._sock: socket.socket | None = None
        self._failed_once = False

    # ---------------------------------------------------------------- state

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notification socket."""
        return self._address is not None

    @property
    def address(self) -> str | None:
        """The socket address as given by systemd ('@name' for an abstract one), or None."""
        return self._address

    @property
    def watchdog_interval_s(self) -> float | None:
        """Seconds between watchdog pings (half of `WATCHDOG_USEC`), or None when systemd watches
        no watchdog for this process."""
        if self._address is None or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2e6

    # ---------------------------------------------------------------- socket

    def open(self) -> bool:
        """Create the (non-blocking, close-on-exec) datagram socket. Idempotent; False when
        disabled or when the socket cannot be made. Sends open it on first use."""
        if self._address is None:
            return False
        if self._sock is not None:
            return True
        try:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        except OSError as e:
            self._sock = None
            self._fail("cannot create the notification socket", e)
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            sock, self._sock = self._sock, None
            try:
                sock.close()
            except OSError as e:  # pragma: no cover - close() of a datagram socket does not fail in practice
                self._fail("cannot close the notification socket", e)

    def __enter__(self) -> Notifier:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---------------------------------------------------------------- messages

    def notify(self, *assignments: str) -> bool:
        """Send one datagram with these `KEY=VALUE` lines. True when systemd's socket took it."""
        if self._address is None or not assignments or not self.open():
            return False
        assert self._sock is not None
        addr = "\0" + self._address[1:] if self._address.startswith("@") else self._address
        try:
            self._sock.sendto("\n".join(assignments).encode(), addr)
        except OSError as e:  # no listener, queue full (EAGAIN), path too long, ...
            self._fail(f"notification to {self._address} failed", e)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete (systemd moves the unit from activating to active)."""
        return self.notify("READY=1", *_status(status))

    def status(self, text: str) -> bool:
        """A one-line status, shown by `systemctl status`."""
        return self.notify(*_status(text))

    def stopping(self, status: str | None = None) -> bool:
        """The daemon has begun to shut down."""
        return self.notify("STOPPING=1", *_status(status))

    def reloading(self, status: str | None = None) -> bool:
        """The daemon has begun to reload its configuration; send `ready()` when done. Carries
        `MONOTONIC_USEC`, which systemd >= 253 requires to match the reload to the request."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status))

    def watchdog(self) -> bool:
        """Keep-alive ping; a no-op unless systemd watches this process (`watchdog_interval_s`)."""
        if self.watchdog_interval_s is None:
            return False
        return self.notify("WATCHDOG=1")

    def _fail(self, what: str, e: OSError) -> None:
        if not self._failed_once:
            self._failed_once = True
            log.debug("sd_notify: %s: %s (further failures are not logged)", what, e)


async def watchdog_loop(notifier: Notifier, healthy: Callable[[], bool] | None = None) -> None:
    """Ping systemd's watchdog every `watchdog_interval_s` while `healthy()` says so (always when
    it is None); returns at once when there is no watchdog. When `healthy()` turns False the pings
    stop, and systemd acts after `WatchdogSec=` (kills the daemon; `Restart=` restarts it). Run it
    as a task and cancel it on shutdown."""
    interval = notifier.watchdog_interval_s
    if interval is None:
        return
    stalled = False
    while True:
        if healthy is None or healthy():
            if stalled:
                log.info("watchdog: healthy again; pinging systemd again")
            stalled = False
            notifier.watchdog()
        elif not stalled:
            stalled = True
            log.warning(
                "watchdog: the daemon is not healthy; not pinging systemd, which restarts the daemon "
                "if this lasts %.0f s",
                2 * interval,
            )
        await asyncio.sleep(interval)


def _status(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    return ("STATUS=" + " ".join(text.splitlines()),)  # one line: a newline would start a new assignment


def _parse_socket(value: str) -> str | None:
    if value.startswith("/") or (value.startswith("@") and len(value) > 1):
        return value
    if value:  # e.g. "vsock:..." (systemd >= 253 in VMs): not supported here
        log.debug("sd_notify: unsupported NOTIFY_SOCKET %r; notifications disabled", value)
    return None


def _parse_watchdog(usec: str, pid: str, own_pid: int) -> int | None:
    try:
        n = int(usec)
    except ValueError:
        return None
    if n <= 0:
        return None
    if pid:
        try:
            if int(pid) != own_pid:
                return None  # the watchdog is meant for another process (e.g. our parent)
        except ValueError:
            return None
    return n
