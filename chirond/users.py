"""Users: API keys minted for Unix accounts (stored only as SHA-256 hashes), per-user quotas and
usage accounting, in SQLite tables of their own (`users_*`, `usage_*`) inside the daemon's
chirond.db (chirond.db owns the file and its schema; the batch store keeps its tables in the same
file, on its own connection).

The request path costs microseconds: `verify` is a dict lookup on the key's hash after the first
use, `tokens_today` reads an in-memory counter, and usage is buffered in memory and written once
per control tick by `flush()`. Days are UTC days.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from chirond.db import Database, transaction
from chirond.tomltable import Fail, Table, key_path, show

log = logging.getLogger(__name__)

KEY_PREFIX = "chd-"  # every minted key starts with it (so a leaked key is recognisable in a scan)
SHOWN_CHARS = 12  # "chd-" + 8 characters: enough to tell keys apart, far too little to guess one
MAX_KEYS_PER_USER = 16  # minting more asks the user to revoke one: keeps the table and the cache bounded
DAY_S = 86400
USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,63}")  # a Unix user or group name (used with fullmatch)


# ---------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class Quota:
    """One user's limits; 0 = unlimited."""

    concurrent_interactive: int = 0  # interactive requests in flight at once
    queued_batch_lines: int = 0  # batch lines waiting (Batch API) at once
    tokens_per_day: int = 0  # input + output tokens per UTC day
    storage_bytes: int = 0  # bytes of the user's files (uploads and batch results) kept at once


QUOTA_KEYS = tuple(f.name for f in fields(Quota))
USERS_KEYS = ("admin_users", "admin_groups", "quota")


@dataclass(frozen=True, slots=True)
class UsersConfig:
    """[users]: who is an admin, and the quotas ([users.quota] for everyone, [users.quota.NAME]
    overrides per user, key by key)."""

    default: Quota = Quota()
    overrides: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # user -> the keys it sets
    admin_users: tuple[str, ...] = ()
    admin_groups: tuple[str, ...] = ()

    def limit(self, user: str, key: str) -> tuple[int, str]:
        """(the limit, the config key it comes from) for one quota key."""
        over = self.overrides.get(user, {})
        if key in over:
            return over[key], key_path("users", "quota", user, key)
        return int(getattr(self.default, key)), key_path("users", "quota", key)

    def quota(self, user: str) -> Quota:
        return Quota(**{k: self.limit(user, k)[0] for k in QUOTA_KEYS})

    def is_admin(self, user: str, groups: tuple[str, ...] = (), uid: int | None = None) -> bool:
        """root always is; otherwise a user named in admin_users or a member of an admin group."""
        return uid == 0 or user in self.admin_users or any(g in self.admin_groups for g in groups)


def parse_users(table: object, fail: Fail) -> UsersConfig:
    """The `[users]` TOML table (as tomllib gives it) -> UsersConfig. `fail(key_path, reason)` must
    raise; it is called with the full key path, e.g. ("users.quota.alice.tokens_per_day",
    "must be an integer >= 0 (0 = unlimited), got -1"), and the caller adds the file name."""
    t = Table(table, USERS_KEYS, parts=("users",), on_error=fail)
    admins = {k: _names(t, k) for k in ("admin_users", "admin_groups")}
    quota = t.sub("quota", None)
    default: dict[str, int] = {}
    overrides: dict[str, dict[str, int]] = {}
    for key, value in quota.data.items():
        if key in QUOTA_KEYS:
            default[key] = _limit(quota, key)
            continue
        if not isinstance(value, dict):
            quota.fail(key, f"unknown key (valid: {', '.join(QUOTA_KEYS)}, or a [users.quota.USER] table)")
        if not USER_NAME.fullmatch(key):
            quota.fail(key, "a user name is 1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or _")
        user = quota.sub(key, QUOTA_KEYS)
        overrides[key] = {k: _limit(user, k) for k in user.data}
    return UsersConfig(Quota(**default), overrides, admins["admin_users"], admins["admin_groups"])


def _names(t: Table, key: str) -> tuple[str, ...]:
    v = t.data.get(key, [])
    if not isinstance(v, list):
        t.fail(key, f"must be an array of names, got {show(v)}")
    for i, item in enumerate(v):
        if not isinstance(item, str) or not USER_NAME.fullmatch(item):
            t.fail(key, f"must be a user or group name, got {show(item)}", i)
    return tuple(v)


def _limit(t: Table, key: str) -> int:
    return t.integer(key, 0, note="0 = unlimited")


# ---------------------------------------------------------------- GPU-seconds


def gpu_seconds(gpus: int, seconds: float, inflight: int) -> float:
    """GPU-seconds attributed to one request: the instance's GPUs times the request's end-to-end
    seconds on it, divided by the requests in flight on that instance when it was dispatched
    (itself included). Requests that share an instance share its GPUs; over a busy period the
    shares add up to about the GPU time the instance was busy. Idle capacity (an instance up with
    nothing to do, start-up, drain) is nobody's and is not attributed."""
    if gpus <= 0 or seconds <= 0:
        return 0.0
    return gpus * seconds / max(1, inflight)


# ---------------------------------------------------------------- the store

# The tables (users_keys, usage_daily) are created by chirond.db's migrations.


class UserError(ValueError):
    """A refused operation on keys; the message is for the user."""


def utc_day(t: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(t))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(slots=True)
class Usage:
    requests: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    gpu_s: float = 0.0

    def add(self, requests: int, tokens_in: int, tokens_out: int, gpu_s: float) -> None:
        self.requests += requests
        self.tokens_in += tokens_in
        self.tokens_out += tokens_out
        self.gpu_s += gpu_s


class UserStore:
    """Keys, usage and quota checks. Synchronous: every call is one small SQLite statement or none
    (the daemon is one event loop; the batch store shares the file through its own connection).
    The constructor does no I/O; `open()` brings chirond.db up to date (chirond.db.Database: a
    path is opened through a Database of its own) and opens the store's connection."""

    def __init__(
        self, db: Database | Path, cfg: UsersConfig | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.database = db if isinstance(db, Database) else Database(db)
        self.db_path = self.database.path
        self.cfg = cfg or UsersConfig()
        self.clock = clock
        self._db: sqlite3.Connection | None = None
        self._cache: dict[str, tuple[str, str]] = {}  # key hash -> (user, prefix), for keys seen valid
        self._last_used: dict[str, float] = {}  # key hash -> when; written by flush()
        self._pending: dict[tuple[str, str, str], Usage] = {}  # (user, day, model) -> not yet in the DB
        self._day = ""  # the UTC day _today counts
        self._today: dict[str, int] = {}  # user -> tokens in + out today (DB + pending), loaded on first ask
        self.totals: dict[tuple[str, str], Usage] = {}  # (user, model) -> since start, for /metrics

    # ---------------------------------------------------------------- lifetime

    def open(self) -> None:
        """Migrates chirond.db if needed (chirond.db.SchemaError when it cannot be used) and opens
        the connection (this thread's only). Again is a no-op."""
        if self._db is not None:
            return
        self.database.open()
        self._db = self.database.connect(busy_timeout_s=5.0)  # the batch store writes the same file

    def close(self) -> None:
        if self._db is not None:
            try:
                self.flush()
            except sqlite3.Error as e:  # disk full or read-only at shutdown: say what is lost, exit cleanly
                lost = [f"{u} {d} {m}: {x.requests} req, {x.tokens_in}+{x.tokens_out} tok, {x.gpu_s:.1f} GPU-s"
                        for (u, d, m), x in self._pending.items()]
                log.error("usage could not be written at shutdown (%s); not recorded: %s", e, "; ".join(lost))
            finally:
                self._db.close()
                self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("UserStore.open() was not called")
        return self._db

    # ---------------------------------------------------------------- keys

    def mint(self, user: str) -> str:
        """A new key for `user`, returned once; only its hash and first characters are kept."""
        n = self.db.execute("SELECT count(*) FROM users_keys WHERE user = ?", (user,)).fetchone()[0]
        if n >= MAX_KEYS_PER_USER:
            raise UserError(
                f"user {user} has {n} keys, the most allowed; revoke one first "
                "(chiron token --list, chiron token --revoke PREFIX)"
            )
        key = KEY_PREFIX + secrets.token_urlsafe(32)  # 256 bits
        digest = hash_key(key)
        self.db.execute(
            "INSERT INTO users_keys (hash, user, prefix, created) VALUES (?, ?, ?, ?)",
            (digest, user, key[:SHOWN_CHARS], self.clock()),
        )
        self._cache[digest] = (user, key[:SHOWN_CHARS])
        return key

    def verify(self, key: str) -> str | None:
        """The user a key belongs to, or None. Looking up by hash leaks nothing usable through
        timing (finding a key from its hash is a SHA-256 preimage); the final compare is constant
        time all the same."""
        if not key.startswith(KEY_PREFIX) or len(key) > 128:
            return None
        digest = hash_key(key)
        hit = self._cache.get(digest)
        if hit is None:
            row = self.db.execute("SELECT hash, user, prefix FROM users_keys WHERE hash = ?", (digest,)).fetchone()
            if row is None or not hmac.compare_digest(row[0], digest):
                return None
            hit = self._cache[digest] = (row[1], row[2])  # bounded: only valid keys are cached
        self._last_used[digest] = self.clock()
        return hit[0]

    def revoke(self, user: str, prefix: str | None = None) -> int:
        """Revoke all of `user`'s keys, or the one whose shown prefix is `prefix` (the whole key
        works too). Returns how many were revoked."""
        args: tuple[str, ...]
        if prefix is None:
            sql, args = "user = ?", (user,)
        elif len(prefix) > SHOWN_CHARS:
            sql, args = "user = ? AND hash = ?", (user, hash_key(prefix))
        else:
            sql, args = "user = ? AND prefix = ?", (user, prefix)
        hashes = {r[0] for r in self.db.execute(f"DELETE FROM users_keys WHERE {sql} RETURNING hash", args)}
        n = len(hashes)
        # Also what the cache holds but the table no longer does (a row deleted by hand).
        full = hash_key(prefix) if prefix is not None and len(prefix) > SHOWN_CHARS else None
        hashes |= {h for h, (u, p) in self._cache.items() if u == user and (prefix in (None, p) or h == full)}
        for h in hashes:
            self._cache.pop(h, None)
            self._last_used.pop(h, None)
        return n

    def keys(self, user: str) -> list[dict[str, Any]]:
        """The user's keys, oldest first: {prefix, created, last_used} (epoch seconds or None)."""
        rows = self.db.execute(
            "SELECT hash, prefix, created, last_used FROM users_keys WHERE user = ? ORDER BY created", (user,)
        ).fetchall()
        return [{"prefix": p, "created": c, "last_used": self._last_used.get(h, u)} for h, p, c, u in rows]

    # ---------------------------------------------------------------- usage

    def add_usage(self, user: str, model: str, tokens_in: int, tokens_out: int, gpu_s: float) -> None:
        """One finished request (in memory; `flush()` writes it)."""
        now = self.clock()
        day = utc_day(now)
        self._pending.setdefault((user, day, model), Usage()).add(1, tokens_in, tokens_out, gpu_s)
        self.totals.setdefault((user, model), Usage()).add(1, tokens_in, tokens_out, gpu_s)
        if day == self._day and user in self._today:
            self._today[user] += tokens_in + tokens_out

    def flush(self) -> None:
        """Write buffered usage and key use times in one transaction (the daemon calls it each tick)."""
        if not self._pending and not self._last_used:
            return
        pending, self._pending = self._pending, {}
        used, self._last_used = self._last_used, {}
        try:
            with transaction(self.db) as db:
                db.executemany(
                    "INSERT INTO usage_daily (user, day, model, requests, tokens_in, tokens_out, gpu_s) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (user, day, model) DO UPDATE SET "
                    "requests = requests + excluded.requests, tokens_in = tokens_in + excluded.tokens_in, "
                    "tokens_out = tokens_out + excluded.tokens_out, gpu_s = gpu_s + excluded.gpu_s",
                    [(u, d, m, x.requests, x.tokens_in, x.tokens_out, x.gpu_s) for (u, d, m), x in pending.items()],
                )
                db.executemany("UPDATE users_keys SET last_used = ? WHERE hash = ?", [(t, h) for h, t in used.items()])
        except BaseException:
            for k, x in pending.items():  # nothing lost: back into the buffer for the next flush
                self._pending.setdefault(k, Usage()).add(x.requests, x.tokens_in, x.tokens_out, x.gpu_s)
            self._last_used = {**used, **self._last_used}
            raise

    def tokens_today(self, user: str) -> int:
        """Input + output tokens of `user` this UTC day, flushed or not."""
        day = utc_day(self.clock())
        if day != self._day:
            self._day, self._today = day, {}
        n = self._today.get(user)
        if n is None:
            row = self.db.execute(
                "SELECT coalesce(sum(tokens_in + tokens_out), 0) FROM usage_daily WHERE user = ? AND day = ?",
                (user, day),
            ).fetchone()
            n = int(row[0]) + sum(
                x.tokens_in + x.tokens_out for (u, d, _), x in self._pending.items() if u == user and d == day
            )
            self._today[user] = n
        return n

    def usage(self, user: str | None, days: int = 30) -> list[dict[str, Any]]:
        """Per user and model over the last `days` UTC days (today included): {user, model,
        requests, tokens_in, tokens_out, gpu_s}; `user` None: everyone. Sorted by user, model."""
        self.flush()
        since = utc_day(self.clock() - (max(1, days) - 1) * DAY_S)
        sql = (
            "SELECT user, model, sum(requests), sum(tokens_in), sum(tokens_out), sum(gpu_s) FROM usage_daily "
            "WHERE day >= ?" + (" AND user = ?" if user is not None else "") + " GROUP BY user, model "
            "ORDER BY user, model"
        )
        args: tuple[Any, ...] = (since,) if user is None else (since, user)
        return [
            {"user": u, "model": m, "requests": r, "tokens_in": ti, "tokens_out": to, "gpu_s": g}
            for u, m, r, ti, to, g in self.db.execute(sql, args)
        ]

    # ---------------------------------------------------------------- quotas (None = allowed)

    def check_interactive(self, user: str, inflight_now: int) -> str | None:
        """Before admitting one more interactive request; `inflight_now`: the user's in flight."""
        limit, key = self.cfg.limit(user, "concurrent_interactive")
        if limit and inflight_now >= limit:
            return (
                f"user {user}: {limit} concurrent interactive request{'s' if limit > 1 else ''} is the quota "
                f"({key}); wait for one to finish"
            )
        return None

    def check_batch_lines(self, user: str, queued_now: int, adding: int) -> str | None:
        """Before queueing `adding` batch lines; `queued_now`: the user's lines still queued."""
        limit, key = self.cfg.limit(user, "queued_batch_lines")
        if limit and queued_now + adding > limit:
            return (
                f"user {user}: {limit} queued batch lines is the quota ({key}); {queued_now} are queued "
                f"and this adds {adding}"
            )
        return None

    def check_tokens(self, user: str, reserved: int = 0) -> str | None:
        """Before admitting a request: refused once today's tokens, plus `reserved` (what the
        user's requests in flight may still spend), reach the daily quota."""
        limit, key = self.cfg.limit(user, "tokens_per_day")
        if limit:
            used = self.tokens_today(user)
            if used + reserved >= limit:
                held = f" and up to {reserved} held by requests in flight" if reserved else ""
                return (
                    f"user {user}: {limit} tokens per day is the quota ({key}); {used} used today{held}, "
                    f"it resets at 00:00 UTC"
                )
        return None

    def seconds_to_reset(self) -> int:
        """Seconds until the next UTC midnight (a Retry-After for the daily quota)."""
        now = self.clock()
        return max(1, int(DAY_S - now % DAY_S))


class InFlight:
    """Interactive requests in flight per user (the API counts; `check_interactive` reads)."""

    def __init__(self) -> None:
        self._n: dict[str, int] = {}

    def __getitem__(self, user: str) -> int:
        return self._n.get(user, 0)

    def inc(self, user: str) -> None:
        self._n[user] = self._n.get(user, 0) + 1

    def dec(self, user: str) -> None:
        n = self._n.get(user, 0) - 1
        if n > 0:
            self._n[user] = n
        else:
            self._n.pop(user, None)  # users come and go: keep the dict to those with work


class UsageCollector(Collector):
    """Per-user usage since the daemon started, as Prometheus counters (a custom collector, so
    nothing is done per request beyond `add_usage`). Labels: user and model; users are the site's
    accounts that have used chirond, a bounded set. Register with `registry.register(...)`."""

    def __init__(self, store: UserStore) -> None:
        self.store = store

    def collect(self) -> Any:
        req = CounterMetricFamily("chirond_user_requests", "Finished requests per user", labels=["user", "model"])
        tok = CounterMetricFamily(
            "chirond_user_tokens",
            "Tokens per user (direction: in = prompt, out = output)",
            labels=["user", "model", "direction"],
        )
        gpu = CounterMetricFamily(
            "chirond_user_gpu_seconds",
            "GPU-seconds attributed per user (see chirond.users.gpu_seconds)",
            labels=["user", "model"],
        )
        for (user, model), x in sorted(self.store.totals.items()):
            req.add_metric([user, model], x.requests)
            tok.add_metric([user, model, "in"], x.tokens_in)
            tok.add_metric([user, model, "out"], x.tokens_out)
            gpu.add_metric([user, model], x.gpu_s)
        yield from (req, tok, gpu)

    def describe(self) -> Any:
        return []  # dynamic label sets: let the registry call collect() when it needs to
