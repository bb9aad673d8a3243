"""The daemon's floor learner (chirond.learned_floors): it runs the learning as a child process
after each local midnight, puts the saved floor above the model's own, keeps it over a restart
and when a learning fails."""

from __future__ import annotations

import datetime as dt
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from chirond.config import load_config
from chirond.db import Database, db_path
from chirond.learned_floors import FloorLearner
from chirond.model import ReqClass, Request
from chirond.traffic import LearnedFloor, save_floor
from tests.support.learned_floor import config, specs_of


async def test_the_daemon_learns_after_midnight_and_keeps_the_floor_above_its_own(tmp_path: Path) -> None:
    own = "min_instances_by_hour = [" + ", ".join(["1"] * 24) + "]"
    cfg_path = config(tmp_path, floor=own)
    cfg = load_config(cfg_path)
    cfg.daemon.state_dir.mkdir()
    database = Database(db_path(cfg.daemon.state_dir))
    specs = specs_of(cfg_path)
    today = {"d": dt.date(2026, 12, 1)}
    calls: list[dt.date] = []
    # the child saves a floor of 3 from 09:00 to 17:00 (as `chirond learn-floor --save` would)
    child = ("import sqlite3, sys\nfrom chirond.traffic import LearnedFloor, save_floor\n"
             "db = sqlite3.connect(sys.argv[1])\n"
             "save_floor(db, 'm', LearnedFloor((0,) * 9 + (3,) * 8 + (0,) * 7, sys.argv[2], 1.0, 0.0))\n")

    def command(c: Any, day: dt.date) -> list[str]:
        calls.append(day)
        return [sys.executable, "-c", child, str(db_path(cfg.daemon.state_dir)), day.isoformat()]

    learner = FloorLearner(cfg, database, specs, wall=lambda t: t, command=command, today=lambda: today["d"])
    learner.start()
    assert specs["m"].min_instances_by_hour == (1,) * 24  # nothing saved yet: its own
    learner.tick()
    assert learner._task is not None
    await learner._task
    assert calls == [dt.date(2026, 11, 30)]  # yesterday
    assert specs["m"].min_instances_by_hour == (1,) * 9 + (3,) * 8 + (1,) * 7  # above its own
    assert "quiet" not in learner.floors
    learner.tick()  # the same day: not again
    assert calls == [dt.date(2026, 11, 30)]
    # served requests are recorded for the learning model only, each tick
    learner.record(Request(1, "m", ReqClass.INTERACTIVE, 1000.0, 123, 4))
    learner.record(Request(2, "quiet", ReqClass.INTERACTIVE, 1000.0, 1, 1))
    today["d"] = dt.date(2026, 12, 2)
    learner.tick()
    await learner._task
    assert calls[-1] == dt.date(2026, 12, 1)
    await learner.stop()
    db = sqlite3.connect(db_path(cfg.daemon.state_dir))
    assert db.execute("SELECT model, arrival, input_tokens FROM traffic").fetchall() == [("m", 1000.0, 123)]
    db.close()
    # a restart uses the saved floor at once, and does not learn again from the same day
    specs = specs_of(cfg_path)
    again = FloorLearner(cfg, database, specs, wall=lambda t: t, command=command, today=lambda: today["d"])
    again.start()
    assert specs["m"].min_instances_by_hour == (1,) * 9 + (3,) * 8 + (1,) * 7
    again.tick()
    assert again._task is None and len(calls) == 2
    await again.stop()


# A child that saves the 70B-like floor (3 every hour) for `m`, then exits as told.
SAVE_THEN_EXIT = ("import sqlite3, sys\nfrom chirond.traffic import LearnedFloor, save_floor\n"
                  "save_floor(sqlite3.connect(sys.argv[1]), 'm', LearnedFloor((3,) * 24, 'x', 1.0, 0.0))\n"
                  "print('quiet went wrong', file=sys.stderr)\nsys.exit(int(sys.argv[2]))\n")


@pytest.mark.parametrize(("child", "floor", "said"), [
    # no traffic for a model (exit 3): its last floor stays, said at INFO
    ("import sys; print('m: no traffic recorded', file=sys.stderr); sys.exit(3)", (2,) * 24,
     "no floor learned from 2026-11-30 for some models; their last floors stay: m: no traffic recorded"),
    # a crash (exit 1, a traceback): a warning, the floor in use stays
    ("raise RuntimeError('boom')", (2,) * 24,
     "learning the floors from 2026-11-30 failed (exit 1); the floors in use stay: Traceback|RuntimeError: boom"),
    # one model saved before another failed: what was saved is used
    ("SAVE", (3,) * 24, "failed (exit 5)"),
    # hung: killed after the timeout
    ("import time; time.sleep(60)", (2,) * 24, "learning the floors from 2026-11-30 took over 1 s: stopped"),
])
async def test_a_learning_that_fails_or_hangs_keeps_the_floors_in_use(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, child: str, floor: tuple[int, ...], said: str
) -> None:
    cfg_path = config(tmp_path)
    cfg = load_config(cfg_path)
    cfg.daemon.state_dir.mkdir()
    database = Database(db_path(cfg.daemon.state_dir))
    database.open()
    db = database.connect()
    save_floor(db, "m", LearnedFloor((2,) * 24, "2026-11-29", 1.0, 0.0))
    db.close()
    specs = specs_of(cfg_path)

    def command(c: Any, day: dt.date) -> list[str]:
        if child == "SAVE":
            return [sys.executable, "-c", SAVE_THEN_EXIT, str(db_path(cfg.daemon.state_dir)), "5"]
        return [sys.executable, "-c", child]

    learner = FloorLearner(cfg, database, specs, wall=lambda t: t, command=command,
                           today=lambda: dt.date(2026, 12, 1), timeout_s=1.0)
    learner.start()
    assert specs["m"].min_instances_by_hour == (2,) * 24  # learned two days ago: used, and learned again
    caplog.set_level("INFO", "chirond")
    t0 = time.monotonic()
    learner.tick()
    assert learner._task is not None
    await learner._task
    assert time.monotonic() - t0 < 30  # the hung child was killed, not waited for
    assert specs["m"].min_instances_by_hour == floor
    for part in said.split("|"):
        assert part in caplog.text
    await learner.stop()


async def test_the_daemon_records_what_it_served_at_wall_clock_time(daemon_factory: Any) -> None:
    """Through the API: each interactive request is in the history at its arrival's wall-clock
    time, with its prompt and answer tokens (its answer's cap where it did not finish), and
    `chirond learn-floor` reads it."""
    import openai

    from chirond.learn_floor_cli import learn
    from tests.support.daemon import client
    from tests.support.wait import wait_for

    d = await daemon_factory(model__learned_floor_price=30.0)
    c = client(d)
    before = time.time()
    for n in (3, 5):
        r = await c.chat.completions.create(model="llama-8b", messages=[{"role": "user", "content": "hi " * n}],
                                            max_tokens=4, extra_body={"ignore_eos": True})
        assert r.usage is not None and r.usage.completion_tokens == 4
    # a request whose client gives up is recorded too, with its answer's cap: what was asked for
    with pytest.raises(openai.APITimeoutError):
        await c.with_options(timeout=0.3, max_retries=0).chat.completions.create(
            model="llama-8b", messages=[{"role": "user", "content": "hi"}], max_tokens=3000,
            extra_body={"ignore_eos": True})
    await wait_for(lambda: not d.gateway.jobs, 10, "the abandoned request to end")
    after = time.time()
    await d.tick()  # the tick writes the history
    db = sqlite3.connect(db_path(d.cfg.daemon.state_dir))
    rows = db.execute("SELECT model, arrival, input_tokens, output_tokens FROM traffic ORDER BY arrival").fetchall()
    assert [(m, i > 0, o) for m, _, i, o in rows] == [("llama-8b", True, 4)] * 2 + [("llama-8b", True, 3000)]
    assert before - 0.5 <= rows[0][1] <= rows[1][1] <= rows[2][1] <= after
    day = dt.datetime.fromtimestamp(before).date()
    got = learn(d.cfg, d.cfg.models["llama-8b"], day, 30.0, db)
    db.close()
    assert got is not None and got["requests"][dt.datetime.fromtimestamp(before).hour] == 3
    assert got["min_instances_by_hour"] == [1] * 24  # min_instances 1: two requests ask for no more
