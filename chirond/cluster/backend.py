"""What the daemon needs from a place that runs instances (local processes now, Slurm jobs next):
submit a job that hosts one engine, report raw facts about its jobs, cancel one. Health checks,
draining and metrics are the daemon's business over HTTP, the same for every backend."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class JobState(StrEnum):
    PENDING = "pending"  # accepted, not running yet (Slurm: PD)
    RUNNING = "running"  # the engine process runs; it may still be loading
    ENDED = "ended"  # gone for good (exit code or Slurm state in `JobFacts.detail`)
    UNKNOWN = "unknown"  # the backend cannot say right now (never read as ended)


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """One engine to run. `argv` is final (placeholders already filled, except `{port}`, which a
    backend that allocates ports replaces); `env` adds to the daemon's environment."""

    instance_id: int
    model: str
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    gpus: int = 1
    time_limit_s: float | None = None


@dataclass(frozen=True, slots=True)
class JobFacts:
    job_id: str
    instance_id: int
    state: JobState
    host: str | None = None  # where the engine listens, once known
    port: int | None = None
    started_at: float | None = None  # time.time() when it began running
    ends_at: float | None = None  # time limit, absolute; None when unlimited
    detail: str = ""  # pending reason, exit code, signal, Slurm state


@dataclass(frozen=True, slots=True)
class AdoptedJob:
    """A job that an earlier run of this daemon started and that `Backend.adopt()` took over: the
    backend tracks it from now on (poll, cancel, stop) as if it had submitted it."""

    job_id: str
    instance_id: int  # the id the earlier run gave it (from the job's name and ownership tag)
    model: str  # the configured model name
    state: JobState  # PENDING or RUNNING
    host: str | None = None  # from the job's address file, if it is there already
    port: int | None = None


class Backend(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Forget nothing and stop nothing that should outlive the daemon (local: stop children)."""

    async def adopt(self, models: Collection[str]) -> list[AdoptedJob]:
        """Once, after start() and before any submit(): take over the live jobs an earlier run of this
        daemon left (a crash, kill -9, keep_jobs_on_stop) whose model is in `models`, and cancel this
        daemon's other leftovers. Raises BackendError when it cannot tell what is there."""

    async def submit(self, spec: LaunchSpec) -> str:
        """Start a job; returns its id. Raises BackendError with a clear message on refusal."""

    async def poll(self) -> dict[str, JobFacts]:
        """Facts about every job this backend started and has not yet reported ended twice."""

    async def cancel(self, job_id: str, grace_s: float) -> None:
        """Ask the engine to stop (SIGTERM), and kill it after `grace_s` if still there."""

    def free_gpus(self) -> int:
        """GPUs a new job could get now (a large number when unknown)."""


class BackendError(RuntimeError):
    pass
