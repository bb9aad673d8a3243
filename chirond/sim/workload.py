"""Request generators: trace loaders, length samplers and arrival processes.

Everything is pure: randomness comes from the numpy `Generator` passed in. Generators number
requests 0.. ; `scenario.build_workload` renumbers them so ids are unique across a scenario.
Bad trace files raise `ScenarioError` (chirond/sim/errors.py) with `file:line`.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import functools
import gc
import gzip
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn, TextIO

import numpy as np

from chirond.model import ReqClass, Request
from chirond.sim.errors import ScenarioError

DATA = Path(__file__).resolve().parent.parent / "data"
SHAREGPT_PATH = DATA / "sharegpt_lengths.csv.gz"
# Length tables by name: each a CSV whose 2nd and 3rd columns are (input, output) tokens.
LENGTH_TABLES = {
    "sharegpt": SHAREGPT_PATH,
    "azure-code": DATA / "azure2023_code.csv",  # long prompts, short answers
    "azure-conv": DATA / "azure2023_conv.csv",
}

# A name in LENGTH_TABLES samples that table's (input, output) pairs; (input, output) fixes both
# lengths; a (low, high) pair in place of either draws it uniformly from that range (inclusive).
Span = int | tuple[int, int]
Lengths = str | tuple[Span, Span]

TRACE_COLUMNS = ("arrival_s", "input_tokens", "output_tokens", "class", "deadline_s")


def _fail(path: str | Path, line: int | None, msg: str) -> NoReturn:
    where = f"{path}:{line}" if line is not None else str(path)
    raise ScenarioError(f"{where}: {msg}")


# ---------------------------------------------------------------- building Request lists


def make_requests(
    model: str,
    cls: ReqClass,
    arrivals: np.ndarray,
    input_tokens: np.ndarray,
    output_tokens: np.ndarray,
    *,
    deadline_s: float | None = None,
    first_id: int = 0,
) -> list[Request]:
    """Requests from parallel arrays; `deadline_s` is relative to each arrival."""
    n = len(arrivals)
    if not (len(input_tokens) == len(output_tokens) == n):
        raise ValueError("arrivals, input_tokens and output_tokens must have the same length")
    # .tolist() gives Python floats/ints in one C pass; the comprehension is the hot loop.
    ts = np.asarray(arrivals, dtype=np.float64).tolist()
    ins = np.asarray(input_tokens, dtype=np.int64).tolist()
    outs = np.asarray(output_tokens, dtype=np.int64).tolist()
    ids = range(first_id, first_id + n)
    with _gc_paused():
        if deadline_s is None:
            return [Request(i, model, cls, t, a, b) for i, t, a, b in zip(ids, ts, ins, outs, strict=True)]
        d = float(deadline_s)
        return [Request(i, model, cls, t, a, b, t + d) for i, t, a, b in zip(ids, ts, ins, outs, strict=True)]


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # Allocating ~10^6 objects triggers repeated full collections that cost ~2/3 of the build
    # time; Requests hold no reference cycles, so there is nothing for them to find.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# ---------------------------------------------------------------- lengths


@functools.cache
def _length_table(name: str) -> tuple[np.ndarray, np.ndarray]:
    path = LENGTH_TABLES[name]
    with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as f:
        cols = (0, 1) if name == "sharegpt" else (1, 2)
        table = np.loadtxt(f, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2, usecols=cols)
    ins, outs = table[:, 0].copy(), table[:, 1].copy()
    # Shared by every caller through the cache: make accidental in-place edits fail loudly.
    ins.flags.writeable = False
    outs.flags.writeable = False
    return ins, outs


def sharegpt_lengths(rng: np.random.Generator, n: int, table: str = "sharegpt") -> tuple[np.ndarray, np.ndarray]:
    """`n` (input, output) length pairs drawn with replacement from a bundled table (ShareGPT's
    sample by default)."""
    ins, outs = _length_table(table)
    idx = rng.integers(0, len(ins), size=n)
    return ins[idx], outs[idx]


def fixed_lengths(n: int, input_tokens: int, output_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full(n, input_tokens, dtype=np.int64), np.full(n, output_tokens, dtype=np.int64)


def sample_lengths(rng: np.random.Generator, n: int, lengths: Lengths) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(lengths, str) and lengths in LENGTH_TABLES:
        return sharegpt_lengths(rng, n, lengths)
    if isinstance(lengths, tuple) and len(lengths) == 2:
        ins, outs = lengths
        if isinstance(ins, int) and isinstance(outs, int):
            return fixed_lengths(n, ins, outs)
        return _span(rng, n, ins), _span(rng, n, outs)
    names = ", ".join(LENGTH_TABLES)
    raise ValueError(f"lengths must be one of {names} or (input_tokens, output_tokens), got {lengths!r}")


def _span(rng: np.random.Generator, n: int, span: Span) -> np.ndarray:
    if isinstance(span, int):
        return np.full(n, span, dtype=np.int64)
    low, high = span
    return rng.integers(low, high + 1, size=n, dtype=np.int64)


# ---------------------------------------------------------------- arrival processes


def _check_window(duration_s: float, start_s: float) -> None:
    if not (math.isfinite(duration_s) and duration_s >= 0):
        raise ValueError(f"duration_s must be a non-negative number, got {duration_s}")
    if not math.isfinite(start_s):
        raise ValueError(f"start_s must be finite, got {start_s}")


def poisson_arrivals(
    rng: np.random.Generator, rate_per_s: float, duration_s: float, start_s: float = 0.0
) -> np.ndarray:
    """Homogeneous Poisson process on [start_s, start_s + duration_s), sorted."""
    _check_window(duration_s, start_s)
    if not (math.isfinite(rate_per_s) and rate_per_s >= 0):
        raise ValueError(f"rate_per_s must be a non-negative number, got {rate_per_s}")
    # Given the count, Poisson arrival times are i.i.d. uniform: no cumulative-sum drift.
    n = int(rng.poisson(rate_per_s * duration_s))
    return np.sort(start_s + rng.uniform(0.0, duration_s, size=n))


def gamma_arrivals(
    rng: np.random.Generator, rate_per_s: float, cv: float, duration_s: float, start_s: float = 0.0
) -> np.ndarray:
    """Renewal process with gamma inter-arrivals (mean 1/rate, coefficient of variation `cv`).

    cv = 1 is Poisson; cv > 1 is burstier; cv = 0 is evenly spaced. The first arrival comes one
    inter-arrival after start_s.
    """
    _check_window(duration_s, start_s)
    if not (math.isfinite(rate_per_s) and rate_per_s >= 0):
        raise ValueError(f"rate_per_s must be a non-negative number, got {rate_per_s}")
    if not (math.isfinite(cv) and cv >= 0):
        raise ValueError(f"cv must be a non-negative number, got {cv}")
    if rate_per_s == 0 or duration_s == 0:
        return np.empty(0)
    if cv == 0:
        t = np.arange(1, math.ceil(rate_per_s * duration_s) + 1) / rate_per_s
        return start_s + t[t < duration_s]
    shape = 1.0 / (cv * cv)
    scale = 1.0 / (rate_per_s * shape)
    expected = rate_per_s * duration_s
    # Bursty gaps make the count noisy (variance ~ cv² × mean): draw in chunks until past the end.
    chunk = max(1024, int(expected + 4 * cv * math.sqrt(expected) + 16))
    parts: list[np.ndarray] = []
    last = 0.0
    while last < duration_s:
        t = last + np.cumsum(rng.gamma(shape, scale, size=chunk))
        parts.append(t)
        last = float(t[-1])
    times = np.concatenate(parts)
    return start_s + times[: np.searchsorted(times, duration_s, side="left")]


def curve_arrivals(
    rng: np.random.Generator,
    points: Sequence[tuple[float, float]] | Sequence[Sequence[float]],
    duration_s: float,
    start_s: float = 0.0,
    cv: float = 1.0,
) -> np.ndarray:
    """Arrivals whose rate is piecewise linear through `points`.

    `points` are (t_s, rate_per_s) with t_s relative to start_s and strictly increasing; the rate
    is held at the first/last value outside their range. cv = 1 is a non-homogeneous Poisson
    process; another cv is a gamma renewal process with that coefficient of variation run in
    operational time (the cumulative rate), so bursts ride on the curve (cv > 1: burstier). Both
    are sampled by inverting the cumulative rate, so the cost is O(n log n) in the number of
    arrivals, whatever the rate's peak.
    """
    _check_window(duration_s, start_s)
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
        raise ValueError("points must be a non-empty list of (t_s, rate_per_s) pairs")
    if not np.all(np.isfinite(pts)):
        raise ValueError("points must be finite numbers")
    if np.any(np.diff(pts[:, 0]) <= 0):
        raise ValueError("points: times must be strictly increasing")
    if np.any(pts[:, 1] < 0):
        raise ValueError("points: rates must be non-negative")
    if not (math.isfinite(cv) and cv >= 0):
        raise ValueError(f"cv must be a non-negative number, got {cv}")
    if duration_s == 0:
        return np.empty(0)
    inner = pts[:, 0][(pts[:, 0] > 0) & (pts[:, 0] < duration_s)]
    knots = np.concatenate(([0.0], inner, [duration_s]))
    rates = np.interp(knots, pts[:, 0], pts[:, 1])
    widths = np.diff(knots)
    cum = np.concatenate(([0.0], np.cumsum((rates[:-1] + rates[1:]) * 0.5 * widths)))
    total = float(cum[-1])
    if cv == 1.0:
        # Given the count, Poisson arrival times in operational time are i.i.d. uniform.
        u = np.sort(rng.uniform(0.0, total, size=int(rng.poisson(total))))
    else:
        u = gamma_arrivals(rng, 1.0, cv, total) if total > 0 else np.empty(0)
    if len(u) == 0:
        return np.empty(0)
    seg = np.clip(np.searchsorted(cum, u, side="right") - 1, 0, len(widths) - 1)
    r0 = rates[seg]
    slope = (rates[seg + 1] - r0) / widths[seg]
    du = u - cum[seg]
    # Root of r0·x + slope·x²/2 = du, written as 2du / (r0 + sqrt(...)) to avoid cancellation
    # when slope is ~0 (and it is exact for slope == 0).
    denom = r0 + np.sqrt(np.maximum(r0 * r0 + 2.0 * slope * du, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(denom > 0, 2.0 * du / denom, 0.0)
    t = np.minimum(knots[seg] + np.minimum(x, widths[seg]), np.nextafter(duration_s, 0.0))
    # Rounding at segment joins can swap neighbours by an ulp; keep the promise of sorted output.
    return start_s + np.maximum.accumulate(t)


def diurnal_points(
    peak_rate: float,
    trough_rate: float,
    period_s: float = 86400.0,
    peak_at_s: float | None = None,
    *,
    span_s: float | None = None,
    steps_per_period: int = 96,
) -> list[tuple[float, float]]:
    """A cosine day curve as `curve_arrivals` points, covering [0, span_s] (default one period).

    The rate is `trough` at peak_at_s ± period/2 and `peak` at peak_at_s (default: mid-period,
    so a run starting at 0 starts in the trough). 96 steps per period keep the piecewise-linear
    approximation within 0.03% of the peak-to-trough swing.
    """
    if not (math.isfinite(period_s) and period_s > 0):
        raise ValueError(f"period_s must be positive, got {period_s}")
    if not (0 <= trough_rate <= peak_rate and math.isfinite(peak_rate)):
        raise ValueError(f"need 0 <= trough_rate <= peak_rate, got {trough_rate}, {peak_rate}")
    if steps_per_period < 4:
        raise ValueError("steps_per_period must be at least 4")
    peak_at = period_s / 2 if peak_at_s is None else peak_at_s
    span = period_s if span_s is None else max(float(span_s), 0.0)
    step = period_s / steps_per_period
    t = np.arange(0, math.ceil(span / step) + 1) * step
    rate = trough_rate + (peak_rate - trough_rate) * 0.5 * (1 + np.cos(2 * np.pi * (t - peak_at) / period_s))
    return list(zip(t.tolist(), rate.tolist(), strict=True))


def batch_backlog(
    rng: np.random.Generator,
    n: int,
    *,
    model: str,
    at_s: float,
    deadline_s: float,
    lengths: Lengths = "sharegpt",
) -> list[Request]:
    """`n` batch requests all arriving at `at_s`, due at `at_s + deadline_s`."""
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if not (math.isfinite(deadline_s) and deadline_s > 0):
        raise ValueError(f"deadline_s must be positive, got {deadline_s}")
    ins, outs = sample_lengths(rng, n, lengths)
    return make_requests(model, ReqClass.BATCH, np.full(n, float(at_s)), ins, outs, deadline_s=deadline_s)


# ---------------------------------------------------------------- trace files


def _azure_seconds(ts: str, day0: int) -> float:
    """Seconds since midnight of ordinal day0 for '2023-11-16 18:17:03.9799600'.

    Parsed by hand: the trace has 7 fractional digits, which datetime does not accept everywhere,
    and whole-epoch floats would lose the sub-microsecond digits we are keeping.
    """
    date, _, clock = ts.strip().partition(" ")
    day = dt.date.fromisoformat(date).toordinal()
    h, m, s = clock.split(":")
    return (day - day0) * 86400.0 + int(h) * 3600 + int(m) * 60 + float(s)


def load_azure_csv(
    path: str | Path,
    *,
    model: str,
    cls: ReqClass = ReqClass.INTERACTIVE,
    start_s: float = 0.0,
    time_scale: float = 1.0,
    limit: int | None = None,
    deadline_s: float | None = None,
) -> list[Request]:
    """Azure LLM inference trace 2023 (`TIMESTAMP,ContextTokens,GeneratedTokens`).

    Arrival = (seconds since the earliest row) / time_scale + start_s; for a sorted file the
    earliest row is the first. `deadline_s` (relative to arrival) is required for batch.
    """
    if not (math.isfinite(time_scale) and time_scale > 0):
        raise ValueError(f"time_scale must be positive, got {time_scale}")
    if cls is ReqClass.BATCH and deadline_s is None:
        raise ValueError("batch requests need deadline_s")
    if cls is ReqClass.INTERACTIVE:
        deadline_s = None
    secs: list[float] = []
    ins: list[int] = []
    outs: list[int] = []
    day0: int | None = None
    with _open_text(path) as f:
        header = f.readline()
        if not header.strip():
            _fail(path, 1, "empty file, expected header TIMESTAMP,ContextTokens,GeneratedTokens")
        cols = [c.strip() for c in header.split(",")]
        try:
            i_ts, i_in, i_out = (cols.index(c) for c in ("TIMESTAMP", "ContextTokens", "GeneratedTokens"))
        except ValueError:
            _fail(path, 1, f"expected header TIMESTAMP,ContextTokens,GeneratedTokens, got {header.strip()!r}")
        width = max(i_ts, i_in, i_out) + 1
        for lineno, line in enumerate(f, start=2):
            if limit is not None and len(secs) >= limit:
                break
            if not line.strip():
                continue
            parts = line.split(",")
            if len(parts) < width:
                _fail(path, lineno, f"expected {len(cols)} fields, got {len(parts)}")
            ts = parts[i_ts]
            try:
                if day0 is None:
                    day0 = dt.date.fromisoformat(ts.strip()[:10]).toordinal()
                secs.append(_azure_seconds(ts, day0))
            except ValueError:
                _fail(path, lineno, f"TIMESTAMP: not a timestamp: {ts.strip()!r}")
            ins.append(_int_field(path, lineno, "ContextTokens", parts[i_in], minimum=1))
            outs.append(_int_field(path, lineno, "GeneratedTokens", parts[i_out], minimum=0))
    if not secs:
        _fail(path, 2, "no requests in trace")
    t = np.asarray(secs)
    arrivals = (t - t.min()) / time_scale + start_s
    out_arr = np.maximum(np.asarray(outs, dtype=np.int64), 1)  # 0 generated tokens: still one step
    order = np.argsort(arrivals, kind="stable")
    return make_requests(model, cls, arrivals[order], np.asarray(ins)[order], out_arr[order], deadline_s=deadline_s)


def _open_text(path: str | Path) -> TextIO:
    p = Path(path)
    try:
        if p.suffix == ".gz":
            return gzip.open(p, "rt", encoding="utf-8-sig", newline="")
        return p.open("r", encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        _fail(path, None, "no such file")
    except OSError as e:
        _fail(path, None, f"cannot read: {e.strerror or e}")


def _int_field(path: str | Path, line: int, key: str, raw: object, *, minimum: int) -> int:
    if isinstance(raw, bool):
        _fail(path, line, f"{key}: not an integer: {raw!r}")
    if isinstance(raw, int):
        v = raw
    elif isinstance(raw, float) and raw.is_integer():
        v = int(raw)
    elif isinstance(raw, str):
        s = raw.strip()
        try:
            v = int(s)
        except ValueError:
            try:
                f = float(s)
            except ValueError:
                _fail(path, line, f"{key}: not an integer: {s!r}")
            if not f.is_integer():
                _fail(path, line, f"{key}: not an integer: {s!r}")
            v = int(f)
    else:
        _fail(path, line, f"{key}: not an integer: {raw!r}")
    if v < minimum:
        what = "negative" if v < 0 else f"must be at least {minimum}"
        _fail(path, line, f"{key}: {what}, got {v}")
    return v


def _float_field(path: str | Path, line: int, key: str, raw: object, *, positive: bool = False) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        _fail(path, line, f"{key}: not a number: {raw!r}")
    try:
        v = float(raw.strip() if isinstance(raw, str) else raw)
    except ValueError:
        _fail(path, line, f"{key}: not a number: {raw!r}")
    if not math.isfinite(v):
        _fail(path, line, f"{key}: not a finite number: {raw!r}")
    if v < 0:
        _fail(path, line, f"{key}: negative, got {v:g}")
    if positive and v == 0:
        _fail(path, line, f"{key}: must be positive, got 0")
    return v


def _is_jsonl(path: Path, text: str) -> bool:
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return True
    return text.lstrip().startswith("{")


def load_trace(
    path: str | Path,
    *,
    model: str,
    default_cls: ReqClass = ReqClass.INTERACTIVE,
    start_s: float = 0.0,
    default_deadline_s: float | None = None,
) -> list[Request]:
    """Generic trace: CSV with a header row, or JSONL (one object per line).

    Fields: arrival_s, input_tokens, output_tokens (required); class (interactive|batch) and
    deadline_s (relative to arrival; required on batch rows unless `default_deadline_s`).
    Other columns are ignored. Rows may be in any order; the result is sorted by arrival.
    output_tokens 0 becomes 1, as for the Azure trace.
    """
    p = Path(path)
    with _open_text(p) as f:
        try:
            text = f.read()
        except (UnicodeDecodeError, OSError) as e:
            _fail(p, None, f"cannot read: {e}")
    if not text.strip():
        _fail(p, 1, "empty file")
    rows: Iterator[tuple[int, dict[str, object]]] = _jsonl_rows(p, text) if _is_jsonl(p, text) else _csv_rows(p, text)
    arrivals: list[float] = []
    ins: list[int] = []
    outs: list[int] = []
    classes: list[ReqClass] = []
    deadlines: list[float | None] = []
    for line, row in rows:
        for key in ("arrival_s", "input_tokens", "output_tokens"):
            if row.get(key) in (None, ""):
                _fail(p, line, f"{key}: missing (required: arrival_s, input_tokens, output_tokens)")
        raw_cls = row.get("class")
        if raw_cls in (None, ""):
            cls = default_cls
        elif isinstance(raw_cls, str) and raw_cls.strip().lower() in ("interactive", "batch"):
            cls = ReqClass(raw_cls.strip().lower())
        else:
            _fail(p, line, f"class: must be 'interactive' or 'batch', got {raw_cls!r}")
        raw_dl = row.get("deadline_s")
        deadline: float | None = None
        if raw_dl not in (None, ""):
            if cls is not ReqClass.BATCH:
                _fail(p, line, "deadline_s: only batch requests take a deadline")
            deadline = _float_field(p, line, "deadline_s", raw_dl, positive=True)
        elif cls is ReqClass.BATCH:
            if default_deadline_s is None:
                _fail(p, line, "deadline_s: missing (required for batch requests)")
            deadline = default_deadline_s
        arrivals.append(_float_field(p, line, "arrival_s", row["arrival_s"]) + start_s)
        ins.append(_int_field(p, line, "input_tokens", row["input_tokens"], minimum=1))
        outs.append(max(_int_field(p, line, "output_tokens", row["output_tokens"], minimum=0), 1))
        classes.append(cls)
        deadlines.append(deadline)
    if not arrivals:
        _fail(p, 2, "no requests in trace")
    order = sorted(range(len(arrivals)), key=arrivals.__getitem__)
    reqs: list[Request] = []
    with _gc_paused():
        for new_id, i in enumerate(order):
            t = arrivals[i]
            d = deadlines[i]
            reqs.append(Request(new_id, model, classes[i], t, ins[i], outs[i], None if d is None else t + d))
    return reqs


def _csv_rows(path: Path, text: str) -> Iterator[tuple[int, dict[str, object]]]:
    reader = csv.reader(text.splitlines())
    header = [h.strip() for h in next(reader)]
    missing = [c for c in TRACE_COLUMNS[:3] if c not in header]
    if missing:
        _fail(path, 1, f"missing column(s) {', '.join(missing)} (header: {','.join(header)})")
    for fields in reader:
        line = reader.line_num
        if not any(x.strip() for x in fields):
            continue
        if len(fields) != len(header):
            _fail(path, line, f"expected {len(header)} fields, got {len(fields)}")
        yield line, dict(zip(header, fields, strict=True))


def _jsonl_rows(path: Path, text: str) -> Iterator[tuple[int, dict[str, object]]]:
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            _fail(path, line, f"invalid JSON: {e.msg}")
        if not isinstance(obj, dict):
            _fail(path, line, f"expected a JSON object per line, got {type(obj).__name__}")
        yield line, obj
