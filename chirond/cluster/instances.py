"""What the daemon knows about each instance: raw facts as they arrive (backend job state, health,
drain and cancel requests, scrapes), and the one function that derives its state from them."""

from __future__ import annotations

from dataclasses import dataclass

from chirond.cluster.backend import JobState
from chirond.cluster.probe import EngineStats
from chirond.model import InstanceState, Pool


@dataclass(eq=False)
class Instance:
    id: int
    model: str
    pool: Pool
    gpus: int
    launched_at: float  # daemon clock (monotonic)
    expected_ready_s: float  # cold start estimate, for ETAs
    job_id: str | None = None
    job_state: JobState = JobState.PENDING
    detail: str = ""  # backend's pending reason / exit status
    host: str | None = None
    port: int | None = None
    running_since: float | None = None
    queue_wait_known: bool = False  # its launch-to-running wait was counted (or cannot be: adopted)
    healthy_at: float | None = None  # first /health 200
    ends_at: float | None = None  # job time limit (daemon clock)
    drain_requested_at: float | None = None
    cancel_sent_at: float | None = None
    routable: bool = True  # False while suspected dead (a failed connect), until a health check passes
    # observations
    stats: EngineStats | None = None
    scraped_at: float | None = None
    scrape_failing_since: float | None = None
    gen_mark: float = 0.0  # generation_tokens at the previous scrape
    gen_rate: float = 0.0  # tokens/s between the last two scrapes
    obs_n: int = 0  # requests finished since the last tick, with their TTFT and TPOT sums
    obs_ttft: float = 0.0
    obs_tpot: float = 0.0

    @property
    def state(self) -> InstanceState:
        if self.drain_requested_at is not None:
            return InstanceState.DRAINING
        if self.healthy_at is not None:
            return InstanceState.READY
        if self.job_state is JobState.RUNNING:
            return InstanceState.STARTING
        return InstanceState.PENDING

    @property
    def url(self) -> str | None:
        if self.host is None or self.port is None:
            return None
        return f"http://{self.host}:{self.port}"

    def stale(self, now: float, after_s: float) -> bool:
        return self.scrape_failing_since is not None and now - self.scrape_failing_since >= after_s
