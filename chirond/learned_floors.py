"""The daemon's side of a learned floor (`learned_floor_price`): it records the traffic of the
models that learn one, runs `chirond learn-floor --save` on yesterday's after each local midnight
(a child process at low priority: the learning simulates a day and must not hold up the event
loop), and puts the floors saved under the control loop, above each model's own
`min_instances_by_hour`. A learning that fails or hangs is logged and the floors in use stay."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import shutil
import sys
import time
from collections.abc import Callable, MutableMapping

from chirond.config import Config
from chirond.control.snapshot import ModelSpec, higher
from chirond.db import Database
from chirond.learn_floor_cli import NO_TRAFFIC
from chirond.model import Request
from chirond.traffic import LearnedFloor, TrafficLog, load_floors

log = logging.getLogger("chirond")

LEARN_TIMEOUT_S = 3 * 3600.0  # a learning still running after this is killed (a busy day takes minutes)

# argv of the learning child: `chirond learn-floor --config PATH --save --day YYYY-MM-DD`
Command = Callable[[Config, dt.date], list[str]]


def learn_command(cfg: Config, day: dt.date) -> list[str]:
    nice = ["nice", "-n", "10"] if shutil.which("nice") else []
    return [*nice, sys.executable, "-m", "chirond", "learn-floor", "--config", str(cfg.path), "--save",
            "--day", day.isoformat()]


class FloorLearner:
    def __init__(self, cfg: Config, database: Database, specs: MutableMapping[str, ModelSpec],
                 wall: Callable[[float], float], command: Command = learn_command,
                 today: Callable[[], dt.date] = dt.date.today, timeout_s: float = LEARN_TIMEOUT_S) -> None:
        self.cfg = cfg
        self.models = {n for n, m in cfg.models.items() if m.learned_floor_price > 0}
        self.traffic = TrafficLog(database, self.models)
        self.specs = specs
        self.wall = wall  # daemon clock -> epoch seconds
        self.command = command
        self.today = today
        self.timeout_s = timeout_s
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

    def record(self, r: Request) -> None:
        """An interactive request that reached the queues, however it ended (its answer's cap
        where it did not finish): what was asked for, not only what was served."""
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
        try:
            proc = await asyncio.create_subprocess_exec(*self.command(self.cfg, day), stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.PIPE)
            try:
                _, err = await asyncio.wait_for(proc.communicate(), self.timeout_s)
            except TimeoutError:
                await _kill(proc)
                log.warning("learning the floors from %s took over %.0f s: stopped; the floors in use stay",
                            day, self.timeout_s)
                return
            except asyncio.CancelledError:  # the daemon stops
                await _kill(proc)
                raise
            self._apply()  # whatever it saved, even where it failed for another model
            tail = " / ".join(err.decode(errors="replace").strip().splitlines()[-3:])
            if proc.returncode == 0:
                log.info("learned floors from %s in %.0f s: %s", day, time.monotonic() - t0,
                         "; ".join(f"{m} {list(f.counts)}" for m, f in sorted(self.floors.items())))
            elif proc.returncode == NO_TRAFFIC:  # a first day, a new model, a day the daemon was down
                log.info("no floor learned from %s for some models; their last floors stay: %s", day, tail)
            else:
                log.warning("learning the floors from %s failed (exit %s); the floors in use stay: %s",
                            day, proc.returncode, tail)
        except Exception:  # the learning must never take the daemon down
            log.exception("learning the floors from %s failed; the floors in use stay", day)

    def _apply(self) -> None:
        db = self.traffic.database.connect(busy_timeout_s=5.0)
        try:
            self.floors = {m: f for m, f in load_floors(db).items() if m in self.models}
        finally:
            db.close()
        for m, f in self.floors.items():
            own = self.cfg.models[m].min_instances_by_hour
            self.specs[m] = dataclasses.replace(self.specs[m], min_instances_by_hour=higher(own, f.counts))


async def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await proc.wait()
