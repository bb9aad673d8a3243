"""When in the run a policy loses to fixed deployments of one model: misses per hour.

`chirond simulate --frontier` compares totals. This script splits one model's interactive
requests into bins by arrival (an hour by default) and prints, per bin, the requests, the
policy's SLO misses and the instances it held (ready or starting, the bin's mean), beside the
misses of fixed deployments of that model (warm from t = 0, the policy's per-instance
mechanisms, as the frontier runs them):

    .venv/bin/python benchmarks/by_hour.py benchmarks/scenarios/day.toml --seed 1 \\
        --model llama-70b --fixed 2,3,4 --price 45

With `--price P` it also prints a hindsight schedule: in each bin, the fixed count past which
one instance more would avoid fewer than P misses per GPU-hour, and the schedule's misses and
GPU-hours in total. It is an estimate of what scaling could earn on the model (each bin as its
fixed count had it, warm, with no lead time and no queue carried between bins), not a policy.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chirond.sim.compare import run_one, setups
from chirond.sim.frontier import simulate_fixed
from chirond.sim.report import slo_met
from chirond.sim.results import RunResult
from chirond.sim.scenario import load_scenario


def _interactive(r: RunResult, model: str) -> np.ndarray:
    """Which of the run's requests are `model`'s interactive ones."""
    return np.asarray((r.requests["cls"] == 0) & (r.requests["model"] == r.models.index(model)))


def n_bins(r: RunResult, model: str, bin_s: float) -> int:
    """Bins up to the last interactive arrival of `model` (a run goes on for batch work after)."""
    return max(1, int(r.requests["arrival"][_interactive(r, model)].max(initial=0.0) // bin_s) + 1)


def misses_by_bin(r: RunResult, model: str, bin_s: float, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(interactive requests, SLO misses) of `model` per `bin_s` bin of arrival, `bins` bins."""
    sel = _interactive(r, model)
    met = slo_met(r)
    k = np.minimum((r.requests["arrival"][sel] // bin_s).astype(np.int64), bins - 1)
    return np.bincount(k, minlength=bins), np.bincount(k, weights=~met[sel], minlength=bins).astype(np.int64)


def held_by_bin(r: RunResult, model: str, bin_s: float, bins: int) -> np.ndarray:
    """`model`'s instances ready or starting, the mean of the timeline's samples per bin (samples
    past the last bin left out)."""
    tl = r.timeline
    held = np.zeros(len(tl["t"]))
    for pool in ("interactive", "mixed", "batch", "starting"):
        held += tl.get(f"{model}/{pool}", 0.0)
    k = (tl["t"] // bin_s).astype(np.int64)
    inside = k < bins
    n = np.bincount(k[inside], minlength=bins)
    return np.bincount(k[inside], weights=held[inside], minlength=bins) / np.maximum(n, 1)


def hindsight(fixed: dict[int, np.ndarray], gpus: int, bin_h: float, price: float) -> tuple[list[int], int, float]:
    """Per bin, the fewest swept instances past which one more avoids under `price` misses per
    GPU-hour; the schedule, its misses and its GPU-hours."""
    counts = sorted(fixed)
    chosen: list[int] = []
    for b in range(len(fixed[counts[0]])):
        i = 0
        while i + 1 < len(counts):
            gain = fixed[counts[i]][b] - fixed[counts[i + 1]][b]
            if gain < price * (counts[i + 1] - counts[i]) * gpus * bin_h:
                break
            i += 1
        chosen.append(counts[i])
    misses = sum(int(fixed[n][b]) for b, n in enumerate(chosen))
    return chosen, misses, sum(chosen) * gpus * bin_h


def _fixed(args: tuple[str, int, str, str, int]) -> tuple[int, RunResult]:
    path, seed, policy, model, n = args
    run, _ = simulate_fixed(load_scenario(path), policy, model, n, seed)
    return n, run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--model", required=True, help="the model to split (its interactive requests)")
    ap.add_argument("--policy", default="chirond")
    ap.add_argument("--fixed", default="", help="fixed instance counts to run beside it, e.g. 2,3,4")
    ap.add_argument("--bin-s", type=float, default=3600.0, help="bin width in seconds (default 3600)")
    ap.add_argument("--price", type=float, default=None, help="misses per GPU-hour for the hindsight schedule")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    a = ap.parse_args()
    sc = load_scenario(a.scenario)
    seed = sc.seed if a.seed is None else a.seed
    models, _, _ = setups(sc)
    setup = next((m for m in models if m.name == a.model), None)
    if setup is None:
        ap.error(f"--model: no model {a.model!r} in {a.scenario} (models: {', '.join(m.name for m in models)})")
    try:
        counts = sorted({int(x) for x in a.fixed.split(",") if x.strip()})
    except ValueError:
        ap.error(f"--fixed: {a.fixed!r} is not a comma-separated list of instance counts")
    if any(n < 1 for n in counts) or (a.price is not None and len(counts) < 2):
        ap.error("--fixed: counts are 1 or more, and --price needs at least two")
    with ProcessPoolExecutor(a.jobs) as pool:
        fixed_runs = pool.map(_fixed, [(a.scenario, seed, a.policy, a.model, n) for n in counts])
        policy_run = run_one(sc, a.policy, {}, seed=seed)
        bins = n_bins(policy_run, a.model, a.bin_s)
        fixed = {n: misses_by_bin(r, a.model, a.bin_s, bins)[1] for n, r in fixed_runs}
    requests, misses = misses_by_bin(policy_run, a.model, a.bin_s, bins)
    held = held_by_bin(policy_run, a.model, a.bin_s, bins)
    gpus, bin_h = setup.profile.gpus, a.bin_s / 3600.0
    policy_gpu_h = policy_run.gpu_hours_by_model.get(a.model, 0.0)
    out: dict[str, Any] = {
        "scenario": sc.name, "seed": seed, "model": a.model, "policy": a.policy, "bin_s": a.bin_s,
        "requests": requests.tolist(), "misses": misses.tolist(), "held": [round(float(h), 2) for h in held],
        "gpu_hours": round(policy_gpu_h, 2),
        "fixed": {str(n): v.tolist() for n, v in fixed.items()},
    }
    if a.price is not None:
        chosen, h_misses, h_gpu_h = hindsight(fixed, gpus, bin_h, a.price)
        out["hindsight"] = {"price": a.price, "instances": chosen, "misses": h_misses, "gpu_hours": round(h_gpu_h, 1)}
    if a.json:
        print(json.dumps(out))
        return 0
    head = " | ".join(f"fixed {n}" for n in counts)
    print(f"{sc.name}, seed {seed}, {a.model}: interactive SLO misses per {a.bin_s:.0f}-s bin of arrival")
    extra = " hindsight |" if a.price is not None else ""
    print(f"| bin | requests | {a.policy} misses | {a.policy} instances | {head} |{extra}")
    print("|---:|---:|---:|---:|" + "---:|" * len(counts) + ("---:|" if a.price is not None else ""))
    for b in range(bins):
        row = f"| {b} | {requests[b]} | {misses[b]} | {held[b]:.2f} | " + " | ".join(str(fixed[n][b]) for n in counts)
        print(row + (f" | {out['hindsight']['instances'][b]} |" if a.price is not None else " |"))
    total = (f"| all | {requests.sum()} | {misses.sum()} | {policy_gpu_h:.1f} GPU-h | "
             + " | ".join(f"{fixed[n].sum()} ({n * gpus * bin_h * bins:.0f} GPU-h)" for n in counts))
    if a.price is not None:
        total += f" | {out['hindsight']['misses']} ({out['hindsight']['gpu_hours']} GPU-h)"
    print(total + " |")
    print(f"(GPU-hours: {a.policy}'s as its run charges them, to the run's end; a fixed count's and the "
          "hindsight schedule's as n x GPUs x the bins' hours.)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
