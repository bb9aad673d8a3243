"""When in the run a policy loses to fixed deployments of one model: misses per hour.

`chirond simulate --frontier` compares totals. This script splits one model's interactive
requests into bins by arrival (an hour by default) and prints, per bin, the requests, the
policy's SLO misses and the instances it held (ready or starting, the bin's mean), beside the
misses of fixed deployments of that model (warm from t = 0, the policy's per-instance
mechanisms, as the frontier runs them):

    .venv/bin/python benchmarks/by_hour.py benchmarks/scenarios/day.toml --seed 1 \\
        --model llama-70b --fixed 2,3,4 --price 45

With `--price P` (or several: `--price 15,30,45`) it also prints a hindsight schedule per price:
in each bin, the fixed count with the fewest GPU-hours plus misses at 1/P GPU-hour each (one
instance more only where it avoids at least P misses per GPU-hour: chirond.sim.hindsight), and
the schedule's misses and GPU-hours in total. It is an estimate of what scaling could earn on
the model (each bin as its fixed count had it, warm, with no lead time and no queue carried
between bins), not a policy; but the schedule of an earlier day is a floor a site can set
(`min_instances_by_hour`, printed for a 24-hour day; the daemon learns it from its own traffic
with `learned_floor_price`). With `--against SUMMARY` (the summary.json of `chirond simulate
--frontier` on the same scenario and seed) each schedule is also placed in the whole run, the
policy's other models as it ran them, against that frontier:

    .venv/bin/python benchmarks/by_hour.py benchmarks/scenarios/day.toml --seed 1 \\
        --model llama-70b --fixed 1,2,3,4,5 --price 15,30,45 --against docs/results/day/summary.json
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
from chirond.sim.frontier import cheapest_matching, simulate_fixed
from chirond.sim.hindsight import hindsight, interactive_mask, misses_by_bin
from chirond.sim.report import slo_met, summarize
from chirond.sim.results import RunResult
from chirond.sim.scenario import load_scenario


def n_bins(r: RunResult, model: str, bin_s: float) -> int:
    """Bins up to the last interactive arrival of `model` (a run goes on for batch work after)."""
    return max(1, int(r.requests["arrival"][interactive_mask(r, model)].max(initial=0.0) // bin_s) + 1)


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


def whole_run(r: RunResult, model: str, misses: int, gpu_h: float) -> tuple[float, float]:
    """The run's interactive attainment and GPU-hours with `model`'s interactive misses and its
    GPU-hours replaced by `misses` and `gpu_h` (the other models' as the run had them)."""
    inter = np.asarray(r.requests["cls"] == 0)
    others_missed = int(np.count_nonzero(inter & ~interactive_mask(r, model) & ~slo_met(r)))
    n = max(1, int(np.count_nonzero(inter)))
    return 1.0 - (others_missed + misses) / n, r.gpu_hours - r.gpu_hours_by_model.get(model, 0.0) + gpu_h


def load_frontier(path: str, scenario: str, seed: int) -> list[dict[str, Any]]:
    """The frontier of a `chirond simulate --frontier` summary.json of `scenario` and `seed`."""
    doc = json.loads(Path(path).read_text())
    runs = [s for s in (doc if isinstance(doc, list) else [doc]) if isinstance(s, dict) and s.get("frontier")]
    if not runs:
        raise ValueError(f"{path}: no frontier in it (run `chirond simulate ... --frontier --out DIR`)")
    if (runs[0].get("scenario"), runs[0].get("seed")) != (scenario, seed):
        raise ValueError(f"{path}: the frontier of {runs[0].get('scenario')} seed {runs[0].get('seed')}, "
                         f"not {scenario} seed {seed}")
    return list(runs[0]["frontier"])


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
    ap.add_argument("--price", default="", help="misses per GPU-hour for the hindsight schedule (a list: 15,30,45)")
    ap.add_argument("--against", default=None, metavar="SUMMARY",
                    help="summary.json of `chirond simulate --frontier` (same scenario and seed): place each schedule")
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
    try:
        prices = [float(x) for x in a.price.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--price: {a.price!r} is not a comma-separated list of misses per GPU-hour")
    if any(n < 1 for n in counts) or (prices and len(counts) < 2):
        ap.error("--fixed: counts are 1 or more, and --price needs at least two")
    if a.against is not None and not prices:
        ap.error("--against places hindsight schedules: give --price")
    frontier: list[dict[str, Any]] = []
    if a.against is not None:
        try:
            frontier = load_frontier(a.against, sc.name, seed)
        except (OSError, ValueError) as e:
            ap.error(f"--against: {e}")
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
    batch = summarize(policy_run)["batch_attainment"] or 0.0
    places = [("policy", *whole_run(policy_run, a.model, int(misses.sum()), policy_gpu_h))]
    out["hindsight"] = []
    for price in prices:
        chosen, h_misses, h_gpu_h = hindsight(fixed, gpus, bin_h, price)
        out["hindsight"].append({"price": price, "instances": chosen, "misses": h_misses,
                                 "gpu_hours": round(h_gpu_h, 1)})
        places.append((f"price {price:g}", *whole_run(policy_run, a.model, h_misses, h_gpu_h)))
    if frontier:
        # The schedule's batch work is taken as the policy's (the fixed runs' batch is not split by bin).
        out["whole_run"] = []
        for name, att, gpu_h in places:
            best = cheapest_matching(frontier, att, batch)
            out["whole_run"].append({"run": name, "interactive_attainment": att, "gpu_hours": round(gpu_h, 1),
                                     "frontier_gpu_hours": best, "frontier_ratio": gpu_h / best if best else None})
    if a.json:
        print(json.dumps(out))
        return 0
    head = " | ".join(f"fixed {n}" for n in counts)
    print(f"{sc.name}, seed {seed}, {a.model}: interactive SLO misses per {a.bin_s:.0f}-s bin of arrival")
    extra = "".join(f" at {h['price']:g} |" for h in out["hindsight"])
    print(f"| bin | requests | {a.policy} misses | {a.policy} instances | {head} |{extra}")
    print("|---:|---:|---:|---:|" + "---:|" * (len(counts) + len(prices)))
    for b in range(bins):
        row = f"| {b} | {requests[b]} | {misses[b]} | {held[b]:.2f} | " + " | ".join(str(fixed[n][b]) for n in counts)
        print(row + "".join(f" | {h['instances'][b]}" for h in out["hindsight"]) + " |")
    total = (f"| all | {requests.sum()} | {misses.sum()} | {policy_gpu_h:.1f} GPU-h | "
             + " | ".join(f"{fixed[n].sum()} ({n * gpus * bin_h * bins:.0f} GPU-h)" for n in counts))
    total += "".join(f" | {h['misses']} ({h['gpu_hours']} GPU-h)" for h in out["hindsight"])
    print(total + " |")
    print(f"(GPU-hours: {a.policy}'s as its run charges them, to the run's end; a fixed count's and the "
          "hindsight schedules' as n x GPUs x the bins' hours.)")
    if a.bin_s == 3600.0 and bins == 24:
        for h in out["hindsight"]:  # a floor to set, [models.NAME] in a config or scenario
            print(f"min_instances_by_hour = {h['instances']}  # hindsight at {h['price']:g} misses per GPU-hour")
    if frontier:
        print(f"\nThe whole run ({a.policy}'s other models as it ran them, its batch attainment "
              f"{100 * batch:.2f} %) against the frontier of {a.against}:")
        print("| run | interactive | GPU-h | cheapest fixed as good | ratio |\n|---|---:|---:|---:|---:|")
        for w in out["whole_run"]:
            best, ratio = w["frontier_gpu_hours"], w["frontier_ratio"]
            print(f"| {a.policy if w['run'] == 'policy' else 'hindsight, ' + w['run']} | "
                  f"{100 * w['interactive_attainment']:.2f} % | {w['gpu_hours']:.1f} | "
                  + (f"{best:.1f} | {ratio:.2f} |" if best else "none | |"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
