"""chirond.batch.store against a real SQLite file and real files on disk: uploads and their
limits, batch life cycles (completed, expired, cancelled, failed), exactly-once recording,
restart after an abandoned lease or a crash while finalizing, owner checks, fair ordering."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chirond.batch import store as store_mod
from chirond.batch.store import BatchLimits, BatchStore, Line, LineResult, StoreError, window_seconds

MODELS = ("m1", "m2")


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


def open_store(tmp: Path, clock: Clock, **limits: object) -> BatchStore:
    s = BatchStore(tmp / "chirond.db", tmp / "files", BatchLimits(**limits), MODELS, clock)  # type: ignore[arg-type]
    s.open()
    return s


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[BatchStore]:
    s = open_store(tmp_path, clock)
    yield s
    s.close()


def chat_line(cid: str, model: str = "m1", text: str = "hello there", **extra: object) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}


def upload(store: BatchStore, user: str, lines: list[dict | str], chunk: int = 7) -> str:
    data = "".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines).encode()
    up = store.new_upload()
    for i in range(0, len(data), chunk):
        up.write(data[i : i + chunk])
    return str(up.commit(user, "in.jsonl", "batch")["id"])


def start(store: BatchStore, user: str, lines: list[dict | str], window: str = "24h") -> str:
    fid = upload(store, user, lines)
    bid = str(store.create_batch(user, fid, "/v1/chat/completions", window, {"k": "v"})["id"])
    store.validate(bid)
    return bid


def ok(line: Line) -> LineResult:
    body = {
        "id": f"chatcmpl-{line.custom_id}",
        "object": "chat.completion",
        "model": line.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    }
    return LineResult(line.batch_id, line.idx, 200, body)


def read_jsonl(store: BatchStore, user: str, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(x) for x in store.file_path(user, file_id).read_text().splitlines()]


def drain(store: BatchStore, model: str = "m1") -> int:
    """Runs every queued line of `model` to success; returns how many."""
    n = 0
    for _ in range(10_000):
        lines = store.next_lines(model, 10)
        if not lines:
            return n
        n += store.record(ok(x) for x in lines)
    raise AssertionError("queue did not drain")


# ---------------------------------------------------------------- small pieces


def test_window_seconds() -> None:
    assert window_seconds("90m") == 5400
    assert window_seconds("24h") == 86400
    assert window_seconds("7d") == 7 * 86400
    for bad in ("", "24", "h", "0h", "1.5h", "24 h", "-1h", "1w"):
        with pytest.raises(ValueError):
            window_seconds(bad)


# ---------------------------------------------------------------- files


def test_upload_get_list_delete_and_owner(store: BatchStore) -> None:
    fid = upload(store, "alice", [chat_line("a")])
    f = store.get_file("alice", fid)
    assert f["object"] == "file" and f["purpose"] == "batch" and f["status"] == "processed"
    assert f["bytes"] == store.file_path("alice", fid).stat().st_size
    assert f["expires_at"] - f["created_at"] == 30 * 86400
    assert [x["id"] for x in store.list_files("alice")] == [fid]
    assert store.list_files("bob") == []
    for call in (store.get_file, store.file_path, store.delete_file):
        with pytest.raises(StoreError) as e:
            call("bob", fid)
        assert e.value.status == 404 and fid in e.value.message
    assert store.delete_file("alice", fid) == {"id": fid, "object": "file", "deleted": True}
    assert not (store.files_dir / fid).exists()
    with pytest.raises(StoreError) as e:
        store.get_file("alice", fid)
    assert e.value.status == 404


def test_upload_over_byte_limit_is_413_and_leaves_nothing(tmp_path: Path, clock: Clock) -> None:
    s = open_store(tmp_path, clock, max_file_bytes=100)
    up = s.new_upload()
    up.write(b"x" * 60)
    with pytest.raises(StoreError) as e:
        up.write(b"x" * 60)
    assert e.value.status == 413 and "100 bytes" in e.value.message and "max_file_bytes" in e.value.message
    assert list(s.files_dir.iterdir()) == []
    assert s.list_files("alice") == []


def test_upload_over_line_limit_is_413(tmp_path: Path, clock: Clock) -> None:
    s = open_store(tmp_path, clock, max_file_lines=3)
    with pytest.raises(StoreError) as e:
        upload(s, "alice", [chat_line(str(i)) for i in range(4)])
    assert e.value.status == 413 and "3 lines" in e.value.message and "max_file_lines" in e.value.message
    # exactly at the limit, with or without a final newline, is fine
    upload(s, "alice", [chat_line(str(i)) for i in range(3)])
    up = s.new_upload()
    up.write(b"\n".join(json.dumps(chat_line(str(i))).encode() for i in range(3)))
    up.commit("alice", "x.jsonl", "batch")
    up = s.new_upload()
    up.write(b"\n".join(json.dumps(chat_line(str(i))).encode() for i in range(4)))
    with pytest.raises(StoreError) as e:
        up.commit("alice", "x.jsonl", "batch")
    assert e.value.status == 413
    assert [p.name for p in s.files_dir.iterdir() if p.name.startswith(".")] == []


def test_upload_rejects_empty_and_other_purposes(store: BatchStore) -> None:
    with pytest.raises(StoreError) as e:
        store.new_upload().commit("alice", "x", "batch")
    assert e.value.status == 400 and e.value.code == "empty_file"
    up = store.new_upload()
    up.write(b"{}\n")
    with pytest.raises(StoreError) as e:
        up.commit("alice", "x", "fine-tune")
    assert e.value.status == 400 and e.value.param == "purpose"


# ---------------------------------------------------------------- batches


def test_create_batch_checks(store: BatchStore) -> None:
    fid = upload(store, "alice", [chat_line("a")])
    for args, param in (
        (("alice", fid, "/v1/embeddings", "24h", None), "endpoint"),
        (("alice", fid, "/v1/chat/completions", "2h", None), "completion_window"),
        (("alice", fid, "/v1/chat/completions", "24h", {"k": 1}), "metadata"),
    ):
        with pytest.raises(StoreError) as e:
            store.create_batch(*args)  # type: ignore[arg-type]
        assert e.value.status == 400 and e.value.param == param
    with pytest.raises(StoreError) as e:
        store.create_batch("bob", fid, "/v1/chat/completions", "24h", None)
    assert e.value.status == 404 and e.value.param == "input_file_id"
    b = store.create_batch("alice", fid, "/v1/chat/completions", "1h", None)
    assert b["status"] == "validating" and b["expires_at"] - b["created_at"] == 3600
    assert store.pending_validation() == [b["id"]]


def test_full_life_cycle_completed(store: BatchStore, clock: Clock) -> None:
    bid = start(store, "alice", [chat_line(f"r{i}", text="x" * (40 * i)) for i in range(5)])
    b = store.get_batch("alice", bid)
    assert b["status"] == "in_progress" and b["request_counts"] == {"total": 5, "completed": 0, "failed": 0}
    assert b["metadata"] == {"k": "v"} and b["in_progress_at"] is not None
    assert store.queued_lines("alice") == 5
    lines = store.next_lines("m1", 3)
    assert [x.custom_id for x in lines] == ["r0", "r1", "r2"]
    assert lines[0].body["messages"][0]["content"] == "" and lines[0].user == "alice"
    assert lines[2].input_tokens > lines[1].input_tokens > lines[0].input_tokens
    assert store.leased_batches() == {bid}
    # a 400 from the model server goes to the error file, with the response
    err_body = {"error": {"message": "bad max_tokens", "type": "BadRequestError", "code": 400}}
    assert store.record([ok(lines[0]), ok(lines[1]), LineResult(bid, lines[2].idx, 400, err_body)]) == 3
    assert store.tick() == []  # two lines left
    assert drain(store) == 2
    assert store.queued_lines("alice") == 0
    assert store.tick() == [bid]
    b = store.get_batch("alice", bid)
    assert b["status"] == "completed" and b["request_counts"] == {"total": 5, "completed": 4, "failed": 1}
    assert b["finalizing_at"] is not None and b["completed_at"] is not None
    out = read_jsonl(store, "alice", b["output_file_id"])
    assert [x["custom_id"] for x in out] == ["r0", "r1", "r3", "r4"]
    assert all(x["response"]["status_code"] == 200 and x["error"] is None for x in out)
    assert out[0]["response"]["body"]["id"] == "chatcmpl-r0" and out[0]["id"].startswith("batch_req_")
    errs = read_jsonl(store, "alice", b["error_file_id"])
    assert [(x["custom_id"], x["response"]["status_code"], x["error"]["message"]) for x in errs] == [
        ("r2", 400, "bad max_tokens")
    ]
    f = store.get_file("alice", b["output_file_id"])
    assert f["purpose"] == "batch_output" and f["bytes"] == store.file_path("alice", f["id"]).stat().st_size
    assert store.batch_status(bid) == "completed"
    assert store.tick() == []
    assert [p.name for p in store.files_dir.iterdir() if p.name.startswith(".")] == []


def test_bad_lines_go_to_the_error_file_and_the_rest_runs(store: BatchStore) -> None:
    lines: list[dict | str] = [
        chat_line("good1"),
        "{not json",
        "[1, 2]",
        {"method": "POST", "url": "/v1/chat/completions", "body": {"model": "m1", "messages": []}},
        {**chat_line("get"), "method": "GET"},
        {**chat_line("url"), "url": "/v1/completions"},
        {"custom_id": "nobody", "method": "POST", "url": "/v1/chat/completions"},
        chat_line("unknown", model="gpt-9"),
        chat_line("good1"),  # duplicate custom_id
        chat_line("stream", stream=True),  # accepted; 'stream' is ignored (docs/batch.md)
        {**chat_line("nomsg"), "body": {"model": "m1"}},
        "",  # blank lines are skipped
        chat_line("good2", model="m2"),
    ]
    bid = start(store, "alice", lines)
    b = store.get_batch("alice", bid)
    assert b["status"] == "in_progress" and b["request_counts"] == {"total": 12, "completed": 0, "failed": 9}
    assert b["errors"] is None
    assert store.backlog("m1")[0][1] == 2 and store.backlog("m2")[0][1] == 1
    drain(store, "m1")
    drain(store, "m2")
    store.tick()
    b = store.get_batch("alice", bid)
    assert b["status"] == "completed" and b["request_counts"] == {"total": 12, "completed": 3, "failed": 9}
    assert [x["custom_id"] for x in read_jsonl(store, "alice", b["output_file_id"])] == ["good1", "stream", "good2"]
    errs = read_jsonl(store, "alice", b["error_file_id"])
    got = [(x["custom_id"], x["error"]["code"]) for x in errs]
    assert got == [
        (None, "invalid_json_line"),
        (None, "invalid_json_line"),
        (None, "missing_required_parameter"),
        ("get", "invalid_method"),
        ("url", "invalid_url"),
        ("nobody", "missing_required_parameter"),
        ("unknown", "model_not_found"),
        ("good1", "duplicate_custom_id"),
        ("nomsg", "missing_required_parameter"),
    ]
    msgs = [x["error"]["message"] for x in errs]
    assert msgs[0].startswith("line 2:") and "gpt-9" in msgs[6] and "'GET'" in msgs[3] and "line 9:" in msgs[7]
    assert all(x["response"] is None for x in errs)


def test_all_lines_bad_fails_the_batch(store: BatchStore) -> None:
    bid = start(store, "alice", ["nope", chat_line("x", model="zzz")])
    b = store.get_batch("alice", bid)
    assert b["status"] == "failed" and b["failed_at"] is not None
    assert [e["code"] for e in b["errors"]["data"]] == ["invalid_json_line", "model_not_found"]
    assert b["errors"]["data"][1]["line"] == 2
    assert store.tick() == []


def test_record_twice_counts_once(store: BatchStore) -> None:
    bid = start(store, "alice", [chat_line("a"), chat_line("b")])
    (a,) = store.next_lines("m1", 1)
    assert store.record([ok(a)]) == 1
    assert store.record([ok(a)]) == 0
    assert store.record([LineResult(bid, a.idx, 500, None, {"code": "x", "message": "y"})]) == 0
    # a result for a line that was never leased counts once too and leaves the queue
    assert store.record([LineResult(bid, 1, 200, {"id": "c"}), LineResult(bid, 1, 200, {"id": "c"})]) == 1
    assert store.next_lines("m1", 5) == [] and store.backlog("m1") == []
    assert store.get_batch("alice", bid)["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    store.tick()
    out = read_jsonl(store, "alice", store.get_batch("alice", bid)["output_file_id"])
    assert [x["custom_id"] for x in out] == ["a", "b"]


def test_release_puts_lines_back_in_order(store: BatchStore) -> None:
    start(store, "alice", [chat_line(f"r{i}") for i in range(4)])
    first = store.next_lines("m1", 3)
    tokens = sum(x.input_tokens for x in first)
    assert store.backlog("m1")[0][1:] == (1, first[0].input_tokens)
    store.release(first[1:])
    assert store.backlog("m1")[0][1] == 3 and store.leased_batches()
    assert [x.custom_id for x in store.next_lines("m1", 10)] == ["r1", "r2", "r3"]
    assert tokens > 0


def test_reopen_after_abandoned_lease_offers_the_line_again(tmp_path: Path, clock: Clock) -> None:
    s = open_store(tmp_path, clock)
    bid = start(s, "alice", [chat_line(f"r{i}") for i in range(3)])
    a, b = s.next_lines("m1", 2)
    s.record([ok(a)])
    backlog = s.backlog("m1")
    # no close(): the process dies with `b` leased
    s2 = open_store(tmp_path, clock)
    assert s2.batch_status(bid) == "in_progress" and s2.leased_batches() == set()
    assert s2.backlog("m1") == [(backlog[0][0], 2, backlog[0][2] + b.input_tokens)]
    assert s2.queued_lines("alice") == 2
    again = s2.next_lines("m1", 5)
    assert [x.custom_id for x in again] == ["r1", "r2"] and again[0] == b
    s2.record([ok(x) for x in again])
    assert s.record([ok(b)]) == 0  # the dead process's late write changes nothing
    assert s2.tick() == [bid]
    assert s2.get_batch("alice", bid)["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    out = read_jsonl(s2, "alice", s2.get_batch("alice", bid)["output_file_id"])
    assert [x["custom_id"] for x in out] == ["r0", "r1", "r2"]
    s.close()
    s2.close()


def test_reopen_revalidates_a_batch_left_validating(tmp_path: Path, clock: Clock) -> None:
    s = open_store(tmp_path, clock)
    fid = upload(s, "alice", [chat_line(f"r{i}") for i in range(3)])
    bid = s.create_batch("alice", fid, "/v1/chat/completions", "24h", None)["id"]
    s.validate(bid)
    # make it look like a crash mid-validation: status back to validating, lines half there
    db = sqlite3.connect(tmp_path / "chirond.db")
    db.execute("UPDATE batch_batches SET status = 'validating', in_progress_at = NULL, total = 0")
    db.execute("DELETE FROM batch_lines WHERE rowid = (SELECT max(rowid) FROM batch_lines)")
    db.commit()
    db.close()
    s2 = open_store(tmp_path, clock)
    assert s2.pending_validation() == [bid] and s2.backlog("m1") == []
    assert s2.validate(bid)["request_counts"] == {"total": 3, "completed": 0, "failed": 0}
    assert s2.pending_validation() == [] and s2.backlog("m1")[0][1] == 3
    assert s2.validate(bid)["status"] == "in_progress"  # idempotent
    assert drain(s2) == 3
    s.close()
    s2.close()


def test_expiry_returns_what_was_done(store: BatchStore, clock: Clock) -> None:
    bid = start(store, "alice", [chat_line(f"r{i}") for i in range(4)], window="1h")
    a, b = store.next_lines("m1", 2)
    store.record([ok(a)])
    clock.t += 3599
    assert store.tick() == []
    clock.t += 1
    assert store.tick() == [bid]
    assert store.backlog("m1") == [] and store.next_lines("m1", 9) == [] and store.queued_lines("alice") == 0
    assert store.record([ok(b)]) == 0  # too late: already in the error file
    bt = store.get_batch("alice", bid)
    assert bt["status"] == "expired" and bt["expired_at"] is not None
    assert bt["request_counts"] == {"total": 4, "completed": 1, "failed": 3}
    assert [x["custom_id"] for x in read_jsonl(store, "alice", bt["output_file_id"])] == ["r0"]
    errs = read_jsonl(store, "alice", bt["error_file_id"])
    assert [(x["custom_id"], x["error"]["code"]) for x in errs] == [
        ("r1", "batch_expired"),
        ("r2", "batch_expired"),
        ("r3", "batch_expired"),
    ]
    assert all(x["id"].startswith("batch_req_") and x["response"] is None for x in errs)


def test_cancel(store: BatchStore) -> None:
    bid = start(store, "alice", [chat_line(f"r{i}") for i in range(4)])
    a, b = store.next_lines("m1", 2)
    with pytest.raises(StoreError) as e:
        store.cancel("bob", bid)
    assert e.value.status == 404
    assert store.cancel("alice", bid)["status"] == "cancelling"
    assert store.backlog("m1") == [] and store.next_lines("m1", 9) == []
    assert store.cancel("alice", bid)["status"] == "cancelling"  # idempotent
    store.record([ok(a)])  # a line running when the cancel came still counts
    assert store.tick() == [] and store.batch_status(bid) == "cancelling"  # b still leased
    store.release([b])
    assert store.next_lines("m1", 9) == []
    assert store.tick() == [bid]
    bt = store.get_batch("alice", bid)
    assert bt["status"] == "cancelled" and bt["cancelled_at"] is not None and bt["cancelling_at"] is not None
    assert bt["request_counts"] == {"total": 4, "completed": 1, "failed": 3}
    assert [x["custom_id"] for x in read_jsonl(store, "alice", bt["output_file_id"])] == ["r0"]
    errs = read_jsonl(store, "alice", bt["error_file_id"])
    assert {x["error"]["code"] for x in errs} == {"batch_cancelled"} and len(errs) == 3
    assert store.cancel("alice", bid)["status"] == "cancelled"  # idempotent
    done = start(store, "alice", [chat_line("z")])
    drain(store)
    store.tick()
    with pytest.raises(StoreError) as e:
        store.cancel("alice", done)
    assert e.value.status == 409 and "completed" in e.value.message


def test_cancel_before_validation(store: BatchStore) -> None:
    fid = upload(store, "alice", [chat_line("a")])
    bid = store.create_batch("alice", fid, "/v1/chat/completions", "24h", None)["id"]
    store.cancel("alice", bid)
    # Not finished before its lines are known (it used to end with total 0, its lines in no file).
    assert store.tick() == [] and store.batch_status(bid) == "cancelling"
    assert store.pending_validation() == [bid]
    store.validate(bid)
    assert store.backlog("m1") == []
    assert store.tick() == [bid]
    b = store.get_batch("alice", bid)
    assert b["status"] == "cancelled" and b["request_counts"] == {"total": 1, "completed": 0, "failed": 1}
    assert [e["error"]["code"] for e in read_jsonl(store, "alice", b["error_file_id"])] == ["batch_cancelled"]


def test_other_users_batches_are_404_and_listing(store: BatchStore) -> None:
    ids = [start(store, "alice", [chat_line("a")]) for _ in range(3)]
    other = start(store, "bob", [chat_line("a")])
    for call in (store.get_batch, store.cancel):
        with pytest.raises(StoreError) as e:
            call("bob", ids[0])
        assert e.value.status == 404 and ids[0] in e.value.message
    page, more = store.list_batches("alice", None, 2)
    assert [b["id"] for b in page] == [ids[2], ids[1]] and more
    page, more = store.list_batches("alice", ids[1], 2)
    assert [b["id"] for b in page] == [ids[0]] and not more
    assert [b["id"] for b in store.list_batches("bob", None, 20)[0]] == [other]
    with pytest.raises(StoreError):
        store.list_batches("bob", ids[0], 2)


def test_fair_share_between_users_in_one_bucket(store: BatchStore) -> None:
    # alice: short prompts (~30 tokens), bob: long ones (~1000 tokens), same window
    start(store, "alice", [chat_line(f"a{i}", text="x" * 100) for i in range(2000)])
    start(store, "bob", [chat_line(f"b{i}", text="y" * 4000) for i in range(200)])
    got = {"alice": 0, "bob": 0}
    for _ in range(100):
        for x in store.next_lines("m1", 7):
            got[x.user] += x.input_tokens
    # about equal tokens: within one quantum and one line of each other
    assert abs(got["alice"] - got["bob"]) <= 4096 + 1100, got
    assert got["alice"] > 20_000


def test_earlier_deadline_bucket_goes_first(store: BatchStore, clock: Clock) -> None:
    late = start(store, "alice", [chat_line(f"l{i}") for i in range(3)], window="24h")
    clock.t += 10
    early = start(store, "bob", [chat_line(f"e{i}") for i in range(3)], window="1h")
    got = [x.batch_id for x in store.next_lines("m1", 6)]
    assert got == [early] * 3 + [late] * 3
    assert store.backlog("m1") == []


def test_backlog_summary(store: BatchStore, clock: Clock) -> None:
    start(store, "alice", [chat_line(f"a{i}", text="x" * 40) for i in range(3)], window="24h")
    start(store, "bob", [chat_line(f"b{i}", text="x" * 40) for i in range(2)], window="1h")
    start(store, "bob", [chat_line("c", model="m2")], window="1h")
    t = clock.t
    per = 3 + 4 + 10  # chat overhead + message overhead + 40 characters / 4
    assert store.backlog("m1") == [(t + 3600, 2, 2 * per), (t + 86400, 3, 3 * per)]
    assert store.queued_lines("bob") == 3
    store.next_lines("m1", 1)
    assert store.backlog("m1")[0][1:] == (1, per) and store.queued_lines("bob") == 3


def test_output_is_written_atomically(tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    s = open_store(tmp_path, clock)
    bid = start(s, "alice", [chat_line(f"r{i}") for i in range(50)])
    drain(s)
    real_fsync = os.fsync

    def crash(fd: int) -> None:  # the process dies while writing the output file
        raise SystemExit("killed")

    monkeypatch.setattr(store_mod.os, "fsync", crash)
    with pytest.raises(SystemExit):
        s.tick()
    monkeypatch.setattr(store_mod.os, "fsync", real_fsync)
    b = s.get_batch("alice", bid)
    assert b["status"] == "finalizing" and b["output_file_id"] is not None
    assert not (s.files_dir / b["output_file_id"]).exists()  # only a temp file, never a partial output
    with pytest.raises(StoreError):
        s.get_file("alice", b["output_file_id"])
    s2 = open_store(tmp_path, clock)  # restart: the temp file is swept and the file written again
    assert [p.name for p in s2.files_dir.iterdir() if p.name.startswith(".")] == []
    assert s2.tick() == [bid]
    b2 = s2.get_batch("alice", bid)
    assert b2["status"] == "completed" and b2["output_file_id"] == b["output_file_id"]
    assert [x["custom_id"] for x in read_jsonl(s2, "alice", b2["output_file_id"])] == [f"r{i}" for i in range(50)]
    s.close()
    s2.close()


def test_files_expire_on_schedule(store: BatchStore, clock: Clock) -> None:
    fid = upload(store, "alice", [chat_line("a")])
    clock.t += 30 * 86400 - 1
    store.tick()
    assert store.get_file("alice", fid)["id"] == fid
    clock.t += 1
    store.tick()
    with pytest.raises(StoreError):
        store.get_file("alice", fid)
    assert not (store.files_dir / fid).exists()


def test_completions_endpoint(store: BatchStore) -> None:
    line = {"custom_id": "p", "method": "POST", "url": "/v1/completions", "body": {"model": "m2", "prompt": "abcd" * 5}}
    fid = upload(store, "alice", [line])
    bid = store.create_batch("alice", fid, "/v1/completions", "24h", None)["id"]
    store.validate(bid)
    (x,) = store.next_lines("m2", 5)
    assert x.url == "/v1/completions" and x.input_tokens == 5 and x.body["prompt"] == "abcd" * 5


def test_input_file_deleted_while_its_batch_runs_frees_it_and_cancels_the_rest(
    tmp_path: Path, clock: Clock
) -> None:
    # Deleting the input of a running batch frees its bytes at once; answered lines stay, the rest
    # (queued, or leased and then aborted) end in the error file as input_file_deleted, also when the
    # daemon restarts in between.
    s = open_store(tmp_path, clock)
    fid = upload(s, "alice", [chat_line(f"r{i}") for i in range(5)])
    bid = s.create_batch("alice", fid, "/v1/chat/completions", "24h", None)["id"]
    s.validate(bid)
    a, b = s.next_lines("m1", 2)
    s.record([ok(a)])
    assert s.storage_bytes("alice") > 0
    s.delete_file("alice", fid)
    assert not (s.files_dir / fid).exists() and s.storage_bytes("alice") == 0
    with pytest.raises(StoreError):
        s.get_file("alice", fid)
    bt = s.get_batch("alice", bid)
    assert bt["status"] == "cancelling" and bt["errors"]["data"][0]["code"] == "input_file_deleted"
    assert s.next_lines("m1", 10) == []  # nothing more is read from it
    s.release([b])  # the runner aborts what still ran
    s._db.close()  # a restart before the batch ended
    s2 = open_store(tmp_path, clock)
    assert s2.tick() == [bid]
    bt = s2.get_batch("alice", bid)
    assert bt["status"] == "cancelled" and bt["request_counts"] == {"total": 5, "completed": 1, "failed": 4}
    out = read_jsonl(s2, "alice", bt["output_file_id"])
    err = read_jsonl(s2, "alice", bt["error_file_id"])
    assert [x["custom_id"] for x in out] == ["r0"]
    assert [x["custom_id"] for x in err] == ["r1", "r2", "r3", "r4"]
    assert {x["error"]["code"] for x in err} == {"input_file_deleted"}
    s2.close()


def validate_with_events(
    store: BatchStore, monkeypatch: pytest.MonkeyPatch, events: dict[int, Callable[[str, str], object]]
) -> tuple[str, str, list[int]]:
    """Validates a 200-line batch of alice's, running `events[n](file_id, batch_id)` as validation
    reaches line n (DELETED_CHECK 4). Returns (file id, batch id, the line numbers read)."""
    monkeypatch.setattr(store_mod, "DELETED_CHECK", 4)
    fid = upload(store, "alice", [chat_line(f"r{i}") for i in range(200)], chunk=4096)
    bid = store.create_batch("alice", fid, "/v1/chat/completions", "24h", None)["id"]
    real_check, seen = store_mod.check_line, []

    def check_with_events(raw: bytes, lineno: int, *args: Any) -> Any:
        seen.append(lineno)
        if lineno in events:
            events[lineno](fid, bid)
        return real_check(raw, lineno, *args)

    monkeypatch.setattr(store_mod, "check_line", check_with_events)
    store.validate(bid)
    return fid, bid, seen


def test_input_file_deleted_while_it_validates_is_closed_early(
    store: BatchStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Validation holds the one handle on an input file that lasts: it notices the deletion within
    # DELETED_CHECK lines and closes it. The lines it had read are reported once, the rest never
    # were accepted.
    fid, bid, seen = validate_with_events(store, monkeypatch, {10: lambda f, b: store.delete_file("alice", f)})
    assert not (store.files_dir / fid).exists()
    assert len(seen) < 10 + 4, len(seen)  # stopped within DELETED_CHECK lines of the delete
    store.tick()
    bt = store.get_batch("alice", bid)
    assert bt["status"] == "cancelled"
    n = bt["request_counts"]["total"]
    assert n == len(seen) and bt["request_counts"]["failed"] == n
    err = read_jsonl(store, "alice", bt["error_file_id"])
    assert sorted(x["custom_id"] for x in err) == sorted(f"r{i}" for i in range(n))
    assert {x["error"]["code"] for x in err} == {"input_file_deleted"}


def test_input_deleted_after_a_cancel_during_validation_says_so(
    store: BatchStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cancelled while it validates, then its input deleted: validation stops short, and the batch
    # says why its total is short; every line it read is reported once, as input_file_deleted.
    _, bid, seen = validate_with_events(store, monkeypatch, {
        5: lambda f, b: store.cancel("alice", b),
        10: lambda f, b: store.delete_file("alice", f),
    })
    store.tick()
    bt = store.get_batch("alice", bid)
    assert bt["status"] == "cancelled" and bt["errors"] is not None
    assert "deleted" in json.dumps(bt["errors"])
    n = bt["request_counts"]["total"]
    assert n == len(seen) and bt["request_counts"]["failed"] == n
    err = read_jsonl(store, "alice", bt["error_file_id"])
    assert {x["error"]["code"] for x in err} == {"input_file_deleted"}


def test_expiry_in_chunks_survives_a_crash_between_them(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Expiring marks unfinished lines FINAL_CHUNK at a time (other calls get the store between
    # chunks); a crash after some chunks leaves counts that the next tick, after a restart, completes.
    monkeypatch.setattr(store_mod, "FINAL_CHUNK", 5)
    s = open_store(tmp_path, clock)
    bid = start(s, "alice", [chat_line(f"r{i}") for i in range(23)], window="1h")
    (a,) = s.next_lines("m1", 1)
    s.record([ok(a)])
    clock.t += 3600
    real_tx, calls = store_mod._tx, []

    def crash_on_third(db: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("kill -9")  # nothing after this point runs
        return real_tx(db)

    monkeypatch.setattr(store_mod, "_tx", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        s.tick()
    monkeypatch.setattr(store_mod, "_tx", real_tx)
    s._db.close()  # the process died; its connection with it

    s2 = open_store(tmp_path, clock)
    assert s2.tick() == [bid]
    bt = s2.get_batch("alice", bid)
    assert bt["status"] == "expired"
    assert bt["request_counts"] == {"total": 23, "completed": 1, "failed": 22}
    errs = read_jsonl(s2, "alice", bt["error_file_id"])
    assert sorted(x["custom_id"] for x in errs) == sorted(f"r{i}" for i in range(1, 23))
    assert [x["custom_id"] for x in read_jsonl(s2, "alice", bt["output_file_id"])] == ["r0"]
    s2.close()
