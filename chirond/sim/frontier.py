"""The fixed-deployment frontier: what a sysadmin could do without autoscaling. Each model runs
alone at a fixed number of warm instances with a policy's own per-instance mechanisms (its caps,
dispatch rules and engine flags, the policy planning as for min_instances = max_instances = n;
lost instances are replaced, ones near their job time limit handed over, nothing else is
scaled), for every count from 1 up to what fits in the partition (stopping once more instances
buy nothing). The models' runs are then combined within the partition: a combination's
attainment counts every model's requests, and its GPU-hours are each model's, held until the
combination's last request ends (models share only the partition, so this is the same
deployment up to queue waits, and hand-overs in a model's idle tail). The frontier is the
combinations no other beats on GPU-hours and both attainments; the ceiling is every model at its
best count."""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from chirond.policy import make_policy
from chirond.sim.compare import setups
from chirond.sim.fixed import FixedPolicy
from chirond.sim.report import summarize
from chirond.sim.results import RunResult
from chirond.sim.runner import ModelSetup, Simulation
from chirond.sim.scenario import Scenario, build_workload

PLATEAU = 3  # stop sweeping a model after this many counts in a row that gain under 0.1 point


@dataclass(frozen=True, slots=True)
class Point:
    """One model alone at `n` fixed instances: its SLO-meeting requests, GPU-hours, and when its
    last request ended (its run's end)."""

    model: str
    n: int
    gpus: int
    inter_met: int
    inter_total: int
    batch_met: int
    batch_total: int
    gpu_hours: float
    end_s: float


def simulate_fixed(sc: Scenario, policy: str, model: str, n: int, seed: int | None = None,
                   fixed: type[FixedPolicy] = FixedPolicy) -> tuple[RunResult, ModelSetup]:
    """`model` alone (its requests only, the whole partition) at `n` instances held by `fixed`
    (warm from t = 0 by default) with `policy`'s per-instance mechanisms; the run and the model."""
    seed = sc.seed if seed is None else seed
    models, cluster, profiles = setups(sc)
    setup = next(m for m in models if m.name == model)
    inner = make_policy(policy, profiles, sc.policy_params.get(policy, {}))
    work = build_workload(sc, np.random.default_rng(seed))
    sim = Simulation(scenario=sc.name, models=[setup], cluster=cluster, requests=list(work[model]),
                     policy=fixed(inner, {model: n}), policy_name=f"{policy}-fixed", seed=seed,
                     horizon_s=sc.horizon_s, tick_s=sc.tick_s)
    return sim.run(), setup


def run_fixed(sc: Scenario, policy: str, model: str, n: int, seed: int | None = None) -> Point:
    """`model` alone (its requests only, the whole partition) at `n` warm instances."""
    run, setup = simulate_fixed(sc, policy, model, n, seed)
    s = summarize(run)
    inter, batch = s["interactive_requests"], s["batch_requests"]
    return Point(model, n, n * setup.profile.gpus, round((s["interactive_attainment"] or 0.0) * inter), inter,
                 round((s["batch_attainment"] or 0.0) * batch), batch, float(s["gpu_hours"]), float(s["end_s"]))


def _run(args: tuple[Scenario, str, str, int, int | None]) -> Point:
    return run_fixed(*args)


def sweep(
    sc: Scenario, policy: str = "chirond", seed: int | None = None, jobs: int | None = None
) -> dict[str, list[Point]]:
    """Every model from 1 instance up to what fits in the partition, a few counts at a time in
    parallel processes, until more instances gain nothing (100 % on both classes, or PLATEAU
    counts in a row under 0.1 point better)."""
    models, cluster, _ = setups(sc)
    jobs = jobs or os.cpu_count() or 1
    out: dict[str, list[Point]] = {}
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for m in models:
            most = cluster.gpus // m.profile.gpus
            points: list[Point] = []
            n = 1
            while n <= most and not _saturated(points):
                batch = list(range(n, min(most, n + jobs - 1) + 1))
                points += list(pool.map(_run, [(sc, policy, m.name, k, seed) for k in batch]))
                n = batch[-1] + 1
            out[m.name] = _until_saturated(points)
    return out


def _share(met: int, total: int) -> float:
    return met / total if total else 1.0


def _saturated(points: Sequence[Point]) -> bool:
    if not points:
        return False
    last = points[-1]
    if last.inter_met == last.inter_total and last.batch_met == last.batch_total:
        return True
    if len(points) <= PLATEAU:
        return False
    best_before = max(_score(p) for p in points[:-PLATEAU])
    return all(_score(p) < best_before + 0.001 for p in points[-PLATEAU:])


def _until_saturated(points: list[Point]) -> list[Point]:
    """Drop counts swept past the point where the model saturated (they ran in the same round)."""
    for i in range(1, len(points) + 1):
        if _saturated(points[:i]):
            return points[:i]
    return points


def _score(p: Point) -> float:
    return _share(p.inter_met, p.inter_total) + _share(p.batch_met, p.batch_total)


def combine(points: Mapping[str, Sequence[Point]], gpus: int) -> list[dict[str, Any]]:
    """Every combination of per-model counts that fits in `gpus`, as a fixed deployment."""
    out = []
    names = list(points)
    for combo in itertools.product(*(points[n] for n in names)):
        if sum(p.gpus for p in combo) > gpus:
            continue
        out.append(_deployment(combo))
    return out


def _deployment(combo: Sequence[Point]) -> dict[str, Any]:
    """The models' fixed instances together. A fixed deployment holds every instance until its last
    request ends, as a policy's run is charged until its own last request: a model whose work ends
    first keeps its instances, idle, until the others' ends (each alone ran only to its own)."""
    im, it = sum(p.inter_met for p in combo), sum(p.inter_total for p in combo)
    bm, bt = sum(p.batch_met for p in combo), sum(p.batch_total for p in combo)
    end = max((p.end_s for p in combo), default=0.0)
    return {
        "instances": {p.model: p.n for p in combo},
        "interactive_attainment": _share(im, it),
        "batch_attainment": _share(bm, bt),
        "gpu_hours": sum(p.gpu_hours + p.gpus * (end - p.end_s) / 3600.0 for p in combo),
    }


def pareto(deployments: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The deployments no other matches on both attainments with fewer GPU-hours, cheapest first."""
    out: list[dict[str, Any]] = []
    for d in sorted(deployments, key=lambda d: (d["gpu_hours"], -d["interactive_attainment"],
                                                -d["batch_attainment"])):
        i, b = d["interactive_attainment"], d["batch_attainment"]
        if any(o["interactive_attainment"] >= i and o["batch_attainment"] >= b for o in out):
            continue
        out.append(dict(d))
    return out


def ceiling(points: Mapping[str, Sequence[Point]]) -> dict[str, Any]:
    """Every model at its best count swept, where more instances stopped paying (each model alone
    in the partition, so the combination may not fit: an upper bound on attainment)."""
    return _deployment([max(ps, key=lambda p: (_score(p), -p.n)) for ps in points.values()])


def cheapest_matching(frontier: Sequence[Mapping[str, Any]], interactive: float, batch: float) -> float | None:
    """GPU-hours of the cheapest fixed deployment at least as good on both classes, or None."""
    ok = [d["gpu_hours"] for d in frontier
          if d["interactive_attainment"] >= interactive - 1e-9 and d["batch_attainment"] >= batch - 1e-9]
    return min(ok, default=None)


def plot(summaries: Sequence[Mapping[str, Any]], frontier: Sequence[Mapping[str, Any]],
         top: Mapping[str, Any], path: Any, title: str) -> Any:
    """Interactive attainment against GPU-hours: the frontier's steps, the ceiling, each policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    xs = [d["gpu_hours"] for d in frontier]
    ys = [100 * d["interactive_attainment"] for d in frontier]
    ax.step(xs, ys, where="post", color="0.4", label="fixed deployments (frontier)")
    ax.scatter(xs, ys, color="0.4", s=12)
    ax.axhline(100 * top["interactive_attainment"], color="0.6", ls="--",
               label="ceiling (every model at its best count)")
    for s in summaries:
        ax.scatter([s["gpu_hours"]], [100 * (s["interactive_attainment"] or 0.0)], s=40, zorder=3)
        ax.annotate(s["policy"], (s["gpu_hours"], 100 * (s["interactive_attainment"] or 0.0)),
                    textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("GPU-hours")
    ax.set_ylabel("interactive SLO attainment, %")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
