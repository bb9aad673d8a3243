"""A simulated Slurm partition: GPUs on nodes, queue wait, cold start, time limits, node failures.

Pure bookkeeping on a virtual clock: the runner asks what happens next and tells it the time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Node:
    gpus: int
    free: int
    up: bool = True


@dataclass
class Job:
    id: int
    gpus: int
    submitted: float
    eligible_at: float  # when the scheduler would start it if GPUs were free (queue wait)
    node: int | None = None
    started: float | None = None
    limit_from: float | None = None  # its time limit counts from here (None: from `started`)
    ended: float | None = None
    end_reason: str = ""


@dataclass
class SimCluster:
    gpus: int
    gpus_per_node: int
    queue_wait_s: tuple[float, float]
    time_limit_s: float  # 0: none
    rng: np.random.Generator
    nodes: list[Node] = field(default_factory=list)
    jobs: dict[int, Job] = field(default_factory=dict)
    pending: list[Job] = field(default_factory=list)  # submission order
    _next_id: int = 1

    def __post_init__(self) -> None:
        left = self.gpus
        while left > 0:
            n = min(self.gpus_per_node, left)
            self.nodes.append(Node(n, n))
            left -= n

    @property
    def free_gpus(self) -> int:
        return sum(n.free for n in self.nodes if n.up)

    @property
    def gpus_in_use(self) -> int:
        return sum(n.gpus - n.free for n in self.nodes)

    def queue_wait(self) -> float:
        """The next job's wait in the queue (one draw per job, in submission order)."""
        lo, hi = self.queue_wait_s
        return float(self.rng.uniform(lo, hi)) if hi > lo else lo

    def submit(self, gpus: int, now: float) -> Job:
        job = Job(self._next_id, gpus, now, now + self.queue_wait())
        self._next_id += 1
        self.jobs[job.id] = job
        self.pending.append(job)
        return job

    def start_now(self, gpus: int, now: float, since: float | None = None) -> Job | None:
        """A job that is already running at `now` (instances present when the run begins), since
        `since`: its time limit counts from then, its GPU time from `now`."""
        job = Job(self._next_id, gpus, now, now, limit_from=since)
        self._next_id += 1
        if not self._place(job, now):
            return None
        self.jobs[job.id] = job
        return job

    def next_eligible(self) -> float:
        """The earliest time a pending job could start (inf if none is waiting on the clock)."""
        return min((j.eligible_at for j in self.pending), default=math.inf)

    def schedule(self, now: float) -> list[Job]:
        """Start pending jobs that are eligible and fit (first fit, in submission order, with
        backfill of smaller jobs). Returns the jobs started."""
        started: list[Job] = []
        for job in list(self.pending):
            if job.eligible_at <= now and self._place(job, now):
                self.pending.remove(job)
                started.append(job)
        return started

    def _place(self, job: Job, now: float) -> bool:
        for i, node in enumerate(self.nodes):
            if node.up and node.free >= job.gpus:
                node.free -= job.gpus
                job.node = i
                job.started = now
                return True
        return False

    def end(self, job: Job, now: float, reason: str) -> None:
        if job.ended is not None:
            return
        job.ended = now
        job.end_reason = reason
        if job.started is None:
            if job in self.pending:
                self.pending.remove(job)
            return
        if job.node is not None:
            self.nodes[job.node].free += job.gpus

    def limit_at(self, job: Job) -> float:
        if self.time_limit_s <= 0 or job.started is None:
            return math.inf
        return (job.started if job.limit_from is None else job.limit_from) + self.time_limit_s

    def fail_node(self, index: int) -> list[Job]:
        """The node goes down: the jobs on it are lost (the caller ends them)."""
        node = self.nodes[index]
        node.up = False
        return [j for j in self.jobs.values() if j.node == index and j.ended is None and j.started is not None]

    def restore_node(self, index: int) -> None:
        self.nodes[index].up = True

    def gpu_seconds(self, now: float) -> float:
        total = 0.0
        for j in self.jobs.values():
            if j.started is not None:
                total += j.gpus * ((j.ended if j.ended is not None else now) - j.started)
        return total
