"""`chirond replay` end to end: the real daemon as a subprocess with simulated engines, a short
trace, a batch backlog through the Batch API and a job time limit that forces a handover. It
agrees with `chirond simulate` on the same scenario within loose bounds (a loaded CI machine is
slow and may lag: --allow-lag); the targets themselves are benchmarks/replay_vs_sim.py's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from chirond.sim.compare import run_one
from chirond.sim.report import summarize
from chirond.sim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[2]


def test_replay_runs_the_daemon_and_reports_like_simulate(tmp_path: Path) -> None:
    sc_path = tmp_path / "short.toml"
    sc_path.write_text(f"""
name = "replay-test"
seed = 3
horizon_s = 400
tick_s = 2.0
[cluster]
gpus = 6
queue_wait_s = [0, 5]
time_limit_s = 90
[models.small]
profile = "{ROOT / 'profiles' / 'llama-3.1-8b_a100-80gb_tp1.toml'}"
cold_start_s = 10
slo = {{ ttft_s = 2.0, tpot_s = 0.1 }}
min_instances = 1
initial_instances = 1
max_gpus = 4
[[models.small.workload]]
kind = "poisson"
rate_per_s = 0.5
duration_s = 150
lengths = {{ input_tokens = 200, output_tokens = 30 }}
[[models.small.workload]]
kind = "backlog"
requests = 30
deadline_s = 200
lengths = {{ input_tokens = 100, output_tokens = 20 }}
[policies]
run = ["chirond"]
""")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "chirond", "replay", str(sc_path), "--speedup", "5", "--out", str(out),
         "--allow-lag", "--no-plots"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (rep,) = json.loads((out / "summary.json").read_text())
    sim = summarize(run_one(load_scenario(sc_path), "chirond"))
    assert set(sim) <= set(rep)  # the simulator's keys, and more
    assert set(sim["per_model"]["small"]) <= set(rep["per_model"]["small"])
    for key in ("speedup", "trustworthy", "client_lag_p99_s", "loop_lag_max_s", "warnings"):
        assert key in rep, key
    assert rep["speedup"] == 5.0 and isinstance(rep["trustworthy"], bool)
    assert rep["interactive_requests"] == sim["interactive_requests"] > 0
    assert rep["batch_requests"] == 30
    assert rep["wrong_length"] == 0  # fake-vllm produced exactly the scenario's output lengths
    assert rep["unfinished"] <= 0.1 * rep["requests"]  # a time limit may cut a few streams
    assert rep["batch_attainment"] == 1.0
    assert rep["failures"] >= 1  # the initial instance hit its 90 s limit...
    assert rep["launches"] >= 1  # ...and was handed over
    assert rep["gpu_hours"] > 0 and rep["peak_gpus"] >= 1
    assert rep["per_model"]["small"]["launches"] == rep["launches"]
    # It agrees with the simulator, with room for a loaded CI machine (measured on a quiet one:
    # 1.6 points, 4 % of GPU-hours, launches equal; the targets are benchmarks/replay_vs_sim.py's).
    assert abs(rep["interactive_attainment"] - sim["interactive_attainment"]) <= 0.10
    assert rep["batch_attainment"] == sim["batch_attainment"]
    assert abs(rep["gpu_hours"] - sim["gpu_hours"]) <= 0.3 * sim["gpu_hours"]
    assert abs(rep["launches"] - sim["launches"]) <= max(3, 0.5 * sim["launches"])
    assert (out / "summary.md").is_file() and (out / "decisions.log").read_text().strip()
    cfg = (out / "chirond" / "chirond.toml").read_text()
    assert "clock_speedup = 5.0" in cfg and "sim_startup_s = 2.0" in cfg and "time_limit_s = 90.0" in cfg
    # the daemon and every engine it started are gone
    log = (out / "chirond" / "daemon.log").read_text()
    assert "chirond stopped" in log
    for pid in {int(p) for p in re.findall(r"started pid (\d+)", log)}:
        assert not _running(pid), pid
    assert np.isfinite(rep["gpu_hours"])


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
