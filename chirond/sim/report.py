"""Summaries, tables, JSON, plots and markdown for simulated runs (one `RunResult` per policy).

`summarize` reduces a run to a JSON-able dict; the other functions only read those dicts (or, for
plots, the raw results). Everything is vectorised: a run may hold about a million requests.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table

from chirond.model import within_slo
from chirond.sim.results import RunResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes

INTERACTIVE, BATCH = 0, 1
POOLS = ("interactive", "mixed", "batch")

# ---------------------------------------------------------------- per-request metrics


def _jsonable(x: object) -> Any:
    """Plain JSON types: numpy scalars/arrays unwrapped, NaN/inf -> None, unknown objects -> str."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple | set | frozenset):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return [_jsonable(v) for v in x.tolist()]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, Enum):
        return _jsonable(x.value)
    if x is None or isinstance(x, bool | int | str):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    return str(x)


def _percentiles(values: np.ndarray, qs: Sequence[float]) -> list[float | None]:
    """Linear-interpolated percentiles; None for each when `values` is empty."""
    if values.size == 0:
        return [None for _ in qs]
    return [float(v) for v in np.percentile(values, list(qs))]


def _share(hit: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of `mask` that is also `hit`; 1.0 for an empty mask (nothing to miss)."""
    n = int(np.count_nonzero(mask))
    return 1.0 if n == 0 else int(np.count_nonzero(hit & mask)) / n


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


class _Metrics:
    """Per-request derived columns of one run (NaN where undefined)."""

    def __init__(self, result: RunResult) -> None:
        req = result.requests
        self.model = np.asarray(req["model"]).astype(np.intp)
        self.cls = np.asarray(req["cls"])
        arrival = np.asarray(req["arrival"], dtype=np.float64)
        first = np.asarray(req["first_token"], dtype=np.float64)
        self.finish = np.asarray(req["finish"], dtype=np.float64)
        deadline = np.asarray(req["deadline"], dtype=np.float64)
        self.out = np.asarray(req["output_tokens"]).astype(np.int64)

        self.ttft = first - arrival  # NaN when never served
        decode = (self.finish - first) / np.maximum(self.out - 1, 1)
        self.tpot = np.where(self.out <= 1, 0.0, decode)
        self.tpot[np.isnan(self.finish) | np.isnan(first)] = np.nan

        ttft_slo = np.array([result.slos[m].ttft_s for m in result.models], dtype=np.float64)
        tpot_slo = np.array([result.slos[m].tpot_s for m in result.models], dtype=np.float64)
        self.interactive = self.cls == INTERACTIVE
        self.batch = self.cls == BATCH
        self.finished = ~np.isnan(self.finish)
        # NaN compares false, so never-served requests are misses.
        if len(result.models):
            met = within_slo(self.ttft, self.tpot, ttft_slo[self.model], tpot_slo[self.model])
            self.int_met = self.interactive & met
        else:
            self.int_met = np.zeros(self.cls.shape, dtype=bool)
        # A batch request without a deadline meets it by finishing at all.
        self.batch_met = self.batch & self.finished & (np.isnan(deadline) | (self.finish <= deadline))
        self.has_ttft = self.interactive & ~np.isnan(self.ttft)
        self.has_tpot = self.interactive & ~np.isnan(self.tpot)


def slo_met(result: RunResult) -> np.ndarray:
    """Per request, whether it met its SLO: `summarize`'s rule (interactive: TTFT and TPOT within,
    never served a miss; batch: finished by its deadline, or at all where it has none)."""
    m = _Metrics(result)
    return np.asarray(m.int_met | m.batch_met)


def summarize(result: RunResult) -> dict[str, Any]:
    """One run as a JSON-able dict (NaN/inf already None).

    Attainment: interactive (cls 0) requests meeting their model's TTFT and TPOT SLO; batch (cls 1)
    requests finished by their deadline. Unserved requests are misses; an empty class scores 1.0.
    Latency percentiles cover served interactive requests (None when there are none). Besides the
    run's counters: output_tokens (of finished requests), goodput_per_gpu_hour (SLO-meeting
    requests of both classes), tokens_per_gpu_hour, unfinished, and per_model.
    """
    m = _Metrics(result)
    ttft_p50, ttft_p99 = _percentiles(m.ttft[m.has_ttft], (50, 99))
    tpot_p50, tpot_p99 = _percentiles(m.tpot[m.has_tpot], (50, 99))
    output_tokens = int(m.out[m.finished].sum())
    good = int(np.count_nonzero(m.int_met) + np.count_nonzero(m.batch_met))

    per_model: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(result.models):
        sel = m.model == i
        per_model[name] = {
            "interactive_attainment": _share(m.int_met, sel & m.interactive),
            "batch_attainment": _share(m.batch_met, sel & m.batch),
            "ttft_p99_s": _percentiles(m.ttft[m.has_ttft & sel], (99,))[0],
            "tpot_p99_s": _percentiles(m.tpot[m.has_tpot & sel], (99,))[0],
            "requests": int(np.count_nonzero(sel)),
            "interactive_requests": int(np.count_nonzero(sel & m.interactive)),
            "batch_requests": int(np.count_nonzero(sel & m.batch)),
            "launches": result.launches_by_model.get(name),
            "gpu_hours": result.gpu_hours_by_model.get(name),
        }

    gpu_h = float(result.gpu_hours)
    out: dict[str, Any] = {
        "policy": result.policy,
        "scenario": result.scenario,
        "seed": int(result.seed),
        "params": _jsonable(result.params),
        "end_s": float(result.end_s),
        "requests": int(m.cls.size),
        "interactive_requests": int(np.count_nonzero(m.interactive)),
        "batch_requests": int(np.count_nonzero(m.batch)),
        "interactive_attainment": _share(m.int_met, m.interactive),
        "batch_attainment": _share(m.batch_met, m.batch),
        "gpu_hours": gpu_h,
        "gpu_hours_lower_bound": float(result.gpu_hours_lower_bound),
        "gpu_hours_ratio": _ratio(gpu_h, float(result.gpu_hours_lower_bound)),
        "peak_gpus": int(result.peak_gpus),
        "launches": int(result.launches),
        "cancellations": int(result.cancellations),
        "preemptions": int(result.preemptions),
        "failures": int(result.failures),
        "ttft_p50_s": ttft_p50,
        "ttft_p99_s": ttft_p99,
        "tpot_p50_s": tpot_p50,
        "tpot_p99_s": tpot_p99,
        "output_tokens": output_tokens,
        "goodput_per_gpu_hour": _ratio(good, gpu_h),
        "tokens_per_gpu_hour": _ratio(output_tokens, gpu_h),
        "unfinished": int(np.count_nonzero(~m.finished)),
        "wall_s": float(result.wall_s),
        "events": int(result.events),
        "per_model": per_model,
    }
    return _jsonable(out)


# ---------------------------------------------------------------- table / JSON / markdown


def _num(x: object, fmt: str, scale: float = 1.0) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(float(x) * scale, fmt)  # type: ignore[arg-type]


# (header, summary key, formatter); shared by the rich table and the markdown table (which joins
# the header lines).
_COLUMNS: list[tuple[str, str, Callable[[object], str]]] = [
    ("Policy", "policy", str),
    ("Inter\n%", "interactive_attainment", lambda v: _num(v, ".2f", 100)),
    ("Batch\n%", "batch_attainment", lambda v: _num(v, ".2f", 100)),
    ("GPU-h", "gpu_hours", lambda v: _num(v, ".1f")),
    ("×\nLB", "gpu_hours_ratio", lambda v: _num(v, ".2f")),
    ("Peak\nGPUs", "peak_gpus", lambda v: _num(v, ".0f")),
    ("Laun-\nches", "launches", lambda v: _num(v, ".0f")),
    ("TTFT\np99 s", "ttft_p99_s", lambda v: _num(v, ".2f")),
    ("TPOT\np99 ms", "tpot_p99_s", lambda v: _num(v, ".1f", 1000)),
    ("Out\nMtok", "output_tokens", lambda v: _num(v, ".2f", 1e-6)),
    ("Wall\ns", "wall_s", lambda v: _num(v, ".1f")),
]


def _best(summaries: Sequence[dict[str, Any]], key: str, pick: Callable[[list[float]], float]) -> float | None:
    vals = [float(s[key]) for s in summaries if s.get(key) is not None]
    return pick(vals) if vals else None


def _highlights(summaries: Sequence[dict[str, Any]]) -> list[set[str]]:
    """Per summary, the keys to highlight: best interactive attainment, fewest GPU-hours."""
    best_int = _best(summaries, "interactive_attainment", max)
    least_gpu = _best(summaries, "gpu_hours", min)
    marks: list[set[str]] = []
    for s in summaries:
        keys = set()
        if best_int is not None and s.get("interactive_attainment") == best_int:
            keys.add("interactive_attainment")
        if least_gpu is not None and s.get("gpu_hours") == least_gpu:
            keys.add("gpu_hours")
        marks.append(keys)
    return marks


def _lower_bound_line(summaries: Sequence[dict[str, Any]]) -> str:
    key = "gpu_hours_lower_bound"
    bounds = sorted({s[key] for s in summaries if s.get(key) is not None})
    if not bounds:
        return "GPU-hour lower bound: n/a"
    if len(bounds) == 1:
        return f"GPU-hour lower bound: {bounds[0]:.1f} GPU-h"
    per = ", ".join(f"{s['policy']}={_num(s.get(key), '.1f')}" for s in summaries)
    return f"GPU-hour lower bounds differ: {per}"


def print_table(summaries: list[dict[str, Any]], console: Console | None = None, title: str = "") -> None:
    """Policies side by side; best interactive attainment and fewest GPU-hours in bold green."""
    console = console or Console()
    rows = [[fmt(s.get(key)) for _, key, fmt in _COLUMNS] for s in summaries]
    # Two-line headers and no padding (the box's blank divider separates columns): about 80
    # characters wide. On a narrower console values fold rather than being cut.
    table = Table(title=title or None, box=box.SIMPLE_HEAD, padding=(0, 0))
    for i, (header, _, _) in enumerate(_COLUMNS):
        table.add_column(header, justify="left" if i == 0 else "right", overflow="fold")
    for cells, marks in zip(rows, _highlights(summaries), strict=True):
        styled = [f"[bold green]{c}[/]" if key in marks else c for c, (_, key, _) in zip(cells, _COLUMNS, strict=True)]
        table.add_row(*styled)
    console.print(table)
    console.print(_lower_bound_line(summaries))


def write_summary(summaries: list[dict[str, Any]], out_dir: Path) -> Path:
    """`out_dir/summary.json`: a list with one object per policy; NaN/inf become null."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "summary.json"
    path.write_text(json.dumps(_jsonable(summaries), indent=1, allow_nan=False) + "\n")
    return path


def write_markdown(summaries: list[dict[str, Any]], out_path: Path, plots: list[Path]) -> Path:
    """A markdown table (same columns as `print_table`, best values bold) and links to the plots."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "| " + " | ".join(h.replace("-\n", "").replace("\n", " ") for h, _, _ in _COLUMNS) + " |",
        "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(_COLUMNS))) + "|",
    ]
    for s, marks in zip(summaries, _highlights(summaries), strict=True):
        cells = []
        for _, key, fmt in _COLUMNS:
            text = fmt(s.get(key)).replace("|", "\\|")
            cells.append(f"**{text}**" if key in marks else text)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", _lower_bound_line(summaries), ""]
    for p in plots:
        rel = Path(os.path.relpath(Path(p).resolve(), out_path.parent.resolve())).as_posix()
        lines += [f"![{Path(p).stem}]({rel})", ""]
    out_path.write_text("\n".join(lines))
    return out_path


REQUEST_FIELDS = ("policy", "id", "model", "class", "arrival_s", "first_token_s", "finish_s", "deadline_s",
                  "input_tokens", "output_tokens", "preempted", "ttft_s", "tpot_s", "slo_met")


def write_requests(results: Sequence[RunResult], out_path: Path) -> Path:
    """A CSV with one row per request of every run, by arrival: what it asked, when it was
    answered (seconds since the run's start, blank where never), and whether it met its SLO
    (`summarize`'s rule). Ids are the workload's, so a simulation and a replay of one scenario and
    seed join on (model, id)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    def num(x: float) -> str:
        return "" if math.isnan(x) else f"{x:.6f}"

    with out_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(REQUEST_FIELDS)
        for r in results:
            req, m = r.requests, _Metrics(r)
            met = m.int_met | m.batch_met
            for i in np.argsort(req["arrival"], kind="stable"):
                pre = int(req["preempted"][i])
                w.writerow((r.policy, int(req["id"][i]), r.models[int(req["model"][i])],
                            "interactive" if req["cls"][i] == INTERACTIVE else "batch",
                            num(req["arrival"][i]), num(req["first_token"][i]), num(req["finish"][i]),
                            num(req["deadline"][i]), int(req["input_tokens"][i]), int(req["output_tokens"][i]),
                            "" if pre < 0 else pre, num(m.ttft[i]) if m.interactive[i] else "",
                            num(m.tpot[i]) if m.interactive[i] else "", int(met[i])))
    return out_path


def write_run_logs(results: Sequence[RunResult], out_dir: Path, requests: bool = False) -> list[Path]:
    """decisions.log (every run's tick lines) in `out_dir`, and with `requests` requests.csv (opt-in:
    about 100 bytes a request, 160 MB for the paper scenario's five policies)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / "decisions.log"
    log.write_text("\n".join(f"[{r.policy}] {line}" for r in results for line in r.log) + "\n")
    return [log, write_requests(results, out_dir / "requests.csv")] if requests else [log]


# ---------------------------------------------------------------- plots


def _series(tl: dict[str, np.ndarray], key: str, n: int) -> np.ndarray:
    """A timeline column as float, zeros when the key is missing."""
    v = tl.get(key)
    return np.zeros(n) if v is None else np.asarray(v, dtype=np.float64)


def _minutes(r: RunResult) -> np.ndarray:
    return np.asarray(r.timeline.get("t", np.zeros(0)), dtype=np.float64) / 60.0


def _ecdf(values: np.ndarray, total: int, points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Sorted values and their cumulative share of `total` (unserved requests keep it below 1),
    thinned to about `points` points."""
    v = np.sort(values)
    y = np.arange(1, v.size + 1) / max(total, 1)
    if v.size > points:
        idx = np.unique(np.linspace(0, v.size - 1, points).astype(np.intp))
        v, y = v[idx], y[idx]
    if v.size:  # start the curve at 0
        v, y = np.concatenate([v[:1], v]), np.concatenate([[0.0], y])
    return v, y


def _log_if_wide(ax: Axes, values: list[np.ndarray], axis: str, symlog: bool = False) -> None:
    """Log scale when the positive values span two decades or more."""
    pos = np.concatenate([v[v > 0] for v in values]) if values else np.zeros(0)
    if pos.size and pos.max() / pos.min() >= 100:
        kw: dict[str, Any] = {"linthresh": 1.0} if symlog else {}
        scale = "symlog" if symlog else "log"
        if axis == "x":
            ax.set_xscale(scale, **kw)
        else:
            ax.set_yscale(scale, **kw)


def write_plots(results: list[RunResult], out_dir: Path) -> list[Path]:
    """instances.png, gpus.png, queues.png, latency.png, attainment.png in `out_dir`."""
    # Lazy: matplotlib is slow to import. Figures are rendered by the Agg canvas directly, so no
    # pyplot state or display is involved.
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    n_pol = max(len(results), 1)

    # Every figure names its run, so a plot pasted into a report still says what it shows.
    label = ", ".join(sorted({f"{r.scenario}, seed {r.seed}" for r in results}))

    def save(fig: Figure, name: str) -> None:
        fig.text(0.995, 0.002, label, ha="right", va="bottom", fontsize=7, color="0.4")
        FigureCanvasAgg(fig)
        path = out_dir / name
        fig.savefig(path, dpi=110)
        written.append(path)

    models = list(dict.fromkeys(m for r in results for m in r.models))
    cmap20c = colormaps["tab20c"]
    cmap10 = colormaps["tab10"]

    def model_color(i: int, shade: int = 0) -> Any:
        return cmap20c(((i % 5) * 4 + shade) % 20)

    # -- instances.png: ready instances per model/pool (stacked) and starting+pending (dashed)
    fig = Figure(figsize=(11, 2.8 * n_pol + 0.6), layout="constrained")
    axes = fig.subplots(n_pol, 1, squeeze=False, sharex=True)[:, 0]
    for ax, r in zip(axes, results, strict=False):
        t = _minutes(r)
        n = t.size
        stacks, labels, colors = [], [], []
        for i, m in enumerate(models):
            for j, pool in enumerate(POOLS):
                v = _series(r.timeline, f"{m}/{pool}", n)
                if v.any():
                    stacks.append(v)
                    labels.append(f"{m} {pool}")
                    colors.append(model_color(i, j))
        if stacks:
            ax.stackplot(t, *stacks, labels=labels, colors=colors, alpha=0.9)
        for i, m in enumerate(models):
            waiting = _series(r.timeline, f"{m}/starting", n) + _series(r.timeline, f"{m}/pending", n)
            if waiting.any():
                ax.plot(t, waiting, "--", color=model_color(i, 0), lw=1.2, label=f"{m} starting+pending")
        ax.set_title(f"{r.policy}: instances")
        ax.set_ylabel("instances")
        if stacks or ax.get_lines():
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    axes[-1].set_xlabel("time (min)")
    save(fig, "instances.png")

    # -- gpus.png: GPUs held over time, one line per policy
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax = fig.subplots()
    for k, r in enumerate(results):
        t = _minutes(r)
        ax.plot(
            t,
            _series(r.timeline, "gpus", t.size),
            color=cmap10(k % 10),
            lw=1.3,
            label=f"{r.policy} ({r.gpu_hours:.1f} GPU-h)",
        )
    ax.set_title("GPUs in use")
    ax.set_xlabel("time (min)")
    ax.set_ylabel("GPUs (allocated, loading or serving)")
    if results:
        ax.legend(fontsize="small")
    save(fig, "gpus.png")

    # -- queues.png: interactive and batch queue lengths per model, one row per policy
    fig = Figure(figsize=(12, 2.8 * n_pol + 0.6), layout="constrained")
    grid = fig.subplots(n_pol, 2, squeeze=False, sharex=True)
    for row, r in zip(grid, results, strict=False):
        t = _minutes(r)
        for ax, kind in zip(row, ("interactive", "batch"), strict=True):
            seen = []
            for i, m in enumerate(models):
                v = _series(r.timeline, f"{m}/queue_{kind}", t.size)
                seen.append(v)
                if m in r.models:
                    ax.plot(t, v, color=model_color(i, 0), lw=1.1, label=m)
            if kind == "batch":
                _log_if_wide(ax, seen, "y", symlog=True)  # symlog: queues are often empty
            ax.set_title(f"{r.policy}: {kind} queue")
            ax.set_ylabel("queued requests")
            if ax.get_lines():
                ax.legend(fontsize="small")
    for ax in grid[-1]:
        ax.set_xlabel("time (min)")
    save(fig, "queues.png")

    # -- latency.png: CDFs of interactive TTFT and TPOT, one row per model, SLO as a vertical line
    fig = Figure(figsize=(12, 3.2 * max(len(models), 1) + 0.6), layout="constrained")
    lat = fig.subplots(max(len(models), 1), 2, squeeze=False)
    metrics = [_Metrics(r) for r in results]
    for i, m in enumerate(models):
        for col, (name, unit, scale) in enumerate((("TTFT", "s", 1.0), ("TPOT", "ms", 1000.0))):
            ax = lat[i, col]
            plotted = []
            slo_val: float | None = None
            for k, (r, mt) in enumerate(zip(results, metrics, strict=True)):
                if m not in r.models:
                    continue
                sel = mt.interactive & (mt.model == r.models.index(m))
                vals = (mt.ttft if name == "TTFT" else mt.tpot)[sel]
                vals = vals[~np.isnan(vals)] * scale
                x, y = _ecdf(vals, int(np.count_nonzero(sel)))
                plotted.append(x)
                ax.step(x, y, where="post", color=cmap10(k % 10), lw=1.3, label=r.policy)
                slo = r.slos[m]
                slo_val = (slo.ttft_s if name == "TTFT" else slo.tpot_s) * scale
            if slo_val is not None:
                ax.axvline(slo_val, color="k", ls=":", lw=1.2, label=f"SLO {slo_val:g} {unit}")
                plotted.append(np.array([slo_val]))
            _log_if_wide(ax, plotted, "x")
            ax.set_ylim(0, 1.02)
            ax.set_title(f"{m}: {name} of interactive requests")
            ax.set_xlabel(f"{name} ({unit})")
            ax.set_ylabel("fraction of requests")
            if ax.get_lines():
                ax.legend(fontsize="small", loc="lower right")
    fig.suptitle("Interactive latency CDFs (unserved requests keep a curve below 1)")
    save(fig, "latency.png")

    # -- attainment.png: interactive %, batch %, GPU-hours per policy
    sums = [summarize(r) for r in results]
    names = [s["policy"] for s in sums]
    pos = np.arange(len(sums))
    fig = Figure(figsize=(max(9.0, 1.6 * len(sums) + 4), 4.5), layout="constrained")
    bars = fig.subplots(1, 3)
    panels = (
        ("interactive_attainment", "Interactive SLO attainment", "requests meeting TTFT and TPOT (%)", 100.0),
        ("batch_attainment", "Batch deadline attainment", "requests finished by deadline (%)", 100.0),
        ("gpu_hours", "GPU-hours", "GPU-hours (GPU-h)", 1.0),
    )
    for ax, (key, title, ylabel, scale) in zip(bars, panels, strict=True):
        vals = [float(s[key]) * scale if s.get(key) is not None else 0.0 for s in sums]
        ax.bar(pos, vals, color=[cmap10(k % 10) for k in range(len(sums))])
        for xp, v in zip(pos, vals, strict=True):
            ax.annotate(f"{v:.1f}", (xp, v), ha="center", va="bottom", fontsize="small")
        if key == "gpu_hours" and sums:
            lb = sums[0]["gpu_hours_lower_bound"]
            if lb is not None:
                ax.axhline(lb, color="k", ls="--", lw=1.0, label=f"lower bound {lb:.1f}")
                ax.legend(fontsize="small")
        elif scale == 100.0:
            ax.set_ylim(0, 105)
        ax.set_xticks(pos, names, rotation=30, ha="right")
        ax.set_title(title)
        ax.set_ylabel(ylabel)
    save(fig, "attainment.png")
    return written
