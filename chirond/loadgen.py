"""`chiron load`: drive a short sample workload through an OpenAI-compatible endpoint with the
`openai` client and report per-class latency, SLO attainment and the instances over time.

The workload is built up front and is pure (same arguments and seed, same requests):
interactive arrivals replay a window of the Azure 2023 conversation trace, time-scaled to the
asked rate; batch requests are a backlog sent from t=0 through a bounded number of workers.
The run stops by itself: after `duration + drain` seconds, whatever is still outstanding is
cancelled and counted as unfinished.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import math
import os
import signal
import sys
import time
from asyncio import FIRST_COMPLETED
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import numpy as np
import openai
from rich.console import Console, RenderableType
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from chirond.model import Request, Slo, within_slo
from chirond.tokens import CHAT_OVERHEAD, MESSAGE_OVERHEAD, make_text

DEFAULT_TRACE = Path(__file__).resolve().parent / "data" / "azure2023_conv.csv"
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
DEFAULT_SLO = Slo(ttft_s=1.0, tpot_s=0.1)
BATCH_TIER = "flex"
BATCH_HEADER = "X-Chirond-Class"  # chirond's default batch marker; sent alongside service_tier
POLL_INTERVAL_S = 1.0

Api = Literal["chat", "completions"]
Cls = Literal["interactive", "batch"]
# outcome: ok (answered, 2xx), error (answered with an error, or failed), unfinished (sent, no
# answer by the run's deadline), unsent (the deadline came before it could be sent).
Outcome = Literal["ok", "error", "unfinished", "unsent"]

KINDS: dict[str, tuple[Api, bool]] = {
    "chat-stream": ("chat", True),
    "chat": ("chat", False),
    "completions-stream": ("completions", True),
    "completions": ("completions", False),
}
DEFAULT_MIX = "chat-stream=80,completions-stream=10,chat=10"

EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, EXIT_UNFINISHED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

DESCRIPTION = """\
Drive a short sample workload through an OpenAI-compatible endpoint (chirond, vLLM, ...) with the
openai client, then print per-class latency and SLO attainment and how the instances scaled.

Interactive requests replay the Azure 2023 conversation trace: the next RATE x DURATION trace
requests after --trace-start-s, time-scaled to fill --duration-s (so the trace's bursts are kept
and the mean rate is --rate), or with --rate-scale the trace itself, X times faster. Prompt and
output lengths come from the trace, clipped to --max-input-tokens / --max-output-tokens; each
request asks for exactly that many output tokens (max_tokens and ignore_eos). By default 80% use
streaming chat completions, 10% streaming completions and 10% non-streaming chat (--mix).
Batch requests (--batch-requests, lengths drawn from the same trace) are sent from t=0 as
non-streaming chat completions with service_tier="flex" (and header X-Chirond-Class: batch),
at most --batch-concurrency at a time.

Measured per request: TTFT (first content-bearing chunk; for non-streaming requests the whole
response time), TPOT ((last token - first token) / (completion tokens - 1)), end-to-end time,
completion tokens from the usage the server reports, and the error (HTTP status, timeout, ...).
An interactive request meets its SLO if it succeeded with TTFT <= --ttft-slo-s and TPOT <=
--tpot-slo-s; a non-streaming one if its end-to-end time is within TTFT SLO + (tokens - 1) x
TPOT SLO. A batch request meets its SLO if it succeeded. While it runs, GET BASE_URL/models is
polled once a second to record the instance counts chirond reports.

The run ends by itself: interactive arrivals stop after --duration-s, and after another
--drain-s whatever is still outstanding is cancelled and counted as unfinished. Requests are
never retried."""

EPILOG = """\
exit status:
  0    every request was answered (error responses are counted in the report, not fatal)
  1    the endpoint could not be reached at start, or rejected the key, or lists no model
  2    bad arguments or trace file
  3    some requests got no answer before the deadline (duration + drain)
  130  interrupted: the first Ctrl-C stops the run and still prints the report, a second aborts"""


# ---------------------------------------------------------------- options


def _positive_float(s: str) -> float:
    v = float(s)
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def _nonneg_float(s: str) -> float:
    v = float(s)
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {s}")
    return v


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {s}")
    return v


def _nonneg_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be non-negative, got {s}")
    return v


def parse_mix(text: str) -> dict[str, float]:
    """'chat-stream=80,chat=20' -> {'chat-stream': 0.8, 'chat': 0.2} (weights, normalized)."""
    weights: dict[str, float] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        kind, sep, raw = item.partition("=")
        kind = kind.strip()
        if not sep or kind not in KINDS:
            raise ValueError(f"--mix: {item.strip()!r}: expected KIND=WEIGHT with KIND one of {', '.join(KINDS)}")
        w = float(raw)
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"--mix: {kind}: weight must be a non-negative number, got {raw.strip()}")
        weights[kind] = weights.get(kind, 0.0) + w
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("--mix: the weights must add up to more than 0")
    return {k: w / total for k, w in weights.items() if w > 0}


def _mix_arg(s: str) -> dict[str, float]:
    try:
        return parse_mix(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    g = p.add_argument_group("endpoint")
    g.add_argument("--base-url", metavar="URL", default=DEFAULT_BASE_URL,
                   help=f"OpenAI-compatible base URL, up to /v1 (default {DEFAULT_BASE_URL})")
    g.add_argument("--api-key", metavar="KEY", help="bearer key (default: $OPENAI_API_KEY, else 'none')")
    g.add_argument("--model", metavar="NAME", help="model to ask for (default: the first one GET /models lists)")

    g = p.add_argument_group("workload")
    g.add_argument("--trace", metavar="FILE", type=Path,
                   help="Azure-format CSV (TIMESTAMP,ContextTokens,GeneratedTokens) to replay "
                   "(default: the bundled Azure 2023 conversation trace)")
    g.add_argument("--trace-start-s", metavar="S", type=_nonneg_float, default=0.0,
                   help="where in the trace the window starts, in trace seconds (default 0)")
    g.add_argument("--duration-s", metavar="S", type=_positive_float, default=60.0,
                   help="seconds during which interactive requests arrive (default 60)")
    rate = g.add_mutually_exclusive_group()
    rate.add_argument("--rate", metavar="R", type=_nonneg_float,
                      help="mean interactive requests/s: the next R x DURATION trace requests, time-scaled "
                      "to fill the duration (default 5)")
    rate.add_argument("--rate-scale", metavar="X", type=_positive_float,
                      help="instead of --rate: replay the trace X times faster (X x DURATION trace seconds)")
    g.add_argument("--max-input-tokens", metavar="N", type=_positive_int, default=2048,
                   help="clip prompt lengths (default 2048)")
    g.add_argument("--max-output-tokens", metavar="N", type=_positive_int, default=256,
                   help="clip output lengths (default 256)")
    g.add_argument("--batch-requests", metavar="N", type=_nonneg_int, default=100,
                   help="batch-class requests sent from t=0 (default 100; 0 for none)")
    g.add_argument("--batch-concurrency", metavar="N", type=_positive_int, default=32,
                   help="at most this many batch requests in flight (default 32)")
    g.add_argument("--mix", metavar="KIND=W,...", type=_mix_arg, default=parse_mix(DEFAULT_MIX),
                   help="how interactive requests are sent: relative weights of chat-stream (streaming chat "
                   "completions), chat (non-streaming), completions-stream and completions "
                   f"(default {DEFAULT_MIX})")
    g.add_argument("--max-requests", metavar="N", type=_nonneg_int,
                   help="cap on requests of both classes together, cut in proportion (default: no cap)")
    g.add_argument("--seed", metavar="N", type=int, default=0,
                   help="seed for the mix and the batch lengths (default 0)")

    g = p.add_argument_group("limits and SLO")
    g.add_argument("--timeout-s", metavar="S", type=_positive_float, default=120.0,
                   help="give up on an interactive request after this many seconds in all (default 120); "
                   "batch requests wait until the run's deadline")
    g.add_argument("--drain-s", metavar="S", type=_nonneg_float, default=120.0,
                   help="after the arrivals end, wait this long for outstanding requests, then cancel them "
                   "(default 120)")
    g.add_argument("--ttft-slo-s", metavar="S", type=_positive_float,
                   help=f"interactive TTFT SLO (default: what the endpoint advertises, else {DEFAULT_SLO.ttft_s})")
    g.add_argument("--tpot-slo-s", metavar="S", type=_positive_float,
                   help=f"interactive TPOT SLO (default: what the endpoint advertises, else {DEFAULT_SLO.tpot_s})")

    g = p.add_argument_group("output")
    g.add_argument("--json-out", metavar="FILE", type=Path,
                   help="write the summary, the instance samples and every request record here (JSON)")
    g.add_argument("--no-progress", action="store_true", help="no live progress display")


@dataclass(frozen=True, slots=True)
class LoadConfig:
    base_url: str = DEFAULT_BASE_URL
    api_key: str = "none"
    model: str | None = None
    trace: Path = DEFAULT_TRACE
    trace_start_s: float = 0.0
    duration_s: float = 60.0
    rate: float | None = 5.0  # ignored when rate_scale is set
    rate_scale: float | None = None
    max_input_tokens: int = 2048
    max_output_tokens: int = 256
    batch_requests: int = 100
    batch_concurrency: int = 32
    mix: dict[str, float] = field(default_factory=lambda: parse_mix(DEFAULT_MIX))
    max_requests: int | None = None
    seed: int = 0
    timeout_s: float = 120.0
    drain_s: float = 120.0
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None
    show_progress: bool = True


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    rate = args.rate if args.rate is not None or args.rate_scale is not None else 5.0
    return LoadConfig(
        base_url=args.base_url.rstrip("/"),
        api_key=args.api_key or os.environ.get("OPENAI_API_KEY") or "none",
        model=args.model,
        trace=args.trace or DEFAULT_TRACE,
        trace_start_s=args.trace_start_s,
        duration_s=args.duration_s,
        rate=rate,
        rate_scale=args.rate_scale,
        max_input_tokens=args.max_input_tokens,
        max_output_tokens=args.max_output_tokens,
        batch_requests=args.batch_requests,
        batch_concurrency=args.batch_concurrency,
        mix=args.mix,
        max_requests=args.max_requests,
        seed=args.seed,
        timeout_s=args.timeout_s,
        drain_s=args.drain_s,
        ttft_slo_s=args.ttft_slo_s,
        tpot_slo_s=args.tpot_slo_s,
        show_progress=not args.no_progress,
    )


# ---------------------------------------------------------------- the workload (pure)


@dataclass(frozen=True, slots=True)
class Planned:
    """One request to send: `at` is seconds after the run's start."""

    id: int
    cls: Cls
    at: float
    input_tokens: int
    output_tokens: int
    api: Api
    stream: bool


@dataclass(frozen=True, slots=True)
class Workload:
    requests: list[Planned]
    trace_window: tuple[float, float]  # trace seconds replayed by the interactive arrivals
    speedup: float  # trace seconds per run second

    def of(self, cls: Cls) -> list[Planned]:
        return [p for p in self.requests if p.cls == cls]


def _trace_window(
    arrivals: np.ndarray, start_s: float, duration_s: float, rate: float | None, rate_scale: float | None
) -> tuple[np.ndarray, float, float]:
    """(indices of the replayed trace rows, window end in trace seconds, trace seconds per run second)."""
    first = int(np.searchsorted(arrivals, start_s, side="left"))
    if rate_scale is not None:
        end = start_s + duration_s * rate_scale
        last = int(np.searchsorted(arrivals, end, side="left"))
        return np.arange(first, last), end, rate_scale
    n = round((rate or 0.0) * duration_s)
    if n == 0:
        return np.arange(first, first), start_s, 1.0
    last = min(first + n, len(arrivals))
    if last < len(arrivals):
        end = float(arrivals[last])  # the next arrival closes the window: gaps before it are kept
    elif last > first:  # the trace ran out: close the window one mean gap after its last request
        gap = float(arrivals[last - 1] - arrivals[first]) / (last - first - 1) if last - first > 1 else 0.0
        end = float(arrivals[last - 1]) + gap
    else:
        end = start_s
    span = end - start_s
    return np.arange(first, last), end, (span / duration_s if span > 0 else 1.0)


def build_workload(
    trace: Sequence[Request],
    *,
    start_s: float = 0.0,
    duration_s: float = 60.0,
    rate: float | None = 5.0,
    rate_scale: float | None = None,
    max_input_tokens: int = 2048,
    max_output_tokens: int = 256,
    batch_requests: int = 100,
    mix: dict[str, float] | None = None,
    max_requests: int | None = None,
    seed: int = 0,
) -> Workload:
    """Interactive arrivals replayed from `trace` (sorted by arrival) plus a batch backlog at t=0.

    With `rate`, the next round(rate x duration) trace requests from `start_s` are time-scaled so
    that their window (up to the next trace arrival) fills `duration_s`; with `rate_scale` the
    window is `duration_s x rate_scale` trace seconds, replayed that much faster. Either way the
    relative gaps between arrivals are the trace's. Batch lengths are drawn (seeded) from the whole
    trace. `max_requests` cuts both classes in proportion (interactive keeps its earliest arrivals).
    """
    if not trace:
        raise ValueError("the trace has no requests")
    mix = mix or parse_mix(DEFAULT_MIX)
    arrivals = np.array([r.arrival for r in trace], dtype=np.float64)
    ins = np.clip(np.array([r.input_tokens for r in trace], dtype=np.int64), 1, max_input_tokens)
    outs = np.clip(np.array([r.output_tokens for r in trace], dtype=np.int64), 1, max_output_tokens)
    idx, end, speedup = _trace_window(arrivals, start_s, duration_s, rate, rate_scale)
    n_int, n_batch = _cap(len(idx), batch_requests, max_requests)
    idx = idx[:n_int]
    rng = np.random.default_rng(seed)
    kinds = list(mix)
    picks = rng.choice(len(kinds), size=n_int, p=[mix[k] for k in kinds]).tolist()
    batch_idx = rng.integers(0, len(trace), size=n_batch).tolist()
    at = ((arrivals[idx] - start_s) / speedup).tolist()
    reqs: list[Planned] = []
    for i, (row, t, k) in enumerate(zip(idx.tolist(), at, picks, strict=True)):
        api, stream = KINDS[kinds[k]]
        reqs.append(Planned(i, "interactive", t, int(ins[row]), int(outs[row]), api, stream))
    for j, row in enumerate(batch_idx):
        reqs.append(Planned(n_int + j, "batch", 0.0, int(ins[row]), int(outs[row]), "chat", False))
    return Workload(reqs, (start_s, end), speedup)


def _cap(n_interactive: int, n_batch: int, max_requests: int | None) -> tuple[int, int]:
    total = n_interactive + n_batch
    if max_requests is None or total <= max_requests:
        return n_interactive, n_batch
    b = round(max_requests * n_batch / total)
    return max_requests - b, b


# ---------------------------------------------------------------- records and the summary (pure)


@dataclass(slots=True)
class Record:
    """What happened to one request. Times are seconds; `*_s` offsets are from the run's start."""

    id: int
    cls: Cls
    api: Api
    stream: bool
    input_tokens: int
    max_tokens: int
    scheduled_s: float
    sent_s: float | None = None
    # Streaming: first content-bearing chunk. Non-streaming: the whole response time (no first token seen).
    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    outcome: Outcome = "unsent"
    status: int | None = None  # HTTP status of an error response
    error: str | None = None  # error class: "HTTP 503", "timeout", "connection error", ...
    detail: str | None = None  # the error's message, shortened

    @classmethod
    def planned(cls, p: Planned) -> Record:
        return cls(p.id, p.cls, p.api, p.stream, p.input_tokens, p.output_tokens, p.at)


def meets_slo(r: Record, slo: Slo) -> bool:
    """Interactive SLO: succeeded, TTFT and TPOT within bounds; non-streaming requests, whose first
    token is not seen, are held to the equivalent end-to-end bound TTFT + (tokens - 1) x TPOT."""
    if r.outcome != "ok" or r.e2e_s is None:
        return False
    if not r.stream:
        tokens = r.completion_tokens if r.completion_tokens is not None else r.max_tokens
        return r.e2e_s <= slo.ttft_s + slo.tpot_s * max(tokens - 1, 0)
    return r.ttft_s is not None and bool(within_slo(r.ttft_s, r.tpot_s or 0.0, slo.ttft_s, slo.tpot_s))


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default); None for no values."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


@dataclass(frozen=True, slots=True)
class ClassSummary:
    cls: str
    requests: int
    ok: int
    errors: int
    unfinished: int  # sent and not answered by the deadline, or never sent
    unsent: int  # of which never sent (the run was stopped early, or the batch backlog outlasted it)
    ttft_p50_s: float | None  # streaming requests only
    ttft_p90_s: float | None
    ttft_p99_s: float | None
    tpot_p50_s: float | None
    tpot_p99_s: float | None
    e2e_p50_s: float | None
    attainment: float | None  # interactive: met TTFT and TPOT SLO; batch: succeeded. None: no requests
    output_tokens: int
    short: int  # succeeded with fewer completion tokens than max_tokens


def summarize_class(cls: Cls, records: Sequence[Record], slo: Slo) -> ClassSummary:
    rs = [r for r in records if r.cls == cls]
    ok = [r for r in rs if r.outcome == "ok"]
    streamed = [r for r in ok if r.stream]
    ttft = [r.ttft_s for r in streamed if r.ttft_s is not None]
    tpot = [r.tpot_s for r in streamed if r.tpot_s is not None]
    e2e = [r.e2e_s for r in ok if r.e2e_s is not None]
    met = sum(meets_slo(r, slo) for r in rs) if cls == "interactive" else len(ok)
    return ClassSummary(
        cls=cls,
        requests=len(rs),
        ok=len(ok),
        errors=sum(r.outcome == "error" for r in rs),
        unfinished=sum(r.outcome in ("unfinished", "unsent") for r in rs),
        unsent=sum(r.outcome == "unsent" for r in rs),
        ttft_p50_s=percentile(ttft, 50),
        ttft_p90_s=percentile(ttft, 90),
        ttft_p99_s=percentile(ttft, 99),
        tpot_p50_s=percentile(tpot, 50),
        tpot_p99_s=percentile(tpot, 99),
        e2e_p50_s=percentile(e2e, 50),
        attainment=met / len(rs) if rs else None,
        output_tokens=sum(r.completion_tokens or 0 for r in ok),
        short=sum(r.completion_tokens is not None and r.completion_tokens < r.max_tokens for r in ok),
    )


UNANSWERED = {"unfinished": "no answer by the end", "unsent": "not sent"}


def error_breakdown(records: Sequence[Record]) -> dict[str, dict[str, int]]:
    """{error label: {class: count}}, most frequent first; unfinished and unsent requests included."""
    counts: Counter[tuple[str, str]] = Counter()
    for r in records:
        if r.outcome == "error":
            counts[(r.error or "error", r.cls)] += 1
        elif r.outcome in UNANSWERED:
            counts[(UNANSWERED[r.outcome], r.cls)] += 1
    out: dict[str, dict[str, int]] = {}
    totals: Counter[str] = Counter()
    for (label, cls), n in counts.items():
        out.setdefault(label, {})[cls] = n
        totals[label] += n
    return {label: out[label] for label, _ in totals.most_common()}


# ---------------------------------------------------------------- instances over time (pure)


@dataclass(frozen=True, slots=True)
class InstanceSample:
    t: float
    state: str | None
    ready: int
    starting: int
    pending: int
    draining: int
    queue_interactive: int | None
    queue_batch: int | None
    eta_s: float | None


def _number(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _count(v: object) -> int | None:
    n = _number(v)
    return None if n is None else int(n)


def sample_from_model(t: float, item: dict[str, Any]) -> InstanceSample | None:
    """chirond's extra /models fields as a sample; None when the endpoint reports no instances."""
    inst = item.get("instances")
    if not isinstance(inst, dict):
        return None
    raw_q = item.get("queue")
    q: dict[str, Any] = raw_q if isinstance(raw_q, dict) else {}
    state = item.get("state")
    return InstanceSample(
        t=t,
        state=state if isinstance(state, str) else None,
        ready=_count(inst.get("ready")) or 0,
        starting=_count(inst.get("starting")) or 0,
        pending=_count(inst.get("pending")) or 0,
        draining=_count(inst.get("draining")) or 0,
        queue_interactive=_count(q.get("interactive")),
        queue_batch=_count(q.get("batch")),
        eta_s=_number(item.get("eta_s")),
    )


def scale_events(samples: Sequence[InstanceSample]) -> list[InstanceSample]:
    """The samples where the instance counts or the state changed (the first one always)."""
    def key(s: InstanceSample) -> tuple[object, ...]:
        return s.state, s.ready, s.starting, s.pending, s.draining

    return [s for i, s in enumerate(samples) if i == 0 or key(s) != key(samples[i - 1])]


SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int = 60) -> str:
    """Values in at most `width` columns (the max of each bucket), scaled to the peak; zero is '▁'."""
    if not values:
        return ""
    n = min(width, len(values))
    edges = np.linspace(0, len(values), n + 1).astype(int)
    cols = [max(values[a:b]) for a, b in itertools.pairwise(edges.tolist())]
    peak = max(cols)
    if peak <= 0:
        return SPARK[0] * n
    return "".join(SPARK[min(len(SPARK) - 1, math.ceil(v / peak * (len(SPARK) - 1)))] for v in cols)


# ---------------------------------------------------------------- talking to the endpoint


class EndpointError(Exception):
    """The endpoint could not be used at start: unreachable, key rejected, no model."""


def _auth_headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


async def fetch_models(
    http: aiohttp.ClientSession, base_url: str, api_key: str, timeout_s: float = 5.0
) -> list[dict[str, Any]]:
    """GET {base_url}/models as raw dicts (chirond's extra fields kept)."""
    url = f"{base_url}/models"
    async with http.get(url, headers=_auth_headers(api_key), timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
        if resp.status in (401, 403):
            raise EndpointError(
                f"{url} rejected the API key (HTTP {resp.status}): pass --api-key or set OPENAI_API_KEY"
            )
        if resp.status != 200:
            raise EndpointError(f"GET {url} answered HTTP {resp.status}")
        body = await resp.json(content_type=None)
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise EndpointError(f"GET {url}: not an OpenAI model list")
    return [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]


async def probe(http: aiohttp.ClientSession, base_url: str, api_key: str) -> list[dict[str, Any]]:
    """GET /models at start; any transport failure becomes an EndpointError that says what to check."""
    try:
        return await fetch_models(http, base_url, api_key)
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        raise EndpointError(f"cannot reach {base_url}: is chirond running? ({type(e).__name__}: {e})") from e


def resolve_slo(cfg: LoadConfig, item: dict[str, Any] | None) -> tuple[Slo, str]:
    """The SLO to judge by and where it came from ("endpoint", "options" or "default")."""
    adv = item.get("slo") if item else None
    ttft = _number(adv.get("ttft_s")) if isinstance(adv, dict) else None
    tpot = _number(adv.get("tpot_s")) if isinstance(adv, dict) else None
    source = "endpoint" if ttft is not None or tpot is not None else "default"
    if cfg.ttft_slo_s is not None or cfg.tpot_slo_s is not None:
        source = "options"
    slo = Slo(
        ttft_s=float(cfg.ttft_slo_s or ttft or DEFAULT_SLO.ttft_s),
        tpot_s=float(cfg.tpot_slo_s or tpot or DEFAULT_SLO.tpot_s),
    )
    return slo, source


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


class StreamError(Exception):
    """The server reported an error inside a stream, or sent something that is not a chunk."""


@dataclass(slots=True)
class StreamTiming:
    first: float | None = None  # perf_counter() at the first content-bearing chunk
    last: float | None = None  # ... and at the last one
    chunks: int = 0  # content-bearing chunks
    usage_tokens: int | None = None  # completion_tokens of the usage chunk
    prompt_tokens: int | None = None

    @property
    def completion_tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else self.chunks


async def read_stream(lines: AsyncIterator[str], *, chat: bool) -> StreamTiming:
    """Read an OpenAI server-sent-event stream of chat or completions chunks up to [DONE]."""
    timing = StreamTiming()
    data: list[str] = []
    async for line in lines:
        if line.startswith("data:"):
            data.append(line[6:] if line.startswith("data: ") else line[5:])
            continue
        if line or not data:  # other fields (event:, id:, comments) and blank lines between events
            continue
        payload = "\n".join(data)
        data.clear()
        if payload.startswith("[DONE]"):
            return timing
        _on_chunk(timing, payload, chat)
    if data and not data[0].startswith("[DONE]"):
        _on_chunk(timing, "\n".join(data), chat)
    return timing


def _on_chunk(timing: StreamTiming, payload: str, chat: bool) -> None:
    try:
        obj = json.loads(payload)
    except ValueError:
        raise StreamError(f"not JSON: {payload[:80]!r}") from None
    if not isinstance(obj, dict):
        raise StreamError(f"not a chunk: {payload[:80]!r}")
    if obj.get("error"):
        err = obj["error"]
        raise StreamError(str(err.get("message") if isinstance(err, dict) else err))
    usage = obj.get("usage")
    if isinstance(usage, dict):
        timing.usage_tokens = usage.get("completion_tokens", timing.usage_tokens)
        timing.prompt_tokens = usage.get("prompt_tokens", timing.prompt_tokens)
    choices = obj.get("choices")
    if not choices:
        return
    c0 = choices[0]
    text = (c0.get("delta") or {}).get("content") if chat else c0.get("text")
    if text:
        now = time.perf_counter()
        timing.last = now
        timing.chunks += 1
        if timing.first is None:
            timing.first = now


# ---------------------------------------------------------------- the run


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


# ---------------------------------------------------------------- the report


SLO_SOURCES = {"endpoint": "advertised by the endpoint", "options": "from the options", "default": "default SLO"}


def _ms(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v * 1000:,.{digits}f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def print_report(result: LoadResult, console: Console) -> None:
    w = result.workload
    console.print(
        f"[bold]{result.model}[/bold] at {result.base_url}: {len(w.of('interactive'))} interactive "
        f"(trace {w.trace_window[0]:.0f}-{w.trace_window[1]:.0f} s, {w.speedup:.2f}x) + "
        f"{len(w.of('batch'))} batch requests, {result.wall_s:.1f} s"
    )
    if result.interrupted:
        console.print(f"[yellow]interrupted after {result.wall_s:.1f} s: what was not answered counts as "
                      "unfinished[/yellow]")
    console.print(_class_table(result))
    slo = result.slo
    console.print(
        f"SLO attainment: interactive = succeeded with TTFT <= {slo.ttft_s:g} s and TPOT <= {slo.tpot_s:g} s "
        f"({SLO_SOURCES.get(result.slo_source, result.slo_source)}; "
        "non-streaming: e2e within TTFT + (tokens - 1) x TPOT), batch = succeeded. "
        "TTFT/TPOT percentiles are over streaming requests."
    )
    errors = error_breakdown(result.records)
    if errors:
        t = Table(title="errors", title_justify="left")
        for col in ("error", "interactive", "batch"):
            t.add_column(col, justify="left" if col == "error" else "right")
        for label, by_cls in errors.items():
            t.add_row(label, str(by_cls.get("interactive", 0)), str(by_cls.get("batch", 0)))
        console.print(t)
    short = sum(s.short for s in result.summaries.values())
    if short:
        console.print(f"[yellow]{short} successful responses had fewer tokens than max_tokens "
                      "(does the endpoint honour ignore_eos?)[/yellow]")
    lag = result.summary()["send_lag_p99_s"]
    if lag is not None and lag > 0.1:
        console.print(f"[yellow]requests went out up to {lag:.2f} s late (p99): this machine could not keep up "
                      "with the rate, latencies include client-side delay[/yellow]")
    _print_instances(result, console)


def _class_table(result: LoadResult) -> Table:
    """One column per class, one row per figure: narrow enough for any terminal."""
    t = Table()
    sums = [s for s in result.summaries.values() if s.requests]
    t.add_column("")
    for s in sums:
        t.add_column(s.cls, justify="right")
    rate = (lambda s: f"{s.output_tokens / result.wall_s:,.0f}") if result.wall_s > 0 else (lambda s: "-")
    rows: list[tuple[str, Callable[[ClassSummary], str]]] = [
        ("requests", lambda s: str(s.requests)),
        ("ok", lambda s: str(s.ok)),
        ("errors", lambda s: str(s.errors)),
        ("unfinished", lambda s: str(s.unfinished) + (f" ({s.unsent} not sent)" if s.unsent else "")),
        ("TTFT p50 ms", lambda s: _ms(s.ttft_p50_s)),
        ("TTFT p90 ms", lambda s: _ms(s.ttft_p90_s)),
        ("TTFT p99 ms", lambda s: _ms(s.ttft_p99_s)),
        ("TPOT p50 ms", lambda s: _ms(s.tpot_p50_s, 1)),
        ("TPOT p99 ms", lambda s: _ms(s.tpot_p99_s, 1)),
        ("e2e p50 ms", lambda s: _ms(s.e2e_p50_s)),
        ("output tok/s", rate),
        ("SLO attainment", lambda s: _pct(s.attainment)),
    ]
    for i, (label, cell) in enumerate(rows):
        t.add_row(label, *(cell(s) for s in sums), end_section=i in (3, 9))
    return t


def _print_instances(result: LoadResult, console: Console, max_rows: int = 24) -> None:
    samples = result.samples
    if not samples:
        console.print(f"instances: GET /models reports no instance counts for {result.model} (not chirond?)")
        return
    events = scale_events(samples)
    t = Table(title="instances over time (changes)", title_justify="left")
    for col in ("t", "state", "ready", "starting", "pending", "draining", "queued int/batch"):
        t.add_column(col, justify="left" if col == "state" else "right")
    shown: list[InstanceSample | None] = list(events)
    if len(events) > max_rows:
        half = max_rows // 2
        shown = [*events[:half], None, *events[-half:]]
    for e in shown:
        if e is None:
            t.add_row("...", "", "", "", "", "", "")
            continue
        q = "-"
        if e.queue_interactive is not None or e.queue_batch is not None:
            q = f"{e.queue_interactive or 0}/{e.queue_batch or 0}"
        t.add_row(f"{e.t:.0f} s", e.state or "-", str(e.ready), str(e.starting), str(e.pending), str(e.draining), q)
    console.print(t)
    ready = [float(s.ready) for s in samples]
    console.print(f"ready  {sparkline(ready)}  peak {int(max(ready))} ready, "
                  f"{samples[0].t:.0f}-{samples[-1].t:.0f} s")


def main(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    console = Console()
    try:
        result = _run(cfg, console)
    except EndpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the run started
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    print_report(result, console)
    if args.json_out:
        try:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_text(json.dumps(result.to_json(), indent=1) + "\n")
        except OSError as e:
            print(f"error: cannot write {args.json_out}: {e}", file=sys.stderr)
            return EXIT_USAGE
        console.print(f"wrote {args.json_out}")
    if result.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if result.all_answered else EXIT_UNFINISHED


def _run(cfg: LoadConfig, console: Console) -> LoadResult:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(_run_until_interrupted(cfg, console))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_run_until_interrupted(cfg, console))


async def _run_until_interrupted(cfg: LoadConfig, console: Console) -> LoadResult:
    """The first Ctrl-C ends the run early and still reports; a second one aborts."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def first_interrupt() -> None:
        stop.set()
        loop.remove_signal_handler(signal.SIGINT)
        console.print("[yellow]interrupted: cancelling outstanding requests (Ctrl-C again to abort)[/yellow]")

    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # no signals here: Ctrl-C aborts
        loop.add_signal_handler(signal.SIGINT, first_interrupt)
    return await run_load(cfg, console, stop)
