"""Bounded JSON (chirond.jsonbounds) and what it protects: a batch line nested 5,000 deep goes to
the error file and the good lines run (issue 13, item 7); the bounds themselves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chirond import jsonbounds
from chirond.batch import store as store_mod
from chirond.batch.store import BatchLimits, BatchStore, LineResult


def test_depth_and_surrogates_are_value_errors() -> None:
    assert jsonbounds.loads(b'{"a": [[1, {"b": "\\u00e9\\ud83d\\ude00"}]]}') == {"a": [[1, {"b": "é😀"}]]}
    ok = "[" * jsonbounds.MAX_DEPTH + "]" * jsonbounds.MAX_DEPTH
    assert jsonbounds.loads(ok) is not None
    for bad, what in (
        ("[" * (jsonbounds.MAX_DEPTH + 1) + "]" * (jsonbounds.MAX_DEPTH + 1), "levels deep"),
        ('{"a":' * 5000 + "1" + "}" * 5000, "levels deep"),  # past Python's recursion limit
        ('{"x": "\\ud800"}', "surrogate"),
        ('{"\\udfff": 1}', "surrogate"),
        ('["ok", ["\\ud800x"]]', "surrogate"),
    ):
        with pytest.raises(ValueError, match=what):
            jsonbounds.loads(bad)
    with pytest.raises(ValueError):
        jsonbounds.loads(b"\xff")


def test_a_deeply_nested_line_is_an_error_line_and_the_rest_runs(tmp_path: Path) -> None:
    store = BatchStore(tmp_path / "chirond.db", tmp_path / "files", BatchLimits(), ["m1"])
    store.open()

    def line(cid: str, content: object) -> str:
        return json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                           "body": {"model": "m1", "messages": [{"role": "user", "content": content}]}})

    deep = line("deep", "PLACEHOLDER").replace('"PLACEHOLDER"', "[" * 5000 + "]" * 5000)
    surrogate = line("sur", "PLACEHOLDER").replace("PLACEHOLDER", "\\ud800")
    data = "\n".join([line("a", "hi"), deep, surrogate, line("b", "there")]).encode() + b"\n"
    up = store.new_upload()
    up.write(data)
    fid = up.commit("alice", "in.jsonl", "batch")["id"]
    bid = store.create_batch("alice", fid, "/v1/chat/completions", "24h", None)["id"]
    b = store.validate(bid)  # raised RecursionError before: the batch stayed "validating" forever
    assert b["status"] == "in_progress"
    assert b["request_counts"] == {"total": 4, "completed": 0, "failed": 2}
    lines = store.next_lines("m1", 10)
    assert sorted(x.custom_id for x in lines) == ["a", "b"]
    store.record(LineResult(x.batch_id, x.idx, 200, {"id": "c", "choices": []}) for x in lines)
    store.tick()
    b = store.get_batch("alice", bid)
    assert b["status"] == "completed"
    errors = [json.loads(x) for x in store.file_path("alice", b["error_file_id"]).read_text().splitlines()]
    assert [e["error"]["code"] for e in errors] == ["invalid_json_line", "invalid_json_line"]
    assert "levels deep" in errors[0]["error"]["message"] and "surrogate" in errors[1]["error"]["message"]
    store.close()


def test_queued_lines_count_batches_still_validating(tmp_path: Path) -> None:
    # The queued_batch_lines quota reads queued_lines: a batch not validated yet must count, or
    # ten 80-line batches created at once all pass a quota of 100.
    store = BatchStore(tmp_path / "chirond.db", tmp_path / "files", BatchLimits(), ["m1"])
    store.open()
    data = "".join(
        json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "m1", "messages": [{"role": "user", "content": "q"}]}}) + "\n"
        for i in range(80)
    ).encode()
    up = store.new_upload()
    up.write(data)
    fid = up.commit("alice", "in.jsonl", "batch")["id"]
    bids = [store.create_batch("alice", fid, "/v1/chat/completions", "24h", None)["id"] for _ in range(2)]
    assert store.queued_lines("alice") == 160 and store.queued_lines("bob") == 0
    store.validate(bids[0])
    assert store.queued_lines("alice") == 160
    store.close()
    again = BatchStore(tmp_path / "chirond.db", tmp_path / "files", BatchLimits(), ["m1"])
    again.open()  # after a restart, a batch left validating still counts
    assert again.queued_lines("alice") == 160
    again.close()


def test_an_oversized_line_is_refused_at_validation_without_being_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 13, item 10: four 50 MB lines took the daemon to 616 MB, refused only when they ran.
    limit = 64 * 1024
    store = BatchStore(tmp_path / "chirond.db", tmp_path / "files", BatchLimits(max_line_bytes=limit), ["m1"])
    store.open()
    good = json.dumps({"custom_id": "ok", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}})
    big = json.dumps({"custom_id": "big", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"model": "m1", "messages": [{"role": "user", "content": "x" * (20 * limit)}]}})
    up = store.new_upload()
    up.write(("\n".join([good, big, good.replace('"ok"', '"ok2"')]) + "\n").encode())
    fid = up.commit("alice", "in.jsonl", "batch")["id"]
    bid = store.create_batch("alice", fid, "/v1/chat/completions", "24h", None)["id"]
    seen: list[int] = []
    real = store_mod.check_line

    def spy(raw: bytes, *args: object) -> object:
        seen.append(len(raw))
        return real(raw, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(store_mod, "check_line", spy)
    b = store.validate(bid)
    assert b["request_counts"] == {"total": 3, "completed": 0, "failed": 1}
    assert max(seen) < limit  # the big line was never parsed
    assert sorted(x.custom_id for x in store.next_lines("m1", 10)) == ["ok", "ok2"]
    (err,) = [x for x in store._db.execute("SELECT result FROM batch_lines WHERE state = 2")]
    assert json.loads(err[0])["error"]["code"] == "line_too_large"
    store.close()
