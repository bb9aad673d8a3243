"""The request path between the HTTP handlers and the instances: every accepted request becomes a
`Job` in the shared `Dispatcher`; the dispatcher decides which instance serves it and when; the
handler waits for its turn, relays the request upstream, and reports back.

Ownership: a job's handler coroutine owns its HTTP exchange; the gateway only wakes it (turn
assigned) or interrupts it (its upstream attempt is cancelled because the job was preempted for an
interactive request, or its instance is gone). An interrupted job is already back in its queue
(the dispatcher requeues it); the handler decides whether it can resume or must give up.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chirond.dispatch import Dispatcher
from chirond.model import ReqClass, Request


@dataclass(eq=False)
class Job:
    req: Request
    turn: asyncio.Future[int]  # resolves to the instance id when dispatched
    task: asyncio.Task[Any] | None = None  # the current upstream attempt
    interrupted: str | None = None  # why the current attempt was cancelled: "preempted", "instance lost"
    attempts: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    def interrupt(self, reason: str) -> None:
        self.interrupted = reason
        self.turn = asyncio.get_running_loop().create_future()
        if self.task is not None and not self.task.done():
            self.task.cancel()


class Gateway:
    def __init__(
        self,
        dispatcher: Dispatcher,
        clock: Callable[[], float],
        on_preempt: Callable[[Request], None] | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.clock = clock
        self.on_preempt = on_preempt
        self.jobs: dict[int, Job] = {}
        self._ids = itertools.count(1)

    def new_request(
        self, model: str, cls: ReqClass, input_tokens: int, output_tokens: int, deadline_s: float | None
    ) -> Request:
        now = self.clock()
        deadline = now + deadline_s if (cls is ReqClass.BATCH and deadline_s is not None) else None
        return Request(next(self._ids), model, cls, now, input_tokens, output_tokens, deadline=deadline)

    def admit(self, req: Request) -> Job:
        job = Job(req, asyncio.get_running_loop().create_future())
        self.jobs[req.id] = job
        self.dispatcher.enqueue(req)
        self.kick(req.model)
        return job

    async def wait_turn(self, job: Job, timeout_s: float) -> int:
        """The instance the job may use now. Raises TimeoutError (the job stays queued: the caller
        withdraws it)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while True:
            fut = job.turn
            if fut.done():
                return fut.result()
            # shield: a timeout must not cancel the future the dispatcher may resolve meanwhile.
            # Once it resolves, look again: an eviction may have replaced it before we woke.
            await asyncio.wait_for(asyncio.shield(fut), max(0.0, end - loop.time()))

    def kick(self, model: str) -> None:
        """Dispatch what can be dispatched for `model`: wake the jobs given a slot, interrupt the
        ones evicted from theirs."""
        assigned, evicted = self.dispatcher.dispatch(model, self.clock())
        for r, _ in evicted:  # before `assigned`: an evicted request may be reassigned at once
            job = self.jobs.get(r.id)
            if job is not None:
                job.interrupt("preempted")
                if self.on_preempt is not None:
                    self.on_preempt(r)
        for r in assigned:
            job = self.jobs.get(r.id)
            if job is None:  # not ours any more: give the slot back
                self.dispatcher.complete(r)
                continue
            if job.turn.done():
                job.turn = asyncio.get_running_loop().create_future()
            assert r.instance is not None
            job.turn.set_result(r.instance)

    def requeue(self, job: Job) -> None:
        """The job's attempt failed without harm to its client: free its slot, queue it again (at
        the head of its line) and dispatch."""
        self.dispatcher.complete(job.req)
        job.req.preempted += 1
        job.turn = asyncio.get_running_loop().create_future()
        self.dispatcher.requeue(job.req)
        self.kick(job.req.model)

    def finish(self, job: Job) -> None:
        """The job is over (done, failed for good, or its client left): forget it everywhere."""
        if self.jobs.pop(job.req.id, None) is None:
            return
        self.dispatcher.withdraw(job.req)
        self.kick(job.req.model)

    def instance_lost(self, inst_id: int) -> list[Request]:
        """An instance is gone (or no longer routable with work on it): its requests go back to
        their queues and their attempts are interrupted."""
        if inst_id not in self.dispatcher.slots:
            return []
        model = self.dispatcher.slots[inst_id].model
        lost = self.dispatcher.remove_instance(inst_id)
        for r in lost:
            job = self.jobs.get(r.id)
            if job is not None:
                job.interrupt("instance lost")
        self.kick(model)
        return lost
