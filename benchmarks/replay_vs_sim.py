"""Does the simulator agree with the daemon? Runs `chirond simulate` and `chirond replay` on one
scenario (default benchmarks/scenarios/replay-check.toml) for one policy (default chirond) and
prints the per-model table: interactive attainment, batch attainment, GPU-hours and launches,
side by side, with the differences and the targets (interactive within 3 points, batch equal,
GPU-hours within 10 %, launches within 25 %).

    .venv/bin/python benchmarks/replay_vs_sim.py --speedup 5
    .venv/bin/python benchmarks/replay_vs_sim.py --replay-summary out/rc/summary.json   # reuse a replay

Both summaries carry per-model GPU-hours and launches (`per_model`): the simulator's from its
jobs and the control loop's launch counts, replay's from the daemon's /metrics.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chirond.sim import compare  # noqa: E402
from chirond.sim.report import summarize  # noqa: E402
from chirond.sim.scenario import load_scenario  # noqa: E402

TARGETS = {"interactive": 3.0, "batch": 0.0, "gpu_hours": 0.10, "launches": 0.25}


def simulate(scenario: Path, policy: str, seed: int | None) -> dict[str, Any]:
    return summarize(compare.run_one(load_scenario(scenario), policy, seed=seed))


def replay(scenario: Path, policy: str, speedup: float, seed: int | None, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "chirond", "replay", str(scenario), "--policies", policy, "--speedup", str(speedup),
           "--out", str(out), "--allow-lag", "--no-plots"]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    print("$", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return load_replay(out / "summary.json", policy)


def load_replay(path: Path, policy: str) -> dict[str, Any]:
    return next(s for s in json.loads(path.read_text()) if s["policy"] == policy)


def table(sim: dict[str, Any], rep: dict[str, Any]) -> tuple[str, list[str]]:
    rows = ["| model | metric | simulate | replay | difference | target | |", "|---|---|---:|---:|---:|---:|:---|"]
    misses = []
    models = list(sim["per_model"])
    for name in [*models, "total"]:
        if name == "total":
            s_int, r_int = sim["interactive_attainment"], rep["interactive_attainment"]
            s_bat, r_bat = sim["batch_attainment"], rep["batch_attainment"]
            s_gpu, r_gpu = sim["gpu_hours"], rep["gpu_hours"]
            s_l, r_l = sim["launches"], rep["launches"]
        else:
            sm, rm = sim["per_model"][name], rep["per_model"][name]
            s_int, r_int = sm["interactive_attainment"], rm["interactive_attainment"]
            s_bat, r_bat = sm["batch_attainment"], rm["batch_attainment"]
            s_gpu, r_gpu = sm["gpu_hours"], rm.get("gpu_hours", float("nan"))
            s_l, r_l = sm["launches"], rm.get("launches", float("nan"))
        for metric, s, r, diff, target, ok in (
            ("interactive %", 100 * s_int, 100 * r_int, 100 * (r_int - s_int), "±3 pt",
             abs(r_int - s_int) * 100 <= TARGETS["interactive"]),
            ("batch %", 100 * s_bat, 100 * r_bat, 100 * (r_bat - s_bat), "equal", abs(r_bat - s_bat) < 1e-9),
            ("GPU-hours", s_gpu, r_gpu, _rel(r_gpu, s_gpu), "±10 %",
             abs(r_gpu - s_gpu) <= TARGETS["gpu_hours"] * s_gpu),
            ("launches", s_l, r_l, _rel(r_l, s_l), "±25 %", abs(r_l - s_l) <= TARGETS["launches"] * max(s_l, 1)),
        ):
            unit = " pt" if "%" in metric else " %"
            d = f"{diff:+.1f}{unit}" if np.isfinite(diff) else "-"
            fmt = ".2f" if metric != "launches" else ".0f"
            rows.append(f"| {name} | {metric} | {s:{fmt}} | {r:{fmt}} | {d} | {target} | {'ok' if ok else 'MISS'} |")
            if not ok:
                misses.append(f"{name} {metric}: simulate {s:{fmt}}, replay {r:{fmt}} ({d})")
    return "\n".join(rows), misses


def _rel(r: float, s: float) -> float:
    return 100.0 * (r - s) / s if s else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", type=Path, default=ROOT / "benchmarks" / "scenarios" / "replay-check.toml")
    ap.add_argument("--policy", default="chirond")
    ap.add_argument("--speedup", type=float, default=5.0)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "replay-vs-sim")
    ap.add_argument("--replay-summary", type=Path, help="use this replay summary.json instead of running replay")
    args = ap.parse_args()
    sim = simulate(args.scenario, args.policy, args.seed)
    if args.replay_summary:
        rep = load_replay(args.replay_summary, args.policy)
    else:
        rep = replay(args.scenario, args.policy, args.speedup, args.seed, args.out)
    text, misses = table(sim, rep)
    print(f"\n{load_scenario(args.scenario).name}, policy {args.policy}, replay at speedup {rep.get('speedup')}"
          f" (trustworthy: {rep.get('trustworthy')}; client send lag p99 {rep.get('client_lag_p99_s', 0):.3f} s,"
          f" client loop lag max {rep.get('client_loop_lag_max_s', 0):.3f} s, daemon clock)\n")
    print(text)
    extra = {k: rep.get(k) for k in ("failures", "preemptions", "cancellations", "not_answered", "wrong_length",
                                      "errors", "peak_gpus", "end_s")}
    extra_sim = {k: sim.get(k) for k in ("failures", "preemptions", "cancellations", "peak_gpus", "end_s")}
    print(f"\nsimulate: {extra_sim}\nreplay:   {extra}")
    for w in rep.get("warnings", []):
        print(f"replay warning: {w}")
    if misses:
        print("\noutside the targets:\n  " + "\n  ".join(misses))
    return 0


if __name__ == "__main__":
    sys.exit(main())
