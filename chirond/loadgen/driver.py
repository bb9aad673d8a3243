"""The sender: `Driver` sends one workload through the openai client (interactive requests at their
planned times, the batch backlog through a bounded number of workers), measures each request and fills
its `Record`, and cancels what is outstanding at the deadline or when asked to stop."""

from __future__ import annotations

import asyncio
import functools
import time
from asyncio import FIRST_COMPLETED
from collections import deque
from dataclasses import dataclass
from typing import Any

import openai

from chirond.loadgen.endpoint import StreamError, read_stream
from chirond.loadgen.options import LoadConfig
from chirond.loadgen.summary import Record
from chirond.loadgen.workload import Planned, Workload
from chirond.tokens import CHAT_OVERHEAD, MESSAGE_OVERHEAD, make_text

BATCH_TIER = "flex"
BATCH_HEADER = "X-Chirond-Class"  # chirond's default batch marker; sent alongside service_tier


@functools.cache
def _text_base(tokens: int) -> str:
    return make_text(tokens + 16, 0)


def prompt_text(tokens: int, seed: int) -> str:
    """`chirond.tokens.make_text(tokens, seed)`, cut from one cached string: make_text's 4-character
    words repeat with period 10, so the text for `seed` starts 4 x (seed % 10) characters in."""
    size = 1 << max(tokens - 1, 0).bit_length()  # one cached base per power of two
    start = 4 * (seed % 10)
    return _text_base(size)[start : start + 4 * tokens]


HTTP_LIBRARIES = ("httpx", "httpcore", "aiohttp")


def _error_info(e: BaseException) -> tuple[int | None, str]:
    """(HTTP status or None, error class) for the report."""
    if isinstance(e, openai.APIStatusError):
        return e.status_code, f"HTTP {e.status_code}"
    name = type(e).__name__
    if isinstance(e, openai.APITimeoutError | TimeoutError) or "Timeout" in name:
        return None, "timeout"
    if isinstance(e, StreamError | openai.APIError) and not isinstance(e, openai.APIConnectionError):
        return None, "stream error"
    # Transport errors while a stream is read come from the HTTP library unwrapped.
    if isinstance(e, openai.APIConnectionError | OSError) or type(e).__module__.startswith(HTTP_LIBRARIES):
        return None, "connection error"
    return None, name


@dataclass(slots=True)
class ClassCounts:
    total: int
    sent: int = 0
    done: int = 0
    errors: int = 0


class Driver:
    """Sends one workload and fills one Record per planned request."""

    def __init__(self, cfg: LoadConfig, client: openai.AsyncOpenAI, model: str, workload: Workload) -> None:
        self.cfg = cfg
        self.client = client
        self.model = model
        self.workload = workload
        self.records = [Record.planned(p) for p in workload.requests]
        self.counts: dict[str, ClassCounts] = {c: ClassCounts(len(workload.of(c))) for c in ("interactive", "batch")}
        self.t0 = 0.0
        self.deadline_s = cfg.duration_s + cfg.drain_s
        self._tasks: set[asyncio.Task[None]] = set()

    def now(self) -> float:
        return time.perf_counter() - self.t0

    async def run(self, t0: float, stop: asyncio.Event | None = None) -> None:
        """Send everything; at t0 + duration + drain, or when `stop` is set, cancel what is outstanding."""
        self.t0 = t0
        work = asyncio.create_task(self._send_all())
        stopper = asyncio.create_task(stop.wait()) if stop is not None else None
        waits = {work} if stopper is None else {work, stopper}
        try:
            await asyncio.wait(waits, timeout=max(self.deadline_s - self.now(), 0.0), return_when=FIRST_COMPLETED)
        finally:
            pending = [*waits, *self._tasks]
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _send_all(self) -> None:
        batch = deque(p for p in self.workload.requests if p.cls == "batch")
        workers = [self._batch_worker(batch) for _ in range(self.cfg.batch_concurrency)]
        await asyncio.gather(self._send_interactive(self.workload.of("interactive")), *workers)
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def _send_interactive(self, planned: list[Planned]) -> None:
        for p in sorted(planned, key=lambda p: p.at):
            delay = p.at - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self._one(p))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _batch_worker(self, queue: deque[Planned]) -> None:
        while queue:
            await self._one(queue.popleft())

    async def _one(self, p: Planned) -> None:
        rec = self.records[p.id]
        counts = self.counts[p.cls]
        rec.sent_s = self.now()
        rec.outcome = "unfinished"
        counts.sent += 1
        start = time.perf_counter()
        try:
            if p.cls == "interactive":
                async with asyncio.timeout(self.cfg.timeout_s):
                    await self._request(p, rec, start)
            else:
                await self._request(p, rec, start)
        except Exception as e:  # every failure is a result to count; cancellation is not an Exception
            rec.status, rec.error = _error_info(e)
            rec.detail = str(e)[:300] or type(e).__name__
            rec.outcome = "error"
            counts.errors += 1
        else:
            rec.outcome = "ok"
        counts.done += 1

    def _params(self, p: Planned) -> dict[str, Any]:
        kw: dict[str, Any] = {"model": self.model, "max_tokens": p.output_tokens, "extra_body": {"ignore_eos": True}}
        if p.api == "chat":
            words = max(p.input_tokens - MESSAGE_OVERHEAD - CHAT_OVERHEAD, 1)
            kw["messages"] = [{"role": "user", "content": prompt_text(words, p.id)}]
        else:
            kw["prompt"] = prompt_text(p.input_tokens, p.id)
        if p.stream:
            kw["stream"] = True
            kw["stream_options"] = {"include_usage": True}
        if p.cls == "batch":
            kw["service_tier"] = BATCH_TIER
            kw["extra_headers"] = {BATCH_HEADER: "batch"}
            kw["timeout"] = self.deadline_s + 1.0
        else:
            kw["timeout"] = self.cfg.timeout_s
        return kw

    async def _request(self, p: Planned, rec: Record, start: float) -> None:
        kw = self._params(p)
        api = self.client.chat.completions if p.api == "chat" else self.client.completions
        if not p.stream:
            resp = await api.create(**kw)
            rec.e2e_s = rec.ttft_s = time.perf_counter() - start
            if resp.usage is not None:
                rec.completion_tokens = resp.usage.completion_tokens
                rec.prompt_tokens = resp.usage.prompt_tokens
            return
        # The openai client sends the request and maps error statuses; the chunks are read as plain
        # JSON, because building a typed chunk object per token costs ~100 µs and would make the
        # client, not the endpoint, the bottleneck at 100 requests/s.
        async with api.with_streaming_response.create(**kw) as resp:
            timing = await read_stream(resp.iter_lines(), chat=p.api == "chat")
        rec.e2e_s = time.perf_counter() - start
        rec.completion_tokens = timing.completion_tokens
        rec.prompt_tokens = timing.prompt_tokens
        if timing.first is not None and timing.last is not None:
            rec.ttft_s = timing.first - start
            n = timing.completion_tokens
            rec.tpot_s = (timing.last - timing.first) / (n - 1) if n > 1 else 0.0
