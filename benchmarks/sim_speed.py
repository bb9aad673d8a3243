"""Simulator speed and memory: each policy of a scenario in a fresh process, wall seconds,
requests per wall second and peak RSS. Prints a table and writes it into docs/benchmarks.md.

    python benchmarks/sim_speed.py                      # paper.toml (all policies) + backlog-700k
    python benchmarks/sim_speed.py --scenario X.toml --policies chirond
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- sim_speed:begin -->", "<!-- sim_speed:end -->"


def one(scenario: str, policy: str) -> None:
    from chirond.sim.compare import compare
    from chirond.sim.report import summarize
    from chirond.sim.scenario import load_scenario

    t0 = time.perf_counter()
    sc = load_scenario(scenario)
    (res,) = compare(sc, [policy], jobs=1)
    wall = time.perf_counter() - t0
    s = summarize(res)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "scenario": sc.name,
                "policy": policy,
                "wall_s": wall,
                "sim_wall_s": res.wall_s,
                "requests": int(s["requests"]),
                "events": res.events,
                "peak_rss_mb": rss_mb,
                "interactive_attainment": s["interactive_attainment"],
                "batch_attainment": s["batch_attainment"],
                "gpu_hours": s["gpu_hours"],
            }
        )
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", action="append")
    ap.add_argument("--policies", default=None)
    ap.add_argument("--one", nargs=2, metavar=("SCENARIO", "POLICY"), help=argparse.SUPPRESS)
    ap.add_argument("--no-doc", action="store_true", help="print only, do not update docs/benchmarks.md")
    a = ap.parse_args()
    if a.one:
        one(*a.one)
        return 0
    plan: list[tuple[str, list[str]]] = []
    if a.scenario:
        pols = (a.policies or "chirond").split(",")
        plan = [(s, pols) for s in a.scenario]
    else:
        sdir = ROOT / "benchmarks" / "scenarios"
        plan = [
            (str(sdir / "paper.toml"), ["static", "llumnix", "llumnix-tuned", "chiron", "chirond"]),
            (str(sdir / "backlog-700k.toml"), ["chirond"]),
        ]
    rows = []
    for scenario, pols in plan:
        for p in pols:
            out = subprocess.run(
                [sys.executable, __file__, "--one", scenario, p], capture_output=True, text=True, check=True
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(r)
            print(
                f"{r['scenario']:14} {p:14} wall {r['wall_s']:7.1f} s (simulation {r['sim_wall_s']:6.1f} s), "
                f"{r['requests']:>8} requests, {r['requests'] / r['sim_wall_s']:>9,.0f} req/wall-s, "
                f"{r['events']:>9} events, peak RSS {r['peak_rss_mb']:6.0f} MB",
                flush=True,
            )
    if a.no_doc:
        return 0
    lines = [
        BEGIN,
        f"Measured {time.strftime('%Y-%m-%d')} with `python benchmarks/sim_speed.py` on {platform.machine()}, "
        f"Python {platform.python_version()}, one process per run (llumnix-tuned = 5 runs in one process).",
        "",
        "| scenario | policy | wall s (total) | wall s (simulation) | requests | requests / wall s "
        "| events | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['policy']} | {r['wall_s']:.1f} | {r['sim_wall_s']:.1f} | {r['requests']:,} | "
            f"{r['requests'] / r['sim_wall_s']:,.0f} | {r['events']:,} | {r['peak_rss_mb']:.0f} |"
        )
    lines.append(END)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\n"
    if BEGIN in text:
        text = text[: text.index(BEGIN)] + "\n".join(lines) + text[text.index(END) + len(END) :]
    else:
        text += "\n## Simulator speed\n\n" + "\n".join(lines) + "\n"
    DOC.write_text(text)
    print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
