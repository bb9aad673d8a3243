"""The daemon's one SQLite file, `<state_dir>/chirond.db`, and its schema: the one place that opens
it, knows its tables and upgrades them.

The schema has a version, kept in the file as `PRAGMA user_version`. MIGRATIONS is the ordered
list of changes; migration N takes a file from version N-1 to N. `Database.open()` applies the
missing ones, each in one transaction (`BEGIN IMMEDIATE` ... `PRAGMA user_version = N` ...
`COMMIT`: a crash or an error leaves the file at N-1, whole). A file whose version is newer than
the code is refused, never touched. The stores (chirond.batch.store, chirond.users) take a
Database and ask it for connections; they create no tables.

Files written before the version existed have user_version 0 and already hold the tables of
migration 1. Migration 1 is written with IF NOT EXISTS so that it is a no-op on such a file:
before it runs, the tables found are checked against what migration 1 creates (names, columns,
types), and a file with other tables or other columns is refused rather than guessed at. Later
migrations need not be idempotent: they only ever run on a file at the version before them.

Connections: WAL (readers never wait for the writer), synchronous=NORMAL (a kill -9 of the process
loses no committed transaction; a power cut may lose the last ones), a busy timeout (the stores'
connections write the same file), autocommit (transactions explicit, `BEGIN IMMEDIATE`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

FILE_NAME = "chirond.db"


def db_path(state_dir: Path) -> Path:
    """The daemon's one SQLite file: batches, files, lines, keys, usage."""
    return state_dir / FILE_NAME


@dataclass(frozen=True)
class Migration:
    version: int  # the user_version the file has once it ran
    summary: str
    statements: tuple[str, ...]  # run in order, in one transaction


# Version 1: the schema as the stores created it before the file had a version (commit c5db366).
# Batch API (chirond.batch.store): uploaded and result files, batches, and every batch line; a
# line's rowid is batch key << 32 | line index. Users (chirond.users): key hashes, daily usage.
_V1 = (
    """CREATE TABLE IF NOT EXISTS batch_files (
    id TEXT PRIMARY KEY, user TEXT NOT NULL, filename TEXT NOT NULL, purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL, lines INTEGER NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS batch_files_user ON batch_files(user, created_at)",
    "CREATE INDEX IF NOT EXISTS batch_files_expiry ON batch_files(expires_at)",
    """CREATE TABLE IF NOT EXISTS batch_batches (
    bkey INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, user TEXT NOT NULL, endpoint TEXT NOT NULL,
    input_file_id TEXT NOT NULL, completion_window TEXT NOT NULL, status TEXT NOT NULL,
    target TEXT, errors TEXT, metadata TEXT,
    total INTEGER NOT NULL DEFAULT 0, completed INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,
    output_file_id TEXT, error_file_id TEXT,
    created_at REAL NOT NULL, expires_at REAL NOT NULL, in_progress_at REAL, finalizing_at REAL,
    completed_at REAL, failed_at REAL, expired_at REAL, cancelling_at REAL, cancelled_at REAL)""",
    "CREATE INDEX IF NOT EXISTS batch_batches_user ON batch_batches(user, bkey)",
    """CREATE TABLE IF NOT EXISTS batch_lines (
    rowid INTEGER PRIMARY KEY, bkey INTEGER NOT NULL, state INTEGER NOT NULL, model TEXT,
    custom_id TEXT, tokens INTEGER NOT NULL, off INTEGER, len INTEGER, result TEXT)""",
    "CREATE INDEX IF NOT EXISTS batch_lines_queued ON batch_lines(bkey, model, tokens) WHERE state = 0",
    """CREATE TABLE IF NOT EXISTS users_keys (
    hash TEXT PRIMARY KEY,      -- sha256 hex of the key; the key itself is never stored
    user TEXT NOT NULL,
    prefix TEXT NOT NULL,       -- the key's first SHOWN_CHARS characters, to tell keys apart
    created REAL NOT NULL,      -- epoch seconds
    last_used REAL              -- epoch seconds, written by flush()
) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS users_keys_user ON users_keys(user)",
    """CREATE TABLE IF NOT EXISTS usage_daily (
    user TEXT NOT NULL,
    day TEXT NOT NULL,          -- UTC, YYYY-MM-DD
    model TEXT NOT NULL,
    requests INTEGER NOT NULL,
    tokens_in INTEGER NOT NULL,
    tokens_out INTEGER NOT NULL,
    gpu_s REAL NOT NULL,
    PRIMARY KEY (user, day, model)
) WITHOUT ROWID""",
)

# Version 2: the traffic a learned floor reads (chirond.traffic): each interactive request of a
# model with learned_floor_price, kept for TRAFFIC_DAYS; the hours the daemon was up to record it
# (a day without traffic is then a quiet day, not a day it was down); each model's learned floor.
_V2 = (
    """CREATE TABLE IF NOT EXISTS traffic (
    model TEXT NOT NULL,
    arrival REAL NOT NULL,      -- epoch seconds
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS traffic_model_arrival ON traffic(model, arrival)",
    "CREATE TABLE IF NOT EXISTS uptime (hour REAL PRIMARY KEY) WITHOUT ROWID  -- epoch seconds, on the hour",
    """CREATE TABLE IF NOT EXISTS floors (
    model TEXT PRIMARY KEY,
    counts TEXT NOT NULL,       -- JSON: 24 instance counts from local midnight
    day TEXT NOT NULL,          -- the local day (YYYY-MM-DD) they were learned from
    price REAL NOT NULL,        -- SLO misses per GPU-hour
    learned_at REAL NOT NULL    -- epoch seconds
) WITHOUT ROWID""",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "batch files, batches and lines; user keys and daily usage", _V1),
    Migration(2, "traffic history and learned floors", _V2),
)
SCHEMA_VERSION = MIGRATIONS[-1].version  # what this code writes and reads


class SchemaError(Exception):
    """chirond.db cannot be used by this code (newer schema, or not chirond's); nothing was changed."""


def connect(
    path: Path, busy_timeout_s: float = 30.0, cache_kib: int | None = None, check_same_thread: bool = True
) -> sqlite3.Connection:
    """A connection with the pragmas every user of the file runs with (see the module docstring).
    Use Database.connect(): it makes sure the file is migrated first."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=check_same_thread)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a kill -9 of the process loses nothing
        db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        if cache_kib is not None:
            db.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
    except BaseException:
        db.close()
        raise
    return db


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error. SQLite itself rolls the transaction
    back on some errors (SQLITE_FULL, SQLITE_IOERR, even from COMMIT): a ROLLBACK then would raise
    "no transaction is active" and hide the real error, so it is only sent while one is open."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def user_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def _check_order(migrations: tuple[Migration, ...]) -> None:
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(migrations) + 1)):
        raise ValueError(f"migrations must be numbered 1, 2, 3, ... in order; got {versions}")


Shape = dict[str, list[tuple[str, str, int, int]]]  # table -> columns (name, type, not null, pk)


def _shape(db: sqlite3.Connection) -> Shape:
    names = [
        r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    ]
    return {
        t: [(c[1], str(c[2]).upper(), int(c[3]), int(c[5])) for c in db.execute(f'PRAGMA table_info("{t}")')]
        for t in names
    }


@cache
def _shape_of(statements: tuple[str, ...]) -> Shape:
    """The tables `statements` create, on an empty in-memory database."""
    mem = sqlite3.connect(":memory:")
    try:
        for s in statements:
            mem.execute(s)
        return _shape(mem)
    finally:
        mem.close()


def _check_unversioned(db: sqlite3.Connection, path: Path, first: Migration) -> None:
    """A file at user_version 0 that has tables: written before the version existed? Its tables
    must be a subset of migration 1's, with the same columns; anything else is refused."""
    found = _shape(db)
    if not found:
        return  # a new file
    want = _shape_of(first.statements)
    foreign = sorted(set(found) - set(want))
    if foreign:
        raise SchemaError(
            f"{path}: schema version 0 with tables chirond does not know ({', '.join(foreign)}): "
            "not a chirond database? Nothing was changed; move it away or point daemon.state_dir elsewhere"
        )
    for table, cols in found.items():
        if cols != want[table]:
            raise SchemaError(
                f"{path}: table {table} does not have the columns of schema version 1 "
                f"(found {[c[0] for c in cols]}, expected {[c[0] for c in want[table]]}). Nothing was changed"
            )
    log.info("%s: tables written before the schema had a version; recognised as version 1", path)


def migrate(db: sqlite3.Connection, path: Path, migrations: tuple[Migration, ...] = MIGRATIONS) -> tuple[int, int]:
    """Brings the file behind `db` (an autocommit connection) to the last of `migrations`, one
    transaction per migration. Returns (version found, version now). Raises SchemaError, having
    changed nothing, when the file is newer than the code or is not chirond's. Safe against another
    process migrating at the same time: each step re-reads the version under the write lock."""
    _check_order(migrations)
    latest = migrations[-1].version if migrations else 0
    found = user_version(db)
    if found > latest:
        raise _too_new(path, found, latest)
    for m in migrations:
        if found == latest:
            break  # the usual case: nothing to do, no write lock taken
        db.execute("BEGIN IMMEDIATE")
        try:
            v = user_version(db)
            if v > latest:
                raise _too_new(path, v, latest)
            if v >= m.version:
                db.execute("ROLLBACK")
                continue
            if v == 0:
                _check_unversioned(db, path, m)
            for statement in m.statements:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {m.version}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        log.info("%s: schema version %d -> %d (%s)", path, v, m.version, m.summary)
    now = user_version(db)
    if now > latest:
        raise _too_new(path, now, latest)
    return found, now


def _too_new(path: Path, found: int, latest: int) -> SchemaError:
    return SchemaError(
        f"{path}: schema version {found} is newer than this chirond knows (version {latest}); it was "
        f"written by a newer chirond. Run that version, or a copy of the file from before the upgrade. "
        "Nothing was changed"
    )


class Database:
    """The owner of chirond.db. The constructor does no I/O; `open()` creates the file's directory
    and brings the schema up to date (once per object; again is a no-op); `connect()` then gives
    connections to the stores. Several Database objects on one file (or several processes) are
    safe: migrations take the write lock and re-read the version."""

    def __init__(self, path: Path, migrations: tuple[Migration, ...] = MIGRATIONS) -> None:
        _check_order(migrations)
        self.path = Path(path)
        self.migrations = migrations
        self.version: int | None = None  # set by open()
        self._lock = threading.Lock()

    def open(self) -> int:
        """Migrates the file if needed; returns its schema version. Raises SchemaError."""
        with self._lock:
            if self.version is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = connect(self.path)
                try:
                    self.version = migrate(db, self.path, self.migrations)[1]
                finally:
                    db.close()
            return self.version

    def connect(
        self, busy_timeout_s: float = 30.0, cache_kib: int | None = None, check_same_thread: bool = True
    ) -> sqlite3.Connection:
        if self.version is None:
            raise RuntimeError(f"Database.open() was not called for {self.path}")
        return connect(self.path, busy_timeout_s, cache_kib, check_same_thread)
