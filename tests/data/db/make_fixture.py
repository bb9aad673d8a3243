"""Writes tests/data/db/v0/ (chirond.db and files/): a database made by the code of commit c5db366,
before chirond.db had a schema version (PRAGMA user_version 0), for tests/unit/test_db.py. Kept to
show how the fixture was made; it needs that commit's stores (they created their own tables in
their constructor / open()), so run it from a checkout of c5db366, never with today's code:

    git worktree add /tmp/chirond-v0 c5db366
    cd /tmp/chirond-v0 && python -m venv .venv && .venv/bin/pip install -e . -q
    .venv/bin/python /path/to/tests/data/db/make_fixture.py

expected.json records what the upgrade test checks (ids, the clock, the keys minted: test keys).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

from chirond.batch.store import BatchLimits, BatchStore, LineResult
from chirond.users import UserStore

T0 = 1_700_000_000.0
OUT = Path(__file__).resolve().parent / "v0"


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    db = OUT / "chirond.db"
    now = [T0]
    clock = lambda: now[0]  # noqa: E731

    users = UserStore(db, clock=clock)
    users.open()
    keys = {"alice": users.mint("alice"), "bob": users.mint("bob")}
    assert users.verify(keys["alice"]) == "alice"
    users.add_usage("alice", "m1", 100, 20, 1.5)
    users.add_usage("alice", "m1", 50, 10, 0.5)
    users.add_usage("bob", "m2", 7, 3, 0.25)
    users.flush()

    store = BatchStore(db, OUT / "files", BatchLimits(), ["m1", "m2"], clock)

    def line(cid: str, model: str) -> str:
        body = {"model": model, "messages": [{"role": "user", "content": f"say {cid}"}]}
        return json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body})

    def upload(user: str, lines: list[str]) -> str:
        up = store.new_upload()
        up.write("".join(x + "\n" for x in lines).encode())
        return str(up.commit(user, "in.jsonl", "batch")["id"])

    def ok(x: object) -> LineResult:
        b = {"id": f"chatcmpl-{x.custom_id}", "object": "chat.completion", "choices": []}  # type: ignore[attr-defined]
        return LineResult(x.batch_id, x.idx, 200, b)  # type: ignore[attr-defined]

    # A finished batch: alice, 2 lines, both answered; its output file written.
    f_done = upload("alice", [line("d0", "m1"), line("d1", "m1")])
    b_done = store.create_batch("alice", f_done, "/v1/chat/completions", "24h", {"run": "done"})["id"]
    store.validate(b_done)
    assert store.record(ok(x) for x in store.next_lines("m1", 10)) == 2
    assert store.tick() == [b_done]

    # A running batch: bob, 6 lines over two models and one bad line; some done, the rest queued.
    now[0] += 60
    lines = [line(f"r{i}", "m1" if i < 4 else "m2") for i in range(6)] + ["not json"]
    f_run = upload("bob", lines)
    b_run = store.create_batch("bob", f_run, "/v1/chat/completions", "24h", None)["id"]
    store.validate(b_run)
    got = store.next_lines("m1", 3)
    assert [x.custom_id for x in got] == ["r0", "r1", "r2"]
    store.record([ok(got[0]), LineResult(b_run, got[1].idx, 500, {"error": {"message": "boom", "type": "x"}})])
    store.release([got[2]])  # leased, not run: queued again
    store.close()
    users.close()

    for suffix in ("-wal", "-shm"):
        assert not Path(str(db) + suffix).exists(), "the WAL must be checkpointed into the file"
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 0
    con.close()
    expected = {
        "clock": now[0],
        "keys": keys,
        "files": {"done_input": f_done, "running_input": f_run},
        "batches": {"done": b_done, "running": b_run},
    }
    (OUT.parent / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    print(json.dumps(expected, indent=2))


if __name__ == "__main__":
    main()
