"""chirond/cluster/ssh.py without a network: [backend.slurm.ssh] validation (errors name key paths),
argv quoting, the reconnect backoff with a fake clock and connector, scrape_over_ssh's fetcher."""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from chirond.cluster.probe import ProbeError
from chirond.cluster.slurm import CommandResult, TransportError
from chirond.cluster.ssh import SshTransport, backoff_delay, fetch_argv, remote_command, scrape_over_ssh
from chirond.config import SSH_KEYS, ConfigError, SshConfig, load_config, parse_jump_host

ROOT = Path(__file__).resolve().parents[2]
METRICS = ROOT / "tests" / "data" / "vllm_metrics" / "vllm-0.10.2.txt"

# ---------------------------------------------------------------- config

BASE = """
[daemon]
backend = "slurm"
[api]
auth = "open"
[backend.slurm]
partition = "a100"
[backend.slurm.ssh]
{ssh}
[models.m]
profile = "llama-3.1-8b_a100-80gb_tp1"
slo = {{ ttft_s = 1.0, tpot_s = 0.1 }}
"""


def write(tmp_path: Path, ssh: str) -> Path:
    (tmp_path / "id").write_text("key\n")
    (tmp_path / "kh").write_text("[login]:22 ssh-ed25519 AAAA\n")
    path = tmp_path / "chirond.toml"
    path.write_text(BASE.format(ssh=ssh))
    return path


GOOD = 'host = "login1"\nkey_file = "id"\nknown_hosts = "kh"'


def test_ssh_table_loads_with_defaults_and_relative_paths(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.slurm is not None and cfg.slurm.ssh is not None
    s = cfg.slurm.ssh
    assert (s.host, s.port, s.user, s.jump_host) == ("login1", 22, "", "")
    assert s.key_file == (tmp_path / "id").resolve() and s.known_hosts == (tmp_path / "kh").resolve()
    assert (s.connect_timeout_s, s.command_timeout_s, s.keepalive_s) == (10.0, 30.0, 15.0)


def test_ssh_table_is_optional(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    path.write_text(path.read_text().replace("[backend.slurm.ssh]\n" + GOOD, ""))
    cfg = load_config(path)
    assert cfg.slurm is not None and cfg.slurm.ssh is None


def test_ssh_table_every_key(tmp_path: Path) -> None:
    text = GOOD + ('\nport = 2222\nuser = "svc"\njump_host = "gw@bastion:2200"\nconnect_timeout_s = 3\n'
                   'command_timeout_s = 20\nkeepalive_s = 5')
    s = load_config(write(tmp_path, text)).slurm.ssh  # type: ignore[union-attr]
    assert s == SshConfig(host="login1", key_file=(tmp_path / "id").resolve(), known_hosts=(tmp_path / "kh").resolve(),
                          port=2222, user="svc", jump_host="gw@bastion:2200", connect_timeout_s=3.0,
                          command_timeout_s=20.0, keepalive_s=5.0)


@pytest.mark.parametrize("ssh, key, reason", [
    ('key_file = "id"\nknown_hosts = "kh"', "host", "required"),
    ('host = "a b"\nkey_file = "id"\nknown_hosts = "kh"', "host", "must be a host name"),
    ('host = "login1"\nknown_hosts = "kh"', "key_file", "required"),
    ('host = "login1"\nkey_file = "nope"\nknown_hosts = "kh"', "key_file", "no such file: "),
    ('host = "login1"\nkey_file = "id"', "known_hosts", "required"),
    ('host = "login1"\nkey_file = "id"\nknown_hosts = ""', "known_hosts",
     "must name a known_hosts file: host keys are always checked"),
    ('host = "login1"\nkey_file = "id"\nknown_hosts = "/no/such/kh"', "known_hosts", "no such file: /no/such/kh"),
    (GOOD + "\nport = 0", "port", "must be an integer in 1..65535"),
    (GOOD + '\nuser = "a b"', "user", "must be a user name"),
    (GOOD + '\njump_host = "a b:22"', "jump_host", "must be [user@]host[:port]"),
    (GOOD + '\njump_host = "gw:99999"', "jump_host", "must be [user@]host[:port] with a port in 1..65535"),
    (GOOD + "\nconnect_timeout_s = 0", "connect_timeout_s", "must be a positive number"),
    (GOOD + "\ncommand_timeout_s = -1", "command_timeout_s", "must be a positive number"),
    (GOOD + '\nkeepalive_s = "x"', "keepalive_s", "must be a positive number"),
    (GOOD + "\nstrict = false", "strict", "unknown key (valid: " + ", ".join(SSH_KEYS)),
])
def test_ssh_table_errors_name_the_key_path(tmp_path: Path, ssh: str, key: str, reason: str) -> None:
    path = write(tmp_path, ssh)
    with pytest.raises(ConfigError, match=re.escape(f"{path}: backend.slurm.ssh.{key}: {reason}")):
        load_config(path)


def test_ssh_must_be_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    path.write_text(path.read_text().replace("[backend.slurm.ssh]\n" + GOOD, "").replace(
        'partition = "a100"', 'partition = "a100"\nssh = "login1"'))
    with pytest.raises(ConfigError, match=re.escape(f"{path}: backend.slurm.ssh: must be a table")):
        load_config(path)


def test_docs_and_example_cover_every_ssh_key(tmp_path: Path) -> None:
    docs = (ROOT / "docs" / "config.md").read_text()
    section = docs.split("## `[backend.slurm.ssh]`", 1)[1].split("\n## ", 1)[0]
    for key in SSH_KEYS:
        assert f"| `{key}` |" in section, key
    text = (ROOT / "etc" / "chirond.toml").read_text()
    block = text.split("# [backend.slurm.ssh]\n", 1)[1].split("# (end of [backend.slurm.ssh])", 1)[0]
    settings = "\n".join(line[2:] for line in block.splitlines() if re.match(r"# [a-z_]+ = ", line))
    (tmp_path / "id").write_text("k")
    (tmp_path / "kh").write_text("k")
    doc = dict(__import__("tomllib").loads(settings))
    assert set(doc) == set(SSH_KEYS)
    doc.update(key_file="id", known_hosts="kh")
    lines = "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in doc.items())
    assert load_config(write(tmp_path, lines)).slurm.ssh is not None  # type: ignore[union-attr]


@pytest.mark.parametrize("spec, want", [
    ("bastion", ("", "bastion", 22)),
    ("gw@bastion:2200", ("gw", "bastion", 2200)),
    ("gw@[::1]:2200", ("gw", "::1", 2200)),
])
def test_parse_jump_host(spec: str, want: tuple[str, str, int]) -> None:
    assert parse_jump_host(spec) == want


# ---------------------------------------------------------------- argv quoting


@pytest.mark.parametrize("argv", [
    ["echo", "a b", "$(touch /tmp/pwned)", "`id`", ";", "rm -rf /", "it's", '"x"', "a\nb", "", "*", "$HOME", "&&"],
    ["sbatch", "--parsable", "--comment=chirond:x y:1", "--job-name=chirond-m-1"],
])
def test_remote_command_quotes_every_word(argv: list[str]) -> None:
    cmd = remote_command(argv)
    assert shlex.split(cmd) == argv
    # what the login node's shell does with it: the same words reach the program, nothing expanded or run
    line = remote_command(["printf", "%s\\0", *argv])
    out = subprocess.run(["sh", "-c", line], capture_output=True, check=True).stdout
    assert out.decode().split("\0")[:-1] == argv


def test_remote_command_refuses_empty_argv() -> None:
    with pytest.raises(ValueError):
        remote_command([])


# ---------------------------------------------------------------- backoff with a fake clock and connector


class FakeResult:
    def __init__(self, stdout: bytes = b"", stderr: bytes = b"", rc: int = 0) -> None:
        self.stdout, self.stderr, self.returncode = stdout, stderr, rc


class FakeConn:
    def __init__(self, answer: Any = None) -> None:
        self.closed = False
        self.commands: list[str] = []
        self.answer = answer or (lambda cmd, inp: FakeResult(b"ok\n"))

    def is_closed(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    async def wait_closed(self) -> None:
        return None

    async def run(self, cmd: str, input: bytes | None = None, **kw: Any) -> Any:
        if self.closed:
            raise asyncssh.ConnectionLost("connection lost")
        self.commands.append(cmd)
        return self.answer(cmd, input)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Connector:
    def __init__(self) -> None:
        self.up = False
        self.attempts = 0
        self.conns: list[FakeConn] = []

    async def __call__(self) -> FakeConn:
        self.attempts += 1
        if not self.up:
            raise OSError(111, "Connect call failed ('127.0.0.1', 22)")
        self.conns.append(FakeConn())
        return self.conns[-1]


CFG = SshConfig(host="login1", key_file=Path("/k"), known_hosts=Path("/kh"))


def test_backoff_schedule() -> None:
    assert [backoff_delay(n) for n in range(1, 10)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


async def test_lazy_connect_and_one_connection_reused() -> None:
    connector = Connector()
    connector.up = True
    t = SshTransport(CFG, connector=connector)
    assert not t.connected and connector.attempts == 0  # constructing does no I/O
    for _ in range(3):
        r = await t.run(["squeue", "--json"], 5)
        assert (r.returncode, r.stdout, r.argv) == (0, "ok\n", ("squeue", "--json"))
    assert connector.attempts == 1 and t.connected and t.connects == 1 and t.last_error is None
    assert connector.conns[0].commands == ["squeue --json"] * 3
    await t.close()
    assert not t.connected and connector.conns[0].closed
    with pytest.raises(TransportError, match="closed"):
        await t.run(["true"], 5)


async def test_backoff_refuses_at_once_then_retries_and_resets() -> None:
    clock, connector = Clock(), Connector()
    t = SshTransport(CFG, connector=connector, clock=clock)
    waits = []
    for _ in range(8):
        with pytest.raises(TransportError, match=r"^ssh to login1 unavailable: .*Connect call failed"):
            await t.run(["sinfo"], 5)
        waits.append(t.retry_in())
        # during the backoff: refused without a connection attempt
        before = connector.attempts
        with pytest.raises(TransportError, match=r"unavailable: .*next try in"):
            await t.run(["sinfo"], 5)
        assert connector.attempts == before
        clock.t += t.retry_in()
    assert waits == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert not t.connected and "Connect call failed" in (t.last_error or "")
    connector.up = True
    assert (await t.run(["sinfo"], 5)).returncode == 0
    assert t.connected and t.last_error is None and t.retry_in() == 0
    # a lost connection: refused (backoff starts again at 0.5 s), then reconnects
    connector.conns[-1].closed = True
    with pytest.raises(TransportError, match="unavailable: connection lost"):
        await t.run(["sinfo"], 5)
    assert not t.connected and t.retry_in() == 0.5
    clock.t += 0.5
    assert (await t.run(["sinfo"], 5)).returncode == 0
    assert t.connects == 2


async def test_connection_lost_under_a_command() -> None:
    clock, connector = Clock(), Connector()
    connector.up = True
    t = SshTransport(CFG, connector=connector, clock=clock)
    await t.run(["true"], 5)

    def die(cmd: str, inp: bytes | None) -> FakeResult:
        raise asyncssh.ConnectionLost("Connection lost")

    connector.conns[0].answer = die
    with pytest.raises(TransportError, match="ssh to login1 unavailable: Connection lost"):
        await t.run(["squeue"], 5)
    assert not t.connected and t.last_error == "Connection lost" and connector.conns[0].closed


async def test_timeout_and_exit_codes() -> None:
    connector = Connector()
    connector.up = True

    def answer(cmd: str, inp: bytes | None) -> FakeResult:
        if cmd.startswith("sleep"):
            raise asyncssh.TimeoutError(None, cmd, None, None, None, None, b"", b"")
        return FakeResult(b"", inp or b"boom", 3)

    t = SshTransport(CFG, connector=connector)
    await t.run(["true"], 5)
    connector.conns[0].answer = answer
    r = await t.run(["sbatch"], 5, input=b"#!/bin/sh\n")
    assert (r.returncode, r.stderr) == (3, "#!/bin/sh\n")
    with pytest.raises(TransportError, match="did not finish within"):
        await t.run(["sleep", "9"], 1)
    assert t.connected  # a slow command is not a lost connection


# ---------------------------------------------------------------- scrape_over_ssh with a fake transport


class FakeTransport(SshTransport):
    def __init__(self, has_curl: bool, page: str, rc: int = 0) -> None:
        super().__init__(CFG)
        self.has_curl, self.page, self.rc = has_curl, page, rc
        self.seen: list[tuple[str, ...]] = []

    async def run(self, argv: Sequence[str], timeout_s: float, input: bytes | None = None) -> CommandResult:
        self.seen.append(tuple(argv))
        if argv[0] == "sh":
            return CommandResult(tuple(argv), 0 if self.has_curl else 1, "/usr/bin/curl\n" if self.has_curl else "",
                                 "", 0.0)
        return CommandResult(tuple(argv), self.rc, self.page, "" if self.rc == 0 else "refused", 0.0)


@pytest.mark.parametrize("has_curl", [True, False])
async def test_scrape_over_ssh_detects_the_fetcher_once(has_curl: bool) -> None:
    t = FakeTransport(has_curl, METRICS.read_text())
    for _ in range(2):
        stats = await scrape_over_ssh(t, "gpu01", 20001, 2.0)
        assert stats.model_names
    assert [a[0] for a in t.seen] == ["sh", "curl" if has_curl else "python3", "curl" if has_curl else "python3"]
    assert t.seen[1] == tuple(fetch_argv(t.fetcher or "", "http://gpu01:20001/metrics", 2.0))


async def test_scrape_over_ssh_errors_are_probe_errors() -> None:
    with pytest.raises(ProbeError, match=r"http://gpu01:1/metrics: curl exit 7: refused"):
        await scrape_over_ssh(FakeTransport(True, "", rc=7), "gpu01", 1, 1.0)
    with pytest.raises(ProbeError, match="no vLLM metric"):
        await scrape_over_ssh(FakeTransport(True, "<html>"), "gpu01", 1, 1.0)
    with pytest.raises(ProbeError, match="bad engine address"):
        await scrape_over_ssh(FakeTransport(True, ""), "gpu01/x?", 1, 1.0)
    down = SshTransport(CFG, connector=Connector())
    with pytest.raises(ProbeError, match="ssh to login1 unavailable"):
        await scrape_over_ssh(down, "gpu01", 1, 1.0)


def test_python_fetcher_runs_locally(tmp_path: Path) -> None:
    """The python3 fallback's script itself: prints nothing and exits 1 with a reason on a refused port."""
    argv = fetch_argv("python3", "http://127.0.0.1:1/metrics", 1.0)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    assert proc.returncode == 1 and proc.stdout == "" and "refused" in proc.stderr.lower()
