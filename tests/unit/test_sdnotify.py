"""chirond.sdnotify against a real AF_UNIX datagram socket standing in for systemd: the exact
datagrams for each message (filesystem and abstract '@' addresses), no-ops outside systemd, the
WATCHDOG_PID rule, never blocking or raising, and the watchdog loop."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from chirond.sdnotify import Notifier, watchdog_loop


def _recv_all(sock: socket.socket) -> list[bytes]:
    """Every datagram queued on `sock` now (sends are synchronous on AF_UNIX: nothing in flight)."""
    out = []
    while True:
        try:
            out.append(sock.recv(65536))
        except BlockingIOError:
            return out


@pytest.fixture
def fs_listener() -> Iterator[tuple[socket.socket, str]]:
    # A short directory: AF_UNIX paths are limited to 107 bytes, pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="sdn-") as d:
        path = str(Path(d) / "notify")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(path)
        s.setblocking(False)
        try:
            yield s, path
        finally:
            s.close()


@pytest.fixture
def abstract_listener() -> Iterator[tuple[socket.socket, str]]:
    name = f"chirond-test-{uuid.uuid4().hex}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.setblocking(False)
    try:
        yield s, "@" + name
    finally:
        s.close()


@pytest.mark.parametrize("listener", ["fs_listener", "abstract_listener"])
def test_messages_arrive_exactly(listener: str, request: pytest.FixtureRequest) -> None:
    sock, address = request.getfixturevalue(listener)
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    n = Notifier(env)
    assert n.enabled and n.address == address
    assert n.watchdog_interval_s == pytest.approx(15.0)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    with n:
        assert n.ready("serving on 127.0.0.1:8000, 2 models")
        assert n.ready()
        assert n.status("tick 3: llama-8b[q=0/0 inst=1r]")
        assert n.watchdog()
        assert n.reloading()
        assert n.stopping()
        assert n.stopping("draining 3 request(s)")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    got = _recv_all(sock)
    assert len(got) == 7, got
    reload_msg = got.pop(4)
    assert got == [
        b"READY=1\nSTATUS=serving on 127.0.0.1:8000, 2 models",
        b"READY=1",
        b"STATUS=tick 3: llama-8b[q=0/0 inst=1r]",
        b"WATCHDOG=1",
        b"STOPPING=1",
        b"STOPPING=1\nSTATUS=draining 3 request(s)",
    ]
    key, usec = reload_msg.split(b"\n")
    assert key == b"RELOADING=1"
    name, _, value = usec.partition(b"=")
    assert name == b"MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_status_is_kept_on_one_line(fs_listener: tuple[socket.socket, str]) -> None:
    sock, path = fs_listener
    with Notifier({"NOTIFY_SOCKET": path}) as n:
        n.status("line one\nREADY=1\r\nline three")
    assert _recv_all(sock) == [b"STATUS=line one READY=1 line three"]


def test_no_notify_socket_is_a_no_op() -> None:
    n = Notifier({"WATCHDOG_USEC": "30000000"})
    assert not n.enabled and n.address is None
    assert n.watchdog_interval_s is None
    assert not n.open()
    for ok in (n.ready("x"), n.status("x"), n.stopping(), n.reloading(), n.watchdog(), n.notify("X=1")):
        assert ok is False
    assert n._sock is None  # no socket was ever made
    n.close()


@pytest.mark.parametrize("value", ["", "relative/path", "@", "vsock:2:1234"])
def test_unusable_notify_socket_disables(value: str) -> None:
    n = Notifier({"NOTIFY_SOCKET": value})
    assert not n.enabled
    assert not n.ready()


def test_constructor_does_no_io(monkeypatch: pytest.MonkeyPatch, fs_listener: tuple[socket.socket, str]) -> None:
    sock, path = fs_listener
    made: list[object] = []
    real = socket.socket

    def spy(*a: object, **k: object) -> socket.socket:
        made.append(a)
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "socket", spy)
    n = Notifier({"NOTIFY_SOCKET": path})
    assert made == [] and n._sock is None
    assert n.ready()  # first send opens the socket
    assert len(made) == 1
    assert n.status("again")
    assert len(made) == 1  # and keeps it
    n.close()
    assert n._sock is None
    assert _recv_all(sock) == [b"READY=1", b"STATUS=again"]


def test_socket_is_non_blocking_and_not_inherited(fs_listener: tuple[socket.socket, str]) -> None:
    _, path = fs_listener
    with Notifier({"NOTIFY_SOCKET": path}) as n:
        assert n._sock is not None
        assert n._sock.getblocking() is False
        assert n._sock.get_inheritable() is False
        assert n._sock.type == socket.SOCK_DGRAM


def test_full_receiver_never_blocks(fs_listener: tuple[socket.socket, str]) -> None:
    """Nobody reads the socket: the queue fills, sends fail with EAGAIN instead of blocking."""
    _, path = fs_listener
    n = Notifier({"NOTIFY_SOCKET": path})
    results: list[bool] = []

    def flood() -> None:
        for _ in range(5000):
            results.append(n.status("x" * 512))

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    t.join(timeout=10)
    assert not t.is_alive(), "a send blocked on a full notification socket"
    assert len(results) == 5000
    assert results[0] is True and results[-1] is False
    n.close()


def test_missing_listener_never_raises_and_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    with tempfile.TemporaryDirectory(prefix="sdn-") as d:
        n = Notifier({"NOTIFY_SOCKET": str(Path(d) / "nobody-listens"), "WATCHDOG_USEC": "1000000"})
        with caplog.at_level(logging.DEBUG, logger="chirond.sdnotify"):
            assert n.ready("x") is False
            assert n.watchdog() is False
            assert n.stopping() is False
        n.close()
    records = [r for r in caplog.records if r.name == "chirond.sdnotify"]
    assert len(records) == 1
    assert records[0].levelno == logging.DEBUG
    assert "nobody-listens" in records[0].getMessage()


def test_abstract_name_with_no_listener_never_raises() -> None:
    n = Notifier({"NOTIFY_SOCKET": f"@chirond-test-absent-{uuid.uuid4().hex}"})
    assert n.ready() is False
    n.close()


def test_watchdog_pid_of_another_process_disables_watchdog(fs_listener: tuple[socket.socket, str]) -> None:
    sock, path = fs_listener
    other = os.getppid()
    assert other != os.getpid()
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(other)})
    assert n.watchdog_interval_s is None
    assert n.watchdog() is False
    assert n.ready() is True  # the rest of the protocol still works
    n.close()
    assert _recv_all(sock) == [b"READY=1"]


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 15.0),  # no WATCHDOG_PID: meant for us
        ("30000000", "self", 15.0),
        ("1000000", "self", 0.5),
        ("0", "self", None),
        ("-5", "self", None),
        ("soon", "self", None),
        ("", "self", None),
        ("30000000", "not-a-pid", None),
    ],
)
def test_watchdog_interval(usec: str, pid: str | None, expected: float | None) -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": usec}
    if pid is not None:
        env["WATCHDOG_PID"] = str(os.getpid()) if pid == "self" else pid
    assert Notifier(env).watchdog_interval_s == (None if expected is None else pytest.approx(expected))


def test_pid_argument_overrides_getpid() -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "4242"}
    assert Notifier(env, pid=4242).watchdog_interval_s == pytest.approx(2.0)
    assert Notifier(env, pid=4243).watchdog_interval_s is None


def test_unset_environment() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid()), "PATH": "/bin"}
    n = Notifier(env, unset_environment=True)
    assert env == {"PATH": "/bin"}
    assert n.enabled and n.watchdog_interval_s == pytest.approx(0.5)  # read before they were removed
    kept = {"NOTIFY_SOCKET": "@x"}
    Notifier(kept)
    assert kept == {"NOTIFY_SOCKET": "@x"}


def test_unset_environment_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "@chirond-test")
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    n = Notifier(unset_environment=True)
    assert n.address == "@chirond-test"
    assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ


async def _wait_for_pings(sock: socket.socket, n: int, timeout_s: float = 5.0) -> list[bytes]:
    got: list[bytes] = []
    end = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < end:
        await asyncio.sleep(0.01)
        got += _recv_all(sock)
    return got


async def test_watchdog_loop_pings_only_while_healthy(
    fs_listener: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    sock, path = fs_listener
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "40000"})  # a ping every 20 ms
    healthy = True
    t0 = time.monotonic()
    task = asyncio.create_task(watchdog_loop(n, lambda: healthy))
    try:
        pings = await _wait_for_pings(sock, 3)
        assert set(pings) == {b"WATCHDOG=1"} and len(pings) >= 3
        assert len(pings) <= (time.monotonic() - t0) / 0.02 + 2  # paced at the interval, not spinning
        with caplog.at_level(logging.INFO, logger="chirond.sdnotify"):
            healthy = False  # the loop only runs when this coroutine awaits: no ping can be under way
            await asyncio.sleep(0.2)  # ten intervals
            assert _recv_all(sock) == []
            healthy = True
            assert len(await _wait_for_pings(sock, 2)) >= 2
        messages = [r.getMessage() for r in caplog.records if r.name == "chirond.sdnotify"]
        assert len(messages) == 2, messages  # one warning for the whole stall, one line on recovery
        assert "not healthy" in messages[0] and "healthy again" in messages[1]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        n.close()


async def test_watchdog_loop_returns_without_watchdog(fs_listener: tuple[socket.socket, str]) -> None:
    sock, path = fs_listener
    n = Notifier({"NOTIFY_SOCKET": path})
    await asyncio.wait_for(watchdog_loop(n), timeout=1)
    await asyncio.wait_for(watchdog_loop(Notifier({})), timeout=1)
    assert _recv_all(sock) == []
