"""The pure side of the results: one `Record` per request, the SLO judgement (`meets_slo`, on
`chirond.model.within_slo`), per-class percentiles and attainment, the error breakdown, and the
instance counts sampled from GET /models with their changes and a sparkline."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from chirond.loadgen.workload import Api, Cls, Planned
from chirond.model import Slo, within_slo

# outcome: ok (answered, 2xx), error (answered with an error, or failed), unfinished (sent, no
# answer by the run's deadline), unsent (the deadline came before it could be sent).
Outcome = Literal["ok", "error", "unfinished", "unsent"]


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
