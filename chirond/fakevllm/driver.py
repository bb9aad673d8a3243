"""Runs the engine model against the wall clock and hands its tokens to the HTTP handlers.

Engine time is `(monotonic - t0) * speedup`. One timer owns the engine: it fires at the wall time of
`segment_end`, applies the segments that are due, records first tokens and finishes, and re-plans.
Submits and aborts call `kick`, which may cut a decode segment, and re-arm the timer.

Tokens decoded inside a long decode segment are reported by the emitter, a second timer that runs
at most every `min_emit_interval` seconds while streams are open: it asks the engine how far each
stream has got and wakes the handlers whose count moved, so one chunk may carry several tokens and
512 streams cost at most a few hundred wake-ups per stream per second.

Latencies recorded in the metrics are wall-clock, measured where the server sees each event (as
vLLM's frontend does); with a speedup K they are K times shorter than the engine model's.
"""

from __future__ import annotations

import asyncio
import math
import time

from chirond.engine import Engine
from chirond.fakevllm.metrics import EngineSample, ServerMetrics
from chirond.model import Request

SLACK_S = 1e-4  # wall seconds a timer may fire early (coarse loop clocks) and still apply a segment
MAX_SEGMENTS_PER_TICK = 2000  # then yield to the loop, so a backlog never stalls the handlers


class Live:
    """One request in flight, as the HTTP side sees it. Times are wall (monotonic) seconds."""

    __slots__ = ("arrival", "avail", "done", "first", "last", "last_n", "reason", "req", "scheduled", "stream",
                 "waiter")

    def __init__(self, req: Request, stream: bool, reason: str) -> None:
        self.req = req
        self.stream = stream
        self.reason = reason  # finish reason once all its tokens are out: "stop" or "length"
        self.avail = 0  # tokens the handler may send
        self.done = False
        self.arrival = time.monotonic()
        self.scheduled: float | None = None
        self.first: float | None = None
        self.last = 0.0  # when the newest token was seen, for inter-token latency
        self.last_n = 0
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait(self) -> None:
        """Until the driver has news for this request (more tokens, or done)."""
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None


class Driver:
    def __init__(self, engine: Engine, speedup: float, metrics: ServerMetrics,
                 min_emit_interval: float = 0.005) -> None:
        self.engine = engine
        self.speedup = speedup
        self.metrics = metrics
        self.min_emit_interval = min_emit_interval
        self.t0 = time.monotonic()
        self.lives: dict[int, Live] = {}
        self._streaming: dict[int, Live] = {}  # streams past their first token
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.Handle | None = None
        self._emitter: asyncio.TimerHandle | None = None
        self._emitted_at = -1  # engine steps (finished + in flight) when the emitter last looked
        self._next_id = 0

    # ---------------------------------------------------------------- clock

    def now(self) -> float:
        """Engine time now."""
        return (time.monotonic() - self.t0) * self.speedup

    def wall_of(self, t: float) -> float:
        return self.t0 + t / self.speedup

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    # ---------------------------------------------------------------- from the handlers

    def submit(self, live: Live) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self.lives[live.req.id] = live
        self.engine.submit(live.req)
        if self.engine.kick(self.now()):
            self._arm()

    def abort(self, live: Live) -> None:
        """The client went away (or the server is stopping): drop the request's work."""
        if live.done:
            return
        live.done = True
        live.reason = "abort"
        self._forget(live)
        self.metrics.success["abort"] += 1
        if self.engine.abort(live.req) and self.engine.kick(self.now()):
            self._arm()
        live.wake()

    def abort_all(self) -> None:
        for live in list(self.lives.values()):
            self.abort(live)

    def close(self) -> None:
        for h in (self._timer, self._emitter):
            if h is not None:
                h.cancel()
        self._timer = self._emitter = None

    def sample(self) -> EngineSample:
        e = self.engine
        return EngineSample(e.running, e.waiting, e.kv_usage, e.num_preemptions, e.generation_tokens_by(self.now()))

    # ---------------------------------------------------------------- the engine timer

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        end = self.engine.segment_end
        if math.isfinite(end) and self._loop is not None:
            self._timer = self._loop.call_later(max(0.0, self.wall_of(end) - time.monotonic()), self._tick)

    def _tick(self) -> None:
        self._timer = None
        eng, m = self.engine, self.metrics
        wall = time.monotonic()
        now = (wall + SLACK_S - self.t0) * self.speedup
        for _ in range(MAX_SEGMENTS_PER_TICK):
            end = eng.segment_end
            if end > now:
                break
            per_step, steps = eng.step_tokens()
            if steps:
                m.iteration.observe(per_step, steps)
            prompts = eng.step_prompts()
            for r in prompts:
                live = self.lives.get(r.id)
                if live is not None and live.scheduled is None:
                    live.scheduled = self.wall_of(eng.seg_start)
            finished = eng.finish_segment()
            for r in prompts:
                live = self.lives.get(r.id)
                if live is not None and live.first is None and r.first_token is not None:
                    self._first_token(live, wall)
            for r in finished:
                live = self.lives.get(r.id)
                if live is not None:
                    self._finished(live, wall)
            eng.kick(end)
        else:  # a long backlog of due segments: let the handlers run, then go on
            assert self._loop is not None
            self._timer = self._loop.call_soon(self._tick)
            self._arm_emitter()
            return
        self._arm()
        self._arm_emitter()

    def _first_token(self, live: Live, wall: float) -> None:
        live.first = live.last = wall
        live.last_n = 1
        m = self.metrics
        m.prompt_tokens += live.req.input_tokens
        m.ttft.observe(wall - live.arrival)
        if live.stream:
            # The last token always goes out with the finish, so a stream never ends on an empty chunk.
            live.avail = min(live.req.output_tokens - 1, 1)
            self._streaming[live.req.id] = live
            live.wake()

    def _finished(self, live: Live, wall: float) -> None:
        r, m = live.req, self.metrics
        n = r.output_tokens
        preemptions = self.engine.preempted.pop(r.id, 0)
        self._itl(live, n, wall)
        live.avail = n
        live.done = True
        self._forget(live)
        first = live.first if live.first is not None else wall
        sched = live.scheduled if live.scheduled is not None else first
        m.success[live.reason] += 1
        m.e2e.observe(wall - live.arrival)
        m.queue.observe(max(0.0, sched - live.arrival))
        m.prefill.observe(max(0.0, first - sched))
        m.decode.observe(wall - first)
        m.inference.observe(max(0.0, wall - sched))
        m.tpot.observe((wall - first) / (n - 1) if n > 1 else 0.0)
        m.req_prompt.observe(r.input_tokens)
        m.prefill_kv_computed.observe(r.input_tokens)  # no prefix cache: every prompt token is computed
        m.req_preemptions.observe(preemptions)
        m.req_generation.observe(n)
        live.wake()

    def _itl(self, live: Live, n: int, wall: float) -> None:
        """Inter-token latency of the tokens last_n..n-1, spread evenly over the time since the last."""
        k = n - live.last_n
        if k > 0:
            self.metrics.itl.observe((wall - live.last) / k, k)
            live.last, live.last_n = wall, n

    def _forget(self, live: Live) -> None:
        self.lives.pop(live.req.id, None)
        self._streaming.pop(live.req.id, None)
        self.engine.preempted.pop(live.req.id, None)

    # ---------------------------------------------------------------- the emitter

    def _arm_emitter(self) -> None:
        if self._emitter is None and self._streaming and self._loop is not None:
            self._emitter = self._loop.call_later(self.min_emit_interval, self._emit)

    def _emit(self) -> None:
        self._emitter = None
        eng = self.engine
        wall = time.monotonic()
        now = (wall - self.t0) * self.speedup
        done = eng.steps_done(now)
        mark = eng.step + done
        if mark != self._emitted_at:  # some step finished since the last look
            self._emitted_at = mark
            for live in self._streaming.values():
                n = min(eng.generated(live.req, now, done), live.req.output_tokens - 1)
                if n > live.avail:
                    live.avail = n
                    self._itl(live, n, wall)
                    live.wake()
        self._arm_emitter()
