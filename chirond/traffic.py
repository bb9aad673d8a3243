"""The daemon's own traffic, kept for the floors it learns (`learned_floor_price`): each interactive
request of such a model that reached its queues, however it ended (arrival, prompt tokens, answer
tokens or the answer's cap), in chirond.db for TRAFFIC_DAYS days; the hours the daemon was up to
record it; and each model's floor learned from it (`chirond learn-floor --save`)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from chirond.db import Database, transaction
from chirond.model import ReqClass, Request

log = logging.getLogger("chirond")

TRAFFIC_DAYS = 3  # enough for yesterday, whatever the time zone, with a day to spare
PRUNE_EVERY_S = 3600.0
MAX_PENDING = 1_000_000  # rows kept in memory while the disk refuses them; the oldest go first


@dataclass(frozen=True, slots=True)
class LearnedFloor:
    counts: tuple[int, ...]  # 24, from local midnight
    day: str  # the local day it was learned from, YYYY-MM-DD
    price: float
    learned_at: float  # epoch seconds


class TrafficLog:
    """Buffered like the usage: `record` in memory, `flush` (each tick) in one transaction. Only
    the models given are recorded; rows older than TRAFFIC_DAYS go once an hour."""

    def __init__(self, db: Database, models: set[str], wall: Callable[[], float] = time.time) -> None:
        self.database = db
        self.models = models
        self.wall = wall
        self._db: sqlite3.Connection | None = None
        self._pending: list[tuple[str, float, int, int]] = []
        self._pruned_at = -PRUNE_EVERY_S
        self._up_hour = -1.0  # the hour last written to `uptime`

    def open(self) -> None:
        if self._db is None and self.models:
            self.database.open()
            self._db = self.database.connect(busy_timeout_s=5.0)

    def close(self) -> None:
        if self._db is not None:
            try:
                self.flush()
            except sqlite3.Error as e:
                log.error("traffic history could not be written at shutdown (%s); %d request(s) not recorded",
                          e, len(self._pending))
            finally:
                self._db.close()
                self._db = None

    def record(self, model: str, arrival_epoch: float, input_tokens: int, output_tokens: int) -> None:
        if model in self.models:
            self._pending.append((model, arrival_epoch, input_tokens, output_tokens))
            if len(self._pending) > MAX_PENDING:
                del self._pending[: len(self._pending) - MAX_PENDING]
                log.warning("traffic history: %d requests wait for the disk; the oldest are dropped", MAX_PENDING)

    def flush(self) -> None:
        if self._db is None:
            return
        pending, self._pending = self._pending, []
        now = self.wall()
        hour = now // 3600 * 3600
        prune = now - self._pruned_at >= PRUNE_EVERY_S
        try:
            with transaction(self._db) as db:
                db.executemany("INSERT INTO traffic (model, arrival, input_tokens, output_tokens) VALUES (?, ?, ?, ?)",
                               pending)
                if hour != self._up_hour:
                    db.execute("INSERT OR IGNORE INTO uptime (hour) VALUES (?)", (hour,))
                if prune:
                    cutoff = now - TRAFFIC_DAYS * 86400.0
                    for m in sorted(self.models):  # by model: the index serves the delete
                        db.execute("DELETE FROM traffic WHERE model = ? AND arrival < ?", (m, cutoff))
                    db.execute("DELETE FROM uptime WHERE hour < ?", (cutoff,))
        except BaseException:
            self._pending = pending + self._pending  # nothing lost: written at the next flush
            raise
        self._up_hour = hour
        if prune:
            self._pruned_at = now


def local_midnight(day: dt.date) -> float:
    """Epoch seconds of the first instant of the local `day` (its midnight, or where a clock change
    skips midnight, the instant the clock jumps to: no earlier instant belongs to `day`)."""
    t = dt.datetime.combine(day, dt.time()).astimezone().timestamp()
    while dt.datetime.fromtimestamp(t).date() < day:  # midnight did not exist: step to the jump
        t += 60.0
    return t


def day_requests(db: sqlite3.Connection, model: str, day: dt.date) -> list[Request]:
    """`model`'s recorded requests of the local `day`, as interactive requests whose arrival is in
    seconds of local clock time since its midnight, so an hour's traffic meets that hour's floor
    (the floor is read by the local clock). The hour a clock change repeats holds both of its
    hours' traffic; the hour it skips holds none."""
    start, end = local_midnight(day), local_midnight(day + dt.timedelta(days=1))
    rows = db.execute("SELECT arrival, input_tokens, output_tokens FROM traffic WHERE model = ? AND arrival >= ? "
                      "AND arrival < ? ORDER BY arrival", (model, start, end)).fetchall()
    reqs = [Request(i, model, ReqClass.INTERACTIVE, _day_s(a), int(n_in), int(n_out))
            for i, (a, n_in, n_out) in enumerate(rows)]
    reqs.sort(key=lambda r: r.arrival)  # a repeated hour's second pass comes back in clock order
    return reqs


def up_hours(db: sqlite3.Connection, day: dt.date) -> tuple[int, int]:
    """(hours of the local `day` the daemon recorded traffic in, hours the day has)."""
    start, end = local_midnight(day), local_midnight(day + dt.timedelta(days=1))
    (n,) = db.execute("SELECT count(*) FROM uptime WHERE hour >= ? AND hour < ?",
                      (start // 3600 * 3600, end)).fetchone()
    return int(n), round((end - start) / 3600)


def _day_s(epoch: float) -> float:
    t = dt.datetime.fromtimestamp(epoch)
    return t.hour * 3600.0 + t.minute * 60.0 + t.second + t.microsecond / 1e6


def save_floor(db: sqlite3.Connection, model: str, floor: LearnedFloor) -> None:
    with transaction(db) as tx:
        tx.execute("INSERT OR REPLACE INTO floors (model, counts, day, price, learned_at) VALUES (?, ?, ?, ?, ?)",
                   (model, json.dumps(list(floor.counts)), floor.day, floor.price, floor.learned_at))


def load_floors(db: sqlite3.Connection) -> dict[str, LearnedFloor]:
    return {m: LearnedFloor(tuple(int(x) for x in json.loads(c)), d, float(p), float(at))
            for m, c, d, p, at in db.execute("SELECT model, counts, day, price, learned_at FROM floors")}
