"""The control socket: a Unix socket where the kernel tells chirond who is calling (SO_PEERCRED),
so `chiron token` needs no password: the Unix account is the identity. Admin operations (drain an
instance, change a model's limits) are served only here, and only to configured admins.

Protocol: one JSON object per line each way. A request is {"op": NAME, ...arguments}; the answer
is {"ok": true, ...} or {"ok": false, "error": "..."}. A connection may carry several requests.

Built-in operations (given a UserStore): "whoami", "token" (mint a key for the caller; admins may
name another "user"), "keys" (list the caller's keys), "revoke" (all of the caller's keys, or the
one with "prefix"), "usage" (the caller's; admins may ask "all"). The daemon adds its own
(status, drain, limits) as `Operation`s.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import pwd
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chirond.users import USER_NAME, UserError, UsersConfig, UserStore

log = logging.getLogger("chirond.ops")

MAX_LINE_BYTES = 64 * 1024  # one request; longer lines are refused and the connection closed
IDLE_TIMEOUT_S = 5.0  # a connection silent this long is closed (`chiron` asks at once)
MAX_CONNECTIONS = 256  # in all; beyond this a new connection is told to retry, and closed
MAX_CONNECTIONS_PER_UID = 8  # per caller: one account holding connections locks no one else out
MAX_USAGE_DAYS = 3660


@dataclass(frozen=True, slots=True)
class Caller:
    uid: int
    user: str
    groups: tuple[str, ...]
    admin: bool


Op = Callable[[Caller, dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Operation:
    fn: Op
    admin: bool = False  # refused to callers who are not admins
    help: str = ""


class OpError(Exception):
    """An operation refused; the message goes back to the caller as {"ok": false, "error": ...}."""


def peer_uid(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a connected Unix socket (Linux)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def caller_for_uid(uid: int, cfg: UsersConfig) -> Caller:
    """The account behind a uid: its name, its groups (primary and supplementary, by name) and
    whether it is an admin. OpError when the uid has no name (a container's stray uid)."""
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        raise OpError(f"uid {uid} has no user name on this machine; chirond keys belong to named accounts") from None
    names = []
    for gid in os.getgrouplist(pw.pw_name, pw.pw_gid):
        with contextlib.suppress(KeyError):
            names.append(grp.getgrgid(gid).gr_name)
    groups = tuple(dict.fromkeys(names))
    return Caller(uid, pw.pw_name, groups, cfg.is_admin(pw.pw_name, groups, uid))


class ControlServer:
    """Serves `ops` (plus the built-in user operations when `store` is given) on the Unix socket
    at `path`. The constructor does no I/O; `start()` binds, `stop()` closes and removes it."""

    def __init__(
        self,
        path: Path,
        ops: Mapping[str, Operation],
        users_cfg: UsersConfig,
        store: UserStore | None = None,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        max_per_uid: int = MAX_CONNECTIONS_PER_UID,
    ) -> None:
        self.path = Path(path)
        self.idle_timeout_s = idle_timeout_s
        self.max_per_uid = max_per_uid
        self._per_uid: dict[int, int] = {}
        self.cfg = users_cfg
        self.store = store
        self.ops: dict[str, Operation] = dict(self._builtin() if store is not None else {})
        self.ops["whoami"] = Operation(self._whoami, help="who the daemon thinks you are")
        self.ops.update(ops)
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    # ---------------------------------------------------------------- lifetime

    async def start(self) -> None:
        if not self.path.parent.exists():
            self.path.parent.mkdir(parents=True)
            os.chmod(self.path.parent, 0o755)  # whatever the umask (077 in the daemon): users must reach it
        await self._remove_stale()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_LINE_BYTES)
        # Anyone on this machine may connect: the peer credentials, not the file mode, say who it is.
        os.chmod(self.path, 0o666)
        log.info("control socket on %s", self.path)

    async def _remove_stale(self) -> None:
        """A socket file left by a killed daemon is removed; one a live daemon answers on is not,
        and neither is anything that is not a socket."""
        try:
            st = self.path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{self.path} exists and is not a socket; not removing it")
        try:
            _, w = await asyncio.wait_for(asyncio.open_unix_connection(str(self.path)), 2.0)
        except (ConnectionRefusedError, FileNotFoundError, TimeoutError):
            self.path.unlink(missing_ok=True)
            return
        w.close()
        raise OSError(f"another process is serving on {self.path} (is chirond already running?)")

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for w in list(self._conns):
            w.close()
        await self._server.wait_closed()
        self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    # ---------------------------------------------------------------- one connection

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._conns) >= MAX_CONNECTIONS:
            await _send(writer, {"ok": False, "error": "chirond is busy (too many control connections); retry"})
            writer.close()
            return
        self._conns.add(writer)
        uid: int | None = None
        try:
            sock = writer.get_extra_info("socket")
            uid = peer_uid(sock)[1]
            self._per_uid[uid] = self._per_uid.get(uid, 0) + 1
            if self._per_uid[uid] > self.max_per_uid:
                await _send(writer, {"ok": False, "error": f"you have {self.max_per_uid} control connections open "
                                     "already (the most per user); close one and retry"})
                return
            try:
                caller = caller_for_uid(uid, self.cfg)
            except OpError as e:
                await _send(writer, {"ok": False, "error": str(e)})
                return
            for _ in range(10_000):  # bounded: a client that wants more reconnects
                try:
                    line = await asyncio.wait_for(reader.readline(), self.idle_timeout_s)
                except TimeoutError:
                    return
                except (ValueError, asyncio.LimitOverrunError):  # the line is longer than the limit
                    await _send(writer, {"ok": False, "error": f"request longer than {MAX_LINE_BYTES} bytes"})
                    return
                if not line:
                    return
                if line.strip():
                    await _send(writer, await self.handle(caller, line))
        except (ConnectionError, BrokenPipeError):
            pass  # the client left
        finally:
            self._conns.discard(writer)
            if uid is not None:
                left = self._per_uid.get(uid, 1) - 1
                if left > 0:
                    self._per_uid[uid] = left
                else:
                    self._per_uid.pop(uid, None)
            writer.close()

    async def handle(self, caller: Caller, line: bytes) -> dict[str, Any]:
        """One request line -> the answer (never raises)."""
        try:
            req = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            return {"ok": False, "error": f"not a JSON object: {e}"}
        if not isinstance(req, dict) or not isinstance(req.get("op"), str):
            return {"ok": False, "error": 'expected a JSON object with "op" (a string)'}
        name = req.pop("op")
        op = self.ops.get(name)
        if op is None:
            return {"ok": False, "error": f"unknown op {name!r} (valid: {', '.join(sorted(self.ops))})"}
        if op.admin and not caller.admin:
            return {
                "ok": False,
                "error": f"{name}: only chirond admins may do this, and {caller.user} is not one "
                "(users.admin_users / users.admin_groups in chirond.toml)",
            }
        try:
            out = await op.fn(caller, req)
        except (OpError, UserError) as e:
            return {"ok": False, "error": str(e)}
        except Exception as e:  # a bug in one op must not take the socket down; logged with its traceback
            log.exception("control op %s failed (caller %s)", name, caller.user)
            return {"ok": False, "error": f"{name}: internal error: {type(e).__name__}: {e}"}
        log.info("control op %s by %s (uid %d)", name, caller.user, caller.uid)
        return {"ok": True, **out}

    # ---------------------------------------------------------------- built-in operations

    def _builtin(self) -> dict[str, Operation]:
        return {
            "token": Operation(self._token, help="mint an API key for you (admins: for 'user')"),
            "keys": Operation(self._keys, help="list your keys (admins: 'user''s)"),
            "revoke": Operation(self._revoke, help="revoke your keys, or the one with 'prefix'"),
            "usage": Operation(self._usage, help="your usage over 'days' days (admins: 'all')"),
        }

    @property
    def _store(self) -> UserStore:
        assert self.store is not None
        return self.store

    async def _whoami(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        return {"uid": caller.uid, "user": caller.user, "groups": list(caller.groups), "admin": caller.admin}

    async def _token(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        user = _target(caller, args)
        key = self._store.mint(user)
        return {"user": user, "key": key, "prefix": key[:12]}

    async def _keys(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        user = _target(caller, args)
        return {"user": user, "keys": self._store.keys(user)}

    async def _revoke(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        user = _target(caller, args)
        prefix = args.get("prefix")
        if prefix is not None and (not isinstance(prefix, str) or not prefix):
            raise OpError("revoke: 'prefix' must be a non-empty string (a key's prefix, or the key)")
        n = self._store.revoke(user, prefix)
        if prefix is not None and n == 0:
            raise OpError(f"revoke: user {user} has no key with prefix {prefix!r} (chiron token --list shows them)")
        return {"user": user, "revoked": n}

    async def _usage(self, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        days = args.get("days", 30)
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_USAGE_DAYS:
            raise OpError(f"usage: 'days' must be an integer in 1..{MAX_USAGE_DAYS}, got {days!r}")
        everyone = args.get("all") is True
        if everyone and not caller.admin:
            raise OpError(f"usage: only chirond admins may see everyone's usage, and {caller.user} is not one")
        user = None if everyone else _target(caller, args)
        return {"user": user, "days": days, "rows": self._store.usage(user, days)}


def _target(caller: Caller, args: dict[str, Any]) -> str:
    """The user an operation acts on: the caller, or for an admin the named 'user'."""
    user = args.get("user")
    if user is None or user == caller.user:
        return caller.user
    if not caller.admin:
        raise OpError(f"only chirond admins may act for another user, and {caller.user} is not one")
    if not isinstance(user, str) or not USER_NAME.fullmatch(user):
        raise OpError(f"'user' must be a user name, got {user!r}")
    return user


async def _send(writer: asyncio.StreamWriter, msg: dict[str, Any]) -> None:
    writer.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
    await writer.drain()
