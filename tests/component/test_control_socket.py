"""The control socket for real: a ControlServer on a Unix socket in this test's event loop, and
clients running as root and as two throwaway Unix users (a forked child that drops to the user's
uid, gid and groups, then runs the `chiron` commands), so the identity comes from the kernel's
peer credentials exactly as in production. Needs root (to create the users and to setuid)."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime
import io
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from chirond import control_cli
from chirond.ops.socket_server import MAX_LINE_BYTES, Caller, ControlServer, Operation, OpError
from chirond.users import UsersConfig, UserStore

ALICE, BOB, ADMINS = "chiront-alice", "chiront-bob", "chiront-admins"  # alice is an admin through her group

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None,
    reason="needs root and useradd (to create throwaway users and setuid to them)",
)


@pytest.fixture(scope="session")
def unix_users() -> dict[str, pwd.struct_passwd]:
    """Two locked, shell-less users without a home (created once; left for later runs: deleting them
    under a concurrent run would break it)."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd")
    if subprocess.run(["getent", "group", ADMINS], capture_output=True).returncode != 0:
        subprocess.run(["groupadd", ADMINS], check=True, capture_output=True)
    for name, extra in ((ALICE, ["-G", ADMINS]), (BOB, [])):
        if subprocess.run(["getent", "passwd", name], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", *extra, name], check=True, capture_output=True)
    return {n: pwd.getpwnam(n) for n in (ALICE, BOB)}


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory the test users can reach (pytest's tmp_path lives under a 0700 directory)."""
    d = Path(tempfile.mkdtemp(prefix="chirond-ctl-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def run_as(user: str | None, fn: Callable[[], Any]) -> Any:
    """fn() in a forked child, as `user` (None: stay root); its JSON-able result comes back through
    a pipe. The child never returns into pytest: it always leaves with os._exit."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.close(r)
            if user is not None:
                pw = pwd.getpwnam(user)
                os.setgroups(os.getgrouplist(user, pw.pw_gid))
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)
            out: Any = {"result": fn()}
            code = 0
        except BaseException:
            out = {"exception": traceback.format_exc()}
        finally:
            data = json.dumps(out).encode()
            while data:
                data = data[os.write(w, data) :]
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        raw = f.read()
    os.waitpid(pid, 0)
    out = json.loads(raw)
    if "exception" in out:
        raise AssertionError(f"the child running as {user} failed:\n{out['exception']}")
    return out["result"]


async def as_user(user: str | None, fn: Callable[[], Any]) -> Any:
    """run_as without blocking the event loop that serves the socket (the fork happens in a thread)."""
    return await asyncio.to_thread(run_as, user, fn)


def cli(sock: Path, *argv: str, env: dict[str, str] | None = None) -> Callable[[], dict[str, Any]]:
    """A `chiron ...` invocation to run in the child: exit code, stdout and stderr."""

    def go() -> dict[str, Any]:
        os.environ.update(env or {})
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = control_cli.main([*argv, "--socket", str(sock)])
        return {"rc": rc, "out": out.getvalue(), "err": err.getvalue()}

    return go


def op(sock: Path, name: str, **args: Any) -> Callable[[], dict[str, Any]]:
    """One raw request; the answer whole, {"ok": ...} included."""

    def go() -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(sock))
            s.sendall(json.dumps({"op": name, **args}).encode() + b"\n")
            return json.loads(s.makefile("rb").readline())

    return go


SAMPLE_STATUS: dict[str, Any] = {
    "version": "0.1.0",
    "policy": "chirond",
    "backend": "local",
    "uptime_s": 3725,
    "ticks": 745,
    "requests_in_flight": 3,
    "gpus_in_use": 3,
    "last_reason": "interactive queue over SLO: launch",
    "models": [
        {
            "name": "llama-8b",
            "state": "live",
            "min_instances": 1,
            "max_instances": 4,
            "floor": 3,
            "instances": {"interactive": {"ready": 2, "starting": 1, "pending": 0}, "mixed": {}, "batch": {"ready": 1}},
            "queue_interactive": 3,
            "queue_batch": 1200,
            "backlog_lines": 45000,
            "next_deadline_s": 5400.0,
            "slo_attainment": {"interactive": 0.9876, "batch": None},
        },
        {"name": "llama-70b", "state": "scaled_to_zero", "instances": {}},
    ],
    "instances": [
        {
            "id": 7,
            "model": "llama-8b",
            "pool": "interactive",
            "state": "ready",
            "job_id": "4242",
            "host": "gpu01:20001",
            "cap": 48,
            "inflight": 5,
        }
    ],
}


class Server:
    def __init__(self, sock: Path, store: UserStore, ctl: ControlServer, drained: list[tuple[str, int]]) -> None:
        self.sock, self.store, self.ctl, self.drained = sock, store, ctl, drained


@pytest.fixture
async def server(world_dir: Path) -> AsyncIterator[Server]:
    store = UserStore(world_dir / "state" / "chirond.db")
    store.open()
    drained: list[tuple[str, int]] = []

    async def drain(caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(args.get("instance"), int):
            raise OpError("drain: 'instance' must be an instance id")
        drained.append((caller.user, args["instance"]))
        return {"message": f"instance {args['instance']} draining"}

    async def status(caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        return SAMPLE_STATUS

    async def limits(caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        return {"model": args["model"], "min_instances": 1, "max_instances": args.get("max_instances")}

    ops = {"drain": Operation(drain, admin=True), "limits": Operation(limits, admin=True), "status": Operation(status)}
    sock = world_dir / "run" / "control.sock"  # "run" does not exist yet: start() creates it
    ctl = ControlServer(sock, ops, UsersConfig(admin_groups=(ADMINS,)), store)
    await ctl.start()
    try:
        yield Server(sock, store, ctl, drained)
    finally:
        await ctl.stop()
        store.close()


# ---------------------------------------------------------------- identity and isolation


@needs_root
async def test_peer_credentials_name_the_caller(server: Server, unix_users: dict[str, pwd.struct_passwd]) -> None:
    root = await as_user(None, op(server.sock, "whoami"))
    assert root == {"ok": True, "uid": 0, "user": "root", "groups": ["root"], "admin": True}
    alice = await as_user(ALICE, op(server.sock, "whoami"))
    assert alice["uid"] == unix_users[ALICE].pw_uid and alice["user"] == ALICE
    assert ADMINS in alice["groups"] and alice["admin"] is True  # admin through users.admin_groups
    bob = await as_user(BOB, op(server.sock, "whoami"))
    assert bob["uid"] == unix_users[BOB].pw_uid and bob["user"] == BOB
    assert ADMINS not in bob["groups"] and bob["admin"] is False


@needs_root
async def test_two_users_get_their_own_keys(server: Server, unix_users: dict[str, pwd.struct_passwd]) -> None:
    a = await as_user(ALICE, cli(server.sock, "token"))
    b = await as_user(BOB, cli(server.sock, "token"))
    assert a["rc"] == 0 and b["rc"] == 0, (a, b)
    key_a, key_b = a["out"].strip(), b["out"].strip()
    assert key_a.startswith("chd-") and key_b.startswith("chd-") and key_a != key_b
    assert a["out"] == key_a + "\n"  # the key alone on stdout: export OPENAI_API_KEY=$(chiron token)
    assert server.store.verify(key_a) == ALICE and server.store.verify(key_b) == BOB
    # Each sees only their own keys, and cannot revoke or mint the other's.
    listed = await as_user(BOB, op(server.sock, "keys"))
    assert [k["prefix"] for k in listed["keys"]] == [key_b[:12]]
    stolen = await as_user(BOB, op(server.sock, "revoke", prefix=key_a[:12]))
    assert stolen["ok"] is False and "no key with prefix" in stolen["error"]
    assert server.store.verify(key_a) == ALICE
    for name, args in (("token", {"user": ALICE}), ("revoke", {"user": ALICE}), ("usage", {"all": True})):
        refused = await as_user(BOB, op(server.sock, name, **args))
        assert refused["ok"] is False and "only chirond admins" in refused["error"], refused
    assert server.store.verify(key_a) == ALICE
    # Revoking through the CLI: the key stops working at once.
    r = await as_user(ALICE, cli(server.sock, "token", "--revoke"))
    assert r["rc"] == 0 and "revoked 1 key(s)" in r["err"]
    assert server.store.verify(key_a) is None and server.store.verify(key_b) == BOB


@needs_root
async def test_token_save_writes_a_private_file(
    server: Server, world_dir: Path, unix_users: dict[str, pwd.struct_passwd]
) -> None:
    home = world_dir / "alice-config"
    home.mkdir()
    os.chown(home, unix_users[ALICE].pw_uid, unix_users[ALICE].pw_gid)
    r = await as_user(ALICE, cli(server.sock, "token", "--save", env={"XDG_CONFIG_HOME": str(home)}))
    assert r["rc"] == 0, r
    path = home / "chirond" / "key"
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == unix_users[ALICE].pw_uid
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_text() == r["out"] and server.store.verify(r["out"].strip()) == ALICE


@needs_root
async def test_admin_ops_only_for_admins(server: Server, unix_users: dict[str, pwd.struct_passwd]) -> None:
    r = await as_user(BOB, cli(server.sock, "admin", "drain", "7"))
    assert r["rc"] == 2 and r["err"].startswith("error: drain: only chirond admins may do this, and chiront-bob")
    r = await as_user(BOB, cli(server.sock, "admin", "limits", "llama-8b", "--max-instances", "2"))
    assert r["rc"] == 2 and "only chirond admins" in r["err"]
    assert server.drained == []
    r = await as_user(ALICE, cli(server.sock, "admin", "drain", "7"))
    assert r["rc"] == 0 and r["out"] == "instance 7 draining\n"
    r = await as_user(None, cli(server.sock, "admin", "limits", "llama-8b", "--max-instances", "2"))
    assert r["rc"] == 0 and r["out"] == "llama-8b: instances 1..2 until the daemon restarts\n"
    assert server.drained == [(ALICE, 7)]


@needs_root
async def test_usage_is_per_user(server: Server, unix_users: dict[str, pwd.struct_passwd]) -> None:
    r = await as_user(BOB, cli(server.sock, "usage"))
    assert r["rc"] == 0 and r["out"] == "no usage by chiront-bob in the last 30 day(s)\n"
    server.store.add_usage(ALICE, "llama-8b", 1234, 567, 7200.0)
    server.store.add_usage(BOB, "llama-70b", 89, 10, 36.0)
    r = await as_user(BOB, cli(server.sock, "usage", "--days", "1"))
    assert r["rc"] == 0, r
    assert "chiront-bob" in r["out"] and "llama-70b" in r["out"] and "0.010" in r["out"]
    assert ALICE not in r["out"] and "1,234" not in r["out"]
    r = await as_user(BOB, cli(server.sock, "usage", "--all"))
    assert r["rc"] == 2 and "only chirond admins may see everyone's usage" in r["err"]
    r = await as_user(ALICE, cli(server.sock, "usage", "--all"))
    assert r["rc"] == 0 and ALICE in r["out"] and BOB in r["out"] and "1,234" in r["out"] and "total" in r["out"]


@needs_root
async def test_usage_exports_csv_and_json_per_user_and_per_account(
    server: Server, unix_users: dict[str, pwd.struct_passwd], world_dir: Path
) -> None:
    server.store.add_usage(ALICE, "llama-8b", 1234, 567, 7200.0)
    server.store.add_usage(BOB, "llama-70b", 89, 10, 36.0)
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    r = await as_user(ALICE, cli(server.sock, "usage", "--all", "--since", today, "--format", "csv"))
    assert r["rc"] == 0, r
    rows = list(csv.DictReader(io.StringIO(r["out"])))
    assert [(x["user"], x["model"], x["tokens_in"], float(x["gpu_hours"])) for x in rows] == [
        (ALICE, "llama-8b", "1234", 2.0), (BOB, "llama-70b", "89", 0.01)]
    r = await as_user(ALICE, cli(server.sock, "usage", "--all", "--json"))
    assert r["rc"] == 0 and [x["requests"] for x in json.loads(r["out"])["rows"]] == [1, 1]
    # Per Slurm account: nobody here is in Slurm's accounting, so the map decides; bob is in none.
    amap = world_dir / "accounts"
    amap.write_text(f"# user account\n{ALICE} proj-alpha\n")
    amap.chmod(0o644)
    r = await as_user(ALICE, cli(server.sock, "usage", "--all", "--by", "account", "--account-map", str(amap),
                                 "--format", "json"))
    assert r["rc"] == 0, r
    got = {(x["account"], x["model"]): (x["users"], x["gpu_hours"]) for x in json.loads(r["out"])["rows"]}
    assert got == {("proj-alpha", "llama-8b"): (1, 2.0), ("(unmapped)", "llama-70b"): (1, 0.01)}
    r = await as_user(ALICE, cli(server.sock, "usage", "--since", "2999-01-01"))
    assert r["rc"] == 2 and "in the future" in r["err"]


@needs_root
async def test_status_for_any_user(server: Server, unix_users: dict[str, pwd.struct_passwd]) -> None:
    r = await as_user(BOB, cli(server.sock, "status", env={"COLUMNS": "200"}))
    assert r["rc"] == 0, r
    assert "llama-8b" in r["out"] and "interactive: 2 ready, 1 starting" in r["out"] and "98.8%" in r["out"]
    r = await as_user(BOB, cli(server.sock, "status", "--json"))
    assert json.loads(r["out"]) == SAMPLE_STATUS


# ---------------------------------------------------------------- the socket itself


async def test_socket_file_and_protocol(server: Server) -> None:
    assert stat.S_IMODE(server.sock.stat().st_mode) == 0o666 and stat.S_ISSOCK(server.sock.stat().st_mode)
    reader, writer = await asyncio.open_unix_connection(str(server.sock))

    async def ask(line: bytes) -> dict[str, Any]:
        writer.write(line)
        return json.loads(await reader.readline())

    # Several requests on one connection; bad ones get a clear answer and the connection stays up.
    assert (await ask(b"not json\n"))["error"].startswith("not a JSON object")
    assert (await ask(b"[1, 2]\n"))["error"] == 'expected a JSON object with "op" (a string)'
    unknown = await ask(b'{"op": "nope"}\n')
    assert (
        unknown["ok"] is False and "unknown op 'nope' (valid: drain, keys, limits, revoke, status" in unknown["error"]
    )
    assert (await ask(b'{"op": "usage", "days": 0}\n'))["error"].startswith("usage: 'days' must be an integer")
    assert (await ask(b'{"op": "whoami"}\n'))["user"] == "root"
    # An over-long line is refused and the connection closed.
    writer.write(b"x" * (MAX_LINE_BYTES + 10) + b"\n")
    answer = json.loads(await reader.readline())
    assert answer == {"ok": False, "error": f"request longer than {MAX_LINE_BYTES} bytes"}
    assert await reader.read() == b""
    writer.close()


async def test_stale_socket_is_replaced_a_live_one_is_not(server: Server, world_dir: Path) -> None:
    other = ControlServer(server.sock, {}, UsersConfig())
    with pytest.raises(OSError, match="another process is serving"):
        await other.start()
    assert (await as_user(None, op(server.sock, "whoami")))["ok"] is True  # the first still serves
    stale = world_dir / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # a socket file nobody listens on: what a kill -9 leaves
    fresh = ControlServer(stale, {}, UsersConfig())
    await fresh.start()
    assert (await as_user(None, op(stale, "whoami")))["user"] == "root"
    await fresh.stop()
    assert not stale.exists()
    plain = world_dir / "plain"
    plain.write_text("keep me")
    with pytest.raises(OSError, match="not a socket"):
        await ControlServer(plain, {}, UsersConfig()).start()
    assert plain.read_text() == "keep me"


def test_cli_without_a_daemon(world_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert control_cli.main(["token", "--socket", str(world_dir / "none.sock")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no control socket at {world_dir / 'none.sock'}: is chirond running?")
    assert control_cli.main(["admin", "limits", "m", "--socket", str(world_dir / "none.sock")]) == 2
    assert "give --max-instances N and/or --min-instances N" in capsys.readouterr().err


def test_default_socket_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHIROND_SOCKET", raising=False)
    assert control_cli.default_socket() == "/run/chirond/control.sock"
    monkeypatch.setenv("CHIROND_SOCKET", "/tmp/x.sock")
    assert control_cli.default_socket() == "/tmp/x.sock"


# ---------------------------------------------------------------- rendering (pure)


def render(obj: Any) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(obj)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_status_table_renders_the_sample() -> None:
    text = render(control_cli.status_renderable(SAMPLE_STATUS))
    assert (
        "chirond 0.1.0, policy chirond, backend local, up 1 h 2 min, tick 745, 3 request(s) in flight, 3 GPU(s) held"
    ) in text
    assert "last decision: interactive queue over SLO: launch" in text
    row = next(line for line in text.splitlines() if "llama-8b" in line and "live" in line)
    for cell in (
        "interactive: 2 ready, 1 starting; batch: 1 ready",
        "1-4, floor 3",
        "1,200",
        "45,000",
        "in 1 h 30 min",
        "98.8%",
    ):
        assert cell in row, (cell, row)
    assert row.rstrip(" │").endswith("-")  # batch attainment unknown yet
    row70 = next(line for line in text.splitlines() if "llama-70b" in line)
    assert "scaled_to_zero" in row70 and "none" in row70
    inst = next(line for line in text.splitlines() if "gpu01:20001" in line)
    assert "4242" in inst and "48" in inst


def test_status_table_tolerates_a_minimal_answer() -> None:
    text = render(control_cli.status_renderable({"models": [{"name": "m"}]}))
    assert "m" in text and "instances" in text
    # No "state": it is derived from the instances.
    for by_pool, state in (
        ({"mixed": {"draining": 1, "ready": 1}}, "live"),
        ({"batch": {"starting": 1}}, "starting"),
        ({"interactive": {"pending": 2}}, "queued"),
        ({}, "scaled_to_zero"),
    ):
        assert control_cli.model_state({"name": "m", "instances": by_pool}) == state
    assert control_cli.instances_cell({"weird": {"odd": 2}}) == "weird: 2 odd"
    assert control_cli.instances_cell(None) == "-"


def test_usage_table_totals() -> None:
    rows = [
        {"user": "a", "model": "m1", "requests": 2, "tokens_in": 1000, "tokens_out": 50, "gpu_s": 3600.0},
        {"user": "b", "model": "m1", "requests": 1, "tokens_in": 10, "tokens_out": 5, "gpu_s": 1800.0},
    ]
    text = render(control_cli.usage_table(rows, "usage"))
    total = next(line for line in text.splitlines() if "total" in line)
    assert "1,010" in total and "55" in total and "1.500" in total
    assert "total" not in render(control_cli.usage_table(rows[:1], "usage"))


@needs_root
async def test_one_account_holding_connections_locks_no_one_out(
    world_dir: Path, unix_users: dict[str, pwd.struct_passwd]
) -> None:
    # Issue 13, item 5: 64 idle connections of one user used to lock every other user out of
    # `chiron token` for as long as they were held.
    sock = world_dir / "run" / "control.sock"
    ctl = ControlServer(sock, {}, UsersConfig(), idle_timeout_s=1.0, max_per_uid=8)
    await ctl.start()
    held = [await asyncio.open_unix_connection(str(sock)) for _ in range(64)]  # root's, idle
    try:
        # The ninth and later connections of the same account are told why, and closed.
        answers = [await asyncio.wait_for(r.readline(), 5) for r, _ in held[8:]]
        assert all(json.loads(a)["ok"] is False and "per user" in json.loads(a)["error"] for a in answers)
        bob = await as_user(BOB, op(sock, "whoami"))  # another account is served at once
        assert bob["ok"] is True and bob["user"] == BOB
        # The idle ones are closed after the (short) idle timeout: root may connect again.
        assert [await asyncio.wait_for(r.read(), 5) for r, _ in held[:8]] == [b""] * 8
        assert (await asyncio.to_thread(op(sock, "whoami")))["user"] == "root"
    finally:
        for _, w in held:
            w.close()
        await ctl.stop()
