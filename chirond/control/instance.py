"""One instance as the control loop knows it, in either world: raw facts as they arrive (running,
first healthy, drain and cancel requested, engine samples, request observations) and the one
property that derives its state from them. The daemon and the simulator extend it with what only
they have (a Slurm job id and address; a simulated job and engine)."""

from __future__ import annotations

from dataclasses import dataclass

from chirond.model import EngineArgs, InstanceState, Pool


@dataclass(eq=False)
class Instance:
    id: int
    model: str
    pool: Pool
    gpus: int
    args: EngineArgs  # the engine flags it was launched with
    launched_at: float  # submitted
    expected_ready_s: float = 0.0  # lead time estimate at launch (queue wait + start-up), for ETAs
    counted: bool = False  # a launch the policy decided (the initial instances are not)
    running_since: float | None = None  # the job runs (engine loading); None while queued
    ready_at: float | None = None  # first healthy
    ends_at: float | None = None  # job time limit, absolute; None when unknown or unlimited
    drain_requested_at: float | None = None
    cancel_sent_at: float | None = None
    queue_wait_known: bool = False  # its launch-to-running wait was counted (or cannot be: adopted)
    # The last engine sample (vLLM /metrics in the daemon, the engine model in the simulator).
    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    tokens_per_s: float = 0.0
    stale_since: float | None = None  # its samples could not be refreshed since then
    # Interactive requests finished here since the last tick, with their TTFT and TPOT sums.
    obs_n: int = 0
    obs_ttft: float = 0.0
    obs_tpot: float = 0.0

    @property
    def state(self) -> InstanceState:
        if self.drain_requested_at is not None:
            return InstanceState.DRAINING
        if self.ready_at is not None:
            return InstanceState.READY
        if self.running_since is not None:
            return InstanceState.STARTING
        return InstanceState.PENDING

    def stale(self, now: float, after_s: float) -> bool:
        return self.stale_since is not None and now - self.stale_since >= after_s

    def observe(self, ttft: float, tpot: float) -> None:
        """An interactive request finished here."""
        self.obs_n += 1
        self.obs_ttft += ttft
        self.obs_tpot += tpot

    def take_observations(self) -> tuple[float | None, float | None]:
        """Mean (TTFT, TPOT) since the last call, and start over."""
        n = self.obs_n
        out = (self.obs_ttft / n, self.obs_tpot / n) if n else (None, None)
        self.obs_n, self.obs_ttft, self.obs_tpot = 0, 0.0, 0.0
        return out

    def back_to_queue(self) -> None:
        """Its job went back to the scheduler's queue (a requeue): the engine and what was known
        of it are gone; it starts over as pending."""
        self.running_since = self.ready_at = self.ends_at = self.stale_since = None
        self.running = self.waiting = 0
        self.kv_usage = self.tokens_per_s = 0.0
