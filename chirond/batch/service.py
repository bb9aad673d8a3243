"""The batch side of the daemon as one part: the durable store, the Files and Batches routes, and
the runner that executes lines through the proxy's request path (chirond/serve/api.py).

The policy sees the whole batch backlog: the lines the dispatcher holds (its own backlog) plus the
lines still in the store, by deadline, exactly as the simulator presents queued batch work."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace

from chirond.batch.runner import BatchRunner
from chirond.batch.store import BatchStore, Line, LineResult
from chirond.config import Config
from chirond.db import Database, db_path
from chirond.dispatch import Dispatcher
from chirond.model import BacklogGroup
from chirond.serve import openai_api as oa
from chirond.serve.api import ProxyApi
from chirond.serve.batch_api import BatchApi

ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
# Lines leased per model: enough to fill every batch slot twice (the dispatcher keeps the next ones
# ready), at least a few while instances start, never so many that memory follows the file size.
MIN_WINDOW, MAX_WINDOW = 16, 4096


class BatchService:
    """The constructor does no I/O. `open()` opens the store (migrating chirond.db if needed): call
    it before the HTTP site listens, so the Files and Batches routes find it open; `start()` opens
    it if that was not done and starts the runner. `db`: the daemon's chirond.db owner, to share
    one with the users store (default: one of its own on <state_dir>/chirond.db)."""

    def __init__(
        self,
        cfg: Config,
        api: ProxyApi,
        dispatcher: Dispatcher,
        check_lines: Callable[[str, int], str | None] | None = None,
        db: Database | None = None,
        storage_quota: Callable[[str], tuple[int, str]] | None = None,
    ) -> None:
        state = cfg.daemon.state_dir
        self.cfg = cfg
        self.api = api
        self.dispatcher = dispatcher
        limits = replace(cfg.batch, max_line_bytes=cfg.api.max_body_bytes)  # a line is a request body
        self.store = BatchStore(db or Database(db_path(state)), state / "files", limits, list(cfg.models))
        self.runner = BatchRunner(self.store, self._execute, self._window, cfg.models)
        self._stored: dict[str, list[tuple[float, int, int]]] = {}  # the store's backlog per model
        self.http = BatchApi(self.store, api.authenticate, self.runner.created, check_lines, storage_quota,
                             write_timeout_s=cfg.api.body_timeout_s)

    def open(self) -> None:
        """Opens the store (again is a no-op); raises chirond.db.SchemaError for a file it cannot use."""
        self.cfg.daemon.state_dir.mkdir(parents=True, exist_ok=True)
        self.store.open()

    async def start(self) -> None:
        self.open()
        await self.runner.start()

    async def stop(self) -> None:
        await self.runner.stop()
        self.store.close()

    def _window(self, model: str) -> int:
        slots = sum(s.batch_cap for s in self.dispatcher.slots.values() if s.model == model and s.routable)
        return max(MIN_WINDOW, min(MAX_WINDOW, 2 * slots))

    async def _execute(self, line: Line) -> LineResult:
        endpoint = ENDPOINTS.get(line.url)
        # Answers are whole bodies: a line asking to stream gets the assembled answer, as on OpenAI.
        body = {k: v for k, v in line.body.items() if k not in ("stream", "stream_options")}
        try:
            if endpoint is None:
                raise oa.ApiError(400, f"url {line.url!r} is not a batch endpoint", param="url")
            raw = json.dumps(body).encode()
            parsed = oa.parse_request(endpoint, raw, "application/json", self.cfg.api.max_body_bytes)
        except oa.ApiError as e:
            return LineResult(line.batch_id, line.idx, e.status, e.body())
        parsed = replace(parsed, stream=False, include_usage=False)
        deadline = self.api.clock() + (line.deadline - time.time()) * _speedup(self.api.clock)  # store: wall time
        status, answer = await self.api.execute(parsed, line.user, deadline)
        return LineResult(line.batch_id, line.idx, status, json.loads(answer))

    def backlog(self, model: str, now: float) -> tuple[tuple[BacklogGroup, ...], int]:
        """Queued batch work of `model` by deadline (on the daemon's clock `now`), dispatcher and
        store together, and the number of lines in it."""
        groups: dict[float, list[int]] = {}
        for g in self.dispatcher.backlog(model):
            groups[g.deadline] = [g.requests, g.input_tokens]
        wall, speedup = time.time(), _speedup(self.api.clock)  # store deadlines are wall time
        if not self.runner.busy:  # while housekeeping holds the store, the last view stands
            self._stored[model] = self.store.backlog(model)
        for deadline, lines, tokens in self._stored.get(model, []):
            acc = groups.setdefault(now + (deadline - wall) * speedup, [0, 0])
            acc[0] += lines
            acc[1] += tokens
        out = tuple(BacklogGroup(d, n, tok) for d, (n, tok) in sorted(groups.items()))
        return out, sum(g.requests for g in out)


def _speedup(clock: Callable[[], float]) -> float:
    """Daemon-clock seconds per wall second (chirond.clock.Clock under `chirond replay`; 1 otherwise)."""
    return float(getattr(clock, "speedup", 1.0))
