"""The replay client: one aiohttp session that sends the scenario's interactive requests on
schedule (streamed, so first tokens are timed), creates its batches through the Files and Batches
API, polls them, scrapes the daemon's /metrics, and measures its own lag. Everything it records is
in real seconds since `t0` (`time.monotonic()`); result.py converts to the daemon's clock."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from chirond.replay.plan import ENDPOINT, BatchFile, ReplayPlan, batch_jsonl, completion_body

SCRAPE_EVERY_S = 0.5  # real seconds between /metrics scrapes (the timeline's resolution)
BATCH_POLL_S = 0.25  # real seconds between batch status polls (the resolution of batch finish times)
LOOP_PROBE_S = 0.05  # the client's event-loop lag probe


@dataclass(slots=True)
class Sent:
    """One interactive request, times in real seconds since t0 (NaN: did not happen)."""

    scheduled: float
    sent: float = math.nan
    first: float = math.nan
    finish: float = math.nan
    status: int = 0  # HTTP status (0: no answer)
    tokens: int = -1  # completion_tokens the server reported
    error: str = ""


@dataclass
class BatchRun:
    file: BatchFile
    batch_id: str = ""
    created: float = math.nan
    status: str = ""
    # (real time, completed count) whenever the count changed
    progress: list[tuple[float, int]] = field(default_factory=list)
    output: dict[str, int] = field(default_factory=dict)  # custom_id -> HTTP status of its response
    error: str = ""


@dataclass
class Recording:
    sent: list[Sent]
    batches: list[BatchRun]
    scrapes: list[tuple[float, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = field(default_factory=list)
    loop_lags: list[float] = field(default_factory=list)  # the client's event loop, real seconds
    end: float = 0.0
    timed_out: bool = False


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text -> {(sample name, sorted labels): value} for chirond_* samples."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(text):
        if not fam.name.startswith("chirond_"):
            continue
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


class Driver:
    def __init__(
        self,
        plan: ReplayPlan,
        base_url: str,
        *,
        deadline_real_s: float,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.plan = plan
        self.base = base_url.rstrip("/")
        self.k = plan.speedup
        self.deadline_real_s = deadline_real_s  # stop sending/waiting this long after t0
        self.progress = progress
        self.rec = Recording([Sent(r.arrival / self.k) for r in plan.interactive], [BatchRun(b) for b in plan.batches])
        self.t0 = 0.0
        self._http: aiohttp.ClientSession | None = None
        self._inflight = 0

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def run(self, t0: float) -> Recording:
        """Sends everything, waits until all answered and every batch ended (or the deadline), and
        returns what happened. The caller started the daemon and waited for its initial fleet."""
        self.t0 = t0
        conn = aiohttp.TCPConnector(limit=0, force_close=False)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as http:
            self._http = http
            stop = asyncio.Event()
            helpers = [
                asyncio.create_task(self._scrape_loop(stop)),
                asyncio.create_task(self._loop_probe(stop)),
                asyncio.create_task(self._progress_loop(stop)),
            ]
            try:
                work = asyncio.gather(self._send_interactive(), self._run_batches())
                try:
                    await asyncio.wait_for(work, timeout=max(0.0, self.deadline_real_s - self.now()))
                except TimeoutError:
                    self.rec.timed_out = True
                self.rec.end = self.now()
                await self._collect_outputs()
            finally:
                stop.set()
                for h in helpers:
                    h.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
                with contextlib.suppress(Exception):
                    await self._scrape_once()  # the counters at the end
        return self.rec

    # ---------------------------------------------------------------- interactive

    async def _send_interactive(self) -> None:
        tasks = []
        for i, (r, s) in enumerate(zip(self.plan.interactive, self.rec.sent, strict=True)):
            delay = s.scheduled - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self._one(i, r.model, r.input_tokens, r.output_tokens, r.id)))
        await asyncio.gather(*tasks)

    async def _one(self, i: int, model: str, input_tokens: int, output_tokens: int, salt: int) -> None:
        assert self._http is not None
        s = self.rec.sent[i]
        body = completion_body(model, input_tokens, output_tokens, stream=True, salt=salt)
        self._inflight += 1
        s.sent = self.now()
        try:
            async with self._http.post(self.base + ENDPOINT, json=body) as resp:
                s.status = resp.status
                if resp.status != 200:
                    s.error = (await resp.text())[:200]
                    return
                async for raw in resp.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        break
                    obj = json.loads(payload)
                    if isinstance(obj.get("error"), dict):
                        s.error = str(obj["error"].get("message", "error"))[:200]
                        return
                    choices = obj.get("choices") or []
                    if math.isnan(s.first) and any(c.get("text") for c in choices):
                        s.first = self.now()
                    usage = obj.get("usage")
                    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                        s.tokens = usage["completion_tokens"]
                if not math.isnan(s.first):
                    s.finish = self.now()
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            s.error = f"{type(e).__name__}: {e}"[:200]
        finally:
            self._inflight -= 1

    # ---------------------------------------------------------------- batches

    async def _run_batches(self) -> None:
        await asyncio.gather(*(self._one_batch(b) for b in self.rec.batches))

    async def _one_batch(self, b: BatchRun) -> None:
        assert self._http is not None
        delay = b.file.arrival / self.k - self.now()
        data = batch_jsonl(b.file)  # built before its time: uploading is part of arriving
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            form = aiohttp.FormData()
            form.add_field("purpose", "batch")
            form.add_field("file", data, filename=f"{b.file.model}-{len(b.file.requests)}.jsonl",
                           content_type="application/jsonl")
            async with self._http.post(self.base + "/v1/files", data=form) as resp:
                doc = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"upload: HTTP {resp.status}: {doc}")
            spec = {"input_file_id": doc["id"], "endpoint": ENDPOINT, "completion_window": b.file.window}
            async with self._http.post(self.base + "/v1/batches", json=spec) as resp:
                doc = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"create: HTTP {resp.status}: {doc}")
            b.batch_id, b.created = doc["id"], self.now()
            last = -1
            while True:
                async with self._http.get(f"{self.base}/v1/batches/{b.batch_id}") as resp:
                    doc = await resp.json()
                t = self.now()
                b.status = doc.get("status", "")
                done = int((doc.get("request_counts") or {}).get("completed", 0))
                if done != last:
                    b.progress.append((t, done))
                    last = done
                if b.status in ("completed", "failed", "expired", "cancelled"):
                    return
                await asyncio.sleep(BATCH_POLL_S)
        except (aiohttp.ClientError, RuntimeError, KeyError, ValueError) as e:
            b.error = f"{type(e).__name__}: {e}"[:300]

    async def _collect_outputs(self) -> None:
        """Which lines answered 200: from each batch's output file (cancelling an unfinished batch
        first, so that it writes one), bounded in time."""
        assert self._http is not None
        for b in self.rec.batches:
            if not b.batch_id:
                continue
            try:
                if b.status not in ("completed", "failed", "expired", "cancelled"):
                    async with self._http.post(f"{self.base}/v1/batches/{b.batch_id}/cancel") as resp:
                        await resp.read()
                doc: dict = {}
                for _ in range(120):
                    async with self._http.get(f"{self.base}/v1/batches/{b.batch_id}") as resp:
                        doc = await resp.json()
                    if doc.get("status") in ("completed", "failed", "expired", "cancelled"):
                        break
                    await asyncio.sleep(0.25)
                b.status = doc.get("status", b.status)
                out_id = doc.get("output_file_id")
                if out_id:
                    async with self._http.get(f"{self.base}/v1/files/{out_id}/content") as resp:
                        text = await resp.text()
                    for line in text.splitlines():
                        if line.strip():
                            obj = json.loads(line)
                            status = (obj.get("response") or {}).get("status_code", 0)
                            b.output[str(obj.get("custom_id"))] = int(status or 0)
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                b.error = b.error or f"outputs: {type(e).__name__}: {e}"[:300]

    # ---------------------------------------------------------------- observation

    async def _scrape_once(self) -> None:
        assert self._http is not None
        async with self._http.get(self.base + "/metrics", timeout=aiohttp.ClientTimeout(total=5)) as resp:
            text = await resp.text()
        self.rec.scrapes.append((self.now(), parse_metrics(text)))

    async def _scrape_loop(self, stop: asyncio.Event) -> None:
        nxt = self.now()
        while not stop.is_set():
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                await self._scrape_once()
            nxt += SCRAPE_EVERY_S
            await asyncio.sleep(max(0.0, nxt - self.now()))

    async def _loop_probe(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            t = time.monotonic()
            await asyncio.sleep(LOOP_PROBE_S)
            self.rec.loop_lags.append(max(0.0, time.monotonic() - t - LOOP_PROBE_S))

    async def _progress_loop(self, stop: asyncio.Event) -> None:
        if self.progress is None:
            return
        n = len(self.rec.sent)
        while not stop.is_set():
            await asyncio.sleep(1.0)
            t = self.now() * self.k
            sent = sum(1 for s in self.rec.sent if not math.isnan(s.sent))
            done = sum(1 for s in self.rec.sent
                       if not math.isnan(s.finish) or s.error or (s.status and s.status != 200))
            lag = max((s.sent - s.scheduled for s in self.rec.sent[max(0, sent - 50):sent]), default=0.0) * self.k
            bdone = sum(b.progress[-1][1] if b.progress else 0 for b in self.rec.batches)
            btotal = sum(len(b.file.requests) for b in self.rec.batches)
            gpus = _gpus(self.rec.scrapes[-1][1]) if self.rec.scrapes else 0
            self.progress(
                f"t={t / 60:5.1f}/{self.plan.scenario.horizon_s / 60:.0f} min  interactive sent {sent}/{n} "
                f"done {done} in flight {self._inflight}  batch {bdone}/{btotal}  GPUs {gpus:.0f}  "
                f"send lag {lag:.2f} s"
            )


def _gpus(sample: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    return sum(v for (name, _), v in sample.items() if name == "chirond_gpus_in_use")
