"""The report printed after a run: one column per class with counts, latency percentiles, output
rate and SLO attainment; what the SLO was and where it came from; the errors; warnings for short
answers and a client that fell behind; and the instance counts over time."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from chirond.loadgen.run import LoadResult
from chirond.loadgen.summary import ClassSummary, InstanceSample, error_breakdown, scale_events, sparkline

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
