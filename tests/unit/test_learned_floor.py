"""A floor learned from a model's own traffic of a past day (chirond.sim.hindsight.learn_floor),
the traffic history the daemon keeps for it (chirond.traffic), `chirond learn-floor`, and the
daemon's learner (chirond.learned_floors), each worked by hand."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from chirond import traffic as traffic_mod
from chirond.config import load_config
from chirond.control.snapshot import higher
from chirond.db import MIGRATIONS, Database, db_path
from chirond.learn_floor_cli import main as learn_main
from chirond.learned_floors import FloorLearner
from chirond.model import ReqClass, Slo
from chirond.policy import make_policy
from chirond.profiles import find_profile, load_profile
from chirond.sim.hindsight import hindsight, learn_floor
from chirond.sim.runner import ModelSetup
from chirond.traffic import TrafficLog, day_requests, load_floors, local_midnight, up_hours
from tests.support.learned_floor import config, day_of_traffic, specs_of

PROFILE = load_profile(find_profile("llama-3.1-8b_a100-80gb_tp1"))
SLO = Slo(2.0, 0.2)


def test_the_floor_is_what_each_hour_asked_for_at_the_price() -> None:
    setup = ModelSetup("m", PROFILE, SLO, 0.0, max_instances=6, min_instances=0, initial_instances=0,
                       static_instances=0)
    runs: list[int] = []
    counts, fixed = learn_floor(day_of_traffic(), setup, make_policy("chirond", {"m": PROFILE}), 1.0,
                                progress=lambda n, _: runs.append(n))
    # 0 instances miss every request of their hour; 1 misses nearly all of hour 1 and none of hour 2;
    # 2 miss none: at 1 miss per GPU-hour, hour 1 asks for 2, hour 2 for 1, the empty hours for 0
    assert fixed[0][:3].tolist() == [0, 240, 20]
    assert fixed[1][1] > 200 and fixed[1][2] == 0
    assert not fixed[2].any()
    assert counts == (0, 2, 1) + (0,) * 21
    assert runs == [0, 1, 2]  # no misses left at 2: nothing more is run (max_instances is 6)
    # at a price no hour's misses reach, nothing is bought
    counts, _ = learn_floor(day_of_traffic(), setup, make_policy("chirond", {"m": PROFILE}), 1000.0)
    assert counts == (0,) * 24
    # min_instances is where the counts start
    counts, fixed = learn_floor(day_of_traffic(), ModelSetup("m", PROFILE, SLO, 0.0, 6, 1, 0, 0),
                                make_policy("chirond", {"m": PROFILE}), 1.0)
    assert sorted(fixed) == [1, 2] and counts == (1, 2) + (1,) * 22


def test_hindsight_takes_several_instances_at_once_past_a_count_that_cannot_keep_up() -> None:
    # one bin of an hour, 1 GPU an instance, 10 misses per GPU-hour: 1 instance avoids only 5 of
    # 100 misses (it falls behind), 2 avoid all: cost 100, 105, 20 -> 2 (a walk one instance at a
    # time would stop at 0)
    fixed = {0: np.array([100]), 1: np.array([95]), 2: np.array([0])}
    assert hindsight(fixed, 1, 1.0, 10.0) == ([2], 0, 2.0)
    # a tie buys: 2 -> 3 avoids exactly 10
    fixed[3] = np.array([0])
    fixed[2] = np.array([10])
    assert hindsight(fixed, 1, 1.0, 10.0)[0] == [3]


def test_two_floors_are_the_larger_count_of_each_hour() -> None:
    assert higher((1, 3) + (0,) * 22, (2, 2) + (1,) * 22) == (2, 3) + (1,) * 22
    assert higher((), (1,) * 24) == (1,) * 24 and higher((2,) * 24, ()) == (2,) * 24


# ---------------------------------------------------------------- the traffic history


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("TZ", "CET-1")  # an hour east of UTC: local midnight is 23:00 UTC
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_traffic_is_kept_for_the_learning_models_by_local_day(tmp_path: Path, utc: Any) -> None:
    day = dt.date(2026, 11, 30)
    midnight = local_midnight(day)
    assert midnight == dt.datetime(2026, 11, 29, 23, tzinfo=dt.UTC).timestamp()
    now = {"t": midnight + 2 * 86400}
    log = TrafficLog(Database(tmp_path / "c.db"), {"m"}, wall=lambda: now["t"])
    log.open()
    log.record("m", midnight - 1.0, 10, 1)  # the day before
    log.record("m", midnight + 3600.5, 100, 5)
    log.record("m", midnight + 86399.0, 200, 6)
    log.record("other", midnight + 10.0, 1, 1)  # not learning: not kept
    log.flush()
    db = sqlite3.connect(tmp_path / "c.db")
    got = day_requests(db, "m", day)
    assert [(r.arrival, r.input_tokens, r.output_tokens, r.cls) for r in got] == [
        (3600.5, 100, 5, ReqClass.INTERACTIVE), (86399.0, 200, 6, ReqClass.INTERACTIVE)]
    assert day_requests(db, "other", day) == []
    assert up_hours(db, day + dt.timedelta(days=2)) == (1, 24)  # the hour it flushed in: up
    # a flush that fails loses nothing: the rows are written by the next
    log.record("m", midnight + 7200.0, 300, 7)
    real = traffic_mod.transaction

    def full(conn: sqlite3.Connection) -> Any:
        raise sqlite3.OperationalError("database or disk is full")

    traffic_mod.transaction = full  # type: ignore[assignment]
    try:
        with pytest.raises(sqlite3.OperationalError):
            log.flush()
    finally:
        traffic_mod.transaction = real
    log.flush()
    assert [r.input_tokens for r in day_requests(db, "m", day)] == [100, 300, 200]
    # rows older than TRAFFIC_DAYS go, once an hour
    now["t"] = midnight + traffic_mod.TRAFFIC_DAYS * 86400 + 7300.0  # keeps what came after 07:20
    log.flush()
    assert [r.input_tokens for r in day_requests(db, "m", day)] == [200]
    log.close()
    db.close()


def in_tz(monkeypatch: pytest.MonkeyPatch, tz: str) -> None:
    monkeypatch.setenv("TZ", tz)
    time.tzset()


def test_clock_changes_keep_each_request_in_its_clock_hour(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        # Chile skips midnight: 2026-09-06 begins at 01:00 (-03), 23:00 of the 5th (-04) is the day before
        in_tz(monkeypatch, "America/Santiago")
        day = dt.date(2026, 9, 6)
        first = local_midnight(day)
        assert dt.datetime.fromtimestamp(first).hour == 1 and dt.datetime.fromtimestamp(first - 1).day == 5
        log = TrafficLog(Database(tmp_path / "a.db"), {"m"}, wall=lambda: first)
        log.open()
        log.record("m", first - 1800.0, 1, 1)  # 23:30 on the 5th
        log.record("m", first + 10.0, 2, 1)  # 01:00:10
        log.flush()
        db = sqlite3.connect(tmp_path / "a.db")
        assert [(r.arrival, r.input_tokens) for r in day_requests(db, "m", day)] == [(3610.0, 2)]
        assert [r.input_tokens for r in day_requests(db, "m", day - dt.timedelta(days=1))] == [1]
        log.close()
        # Berlin repeats 02:00-03:00 on 2026-10-25: both passes are hour 2, in clock order
        in_tz(monkeypatch, "Europe/Berlin")
        day = dt.date(2026, 10, 25)
        summer = dt.datetime(2026, 10, 25, 0, 30, tzinfo=dt.UTC).timestamp()  # 02:30 CEST
        log = TrafficLog(Database(tmp_path / "b.db"), {"m"}, wall=lambda: summer)
        log.open()
        for at, tokens in ((summer, 1), (summer + 3600.0, 2), (summer + 2400.0, 3)):  # 02:30 CEST, 02:30 CET, 02:10 CET
            log.record("m", at, tokens, 1)
        log.flush()
        db = sqlite3.connect(tmp_path / "b.db")
        assert [(r.arrival, r.input_tokens) for r in day_requests(db, "m", day)] == [(7800.0, 3), (9000.0, 1),
                                                                                    (9000.0, 2)]
        assert local_midnight(day + dt.timedelta(days=1)) - local_midnight(day) == 25 * 3600
        log.close()
    finally:
        monkeypatch.undo()
        time.tzset()


# ---------------------------------------------------------------- chirond learn-floor


def record_day(cfg_path: Path, day: dt.date) -> None:
    cfg = load_config(cfg_path)
    cfg.daemon.state_dir.mkdir(exist_ok=True)
    log = TrafficLog(Database(db_path(cfg.daemon.state_dir)), {"m"})
    log.open()
    midnight = local_midnight(day)
    for r in day_of_traffic():
        if r.cls is ReqClass.INTERACTIVE:
            log.record("m", midnight + r.arrival, r.input_tokens, r.output_tokens)
    log.close()


def args(cfg: Path, *extra: str) -> argparse.Namespace:
    ns = argparse.Namespace(config=str(cfg), day=None, model=None, price=None, save=False, json=False)
    it = iter(extra)
    for k in it:
        v: Any = True if k in ("--save", "--json") else next(it)
        key = k.lstrip("-")
        setattr(ns, key, [v] if key == "model" else (float(v) if key == "price" else v))
    return ns


def test_learn_floor_prints_saves_and_says_why_not(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path)
    day = dt.date(2026, 11, 30)
    record_day(cfg, day)
    assert learn_main(args(cfg, "--day", "2026-11-30")) == 0
    out = capsys.readouterr().out
    assert "[models.m] min_instances_by_hour = [0, 2, 1, 0," in out
    assert "  requests     0  240   20    0" in out
    db = sqlite3.connect(tmp_path / "state" / "chirond.db")
    assert load_floors(db) == {}  # printed, not saved
    assert learn_main(args(cfg, "--day", "2026-11-30", "--save", "--json")) == 0
    (got,) = json.loads(capsys.readouterr().out)
    assert got["min_instances_by_hour"] == [0, 2, 1] + [0] * 21 and got["requests"][:3] == [0, 240, 20]
    saved = load_floors(db)["m"]
    assert (saved.counts, saved.day, saved.price) == ((0, 2, 1) + (0,) * 21, "2026-11-30", 1.0)
    # another price for one model
    assert learn_main(args(cfg, "--day", "2026-11-30", "--price", "1000", "--model", "m", "--json")) == 0
    assert json.loads(capsys.readouterr().out)[0]["min_instances_by_hour"] == [0] * 24
    # a day with nothing recorded (the daemon down): exit 3, saying so, nothing saved
    assert learn_main(args(cfg, "--day", "2026-11-29", "--save")) == 3
    assert "m: no traffic recorded on 2026-11-29 (the daemon was up 0 of its hours" in capsys.readouterr().err
    assert load_floors(db)["m"].day == "2026-11-30"
    # a quiet day the daemon was up (20 hours or more): min_instances every hour, saved
    up = sqlite3.connect(tmp_path / "state" / "chirond.db")
    up.executemany("INSERT INTO uptime (hour) VALUES (?)",
                   [(local_midnight(dt.date(2026, 11, 29)) + 3600.0 * h,) for h in range(20)])
    up.commit()
    up.close()
    assert learn_main(args(cfg, "--day", "2026-11-29", "--save")) == 0
    assert load_floors(db)["m"].counts == (0,) * 24 and load_floors(db)["m"].day == "2026-11-29"
    capsys.readouterr()
    # errors: exit 2, naming what is wrong
    assert learn_main(args(cfg, "--day", "30/11/2026")) == 2
    assert "--day: '30/11/2026' is not a date" in capsys.readouterr().err
    assert learn_main(args(cfg, "--model", "nope")) == 2
    assert "no model 'nope'" in capsys.readouterr().err
    assert learn_main(args(cfg, "--model", "quiet")) == 2
    assert "quiet sets no learned_floor_price: give --price" in capsys.readouterr().err
    # the child of a daemon not yet restarted after an upgrade does not migrate its file
    old = tmp_path / "old"
    (old / "state").mkdir(parents=True)
    Database(old / "state" / "chirond.db", MIGRATIONS[:1]).open()
    old_cfg = config(old)
    assert learn_main(args(old_cfg)) == 2
    assert "schema version 1, where this chirond reads 2: start the daemon" in capsys.readouterr().err
    assert sqlite3.connect(old / "state" / "chirond.db").execute("PRAGMA user_version").fetchone() == (1,)
    # and where the daemon never ran, there is nothing to learn from
    none = tmp_path / "none"
    none.mkdir()
    assert learn_main(args(config(none))) == 3
    assert "does not exist" in capsys.readouterr().err
    assert learn_main(args(config(tmp_path, price=0.0))) == 2
    assert "no model in" in capsys.readouterr().err
    db.close()


# ---------------------------------------------------------------- the daemon's learner


def test_a_daemon_without_learning_models_opens_nothing(tmp_path: Path) -> None:
    cfg_path = config(tmp_path, price=0.0)
    cfg = load_config(cfg_path)
    learner = FloorLearner(cfg, Database(db_path(cfg.daemon.state_dir)), specs_of(cfg_path), wall=lambda t: t)
    learner.start()
    learner.tick()
    assert learner.traffic._db is None and not (cfg.daemon.state_dir / "chirond.db").exists()
