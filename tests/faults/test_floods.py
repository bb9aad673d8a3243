"""Fault injection (issue 13): floods and slow clients on a real `chirond serve`, bounded: an idle
connection flood past the connection limits, slowloris heads and bodies, and a control-socket
flood. Meanwhile /health and an authenticated chat request succeed, the daemon's memory stays
bounded, and afterwards it serves as before (no restart). Figures go to docs/admin.md."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path

from chirond.control_cli import ControlError, call
from tests.support import faults as f

FLOOD = 600  # connections, 3x the daemon's limit below; one in four sends a slow body
LIMITS = {"max_connections": 200, "max_connections_per_client": 200, "idle_timeout_s": 5.0, "body_timeout_s": 5.0,
          "header_timeout_s": 5.0}


async def served_again(sock_path: Path, within_s: float = 10.0) -> dict[str, object]:
    """`whoami` once the daemon has seen the account's connections close: it learns of each close
    when it reads that connection's end, so a call right after the closes may still be refused
    (CI, under load, was)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return await asyncio.to_thread(call, sock_path, "whoami")
        except ControlError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def test_http_and_control_floods_lock_nobody_out(tmp_path: Path) -> None:
    # control connections stay open until their client lets go (not closed idle, 5 s by default)
    cfg, port = f.write_config(tmp_path, tmp_path / "state", control_idle_timeout_s=60.0)
    cfg.write_text(cfg.read_text().replace("[api]\n", "[api]\n" + "".join(f"{k} = {v}\n" for k, v in LIMITS.items())))
    d = f.ServeProcess(cfg, port, tmp_path / "daemon.log")
    await d.start()
    try:
        await flood(d, port, tmp_path)
        await asyncio.sleep(6)  # past the idle timeout: the slow ones are gone
        await f.serves(d)
    finally:  # a failed check must not leave the daemon running
        rc = await d.stop()
    assert rc == 0


async def flood(d: f.ServeProcess, port: int, tmp_path: Path) -> None:
    """The flood held while /health, a chat and the control socket are checked; then let go."""
    assert d.proc is not None
    before = rss_mib(d.proc.pid)
    held: list[asyncio.StreamWriter] = []
    try:
        # Idle connections, half-sent heads and half-sent bodies. A half-sent body is a request in
        # progress, and those are never evicted: were the limit full of them, a new connection would
        # be answered 503 by design (tests/component/test_http_guards.py). So they stay under the
        # limit (150 of 200) however fast the flood comes; the rest must be evicted to let /health in.
        for i in range(FLOOD):
            with contextlib.suppress(OSError):
                _, w = await asyncio.open_connection("127.0.0.1", port)
                if i % 4 == 1:
                    w.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                elif i % 4 == 3:
                    w.write(b"POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                            b"Authorization: Bearer " + f.KEY.encode() + b"\r\nContent-Length: 100000\r\n\r\n--b")
                held.append(w)
        ctl = []
        sock_path = tmp_path / "state" / "control.sock"
        for _ in range(64):  # the control socket: one account's idle connections
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(sock_path))
            ctl.append(s)
        peak = rss_mib(d.proc.pid)
        await f.serves(d)  # /health and a chat, while the flood is held
        # The account holding 64 is refused past its 8 (other accounts are not: see
        # tests/component/test_control_socket.py); once it lets go, it is served again.
        with contextlib.suppress(ControlError):
            await asyncio.to_thread(call, sock_path, "whoami")
        for s in ctl:
            s.close()
        assert (await served_again(sock_path))["user"] == "root"
        after = rss_mib(d.proc.pid)
        print(f"\nflood of {FLOOD} connections: daemon RSS {before:.0f} MiB before, {peak:.0f} MiB during, "
              f"{after:.0f} MiB after")
        assert peak - before < 100, (before, peak)
    finally:
        for w in held:
            w.close()
