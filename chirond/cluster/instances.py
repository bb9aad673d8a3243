"""What the daemon knows of an instance beyond the control loop's record: its job on the backend,
the engine's address, and the last scrape."""

from __future__ import annotations

from dataclasses import dataclass

from chirond.cluster.backend import JobState
from chirond.control.instance import Instance


@dataclass(eq=False)
class DaemonInstance(Instance):
    job_id: str | None = None  # None until the backend accepted the job
    job_state: JobState = JobState.PENDING
    detail: str = ""  # backend's pending reason / exit status
    host: str | None = None
    port: int | None = None
    routable: bool = True  # False while suspected dead (a failed connect), until a scrape succeeds
    scraped_at: float | None = None
    gen_mark: float = 0.0  # generation_tokens at the previous scrape

    @property
    def url(self) -> str | None:
        if self.host is None or self.port is None:
            return None
        return f"http://{self.host}:{self.port}"
