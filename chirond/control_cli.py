"""The `chiron` commands that talk to the daemon over its control socket (chirond/ops/socket_server.py):
`chiron token`, `chiron usage`, `chiron status` and `chiron admin drain|limits`. The socket knows
who runs them from the Unix account; no key or password is needed.

`chiron status` renders the dict the daemon's "status" op answers (besides "ok"):

    {
      "version": str, "policy": str, "backend": str, "uptime_s": float, "ticks": int,
      "requests_in_flight": int, "gpus_in_use": int, "last_reason": str,   # the daemon
      "models": [{
          "name": str,
          "state": "live" | "starting" | "queued" | "scaled_to_zero",  # else derived from instances
          "min_instances": int, "max_instances": int,
          "floor": int | None,               # this hour's min_instances_by_hour, as of the last tick
          "instances": {POOL: {STATE: n}},   # POOL: interactive | mixed | batch;
                                             # STATE: pending | starting | ready | draining
          "queue_interactive": int,          # requests waiting in chirond's queues
          "queue_batch": int,
          "backlog_lines": int,              # Batch API lines not yet run
          "next_deadline_s": float | None,   # seconds to the earliest deadline of those lines
          "slo_attainment": {"interactive": float | None, "batch": float | None},  # 0-1 since start
      }],
      "instances": [{"id": int, "model": str, "pool": str, "state": str, "job_id": str | None,
                     "host": str | None, "cap": int | None, "inflight": int}]   # optional
    }

Every key but "models" and each model's "name" may be left out; the table shows "-" for it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table

from chirond.cli_common import add_json_arg, console

DEFAULT_SOCKET = "/run/chirond/control.sock"
MAX_REPLY_BYTES = 16 * 2**20
POOLS = ("interactive", "mixed", "batch")
STATES = ("ready", "starting", "pending", "draining")


class ControlError(Exception):
    """The daemon could not be reached or refused the request; the message says which and why."""


def default_socket() -> str:
    return os.environ.get("CHIROND_SOCKET") or DEFAULT_SOCKET


def call(path: str | Path, op: str, timeout_s: float = 30.0, **args: Any) -> dict[str, Any]:
    """One request on the control socket -> the answer's fields (without "ok"); ControlError when
    the daemon is not there or answers {"ok": false}."""
    path = str(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        try:
            s.connect(path)
        except FileNotFoundError:
            raise ControlError(
                f"no control socket at {path}: is chirond running? (--socket PATH or CHIROND_SOCKET names another)"
            ) from None
        except ConnectionRefusedError:
            raise ControlError(f"nothing listens on {path}: chirond is not running (a stale socket file)") from None
        except PermissionError:
            raise ControlError(f"permission denied on {path}: its directory must be searchable by you") from None
        except OSError as e:
            raise ControlError(f"cannot connect to {path}: {e.strerror or e}") from None
        try:
            s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            buf = bytearray()
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > MAX_REPLY_BYTES:
                    raise ControlError(f"the answer from {path} is longer than {MAX_REPLY_BYTES} bytes")
        except TimeoutError:
            raise ControlError(f"chirond did not answer on {path} within {timeout_s:g} s") from None
        except OSError as e:
            raise ControlError(f"lost the connection to {path}: {e.strerror or e}") from None
    try:
        reply = json.loads(buf)
    except ValueError:
        raise ControlError(f"chirond closed {path} without a valid answer") from None
    if not isinstance(reply, dict):
        raise ControlError(f"unexpected answer from {path}: {reply!r}")
    if not reply.pop("ok", False):
        raise ControlError(str(reply.get("error", "refused (no reason given)")))
    return reply


# ---------------------------------------------------------------- pure rendering


def _pct(v: object) -> str:
    return f"{v * 100:.1f}%" if isinstance(v, int | float) and not isinstance(v, bool) else "-"


def _n(v: object) -> str:
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else "-"


def instances_cell(by_pool: object) -> str:
    """{"interactive": {"ready": 2, "starting": 1}, "batch": {"ready": 1}} ->
    "interactive: 2 ready, 1 starting; batch: 1 ready" (zero counts left out; "none" when empty)."""
    if not isinstance(by_pool, dict):
        return "-"
    parts = []
    for pool in (*POOLS, *sorted(set(by_pool) - set(POOLS))):
        states = by_pool.get(pool)
        if not isinstance(states, dict):
            continue
        counts = [
            f"{n} {s}"
            for s in (*STATES, *sorted(set(states) - set(STATES)))
            if isinstance(n := states.get(s), int) and n > 0
        ]
        if counts:
            parts.append(f"{pool}: {', '.join(counts)}")
    return "; ".join(parts) or "none"


def model_state(m: dict[str, Any]) -> str:
    """The model's state as the daemon says it, else from its instances: live (one ready),
    starting, queued (only pending jobs) or scaled_to_zero."""
    if isinstance(m.get("state"), str):
        return str(m["state"])
    by_pool = m.get("instances")
    if not isinstance(by_pool, dict):
        return "-"
    have = {
        s
        for states in by_pool.values()
        if isinstance(states, dict)
        for s, n in states.items()
        if isinstance(n, int) and n > 0
    }
    for state, shown in (("ready", "live"), ("starting", "starting"), ("pending", "queued")):
        if state in have:
            return shown
    return "scaled_to_zero"


def status_renderable(status: dict[str, Any]) -> Group:
    """The status dict (see the module's docstring) as a header line, a table of models and, when
    the daemon sent them, a table of instances."""
    bits = []
    if status.get("version"):
        bits.append(f"chirond {status['version']}")
    bits += [f"{k} {status[k]}" for k in ("policy", "backend") if status.get(k)]
    if isinstance(up := status.get("uptime_s"), int | float):
        bits.append(f"up {_duration(up)}")
    if isinstance(status.get("ticks"), int):
        bits.append(f"tick {status['ticks']}")
    if isinstance(status.get("requests_in_flight"), int):
        bits.append(f"{status['requests_in_flight']} request(s) in flight")
    if isinstance(status.get("gpus_in_use"), int):
        bits.append(f"{status['gpus_in_use']} GPU(s) held")
    head = [escape(", ".join(bits))] if bits else []
    if status.get("last_reason"):
        head.append(f"last decision: {escape(str(status['last_reason']))}")
    models = Table(title="models", title_justify="left")
    for col, just in (
        ("model", "left"),
        ("state", "left"),
        ("instances (pool: count state)", "left"),
        ("min-max", "right"),
        ("queued int.", "right"),
        ("queued batch", "right"),
        ("batch lines", "right"),
        ("next deadline", "right"),
        ("SLO int.", "right"),
        ("SLO batch", "right"),
    ):
        models.add_column(col, justify=just)  # type: ignore[arg-type]
    for m in status.get("models") or []:
        slo = m.get("slo_attainment") or {}
        lo, hi = m.get("min_instances"), m.get("max_instances")
        floor = f", floor {_n(m['floor'])}" if m.get("floor") is not None else ""
        deadline = m.get("next_deadline_s")
        models.add_row(
            escape(str(m.get("name", "?"))),
            escape(model_state(m)),
            escape(instances_cell(m.get("instances"))),
            f"{_n(lo)}-{_n(hi)}{floor}" if lo is not None or hi is not None else "-",
            _n(m.get("queue_interactive")),
            _n(m.get("queue_batch")),
            _n(m.get("backlog_lines")),
            _in(deadline),
            _pct(slo.get("interactive")),
            _pct(slo.get("batch")),
        )
    parts: list[Any] = [*head, models]
    inst = status.get("instances")
    if inst:
        t = Table(title="instances", title_justify="left")
        for col in ("id", "model", "pool", "state", "job", "host", "cap", "in flight"):
            t.add_column(col, justify="right" if col in ("id", "cap", "in flight") else "left")
        for i in inst:
            t.add_row(
                _n(i.get("id")),
                escape(str(i.get("model", "-"))),
                escape(str(i.get("pool", "-"))),
                escape(str(i.get("state", "-"))),
                escape(str(i.get("job_id") or "-")),
                escape(str(i.get("host") or "-")),
                _n(i.get("cap")),
                _n(i.get("inflight")),
            )
        parts.append(t)
    return Group(*parts)


def usage_table(rows: list[dict[str, Any]], title: str) -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("user", "model", "requests", "tokens in", "tokens out", "GPU-hours"):
        t.add_column(col, justify="left" if col in ("user", "model") else "right")
    tot = [0, 0, 0, 0.0]
    for r in rows:
        t.add_row(
            escape(str(r["user"])),
            escape(str(r["model"])),
            _n(r["requests"]),
            _n(r["tokens_in"]),
            _n(r["tokens_out"]),
            f"{r['gpu_s'] / 3600:.3f}",
        )
        for i, k in enumerate(("requests", "tokens_in", "tokens_out", "gpu_s")):
            tot[i] += r[k]
    if len(rows) > 1:
        t.add_section()
        t.add_row("total", "", _n(tot[0]), _n(tot[1]), _n(tot[2]), f"{tot[3] / 3600:.3f}")
    return t


def _in(s: object) -> str:
    if not isinstance(s, int | float) or isinstance(s, bool):
        return "-"
    return f"in {_duration(s)}" if s >= 0 else f"{_duration(-s)} late"


def _duration(s: float) -> str:
    s = int(s)
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _when(t: object) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if isinstance(t, int | float) else "never"


# ---------------------------------------------------------------- commands


def key_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "chirond" / "key"


def save_key(key: str, path: Path) -> None:
    """Write the key readable by its owner only (0600; the directory 0700 when created)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT: set it
        f.write(key + "\n")


_ALL = "\0all"  # --revoke with no PREFIX


def _token(args: argparse.Namespace) -> int:
    who = {"user": args.user} if args.user else {}
    if args.list:
        out = call(args.socket, "keys", **who)
        if args.json:
            print(json.dumps(out, indent=2))
            return 0
        t = Table(title=f"API keys of {out['user']}", title_justify="left")
        for col in ("prefix", "created", "last used"):
            t.add_column(col)
        for k in out["keys"]:
            t.add_row(escape(k["prefix"]) + "…", _when(k["created"]), _when(k["last_used"]))
        console().print(t)
        return 0
    if args.revoke is not None:
        prefix = None if args.revoke == _ALL else args.revoke.rstrip("…")
        out = call(args.socket, "revoke", prefix=prefix, **who)
        print(f"revoked {out['revoked']} key(s) of {out['user']}", file=sys.stderr)
        return 0
    out = call(args.socket, "token", **who)
    print(out["key"])  # alone on stdout: export OPENAI_API_KEY=$(chiron token)
    if args.save:
        path = key_file()
        save_key(out["key"], path)
        print(f"saved to {path} (mode 0600); export OPENAI_API_KEY=$(cat {path})", file=sys.stderr)
    else:
        print(
            f"a new key for {out['user']} (shown once; prefix {out['prefix']}): export OPENAI_API_KEY=<the key>",
            file=sys.stderr,
        )
    return 0


def _usage(args: argparse.Namespace) -> int:
    from chirond import usage_report as ur

    days = args.days
    if args.since is not None:
        try:
            days = ur.days_since(args.since)
        except ValueError as e:
            raise ControlError(f"--since: {e} (expected YYYY-MM-DD, UTC)") from None
    fmt = "json" if args.json else args.format
    out = call(args.socket, "usage", days=days, **({"all": True} if args.all else {}))
    rows: list[dict[str, Any]] = out["rows"]
    columns: tuple[str, ...]
    if args.by == "account":
        accounts = ur.slurm_accounts()
        if args.account_map:
            try:
                fallback = ur.read_account_map(Path(args.account_map))
            except (OSError, ValueError) as e:
                raise ControlError(f"--account-map: {e}") from None
            accounts = {**fallback, **accounts}  # Slurm's accounting wins where it knows the user
        report, columns = ur.by_account(rows, accounts), ur.ACCOUNT_COLUMNS
    else:
        report, columns = ur.user_rows(rows), ur.COLUMNS
    if fmt == "json":
        print(json.dumps({"user": out.get("user"), "days": out["days"], "by": args.by, "rows": report}, indent=2))
        return 0
    if fmt == "csv":
        sys.stdout.write(ur.to_csv(report, columns))
        return 0
    who = "all users" if out.get("user") is None else str(out["user"])
    if not rows:
        print(f"no usage by {who} in the last {out['days']} day(s)")
        return 0
    title = f"usage of {who}, last {out['days']} day(s) (UTC days)"
    if args.by == "account":
        console().print(account_table(report, title + ", per Slurm account"))
    else:
        console().print(usage_table(rows, title))
    return 0


def account_table(rows: list[dict[str, Any]], title: str) -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("account", "model", "users", "requests", "tokens in", "tokens out", "GPU-hours"):
        t.add_column(col, justify="left" if col in ("account", "model") else "right")
    for r in rows:
        t.add_row(escape(r["account"]), escape(r["model"]), _n(r["users"]), _n(r["requests"]), _n(r["tokens_in"]),
                  _n(r["tokens_out"]), f"{r['gpu_hours']:.3f}")
    return t


def _status(args: argparse.Namespace) -> int:
    out = call(args.socket, "status")
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        console().print(status_renderable(out))
    return 0


def _drain(args: argparse.Namespace) -> int:
    out = call(args.socket, "drain", instance=args.instance)
    model = f" ({out['model']})" if out.get("model") else ""
    print(out.get("message") or f"instance {args.instance}{model}: {out.get('state', 'draining')}")
    return 0


def _limits(args: argparse.Namespace) -> int:
    change = {
        k: v for k, v in (("max_instances", args.max_instances), ("min_instances", args.min_instances)) if v is not None
    }
    if not change:
        raise ControlError("admin limits: give --max-instances N and/or --min-instances N")
    out = call(args.socket, "limits", model=args.model, **change)
    lo, hi = out.get("min_instances", "?"), out.get("max_instances", "?")
    print(out.get("message") or f"{args.model}: instances {lo}..{hi} until the daemon restarts")
    return 0


def _run(func: Any) -> Any:
    """A command's errors as "error: ..." on stderr, exit code 2 (as the rest of `chiron`)."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except ControlError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except OSError as e:  # e.g. --save cannot write the key file
            print(f"error: {e}", file=sys.stderr)
            return 2

    return run


def _socket_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--socket",
        default=default_socket(),
        help=f"chirond's control socket (default: $CHIROND_SOCKET or {DEFAULT_SOCKET})",
    )


def _nonneg(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def add_parsers(sub: Any) -> None:
    """Register token, usage, status and admin on `chiron`'s subparsers."""
    p = sub.add_parser(
        "token",
        help="mint your API key (your Unix account is your identity)",
        description="Mint a new API key for your Unix account and print it (it is shown once; "
        "chirond keeps only a hash). --revoke takes keys back.",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--revoke",
        nargs="?",
        const=_ALL,
        metavar="PREFIX",
        help="revoke all your keys, or the one whose prefix (from --list) or text is PREFIX",
    )
    g.add_argument("--list", action="store_true", help="list your keys (prefix, created, last used)")
    p.add_argument("--save", action="store_true", help="also write the key to ~/.config/chirond/key (mode 0600)")
    p.add_argument("--user", help="admins: act for this user instead")
    add_json_arg(p)
    _socket_arg(p)
    p.set_defaults(func=_run(_token))

    p = sub.add_parser("usage", help="tokens and GPU time you used (admins: everyone's), per user or Slurm account",
                       description="Tokens and GPU time per user and model, from the daemon's accounting (UTC "
                       "days). --by account charges each user's share to their Slurm account: the default "
                       "account sacctmgr knows, else the --account-map file's (lines 'USER ACCOUNT').")
    p.add_argument("--all", action="store_true", help="admins: every user")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--days", type=int, default=30, help="the last N UTC days, today included (default 30)")
    when.add_argument("--since", metavar="YYYY-MM-DD", help="from this UTC day to today, both included")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output (default table)")
    add_json_arg(p)
    p.add_argument("--by", choices=("user", "account"), default="user", help="roll up per user (default) or account")
    p.add_argument("--account-map", metavar="FILE", default=os.environ.get("CHIRON_ACCOUNT_MAP"),
                   help="USER ACCOUNT lines for users Slurm's accounting does not know (default $CHIRON_ACCOUNT_MAP)")
    _socket_arg(p)
    p.set_defaults(func=_run(_usage))

    p = sub.add_parser("status", help="models, instances per pool and state, queues, SLO attainment")
    p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")
    _socket_arg(p)
    p.set_defaults(func=_run(_status))

    p = sub.add_parser("admin", help="admin operations (only for chirond's admin users and groups)")
    asub = p.add_subparsers(dest="admin_cmd", required=True)
    a = asub.add_parser("drain", help="drain an instance: no new requests, stopped when idle")
    a.add_argument("instance", type=int, metavar="INSTANCE_ID", help="the id `chiron status` shows")
    _socket_arg(a)
    a.set_defaults(func=_run(_drain))
    a = asub.add_parser("limits", help="change a model's instance limits until the daemon restarts")
    a.add_argument("model", metavar="MODEL")
    a.add_argument("--max-instances", type=_nonneg, metavar="N")
    a.add_argument("--min-instances", type=_nonneg, metavar="N")
    _socket_arg(a)
    a.set_defaults(func=_run(_limits))


def main(argv: list[str] | None = None) -> int:
    """`python -m chirond.control_cli ...`: the same commands without the rest of `chiron`."""
    ap = argparse.ArgumentParser(prog="chiron")
    add_parsers(ap.add_subparsers(dest="cmd", required=True))
    args = ap.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
