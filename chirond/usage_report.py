"""`chiron usage` for scripts and accounting: rows as CSV or JSON, and rolled up per Slurm account
so a centre can charge the GPU time chirond's one service account spent to the accounts of the
users who asked. A user's account comes from Slurm's accounting (`sacctmgr show user`, the
default account) where it exists, else from a map file (`USER ACCOUNT` lines); users in
neither are charged to "(unmapped)"."""

from __future__ import annotations

import csv
import datetime as dt
import io
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

UNMAPPED = "(unmapped)"
COLUMNS = ("user", "model", "requests", "tokens_in", "tokens_out", "gpu_hours")
ACCOUNT_COLUMNS = ("account", "model", "users", "requests", "tokens_in", "tokens_out", "gpu_hours")

class Ran(Protocol):
    returncode: int
    stdout: str


Runner = Callable[[list[str]], Ran]


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def days_since(since: str, today: dt.date | None = None) -> int:
    """UTC days from `since` (YYYY-MM-DD) to today, both included; ValueError if it is not a date
    or lies in the future."""
    day = dt.date.fromisoformat(since)
    today = today or dt.datetime.now(dt.UTC).date()
    if day > today:
        raise ValueError(f"--since {since} is in the future")
    return (today - day).days + 1


def slurm_accounts(run: Runner = _run) -> dict[str, str]:
    """User -> default account from Slurm's accounting; {} where there is no sacctmgr or no
    accounting database (the caller falls back to its map)."""
    if run is _run and shutil.which("sacctmgr") is None:
        return {}
    try:
        res = run(["sacctmgr", "--noheader", "--parsable2", "show", "user", "format=User,DefaultAccount"])
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if res.returncode != 0:
        return {}
    out: dict[str, str] = {}
    for line in res.stdout.splitlines():
        user, sep, account = line.strip().partition("|")
        if sep and user and account:
            out[user] = account
    return out


def read_account_map(path: Path) -> dict[str, str]:
    """`USER ACCOUNT` a line; '#' comments and blank lines skipped. ValueError names a bad line."""
    out: dict[str, str] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{n}: expected 'USER ACCOUNT', got {raw.strip()!r}")
        out[parts[0]] = parts[1]
    return out


def user_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The daemon's rows with GPU time in hours (what a report shows)."""
    return [{"user": r["user"], "model": r["model"], "requests": r["requests"], "tokens_in": r["tokens_in"],
             "tokens_out": r["tokens_out"], "gpu_hours": r["gpu_s"] / 3600} for r in rows]


def by_account(rows: Iterable[dict[str, Any]], accounts: dict[str, str]) -> list[dict[str, Any]]:
    """Per account and model: sums, and how many users; sorted by account, model."""
    acc: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        key = (accounts.get(r["user"], UNMAPPED), r["model"])
        a = acc.setdefault(key, {"account": key[0], "model": key[1], "users": set(), "requests": 0,
                                 "tokens_in": 0, "tokens_out": 0, "gpu_hours": 0.0})
        a["users"].add(r["user"])
        for k in ("requests", "tokens_in", "tokens_out"):
            a[k] += r[k]
        a["gpu_hours"] += r["gpu_s"] / 3600
    return [{**a, "users": len(a["users"])} for _, a in sorted(acc.items())]


def to_csv(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{r[k]:.6f}" if isinstance(r[k], float) else r[k]) for k in columns})
    return buf.getvalue()
