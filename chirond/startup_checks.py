"""What the daemon needs from the machine before it starts, checked the same way by
`chirond check-config` and by `chirond serve` (exit 2, the error naming the config key): a state
directory it can write, a listen host that resolves, a control socket directory it can create, and
an open-files limit that holds `api.max_connections`.

And the state directory's modes, set by the daemon itself (not only by the systemd unit's UMask):
umask 077, so every file it creates is 0600 and every directory 0700 (prompts, answers, keys and
chirond.db belong to no one else); files left by an older release are tightened at start. The
state directory is 0711 when the control socket lives in it (users must reach the socket, which
is 0666: the kernel's peer credentials, not modes, say who calls), else 0700.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import socket
import tempfile
from pathlib import Path

from chirond.config import Config, ConfigError
from chirond.tomltable import key_path

log = logging.getLogger(__name__)

UMASK = 0o077
FD_RESERVE = 256  # descriptors besides client connections: engines, SQLite, logs, SSH, the socket


def _writable_dir(path: Path, key: str, cfg: Config) -> None:
    """`path` is (or can be made) a directory this process can write; ConfigError naming `key`."""
    where = f"{cfg.path}: {key}"
    probe = path
    while not probe.exists():  # the nearest existing ancestor is where mkdir would write
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        what = "" if probe == path else f" ({probe} is in the way)"
        raise ConfigError(f"{where}: {path} is not a directory{what}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".chirond-check-", dir=probe)
    except OSError as e:
        raise ConfigError(f"{where}: cannot write in {probe}: {e.strerror or e}") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def check_startup(cfg: Config) -> None:
    """Raises ConfigError (naming the key) for a machine the daemon cannot start on."""
    d = cfg.daemon
    _writable_dir(d.state_dir, key_path("daemon", "state_dir"), cfg)
    _writable_dir(d.socket_path.parent, key_path("daemon", "control_socket"), cfg)
    try:
        socket.getaddrinfo(d.listen_host, d.listen_port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise ConfigError(
            f"{cfg.path}: {key_path('daemon', 'listen_host')}: cannot resolve {d.listen_host!r} ({e})"
        ) from None
    need = cfg.api.max_connections + FD_RESERVE
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        raise ConfigError(
            f"{cfg.path}: {key_path('api', 'max_connections')}: {cfg.api.max_connections} connections need "
            f"{need} open files, but this process may open at most {hard} (ulimit -Hn; LimitNOFILE= in the unit); "
            f"lower it to at most {hard - FD_RESERVE}"
        )


def connections_allowed(cap: int = 65536) -> int:
    """The most `api.max_connections` this process's hard open-files limit allows (at most `cap`)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return cap if hard == resource.RLIM_INFINITY else max(1, min(cap, hard - FD_RESERVE))


def raise_open_files_limit(cfg: Config) -> None:
    """The soft open-files limit up to what `api.max_connections` needs (check_startup made sure
    the hard limit allows it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = cfg.api.max_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def prepare_state_dir(cfg: Config) -> int:
    """umask 077, the state directory created, and the modes of what an older release left
    tightened (files 0600, directories 0700; the state directory 0711 if the socket is in it).
    Returns the umask before (Daemon.stop restores it, for a daemon run inside another program)."""
    before = os.umask(UMASK)
    d = cfg.daemon
    d.state_dir.mkdir(parents=True, exist_ok=True)
    socket_inside = d.socket_path.parent.resolve() == d.state_dir.resolve()
    os.chmod(d.state_dir, 0o711 if socket_inside else 0o700)
    for p in d.state_dir.iterdir():
        try:
            if p.is_symlink() or p.is_socket():
                continue
            if p.is_dir():
                os.chmod(p, 0o700)
                if p.name == "files":  # uploads and results: one directory, not deep
                    for f in p.iterdir():
                        if f.is_file() and not f.is_symlink():
                            os.chmod(f, 0o600)
            elif p.is_file():
                os.chmod(p, 0o600)
        except OSError as e:  # a file that vanished, or one we do not own: say so, go on
            log.warning("could not tighten the mode of %s: %s", p, e)
    return before
