"""The daemon's side of a learned floor (`learned_floor_price`): it records the traffic of the
models that learn one, runs `chirond learn-floor --save` on yesterday's after each local midnight
(a child process: the learning simulates a day and must not hold up the event loop), and puts the
floors it saved under the control loop, above each model's own `min_instances_by_hour`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import sys
import time
from collections.abc import Callable, MutableMapping

from chirond.config import Config
from chirond.control.snapshot import ModelSpec, higher
from chirond.db import Database
from chirond.model import Request
from chirond.traffic import LearnedFloor, TrafficLog, load_floors

log = logging.getLogger("chirond")

# argv of the learning child: `chirond learn-floor --config PATH --save --day YYYY-MM-DD`
Command = Callable[[Config, dt.date], list[str]]


def learn_command(cfg: Config, day: dt.date) -> list[str]:
    return [sys.executable, "-m", "chirond", "learn-floor", "--config", str(cfg.path), "--save",
            "--day", day.isoformat()]


class FloorLearner:
    def __init__(self, cfg: Config, database: Database, specs: MutableMapping[str, ModelSpec],
                 wall: Callable[[float], float], command: Command = learn_command,
                 today: Callable[[], dt.date] = dt.date.today) -> None:
        self.cfg = cfg
        self.models = {n for n, m in cfg.models.items() if m.learned_floor_price > 0}
        self.traffic = TrafficLog(database, self.models)
        self.specs = specs
        self.wall = wall  # daemon clock -> epoch seconds
        self.command = command
        self.today = today
        self.floors: dict[str, LearnedFloor] = {}
        self._learned_on: dt.date | None = None  # the local day the last learning began
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Opens the history and uses the floors saved before (a restart keeps them)."""
        if not self.models:
            return
        self.traffic.open()
        self._apply()
        for m, f in sorted(self.floors.items()):
            log.info("%s: using the floor learned from %s at %g misses per GPU-hour: %s", m, f.day, f.price,
                     list(f.counts))
        yesterday = (self.today() - dt.timedelta(days=1)).isoformat()
        if self.models <= set(self.floors) and all(f.day == yesterday for f in self.floors.values()):
            self._learned_on = self.today()  # already learned from yesterday

    def served(self, r: Request) -> None:
        self.traffic.record(r.model, self.wall(r.arrival), r.input_tokens, r.output_tokens)

    def tick(self) -> None:
        """Each control tick: the traffic to disk; after a local midnight, learn from yesterday."""
        if not self.models:
            return
        self.traffic.flush()
        today = self.today()
        if self._learned_on != today and (self._task is None or self._task.done()):
            self._learned_on = today
            self._task = asyncio.get_running_loop().create_task(self._learn(today - dt.timedelta(days=1)))

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.traffic.close()

    async def _learn(self, day: dt.date) -> None:
        t0 = time.monotonic()
        argv = self.command(self.cfg, day)
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE)
        try:
            _, err = await proc.communicate()
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        if proc.returncode == 0:
            self._apply()
            log.info("learned floors from %s in %.0f s: %s", day, time.monotonic() - t0,
                     "; ".join(f"{m} {list(f.counts)}" for m, f in sorted(self.floors.items())))
        else:  # 1: no traffic recorded that day (a first day, a new model); the old floors stay
            tail = err.decode(errors="replace").strip().splitlines()[-3:]
            (log.info if proc.returncode == 1 else log.warning)(
                "no floor learned from %s (exit %s): %s", day, proc.returncode, " / ".join(tail))

    def _apply(self) -> None:
        db = self.traffic.database.connect(busy_timeout_s=5.0)
        try:
            self.floors = {m: f for m, f in load_floors(db).items() if m in self.models}
        finally:
            db.close()
        for m, f in self.floors.items():
            own = self.cfg.models[m].min_instances_by_hour
            self.specs[m] = dataclasses.replace(self.specs[m], min_instances_by_hour=higher(own, f.counts))
