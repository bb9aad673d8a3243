"""In-process stand-ins: a settable clock and a backend that records what the daemon asks of it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection

from chirond.cluster.backend import AdoptedJob, JobFacts, LaunchSpec
from chirond.cluster.ssh import SshTransport


class Clock:
    """A clock the test moves by hand: `clock.t += 5`."""

    speedup = 1.0

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)

    def wall(self, at: float) -> float:
        """The wall-clock time of instant `at` (the real clock's `wall`)."""
        return time.time() - (self.t - at)


class FakeBackend:
    """A cluster backend without a cluster: submit numbers jobs 101, 102, ...; poll returns `facts`
    as the test sets them; cancel records the job id."""

    name = "fake"

    def __init__(self, ssh: SshTransport | None = None) -> None:
        self.ssh = ssh
        self.cancelled: list[str] = []
        self.submitted: list[LaunchSpec] = []
        self.facts: dict[str, JobFacts] = {}

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def adopt(self, models: Collection[str]) -> list[AdoptedJob]:
        return []

    async def submit(self, spec: LaunchSpec) -> str:
        self.submitted.append(spec)
        return str(100 + len(self.submitted))

    async def poll(self) -> dict[str, JobFacts]:
        return dict(self.facts)

    async def cancel(self, job_id: str, grace_s: float) -> None:
        self.cancelled.append(job_id)

    def free_gpus(self) -> int:
        return 100
