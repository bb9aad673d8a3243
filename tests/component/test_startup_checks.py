"""Start-up resources and file modes (issue 13, items 6 and 9): `chirond check-config` and
`chirond serve` refuse a machine the daemon cannot run on with exit 2 and the key's name (no
traceback), and the daemon makes its own state files 0600 and directories 0700 whatever umask it
was started with (the control socket stays reachable, 0666)."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from chirond.daemon import Daemon
from tests.support import free_port, write_toml
from tests.support.config import serve_toml


@pytest.fixture
def readonly_dir(tmp_path: Path) -> Iterator[Path]:
    """A read-only file system (tmpfs mounted ro; we run as root, so a mode would not stop us)."""
    d = tmp_path / "ro"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): {r.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=True)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chirond", *args], capture_output=True, text=True, timeout=60)


def cases(tmp_path: Path, ro: Path) -> list[tuple[str, dict[str, Any], str]]:
    (tmp_path / "a-file").write_text("x")
    return [
        ("read-only", {"daemon": {"state_dir": str(ro / "state")}}, "daemon.state_dir"),
        ("a file", {"daemon": {"state_dir": str(tmp_path / "a-file")}}, "daemon.state_dir"),
        ("under a file", {"daemon": {"state_dir": str(tmp_path / "a-file" / "state")}}, "daemon.state_dir"),
        ("unresolvable", {"daemon": {"listen_host": "no-such-host.invalid"}}, "daemon.listen_host"),
        ("fd limit", {"api": {"auth": "open", "max_connections": 10**9}}, "api.max_connections"),
        ("tiny tick", {"daemon": {"tick_s": 1e-9}}, "daemon.tick_s"),
        ("scrape past tick", {"daemon": {"tick_s": 1, "scrape_timeout_s": 2}}, "daemon.scrape_timeout_s"),
        ("negative hold", {"daemon": {"policy": "chirond", "policy_params": {"scale_down_hold_s": -5}}},
         "daemon.policy_params.scale_down_hold_s"),
        ("reserved header", {"api": {"auth": "open", "batch_header": "Authorization"}}, "api.batch_header"),
    ]


def test_check_config_and_serve_refuse_what_cannot_run_with_exit_2(tmp_path: Path, readonly_dir: Path) -> None:
    port = free_port()
    for name, over, key in cases(tmp_path, readonly_dir):
        doc = serve_toml(port)
        for section, values in over.items():
            doc[section] = {**doc.get(section, {}), **values}
        cfg = write_toml(tmp_path / f"{name.replace(' ', '-')}.toml", doc)
        for args in (("check-config", str(cfg)), ("serve", "--config", str(cfg))):
            r = run_cli(*args)
            assert r.returncode == 2, (name, args[0], r.returncode, r.stderr[-800:])
            assert key in r.stderr and "Traceback" not in r.stderr, (name, args[0], r.stderr[-800:])


async def test_state_files_are_the_services_alone_whatever_the_umask(daemon_factory: Any) -> None:
    old = os.umask(0o022)  # as when started by hand from a usual shell
    try:
        d: Daemon = await daemon_factory()
        url = f"http://127.0.0.1:{d.port}/v1/files"
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", b'{"custom_id": "a"}\n', filename="in.jsonl")
        async with aiohttp.ClientSession() as s, s.post(url, data=form) as r:
            assert r.status == 200
        state = d.cfg.daemon.state_dir

        def mode(p: Path) -> int:
            return stat.S_IMODE(p.stat().st_mode)

        assert mode(state) == 0o711  # the control socket lives in it: traversable, not listable
        assert mode(state / "files") == 0o700
        assert [mode(p) for p in (state / "files").iterdir()] == [0o600]
        for p in state.iterdir():
            if p.is_socket():
                assert mode(p) == 0o666, p  # reachable by every local user; peer credentials tell who
            elif p.is_dir():
                assert mode(p) == 0o700, p
            else:
                assert mode(p) == 0o600, p
        await asyncio.sleep(0)
    finally:
        os.umask(old)
