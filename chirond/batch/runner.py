"""Runs the lines of the durable batch queue through the proxy's request path.

The store is the queue and the only durable state: the runner leases a bounded window of lines
per model (so the dispatcher holds hundreds of requests, not a million), runs each as a
batch-class request with its batch's deadline, and records results in groups. A crash loses
only leases; the store offers those lines again after a restart, and a line already recorded is
never recorded twice, so every accepted line ends in the output exactly once.

Store calls that can take long (validating a new input file, finalizing output files) run on one
worker thread; the short ones (lease, record, status) run on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from chirond.batch.store import BatchStore, Line, LineResult

log = logging.getLogger(__name__)

Execute = Callable[[Line], Awaitable[LineResult]]


class BatchRunner:
    def __init__(
        self,
        store: BatchStore,
        execute: Execute,
        window: Callable[[str], int],
        models: Iterable[str],
        period_s: float = 0.05,
        housekeeping_s: float = 1.0,
    ) -> None:
        self.store = store
        self.execute = execute
        self.window = window  # model -> how many lines it may have leased (queued or running)
        self.models = tuple(models)
        self.period_s = period_s
        self.housekeeping_s = housekeeping_s
        self.inflight: dict[str, dict[tuple[str, int], asyncio.Task[None]]] = {m: {} for m in self.models}
        self._results: list[LineResult] = []  # finished, not recorded yet (kept until a record succeeds)
        self._unrecorded: dict[str, int] = {m: 0 for m in self.models}  # model -> lines in _results
        self._record_failing = False  # logged once per failure streak, not every round
        self._validations: set[str] = set()  # batches handed to the worker and not done
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="chirond-batch")
        self._background: set[asyncio.Future[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._housekeeping: asyncio.Future[list[str]] | None = None
        self._last_housekeeping = 0.0
        self.recorded = 0  # lines recorded since start (status, tests)

    # ---------------------------------------------------------------- lifetime

    async def start(self) -> None:
        for batch_id in self.store.pending_validation():  # left in "validating" by a crash
            self.created(batch_id)
        self._loop_task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop leasing, abort what runs (those lines stay queued in the store), keep what finished."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        tasks = [t for per_model in self.inflight.values() for t in per_model.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._flush()
        if self._results:  # the store still refuses them: the lines stay queued and run after a restart
            log.error("batch runner stopping with %d results not recorded; they run again after a restart",
                      len(self._results))
            self.store.release(self._results)
            self._results = []
        await asyncio.gather(*self._background, return_exceptions=True)
        self._worker.shutdown(wait=True)

    def created(self, batch_id: str) -> None:
        """A batch was accepted: validate its input file on the worker thread. A validation that
        fails (disk full) leaves the batch "validating"; housekeeping hands it over again."""
        if batch_id in self._validations:
            return
        self._validations.add(batch_id)
        fut = asyncio.get_running_loop().run_in_executor(self._worker, self.store.validate, batch_id)
        self._background.add(fut)
        fut.add_done_callback(self._background.discard)
        fut.add_done_callback(lambda f: self._validations.discard(batch_id))
        fut.add_done_callback(lambda f: _log_failure(f, f"validating {batch_id}"))

    @property
    def busy(self) -> bool:
        """Housekeeping holds the store (finishing a large batch takes seconds): callers on the
        event loop should not wait for it."""
        return self._housekeeping is not None

    @property
    def leased(self) -> int:
        return sum(len(v) for v in self.inflight.values())

    # ---------------------------------------------------------------- the loop

    async def _run(self) -> None:
        while True:
            try:
                if not self.busy:  # else lease and record after it: the event loop must not wait
                    self._flush()
                    self._feed()
                now = time.monotonic()
                if now - self._last_housekeeping >= self.housekeeping_s and self._housekeeping is None:
                    self._last_housekeeping = now
                    self._abort_ended()
                    for batch_id in self.store.pending_validation():  # one whose validation failed
                        self.created(batch_id)
                    self._start_housekeeping()
            except Exception:  # one bad round must not stop batch work; logged with its traceback
                log.exception("batch runner round failed")
            await asyncio.sleep(self.period_s)

    def _feed(self) -> None:
        for model in self.models:
            running = self.inflight[model]
            # Unrecorded results hold their place: while the store refuses writes, nothing new runs.
            room = self.window(model) - len(running) - self._unrecorded[model]
            if room <= 0:
                continue
            for line in self.store.next_lines(model, room):
                key = (line.batch_id, line.idx)
                running[key] = asyncio.create_task(self._run_line(line))

    async def _run_line(self, line: Line) -> None:
        try:
            result = await self.execute(line)
        except asyncio.CancelledError:
            self.store.release([line])  # aborted (cancel, expiry, stop): not an answer
            raise
        except Exception as e:  # a bug in the request path must not lose the line: error entry
            log.exception("batch line %s/%d failed", line.batch_id, line.idx)
            result = LineResult(line.batch_id, line.idx, 0, None, {"code": "internal_error", "message": str(e)})
        finally:
            self.inflight[line.model].pop((line.batch_id, line.idx), None)
        self._results.append(result)
        self._unrecorded[line.model] += 1

    def _flush(self) -> None:
        """Group commit: one transaction for what finished since the last round. When the store
        refuses (disk full, read-only), the results and their leases stay for the next round:
        recording is idempotent, so a retry can never record a line twice."""
        if not self._results:
            return
        try:
            self.recorded += self.store.record(self._results)
        except Exception as e:
            if not self._record_failing:
                log.error("batch results not recorded (%s); %d kept, retrying each round", e, len(self._results))
            self._record_failing = True
            return
        if self._record_failing:
            log.info("batch results recorded again after a storage failure")
        self._record_failing = False
        self._results = []
        for model in self._unrecorded:
            self._unrecorded[model] = 0

    def _abort_ended(self) -> None:
        """Lines of batches that were cancelled or expired meanwhile stop running."""
        by_batch: dict[str, list[asyncio.Task[None]]] = {}
        for per_model in self.inflight.values():
            for (batch_id, _), task in per_model.items():
                by_batch.setdefault(batch_id, []).append(task)
        for batch_id, tasks in by_batch.items():
            if self.store.batch_status(batch_id) != "in_progress":
                for t in tasks:
                    t.cancel()

    def _start_housekeeping(self) -> None:
        fut = asyncio.get_running_loop().run_in_executor(self._worker, self.store.tick)
        self._housekeeping = fut

        def done(f: asyncio.Future[list[str]]) -> None:
            self._housekeeping = None
            _log_failure(f, "batch housekeeping")
            if not f.cancelled() and f.exception() is None:
                for batch_id in f.result():
                    log.info("batch %s: %s", batch_id, self.store.batch_status(batch_id))

        fut.add_done_callback(done)


def _log_failure(fut: asyncio.Future[Any], what: str) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("%s failed", what, exc_info=fut.exception())
