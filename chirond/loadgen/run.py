"""One run end to end: probe the endpoint, resolve the model and SLO, build the workload, drive it
while polling the instance counts once a second (with a live progress display), and return a
`LoadResult` with every record and the per-class summaries. The run stops by itself: after
`duration + drain` seconds whatever is still outstanding is cancelled and counted as unfinished."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import openai
from rich.console import Console, RenderableType
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from chirond.loadgen.driver import Driver
from chirond.loadgen.endpoint import EndpointError, fetch_models, probe, resolve_slo
from chirond.loadgen.options import LoadConfig
from chirond.loadgen.summary import (
    ClassSummary,
    InstanceSample,
    Record,
    error_breakdown,
    percentile,
    sample_from_model,
    scale_events,
    summarize_class,
)
from chirond.loadgen.workload import Workload, build_workload
from chirond.model import Slo

POLL_INTERVAL_S = 1.0


@dataclass(slots=True)
class LoadResult:
    base_url: str
    model: str
    slo: Slo
    slo_source: str
    workload: Workload
    records: list[Record]
    samples: list[InstanceSample]  # empty when the endpoint reports no instance counts
    wall_s: float
    interrupted: bool = False  # stopped early (Ctrl-C)
    summaries: dict[str, ClassSummary] = field(default_factory=dict)

    @property
    def all_answered(self) -> bool:
        return all(r.outcome in ("ok", "error") for r in self.records)

    def summary(self) -> dict[str, Any]:
        events = scale_events(self.samples)
        lag = [r.sent_s - r.scheduled_s for r in self.records if r.sent_s is not None and r.cls == "interactive"]
        return {
            "base_url": self.base_url,
            "model": self.model,
            "slo": {"ttft_s": self.slo.ttft_s, "tpot_s": self.slo.tpot_s, "source": self.slo_source},
            "wall_s": self.wall_s,
            "interrupted": self.interrupted,
            "trace_window_s": list(self.workload.trace_window),
            "speedup": self.workload.speedup,
            "classes": {c: asdict(s) for c, s in self.summaries.items()},
            "errors": error_breakdown(self.records),
            "send_lag_p99_s": percentile(lag, 99),
            "peak_ready": max((s.ready for s in self.samples), default=None),
            "scale_events": [asdict(e) for e in events],
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "instances": [asdict(s) for s in self.samples],
            "requests": [asdict(r) for r in self.records],
        }


async def _sample_once(http: aiohttp.ClientSession, cfg: LoadConfig, model: str, t: float) -> InstanceSample | None:
    """The model's instance counts now, or None (poll failed, model not listed, no counts reported)."""
    try:
        items = await fetch_models(http, cfg.base_url, cfg.api_key, timeout_s=2.0)
    except (aiohttp.ClientError, TimeoutError, ValueError, EndpointError):
        return None
    item = next((m for m in items if m["id"] == model), None)
    return sample_from_model(t, item) if item else None


async def _poll_instances(
    http: aiohttp.ClientSession, cfg: LoadConfig, model: str, driver: Driver, samples: list[InstanceSample],
    on_sample: Callable[[InstanceSample], None] | None,
) -> None:
    """Once a second until cancelled."""
    while True:
        t = driver.now()
        s = await _sample_once(http, cfg, model, t)
        if s is not None:
            samples.append(s)
            if on_sample:
                on_sample(s)
        await asyncio.sleep(max(POLL_INTERVAL_S - (driver.now() - t), 0.05))


async def run_load(cfg: LoadConfig, console: Console | None = None, stop: asyncio.Event | None = None) -> LoadResult:
    """Run the workload `cfg` describes against cfg.base_url and return every record.

    Raises EndpointError if GET /models fails at start, ValueError (ScenarioError) for a bad trace.
    Shows a live progress display on `console` when cfg.show_progress. Setting `stop` ends the run
    early, as the deadline does: what is outstanding is cancelled and counted as unfinished.
    """
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        models = await probe(http, cfg.base_url, cfg.api_key)
        if cfg.model is None and not models:
            raise EndpointError(f"{cfg.base_url}/models lists no model: pass --model")
        model = cfg.model or models[0]["id"]
        item = next((m for m in models if m["id"] == model), None)
        slo, slo_source = resolve_slo(cfg, item)
        workload = load_workload(cfg)
        client = make_client(cfg)
        driver = Driver(cfg, client, model, workload)
        samples: list[InstanceSample] = []
        async with client, _live_progress(driver, model, console, cfg.show_progress) as on_sample:
            t0 = time.perf_counter()
            driver.t0 = t0
            poller = asyncio.create_task(_poll_instances(http, cfg, model, driver, samples, on_sample))
            try:
                await driver.run(t0, stop)
            finally:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            wall = time.perf_counter() - t0
        last = await _sample_once(http, cfg, model, driver.now())  # the state the run left behind
        if last is not None:
            samples.append(last)
    result = LoadResult(cfg.base_url, model, slo, slo_source, workload, driver.records, samples, wall,
                        interrupted=stop is not None and stop.is_set())
    result.summaries = {c: summarize_class(c, driver.records, slo) for c in ("interactive", "batch")}
    return result


def make_client(cfg: LoadConfig) -> openai.AsyncOpenAI:
    """The openai client, on its aiohttp transport where the installed version has one (a third less
    CPU per streamed chunk than the default); no retries, so every failure is seen and counted."""
    http_client = None
    with contextlib.suppress(AttributeError, RuntimeError, ImportError):  # older openai, or no aiohttp extra
        http_client = openai.DefaultAioHttpClient()
    return openai.AsyncOpenAI(
        base_url=cfg.base_url, api_key=cfg.api_key, max_retries=0, timeout=cfg.timeout_s, http_client=http_client
    )


def load_workload(cfg: LoadConfig) -> Workload:
    from chirond.sim.workload import load_azure_csv

    trace = load_azure_csv(cfg.trace, model="trace")
    return build_workload(
        trace,
        start_s=cfg.trace_start_s,
        duration_s=cfg.duration_s,
        rate=cfg.rate,
        rate_scale=cfg.rate_scale,
        max_input_tokens=cfg.max_input_tokens,
        max_output_tokens=cfg.max_output_tokens,
        batch_requests=cfg.batch_requests,
        mix=cfg.mix,
        max_requests=cfg.max_requests,
        seed=cfg.seed,
    )


# ---------------------------------------------------------------- live progress


class _Progress(Progress):
    """A progress display with one status line (the instances) under the bars."""

    status: str = ""

    def get_renderables(self) -> Iterator[RenderableType]:
        yield from super().get_renderables()
        if self.status:
            yield self.status


def _status_line(model: str, s: InstanceSample) -> str:
    parts = [f"{model}: {s.state or '?'}", f"ready {s.ready}", f"starting {s.starting}", f"pending {s.pending}"]
    if s.draining:
        parts.append(f"draining {s.draining}")
    if s.queue_interactive is not None or s.queue_batch is not None:
        parts.append(f"queued {s.queue_interactive or 0} interactive / {s.queue_batch or 0} batch")
    if s.eta_s is not None:
        parts.append(f"eta {s.eta_s:.0f} s")
    return "  ".join(parts)


@contextlib.asynccontextmanager
async def _live_progress(
    driver: Driver, model: str, console: Console | None, enabled: bool
) -> AsyncIterator[Callable[[InstanceSample], None] | None]:
    if not enabled:
        yield None
        return
    bar = _Progress(
        TextColumn("[bold]{task.description:<11}"),
        BarColumn(),
        TextColumn("{task.completed:>5.0f}/{task.total:<5.0f} done, {task.fields[sent]:>5} sent, "
                   "{task.fields[errors]} errors"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        refresh_per_second=4,
        disable=console is not None and not console.is_terminal,
    )
    tasks = {c: bar.add_task(c, total=n.total, sent=0, errors=0) for c, n in driver.counts.items() if n.total}

    def on_sample(s: InstanceSample) -> None:
        bar.status = _status_line(model, s)

    async def tick() -> None:
        while True:
            for c, task in tasks.items():
                n = driver.counts[c]
                bar.update(task, completed=n.done, sent=n.sent, errors=n.errors)
            await asyncio.sleep(0.25)

    with bar:
        ticker = asyncio.create_task(tick())
        try:
            yield on_sample
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
