"""Where chirond's gap to the fixed-deployment frontier comes from: the start, or the scaling.

`chirond simulate --frontier` judges a policy over the whole run against fixed deployments that
are warm at t = 0, while the policy starts from the scenario's `initial_instances`. This script
measures the same comparison two more ways, for one scenario and seed:

- from T0 on (`--from-s`): only requests arriving at or after T0 and GPU time after T0 count, for
  chirond and for every warm fixed deployment alike: how chirond does once the start is behind it;
- started cold: each fixed deployment begins where chirond begins (the scenario's initial
  instances) and launches the rest at t = 0, through the queue wait and cold start. It still knows
  which count to launch, so it bounds what any policy could do from the scenario's start.

    .venv/bin/python benchmarks/after_the_start.py benchmarks/scenarios/paper-small.toml \\
        --seed 1 --from-s 900 --counts llama-8b=1-4 --counts llama-70b=4-12

It prints, per view, chirond's interactive and batch attainment and GPU-hours, the cheapest fixed
deployment at least as good on both (and the ratio), and the best fixed deployment swept.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chirond.sim.compare import run_one, setups
from chirond.sim.frontier import FixedPolicy, Point, cheapest_matching, combine, pareto, simulate_fixed
from chirond.sim.report import slo_met
from chirond.sim.results import RunResult
from chirond.sim.scenario import load_scenario

Counts = tuple[int, int, int, int]  # interactive met, interactive total, batch met, batch total


class ColdFixed(FixedPolicy):
    """A fixed deployment that starts with the scenario's initial instances, as the policy does,
    and launches the rest at the first tick."""

    def initial_instances(self, model: str, initial: int, static: int) -> int:
        return min(initial, self.counts.get(model, 0))


def tally(r: RunResult, from_s: float) -> tuple[dict[str, Counts], float]:
    """Per model (met, total) of interactive requests arriving at or after `from_s` and of every
    batch request, and the GPU-hours held after `from_s` (the timeline's GPUs per tick)."""
    q, met = r.requests, slo_met(r)
    out: dict[str, Counts] = {}
    for mi, name in enumerate(r.models):
        sel = (q["cls"] == 0) & (q["model"] == mi) & (q["arrival"] >= from_s)
        b = (q["cls"] == 1) & (q["model"] == mi)
        out[name] = (int(met[sel].sum()), int(sel.sum()), int(met[b].sum()), int(b.sum()))
    t, gpus = r.timeline["t"], r.timeline["gpus"]
    dt = np.diff(np.append(t, r.end_s))
    after = t >= from_s
    return out, float((gpus[after] * dt[after]).sum() / 3600.0)


def fixed_run(args: tuple[str, int, str, int, bool, float]) -> tuple[bool, float, Point]:
    """One model alone at `n` fixed instances, warm or `cold`, tallied from `from_s`."""
    path, seed, model, n, cold, from_s = args
    run, setup = simulate_fixed(load_scenario(path), "chirond", model, n, seed, ColdFixed if cold else FixedPolicy)
    counts, gpu_h = tally(run, from_s)
    # held from T0 on: a model whose work ended before T0 is charged its idle tail from T0 only
    return cold, from_s, Point(model, n, n * setup.profile.gpus, *counts[model], gpu_h, max(run.end_s, from_s))


def described(d: Mapping[str, Any]) -> str:
    shape = " + ".join(f"{m.replace('llama-', '')} x {n}" for m, n in d["instances"].items())
    return f"{shape}: {100 * d['interactive_attainment']:.2f} %, {d['gpu_hours']:.1f} GPU-h"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--from-s", type=float, default=900.0, help="count from this time on (default 900)")
    ap.add_argument("--counts", action="append", default=[], metavar="MODEL=LO-HI",
                    help="fixed instance counts to sweep per model (default 1 to 8)")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    sc = load_scenario(a.scenario)
    seed = sc.seed if a.seed is None else a.seed
    models, cluster, _ = setups(sc)
    ranges = {m.name: (1, 8) for m in models}
    for spec in a.counts:
        name, _, lohi = spec.partition("=")
        lo, _, hi = lohi.partition("-")
        if name not in ranges:
            ap.error(f"--counts: no model {name!r} in {a.scenario} (models: {', '.join(ranges)})")
        if not (lo.isdigit() and (hi or lo).isdigit()) or not 1 <= int(lo) <= int(hi or lo):
            ap.error(f"--counts: {spec!r} is not MODEL=LO-HI with 1 <= LO <= HI (e.g. llama-70b=4-12)")
        ranges[name] = (int(lo), int(hi or lo))

    chirond = run_one(sc, "chirond", {}, seed=seed)
    tasks = [(a.scenario, seed, m, n, cold, from_s)
             for m, (lo, hi) in ranges.items() for n in range(lo, hi + 1)
             for cold, from_s in ((False, 0.0), (False, a.from_s), (True, 0.0))]
    points: dict[tuple[bool, float], dict[str, list[Point]]] = {}
    with ProcessPoolExecutor(a.jobs) as pool:
        for cold, from_s, point in pool.map(fixed_run, tasks):
            points.setdefault((cold, from_s), {m: [] for m in ranges})[point.model].append(point)
    swept = ", ".join(f"{m} {lo}-{hi}" for m, (lo, hi) in ranges.items())
    print(f"{sc.name}, seed {seed}: chirond against fixed deployments ({swept})")
    print("| view | chirond | cheapest fixed as good | ratio | best fixed swept |")
    print("|---|---|---|---:|---|")
    views = (("whole run, warm fixed", False, 0.0), (f"from {a.from_s:.0f} s, warm fixed", False, a.from_s),
             ("whole run, fixed started cold", True, 0.0))
    for label, cold, from_s in views:
        counts, gpu_h = tally(chirond, from_s)
        c = [sum(v[i] for v in counts.values()) for i in range(4)]
        ia, ba = c[0] / c[1], (c[2] / c[3] if c[3] else 1.0)
        deps = combine(points[(cold, from_s)], cluster.gpus)
        front = pareto(deps)
        match = cheapest_matching(front, ia, ba)
        cheapest = next((d for d in front if d["gpu_hours"] == match), None)
        best = max(deps, key=lambda d: (d["interactive_attainment"], -d["gpu_hours"]))

        shown = described(cheapest) if cheapest else "none"
        ratio = f"{gpu_h / match:.2f}" if match else "-"
        print(f"| {label} | {100 * ia:.2f} %, batch {100 * ba:.2f} %, {gpu_h:.1f} GPU-h | {shown} | {ratio} | "
              f"{described(best)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
