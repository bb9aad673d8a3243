"""A full disk loses nothing (issue 13, items 1 and 2): real SQLITE_FULL errors on the stores'
own connections (tests/support/diskfull.py), then space returns and everything is recorded once."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
from pathlib import Path

import pytest

from chirond.batch import store as store_mod
from chirond.batch.runner import BatchRunner
from chirond.batch.store import BatchLimits, BatchStore, Line, LineResult
from chirond.users import UserStore
from tests.support import diskfull

MODELS = ("m1",)
BIG = "x" * 3000  # each answer needs new pages: the capped file cannot take it


def answer(line: Line) -> LineResult:
    body = {"id": f"chatcmpl-{line.custom_id}", "object": "chat.completion", "model": line.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": BIG}, "finish_reason": "stop"}]}
    return LineResult(line.batch_id, line.idx, 200, body)


def make_batch(store: BatchStore, user: str, n: int) -> str:
    data = "".join(
        json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "m1", "messages": [{"role": "user", "content": f"q{i}"}]}}) + "\n"
        for i in range(n)
    ).encode()
    up = store.new_upload()
    up.write(data)
    fid = up.commit(user, "in.jsonl", "batch")["id"]
    bid = str(store.create_batch(user, fid, "/v1/chat/completions", "24h", None)["id"])
    store.validate(bid)
    return bid


def output_ids(store: BatchStore, user: str, bid: str) -> list[str]:
    b = store.get_batch(user, bid)
    text = store.file_path(user, b["output_file_id"]).read_text()
    return [json.loads(x)["custom_id"] for x in text.splitlines()]


async def wait_for(cond, what: str, rounds: int = 2000) -> None:  # type: ignore[no-untyped-def]
    for _ in range(rounds):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_runner_keeps_results_until_the_store_takes_them(tmp_path: Path) -> None:
    store = BatchStore(tmp_path / "chirond.db", tmp_path / "files", BatchLimits(), MODELS)
    store.open()
    alice = make_batch(store, "alice", 40)
    bob = make_batch(store, "bob", 40)  # another user's batch must not freeze either
    executed: list[tuple[str, int]] = []

    async def execute(line: Line) -> LineResult:
        executed.append((line.batch_id, line.idx))
        return answer(line)

    runner = BatchRunner(store, execute, lambda m: 8, MODELS, period_s=0.01, housekeeping_s=0.05)
    diskfull.fill(store._db)
    await runner.start()
    try:
        # Full: the first window runs, its results are refused, and nothing more is leased.
        await wait_for(lambda: len(executed) >= 8 and len(runner._results) == len(executed), "a refused window")
        await asyncio.sleep(0.2)
        assert len(executed) == 8, "lines kept being leased while their results could not be recorded"
        assert runner.recorded == 0
        diskfull.free(store._db)  # space returns: no restart
        await wait_for(
            lambda: all(store.batch_status(b) == "completed" for b in (alice, bob)), "both batches completed"
        )
    finally:
        await runner.stop()
    assert len(executed) == 80, "a line ran twice or never"
    for user, bid in (("alice", alice), ("bob", bob)):
        assert store.get_batch(user, bid)["request_counts"] == {"total": 40, "completed": 40, "failed": 0}
        assert sorted(output_ids(store, user, bid)) == sorted(f"c{i}" for i in range(40))
    store.close()


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def test_an_expiry_that_cannot_be_marked_is_retried_once_space_returns(tmp_path: Path) -> None:
    clock = Clock()
    store = BatchStore(tmp_path / "chirond.db", tmp_path / "files", BatchLimits(), MODELS, clock)
    store.open()
    bid = make_batch(store, "alice", 400)
    lines = store.next_lines("m1", 10)
    assert store.record(answer(x) for x in lines) == 10
    clock.t += 2 * 86400  # past the 24 h window: 390 lines become "expired" errors (new pages)
    diskfull.fill(store._db)
    for _ in range(3):
        store.tick()
        assert store.batch_status(bid) == "in_progress"
    diskfull.free(store._db)
    store.tick()
    b = store.get_batch("alice", bid)
    assert b["status"] == "expired"
    assert b["request_counts"] == {"total": 400, "completed": 10, "failed": 390}
    errors = store.file_path("alice", b["error_file_id"]).read_text().splitlines()
    assert sorted(json.loads(x)["custom_id"] for x in errors) == sorted(f"c{i}" for i in range(10, 400))
    store.close()


def test_result_files_that_cannot_be_written_are_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BatchStore(tmp_path / "chirond.db", tmp_path / "files", BatchLimits(), MODELS)
    store.open()
    bid = make_batch(store, "alice", 30)
    assert store.record(answer(x) for x in store.next_lines("m1", 100)) == 30
    real_fsync = store_mod.os.fsync
    full = [3]

    def fsync(fd: int) -> None:  # the disk fills while the output file is written
        if full[0] > 0:
            full[0] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(store_mod.os, "fsync", fsync)
    for _ in range(3):
        store.tick()
        assert store.batch_status(bid) == "finalizing"
        assert not [p for p in (tmp_path / "files").iterdir() if p.name.endswith(".tmp")], "partial file kept"
    store.tick()
    assert store.batch_status(bid) == "completed"
    assert sorted(output_ids(store, "alice", bid)) == sorted(f"c{i}" for i in range(30))
    store.close()


def usage_rows(store: UserStore) -> dict[str, tuple[int, int, int]]:
    return {u: (r, i, o) for u, r, i, o in store.db.execute(
        "SELECT user, sum(requests), sum(tokens_in), sum(tokens_out) FROM usage_daily GROUP BY user")}


def test_usage_survives_a_failed_flush(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "chirond.db")
    store.open()
    users = [f"user{i:04d}-{'y' * 40}" for i in range(300)]  # enough rows to need new pages
    for u in users:
        store.add_usage(u, "m1", 10, 5, 1.0)
    diskfull.fill(store.db)
    with pytest.raises(Exception, match="full"):
        store.flush()  # the COMMIT fails and SQLite rolls back by itself: no "no transaction is active"
    assert usage_rows(store) == {}
    store.add_usage(users[0], "m1", 1, 1, 0.0)
    diskfull.free(store.db)
    store.flush()
    rows = usage_rows(store)
    assert len(rows) == 300 and rows[users[0]] == (2, 11, 6) and rows[users[1]] == (1, 10, 5)
    store.close()


def test_shutdown_on_a_full_disk_is_clean_and_says_what_was_not_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = UserStore(tmp_path / "chirond.db")
    store.open()
    for i in range(300):
        store.add_usage(f"user{i:04d}-{'y' * 40}", "m1", 10, 5, 1.0)
    diskfull.fill(store.db)
    with caplog.at_level(logging.ERROR, logger="chirond.users"):
        store.close()  # no exception: the daemon exits 0
    assert "user0000" in caplog.text and "not recorded" in caplog.text
