"""Scenario files (TOML) -> frozen dataclasses, and the requests a scenario generates.

Every error is a `ScenarioError` whose message starts with the file and names the key path
(`x.toml: models.llama-8b.slo.ttft_s: must be a positive number, got -1`) or, for trace files,
the line (`trace.csv:17: input_tokens: not an integer: 'abc'`). Paths inside a scenario are
relative to the scenario file's directory. Profiles are only checked to exist: parsing them is
`chirond.profile`'s job.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np

from chirond import bundled
from chirond.model import ReqClass, Request
from chirond.profiles import resolve_profile
from chirond.sim import workload as wl
from chirond.sim.errors import ScenarioError
from chirond.tomltable import REQUIRED, Table, read_toml, show

__all__ = ["ScenarioError"]  # re-exported: defined in chirond.sim.errors, which workload imports too

DEFAULT_POLICIES = ("static", "llumnix", "llumnix-tuned", "chiron", "chirond")
WORKLOAD_KINDS = ("azure", "trace", "poisson", "gamma", "curve", "diurnal", "backlog")
_MODEL_NAME = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class FailureSpec:
    at_s: float
    node: int | None  # None: a random node, drawn with the scenario seed
    down_s: float


@dataclass(frozen=True)
class ClusterSpec:
    partition: str
    gpus: int
    gpus_per_node: int
    queue_wait_s: tuple[float, float]  # uniform range once resources are free
    time_limit_s: float  # 0 = no limit
    failures: tuple[FailureSpec, ...]

    @property
    def nodes(self) -> int:
        return -(-self.gpus // self.gpus_per_node)  # the last node may be partial


@dataclass(frozen=True)
class WorkloadSpec:
    """One `[[models.M.workload]]` entry. `params` holds every key for the kind, defaults filled:

    all kinds: start_s (float). azure: path (Path), time_scale, limit (int | None), deadline_s.
    trace: path, deadline_s. poisson: rate_per_s, duration_s, lengths, deadline_s. gamma: + cv.
    curve: points (tuple of (t_s, rate) pairs), cv, duration_s, lengths, deadline_s. diurnal:
    peak_rate_per_s, trough_rate_per_s, period_s, peak_at_s, cv, duration_s, lengths, deadline_s.
    backlog: requests (int), deadline_s, lengths. deadline_s is float | None (None unless batch);
    lengths is a table name (workload.LENGTH_TABLES) or (input_tokens, output_tokens), each an int
    or a (low, high) range.
    """

    kind: str
    cls: ReqClass
    params: dict[str, Any]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    profile_path: Path
    cold_start_s: float | None  # None: the profile's cold-start model
    ttft_s: float
    tpot_s: float
    max_gpus: int
    min_instances: int
    initial_instances: int  # ready at t=0
    static_instances: int  # what the `static` policy runs
    workloads: tuple[WorkloadSpec, ...]
    min_instances_by_hour: tuple[int, ...] = ()  # a floor per hour from the start (midnight)
    # > 0: the floor per hour is also learned from the scenario's history day (history_seed) at this
    # many SLO misses per GPU-hour (chirond.sim.hindsight)
    learned_floor_price: float = 0.0


@dataclass(frozen=True)
class Scenario:
    path: Path
    name: str
    description: str
    seed: int
    horizon_s: float
    tick_s: float
    cluster: ClusterSpec
    models: tuple[ModelSpec, ...]
    policies: tuple[str, ...]
    policy_params: dict[str, dict[str, object]]
    history_seed: int | None = None  # an earlier day: this workload drawn with this seed

    def model(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)


# ---------------------------------------------------------------- loading


def load_scenario(path: str | Path) -> Scenario:
    """A scenario file, or a shipped scenario's bare name (`paper-small`)."""
    path = bundled.scenario_path(path)
    doc = _read(path, ())
    top = Table(
        doc,
        ("name", "description", "seed", "horizon_s", "tick_s", "cluster", "models", "policies", "extends",
         "history_seed"),
        file=path,
        error=ScenarioError,
    )
    name = top.string("name", path.stem)
    description = top.get("description", "")
    if not isinstance(description, str):
        top.fail("description", f"must be a string, got {show(description)}")
    seed = top.integer("seed", 0)
    horizon_s = top.number("horizon_s")
    tick_s = top.number("tick_s", 5.0)
    cluster = _cluster(top.sub("cluster", _CLUSTER_KEYS, required=True))
    models_t = top.get("models")
    if not isinstance(models_t, dict) or not models_t:
        top.fail("models", "must be a table with at least one [models.NAME] entry")
    models = tuple(_model(top, mname, cluster) for mname in models_t)
    policies, params = _policies(top.sub("policies", ("run", "params")))
    history_seed = top.integer("history_seed", None)
    learning = [m for m in models if m.learned_floor_price > 0]
    if learning and history_seed is None:
        top.fail_at(f"models.{learning[0].name}.learned_floor_price",
                    "learns from an earlier day: set history_seed (the seed that draws it)")
    for m in learning:
        recorded = [w.kind for w in m.workloads if w.cls is ReqClass.INTERACTIVE and w.kind in ("azure", "trace")]
        if recorded:
            top.fail_at(f"models.{m.name}.learned_floor_price",
                        f"its interactive traffic is a recorded {recorded[0]}, the same on every seed: "
                        "a floor learned from it would know the day it is judged on")
    return Scenario(
        path=path,
        name=name,
        description=description,
        seed=seed,
        horizon_s=horizon_s,
        tick_s=tick_s,
        cluster=cluster,
        models=models,
        policies=policies,
        policy_params=params,
        history_seed=history_seed,
    )


def _read(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """The file's tables; with `extends = "other.toml"` (a scenario in the same directory), that
    scenario's, with this file's keys in place of its (tables merged key by key, arrays and values
    replaced) but for its name."""
    doc = read_toml(path, ScenarioError, invalid="invalid TOML")
    base = doc.get("extends")
    if base is None:
        return doc
    # Only a file next to it: relative paths in either file (profiles, traces) then start in the same place.
    if not isinstance(base, str) or not base.strip() or Path(base).name != base:
        raise ScenarioError(f"{path}: extends: must be the file name of another scenario in the same "
                            f"directory, got {show(base)}")
    base_path = (path.parent / base).resolve()
    if not base_path.is_file():
        raise ScenarioError(f"{path}: extends: no scenario file {base_path}")
    if base_path in (*seen, path.resolve()):
        raise ScenarioError(f"{path}: extends: {base} extends this file again (a cycle)")
    base_doc = _read(base_path, (*seen, path.resolve()))
    base_doc.pop("name", None)  # a variant is named after its own file unless it says otherwise
    return _merged(base_doc, doc)


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


_CLUSTER_KEYS = ("partition", "gpus", "gpus_per_node", "queue_wait_s", "time_limit_s", "failures")


def _cluster(t: Table) -> ClusterSpec:
    gpus = t.positive_integer("gpus")
    per_node = t.positive_integer("gpus_per_node", 8)
    nodes = -(-gpus // per_node)
    wait = t.get("queue_wait_s", [0, 0])
    if (
        not isinstance(wait, list)
        or len(wait) != 2
        or any(isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w < math.inf for w in wait)
        or wait[0] > wait[1]
    ):
        t.fail("queue_wait_s", f"must be [min, max] with 0 <= min <= max, got {show(wait)}")
    failures_raw = t.get("failures", [])
    if not isinstance(failures_raw, list):
        t.fail("failures", "must be an array of tables ([[cluster.failures]])")
    failures = []
    for i in range(len(failures_raw)):
        ft = t.item("failures", i, ("at_s", "node", "down_s"))
        node = ft.integer("node", None)
        if node is not None and node >= nodes:
            ft.fail("node", f"must be < {nodes} (the cluster has {nodes} nodes), got {node}")
        failures.append(
            FailureSpec(at_s=ft.number("at_s", sign="non-negative"), node=node, down_s=ft.number("down_s", 600.0))
        )
    return ClusterSpec(
        partition=t.string("partition", "gpu"),
        gpus=gpus,
        gpus_per_node=per_node,
        queue_wait_s=(float(wait[0]), float(wait[1])),
        time_limit_s=t.number("time_limit_s", 0.0, "non-negative"),
        failures=tuple(failures),
    )


_MODEL_KEYS = (
    "profile",
    "cold_start_s",
    "slo",
    "max_gpus",
    "min_instances",
    "initial_instances",
    "static_instances",
    "min_instances_by_hour",
    "learned_floor_price",
    "workload",
)


def _model(top: Table, name: str, cluster: ClusterSpec) -> ModelSpec:
    if not _MODEL_NAME.fullmatch(name):
        top.fail_at(f"models.{name}", "model names may use only letters, digits, '.', '_' and '-'")
    t = top.sub("models", None).sub(name, _MODEL_KEYS, named=True)
    slo = t.sub("slo", ("ttft_s", "tpot_s"), required=True)
    max_gpus = t.positive_integer("max_gpus", cluster.gpus)
    if max_gpus > cluster.gpus:
        t.fail("max_gpus", f"must be <= cluster.gpus ({cluster.gpus}), got {max_gpus}")
    min_instances = t.integer("min_instances", 1)
    initial = t.integer("initial_instances", min_instances)
    entries = t.get("workload", [])
    if not isinstance(entries, list):
        t.fail("workload", f"must be an array of tables ([[{t.path()}.workload]])")
    return ModelSpec(
        name=name,
        profile_path=_profile_path(t),
        cold_start_s=t.number("cold_start_s", None, "non-negative"),
        ttft_s=slo.number("ttft_s"),
        tpot_s=slo.number("tpot_s"),
        max_gpus=max_gpus,
        min_instances=min_instances,
        initial_instances=initial,
        static_instances=t.integer("static_instances", initial),
        workloads=tuple(_workload(t, i) for i in range(len(entries))),
        min_instances_by_hour=t.hourly_counts("min_instances_by_hour"),
        learned_floor_price=t.number("learned_floor_price", 0.0, "non-negative"),
    )


_KIND_KEYS: dict[str, tuple[str, ...]] = {
    "azure": ("path", "time_scale", "limit", "deadline_s"),
    "trace": ("path", "deadline_s"),
    "poisson": ("rate_per_s", "duration_s", "lengths", "deadline_s"),
    "gamma": ("rate_per_s", "cv", "duration_s", "lengths", "deadline_s"),
    "curve": ("points", "cv", "duration_s", "lengths", "deadline_s"),
    "diurnal": (
        "peak_rate_per_s",
        "trough_rate_per_s",
        "period_s",
        "peak_at_s",
        "cv",
        "duration_s",
        "lengths",
        "deadline_s",
    ),
    "backlog": ("requests", "deadline_s", "lengths"),
}


def _workload(model: Table, index: int) -> WorkloadSpec:
    entry = model.item("workload", index, None)  # a table; its keys depend on its kind
    kind = entry.get("kind", None)
    if kind not in _KIND_KEYS:
        got = "missing" if kind is None else f"got {show(kind)}"
        entry.fail("kind", f"must be one of {', '.join(WORKLOAD_KINDS)}; {got}")
    t = model.item("workload", index, ("kind", "class", "start_s", *_KIND_KEYS[kind]))

    cls_raw = t.get("class", "batch" if kind == "backlog" else "interactive")
    if cls_raw not in ("interactive", "batch"):
        t.fail("class", f"must be 'interactive' or 'batch', got {show(cls_raw)}")
    cls = ReqClass(cls_raw)
    if kind == "backlog" and cls is not ReqClass.BATCH:
        t.fail("class", "a backlog is always batch")

    p: dict[str, Any] = {"start_s": t.number("start_s", 0.0, "non-negative")}
    # A trace's rows may carry their own deadlines; every other batch source needs one here.
    if cls is ReqClass.BATCH:
        p["deadline_s"] = t.number("deadline_s", None if kind == "trace" else REQUIRED)
    elif t.has("deadline_s"):
        t.fail("deadline_s", 'only for class = "batch"')
    else:
        p["deadline_s"] = None

    if kind in ("azure", "trace"):
        p["path"] = _data_path(t, "path")
    if kind == "azure":
        p["time_scale"] = t.number("time_scale", 1.0)
        p["limit"] = t.positive_integer("limit", None)
    if kind in ("poisson", "gamma"):
        p["rate_per_s"] = t.number("rate_per_s")
    if kind == "gamma":
        p["cv"] = t.number("cv")
    if kind in ("curve", "diurnal"):
        p["cv"] = t.number("cv", 1.0)
    if kind in ("poisson", "gamma", "curve", "diurnal"):
        p["duration_s"] = t.number("duration_s")
    if kind in ("poisson", "gamma", "curve", "diurnal", "backlog"):
        p["lengths"] = _lengths(t)
    if kind == "curve":
        p["points"] = _points(t)
    if kind == "diurnal":
        p["peak_rate_per_s"] = t.number("peak_rate_per_s")
        p["trough_rate_per_s"] = t.number("trough_rate_per_s", sign="non-negative")
        if p["trough_rate_per_s"] > p["peak_rate_per_s"]:
            t.fail("trough_rate_per_s", f"must be <= peak_rate_per_s ({p['peak_rate_per_s']:g})")
        p["period_s"] = t.number("period_s", 86400.0)
        p["peak_at_s"] = t.number("peak_at_s", p["period_s"] / 2, "non-negative")
    if kind == "backlog":
        p["requests"] = t.positive_integer("requests")
    return WorkloadSpec(kind=kind, cls=cls, params=p)


def _lengths(t: Table) -> wl.Lengths:
    v = t.get("lengths", "sharegpt")
    if isinstance(v, str) and v in wl.LENGTH_TABLES:
        return v
    if isinstance(v, dict):
        lt = t.sub("lengths", ("input_tokens", "output_tokens"))
        return (_span(lt, "input_tokens"), _span(lt, "output_tokens"))
    names = ", ".join(f'"{n}"' for n in wl.LENGTH_TABLES)
    t.fail("lengths", f"must be one of {names} or {{input_tokens = N, output_tokens = N}}, got {show(v)}")


def _span(t: Table, key: str) -> wl.Span:
    """N, or [low, high] for lengths drawn uniformly from that range."""
    v = t.get(key)
    if isinstance(v, list):
        if len(v) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v) or v[0] > v[1]:
            t.fail(key, f"must be a positive integer or [low, high] with 0 < low <= high, got {show(v)}")
        return (int(v[0]), int(v[1]))
    return t.positive_integer(key)


def _points(t: Table) -> tuple[tuple[float, float], ...]:
    v = t.get("points")
    want = "a non-empty array of [t_s, rate_per_s] pairs, times increasing, rates >= 0"
    if not isinstance(v, list) or not v:
        t.fail("points", f"must be {want}")
    out: list[tuple[float, float]] = []
    for i, pt in enumerate(v):
        if (
            not isinstance(pt, list)
            or len(pt) != 2
            or any(isinstance(x, bool) or not isinstance(x, int | float) or not 0 <= x < math.inf for x in pt)
        ):
            t.fail("points", f"must be [t_s, rate_per_s] (both >= 0), got {show(pt)}", i)
        if out and pt[0] <= out[-1][0]:
            t.fail("points", f"times must be increasing, got {pt[0]:g} after {out[-1][0]:g}", i)
        out.append((float(pt[0]), float(pt[1])))
    return tuple(out)


def _policies(t: Table) -> tuple[tuple[str, ...], dict[str, dict[str, object]]]:
    run = t.get("run", list(DEFAULT_POLICIES))
    if not isinstance(run, list) or not run or not all(isinstance(r, str) and r for r in run):
        t.fail("run", f"must be a non-empty array of policy names, got {show(run)}")
    dups = sorted({r for r in run if run.count(r) > 1})
    if dups:
        t.fail("run", f"lists {', '.join(dups)} more than once")
    params = t.get("params", {})
    if not isinstance(params, dict):
        t.fail("params", "must be a table of [policies.params.NAME] tables")
    for pname, ptable in params.items():
        if not isinstance(ptable, dict):
            t.sub("params", None).fail(pname, f"must be a table, got {show(ptable)}")
    return tuple(run), {k: dict(v) for k, v in params.items()}


# ---------------------------------------------------------------- requests


def build_workload(
    scenario: Scenario,
    rng: np.random.Generator,
    *,
    trace_overrides: Mapping[str, Path] | None = None,
) -> dict[str, list[Request]]:
    """All requests per model, sorted by arrival, with ids unique across the scenario.

    `rng` supplies one base key; each workload entry then gets its own stream keyed by (base,
    model name, entry index), so adding or editing one entry leaves the others' requests as they
    were. Pass `np.random.default_rng(scenario.seed)` for the scenario's own workload.
    `trace_overrides[model]` replaces that model's interactive entries with `load_trace(file)`.
    """
    overrides = dict(trace_overrides or {})
    names = [m.name for m in scenario.models]
    for name in overrides:
        if name not in names:
            raise ScenarioError(f"{scenario.path}: --trace {name}: unknown model {name!r} (models: {', '.join(names)})")
    base = int(rng.integers(0, 2**63))
    out: dict[str, list[Request]] = {}
    next_id = 0
    for m in scenario.models:
        # crc32 of the name, not the model's position: adding a model keeps the others' streams.
        model_key = zlib.crc32(m.name.encode())
        override = overrides.get(m.name)
        reqs: list[Request] = []
        for i, w in enumerate(m.workloads):
            if override is not None and w.cls is ReqClass.INTERACTIVE:
                continue
            reqs.extend(_generate(w, m.name, np.random.default_rng([base, model_key, i])))
        if override is not None:
            reqs.extend(wl.load_trace(override, model=m.name))
        reqs.sort(key=attrgetter("arrival"))
        for r in reqs:
            r.id = next_id
            next_id += 1
        out[m.name] = reqs
    return out


def _generate(w: WorkloadSpec, model: str, rng: np.random.Generator) -> list[Request]:
    p = w.params
    start, deadline = p["start_s"], p["deadline_s"]
    if w.kind == "azure":
        return wl.load_azure_csv(
            p["path"],
            model=model,
            cls=w.cls,
            start_s=start,
            time_scale=p["time_scale"],
            limit=p["limit"],
            deadline_s=deadline,
        )
    if w.kind == "trace":
        return wl.load_trace(p["path"], model=model, default_cls=w.cls, start_s=start, default_deadline_s=deadline)
    if w.kind == "backlog":
        return wl.batch_backlog(rng, p["requests"], model=model, at_s=start, deadline_s=deadline, lengths=p["lengths"])
    if w.kind == "poisson":
        arrivals = wl.poisson_arrivals(rng, p["rate_per_s"], p["duration_s"], start)
    elif w.kind == "gamma":
        arrivals = wl.gamma_arrivals(rng, p["rate_per_s"], p["cv"], p["duration_s"], start)
    elif w.kind == "curve":
        arrivals = wl.curve_arrivals(rng, p["points"], p["duration_s"], start, p["cv"])
    elif w.kind == "diurnal":
        pts = wl.diurnal_points(
            p["peak_rate_per_s"],
            p["trough_rate_per_s"],
            p["period_s"],
            p["peak_at_s"],
            span_s=p["duration_s"],
        )
        arrivals = wl.curve_arrivals(rng, pts, p["duration_s"], start, p["cv"])
    else:  # pragma: no cover - kinds are validated on load
        raise AssertionError(w.kind)
    ins, outs = wl.sample_lengths(rng, len(arrivals), p["lengths"])
    return wl.make_requests(model, w.cls, arrivals, ins, outs, deadline_s=deadline)


def _profile_path(t: Table) -> Path:
    """A profile by path (relative to the scenario) or by a shipped profile's bare name; a path that
    is missing falls back to the shipped profile of that name (a scenario copied out of the
    repository, or installed from the wheel)."""
    raw = t.get("profile", "")
    if isinstance(raw, str) and raw:
        path = resolve_profile(raw, Path(str(t.file)).parent) or resolve_profile(Path(raw).stem, Path("/nonexistent"))
        if path is not None:
            return path
    return t.existing_file("profile", "a profile file or a shipped profile's name")


def _data_path(t: Table, key: str) -> Path:
    """A trace file relative to the scenario, else the shipped data file of that name."""
    raw = t.get(key, "")
    if isinstance(raw, str) and raw:
        found = bundled.data_file(t.resolved_path(key, Path()))
        if found.is_file():
            return found
    return t.existing_file(key)
