"""chirond.db: the owner of chirond.db and its migrations. An upgrade of a database written before
the schema had a version (tests/data/db/v0, made by tests/data/db/make_fixture.py with the stores
of commit c5db366) keeps every row readable through the stores; a newer database, or one that is
not chirond's, is refused with nothing changed; each migration is one transaction."""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from chirond.batch.store import BatchLimits, BatchStore, LineResult
from chirond.db import MIGRATIONS, SCHEMA_VERSION, Database, Migration, SchemaError, db_path, migrate
from chirond.users import UserStore, utc_day

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "db"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
TABLES = ("batch_files", "batch_batches", "batch_lines", "users_keys", "usage_daily")


def read(path: Path) -> sqlite3.Connection:
    """Read-only. The committed fixture is opened immutable: nothing written beside it (no -wal,
    -shm), which is right only for a file no connection is writing."""
    immutable = "&immutable=1" if path.is_relative_to(FIXTURE) else ""
    return sqlite3.connect(f"file:{path}?mode=ro{immutable}", uri=True)


def version(path: Path) -> int:
    db = read(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def dump(path: Path) -> dict[str, Any]:
    """Every row of every table, and the schema text, as plain data."""
    db = read(path)
    try:
        out: dict[str, Any] = {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in TABLES}
        out["schema"] = sorted(db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall())
        return out
    finally:
        db.close()


@pytest.fixture
def v0(tmp_path: Path) -> Path:
    """A copy of the fixture state directory; returns the path of its chirond.db."""
    shutil.copytree(FIXTURE / "v0", tmp_path / "state")
    return db_path(tmp_path / "state")


def test_the_fixture_is_from_before_versions() -> None:
    path = FIXTURE / "v0" / "chirond.db"
    assert version(path) == 0
    assert not Path(f"{path}-wal").exists()  # checkpointed: the file alone is the database
    assert {k: len(v) for k, v in dump(path).items() if k != "schema"} == {
        "batch_files": 3,
        "batch_batches": 2,
        "batch_lines": 9,
        "users_keys": 2,
        "usage_daily": 2,
    }


def test_a_new_file_gets_the_latest_schema(tmp_path: Path) -> None:
    path = tmp_path / "state" / "chirond.db"
    db = Database(path)
    assert not path.parent.exists()  # the constructor does no I/O
    with pytest.raises(RuntimeError, match="open"):
        db.connect()
    assert db.open() == SCHEMA_VERSION == len(MIGRATIONS)
    assert version(path) == SCHEMA_VERSION
    assert set(TABLES) <= {k for k in dump(path) if k != "schema"}
    assert db.open() == SCHEMA_VERSION  # again: nothing to do
    assert Database(path).open() == SCHEMA_VERSION  # another owner of the same file: nothing to do
    conn = db.connect()
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_upgrade_from_the_unversioned_schema_loses_nothing(v0: Path) -> None:
    before = dump(v0)
    clock = lambda: EXPECTED["clock"]  # noqa: E731
    db = Database(v0)
    users = UserStore(db, clock=clock)
    batches = BatchStore(db, v0.parent / "files", BatchLimits(), ["m1", "m2"], clock)
    users.open()
    batches.open()
    try:
        assert version(v0) == SCHEMA_VERSION
        after = dump(v0)
        # migration 1 on such a file: the version number, nothing else; 2 adds its two tables, empty
        added = {row for row in after["schema"] if row[2] in ("traffic", "uptime", "floors")}
        assert {row[1] for row in added} == {"traffic", "traffic_model_arrival", "uptime", "floors"}
        assert {**after, "schema": [r for r in after["schema"] if r not in added]} == before
        conn = read(v0)
        assert conn.execute("SELECT (SELECT count(*) FROM traffic) + (SELECT count(*) FROM uptime) "
                            "+ (SELECT count(*) FROM floors)").fetchone() == (0,)
        conn.close()

        # Users: both keys still verify; usage totals as recorded.
        keys = EXPECTED["keys"]
        assert users.verify(keys["alice"]) == "alice" and users.verify(keys["bob"]) == "bob"
        assert users.verify(keys["alice"][:-1] + "x") is None
        assert [k["prefix"] for k in users.keys("alice")] == [keys["alice"][:12]]
        assert users.usage(None) == [
            {"user": "alice", "model": "m1", "requests": 2, "tokens_in": 150, "tokens_out": 30, "gpu_s": 2.0},
            {"user": "bob", "model": "m2", "requests": 1, "tokens_in": 7, "tokens_out": 3, "gpu_s": 0.25},
        ]
        assert utc_day(clock()) == "2023-11-14" and users.tokens_today("alice") == 180
        users.add_usage("bob", "m2", 1, 1, 0.0)  # and new usage adds to it
        assert users.usage("bob")[0]["requests"] == 2

        # The finished batch and its files.
        ids = EXPECTED["batches"]
        done = batches.get_batch("alice", ids["done"])
        assert done["status"] == "completed"
        assert done["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
        assert done["metadata"] == {"run": "done"}
        out = batches.file_path("alice", done["output_file_id"]).read_text().splitlines()
        assert [json.loads(x)["custom_id"] for x in out] == ["d0", "d1"]
        names = {f["filename"] for f in batches.list_files("alice")}
        assert names == {"in.jsonl", f"{ids['done']}_output.jsonl"}
        assert batches.get_file("bob", EXPECTED["files"]["running_input"])["bytes"] > 0

        # The running batch: 1 done, 2 failed (one at validation, one answered 500), 4 queued.
        run = ids["running"]
        assert batches.batch_status(run) == "in_progress"
        assert batches.get_batch("bob", run)["request_counts"] == {"total": 7, "completed": 1, "failed": 2}
        assert batches.queued_lines("bob") == 4
        assert [(n, t > 0) for _d, n, t in batches.backlog("m1")] == [(2, True)]
        assert [n for _d, n, _t in batches.backlog("m2")] == [2]
        lines = batches.next_lines("m1", 10) + batches.next_lines("m2", 10)
        assert [x.custom_id for x in lines] == ["r2", "r3", "r4", "r5"]
        assert lines[0].body["messages"][0]["content"] == "say r2" and lines[0].user == "bob"
        assert batches.record(LineResult(x.batch_id, x.idx, 200, {"id": x.custom_id}) for x in lines) == 4
        assert batches.tick() == [run]
        b = batches.get_batch("bob", run)
        assert b["status"] == "completed"
        assert b["request_counts"] == {"total": 7, "completed": 5, "failed": 2}
        ok = batches.file_path("bob", b["output_file_id"]).read_text().splitlines()
        assert [json.loads(x)["custom_id"] for x in ok] == ["r0", "r2", "r3", "r4", "r5"]
        bad = batches.file_path("bob", b["error_file_id"]).read_text().splitlines()
        assert [json.loads(x)["custom_id"] for x in bad] == ["r1", None]
    finally:
        batches.close()
        users.close()


def test_each_store_alone_migrates_the_file(v0: Path) -> None:
    """The daemon's stores as constructed today: each with the path, a Database of its own."""
    users = UserStore(v0)
    users.open()
    assert version(v0) == SCHEMA_VERSION
    batches = BatchStore(v0, v0.parent / "files", BatchLimits(), ["m1", "m2"], lambda: EXPECTED["clock"])
    batches.open()
    assert batches.queued_lines("bob") == 4 and users.verify(EXPECTED["keys"]["bob"]) == "bob"
    batches.close()
    users.close()


def test_an_unversioned_file_with_part_of_the_tables_gets_the_rest(tmp_path: Path) -> None:
    """A file only the users store had opened (no batch tables yet) before versions existed."""
    path = tmp_path / "chirond.db"
    with sqlite3.connect(path) as db:
        for s in MIGRATIONS[0].statements:
            if "users_keys" in s or "usage_daily" in s:
                db.execute(s)
        db.execute("INSERT INTO users_keys VALUES ('h', 'alice', 'chd-x', 1.0, NULL)")
    db.close()
    assert Database(path).open() == SCHEMA_VERSION
    rows = dump(path)
    assert rows["users_keys"] == [("h", "alice", "chd-x", 1.0, None)] and rows["batch_lines"] == []


def test_a_newer_file_is_refused_and_left_alone(v0: Path) -> None:
    with sqlite3.connect(v0) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    before = dump(v0)
    want = f"{v0}: schema version {SCHEMA_VERSION + 1} is newer than this chirond knows \\(version {SCHEMA_VERSION}\\)"
    with pytest.raises(SchemaError, match=want):
        Database(v0).open()
    users = UserStore(v0)
    with pytest.raises(SchemaError, match=want):
        users.open()
    batches = BatchStore(v0, v0.parent / "files", BatchLimits(), ["m1"])
    with pytest.raises(SchemaError, match=want):
        batches.open()
    with pytest.raises(RuntimeError, match="open"):
        batches.get_file("bob", "x")
    assert version(v0) == SCHEMA_VERSION + 1 and dump(v0) == before


def test_an_unversioned_file_that_is_not_chirond_s_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE songs (title TEXT)")
    db.close()
    with pytest.raises(SchemaError, match=r"other\.db: schema version 0 with tables chirond does not know \(songs\)"):
        Database(other).open()
    assert version(other) == 0

    changed = tmp_path / "changed.db"
    with sqlite3.connect(changed) as db:
        db.execute("CREATE TABLE users_keys (hash TEXT PRIMARY KEY, user TEXT NOT NULL)")
    db.close()
    with pytest.raises(SchemaError, match="table users_keys does not have the columns of schema version 1"):
        Database(changed).open()
    assert version(changed) == 0


def test_later_migrations_run_in_order_one_transaction_each(v0: Path) -> None:
    n = SCHEMA_VERSION
    two = Migration(n + 1, "a note per key", ("ALTER TABLE users_keys ADD COLUMN note TEXT",))
    conn = sqlite3.connect(v0, isolation_level=None)
    assert migrate(conn, v0, (*MIGRATIONS, two)) == (0, n + 1)
    conn.close()
    with sqlite3.connect(v0) as db:
        assert "note" in [c[1] for c in db.execute("PRAGMA table_info(users_keys)")]
    db.close()
    # A migration that fails halfway leaves the file at the version before it, whole.
    three = Migration(n + 2, "breaks", ("CREATE TABLE half (x INTEGER)", "ALTER TABLE no_such_table ADD COLUMN y"))
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        Database(v0, (*MIGRATIONS, two, three)).open()
    assert version(v0) == n + 1 and "half" not in {r[1] for r in dump(v0)["schema"]}
    # The code that knows only up to version n now refuses the file.
    with pytest.raises(SchemaError, match=f"schema version {n + 1} is newer"):
        Database(v0).open()
    with pytest.raises(ValueError, match="numbered"):
        Database(v0, (two,))


def test_owners_opening_at_once_migrate_once(tmp_path: Path) -> None:
    path = tmp_path / "chirond.db"
    errors: list[BaseException] = []

    def go() -> None:
        try:
            Database(path).open()
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and version(path) == SCHEMA_VERSION


def test_the_batch_store_constructor_does_no_io(tmp_path: Path) -> None:
    s = BatchStore(tmp_path / "state" / "chirond.db", tmp_path / "state" / "files", BatchLimits(), ["m1"])
    assert not (tmp_path / "state").exists()
    with pytest.raises(RuntimeError, match="open"):
        s.get_file("alice", "file-x")
    s.close()  # closing a store never opened is fine
    s.open()
    s.open()  # again: a no-op
    assert (tmp_path / "state" / "files").is_dir() and version(tmp_path / "state" / "chirond.db") == SCHEMA_VERSION
    s.close()
