"""The daemon's clock. In production it is the monotonic clock. `chirond replay` runs the real daemon
K times faster than real time against engines that run K times faster too: its clock then reads K
seconds per real second, so every rule written in seconds (tick, windows, timeouts, SLOs, lead
times) keeps its meaning, and sleeps take 1/K of the time they name."""

from __future__ import annotations

import asyncio
import time


class Clock:
    def __init__(self, speedup: float = 1.0) -> None:
        if not speedup > 0:
            raise ValueError(f"clock speedup must be > 0, got {speedup!r}")
        self.speedup = speedup
        self._origin = time.monotonic()

    def __call__(self) -> float:
        """Seconds on the daemon's clock (monotonic; only differences mean anything)."""
        if self.speedup == 1.0:
            return time.monotonic()
        return self._origin + (time.monotonic() - self._origin) * self.speedup

    async def sleep(self, seconds: float) -> None:
        """Sleep `seconds` of the daemon's clock."""
        await asyncio.sleep(max(0.0, seconds) / self.speedup)

    def wall(self, at: float) -> float:
        """The wall-clock time (time.time()) of daemon-clock instant `at`: for timestamps users see."""
        return time.time() - (self() - at) / self.speedup


def local_day_s(t: float) -> float:
    """Seconds since local midnight at wall-clock time `t` (time.time()), for hour-of-day schedules."""
    lt = time.localtime(t)
    return lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec + t % 1.0
