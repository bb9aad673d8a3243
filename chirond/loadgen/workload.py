"""The workload of one `chiron load` run, built up front and pure (same arguments and seed, same
requests): interactive arrivals replay a window of an Azure-format trace, time-scaled to the asked
rate or speed-up, each sent as one of the request kinds in the mix; batch requests are a backlog at
t=0 with lengths drawn from the whole trace."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from chirond.model import Request

Api = Literal["chat", "completions"]
Cls = Literal["interactive", "batch"]

KINDS: dict[str, tuple[Api, bool]] = {
    "chat-stream": ("chat", True),
    "chat": ("chat", False),
    "completions-stream": ("completions", True),
    "completions": ("completions", False),
}
DEFAULT_MIX = "chat-stream=80,completions-stream=10,chat=10"


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
