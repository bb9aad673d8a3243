"""benchmarks/by_hour.py: misses and instances per bin, and the hindsight schedule, worked by hand."""

from __future__ import annotations

import json
import math
import runpy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from chirond.sim.results import RunResult
from tests.support.runs import run_from_rows

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = runpy.run_path(str(ROOT / "benchmarks" / "by_hour.py"))
NAN = math.nan
# model, cls, arrival, first_token, finish, output_tokens (TTFT SLO 1 s, TPOT 0.1 s)
ROWS = [
    (0, 0, 10.0, 10.5, 11.0, 11),  # bin 0: met
    (0, 0, 20.0, 20.5, 21.0, 11),  # bin 0: met
    (0, 0, 50.0, 52.0, 53.0, 11),  # bin 0: TTFT 2 s, missed
    (0, 0, 120.0, 120.5, NAN, 1),  # bin 1: never finished, missed
    (0, 1, 130.0, 140.0, 150.0, 20),  # batch: not counted
    (1, 0, 140.0, 150.0, 151.0, 11),  # the other model: not counted
    (0, 0, 250.0, 250.5, 251.0, 11),  # past the last bin: counted in it (bin 1), met
]


def result() -> RunResult:
    timeline = {"t": np.array([0.0, 50.0, 100.0, 150.0, 200.0]), "gpus": np.zeros(5),
                "a/mixed": np.array([1.0, 2.0, 2.0, 0.0, 9.0]), "a/starting": np.array([0.0, 1.0, 0.0, 2.0, 0.0]),
                "b/mixed": np.array([5.0, 5.0, 5.0, 5.0, 5.0])}
    return run_from_rows([(m, c, a, f, e, NAN, o) for m, c, a, f, e, o in ROWS], ["a", "b"], timeline)


def test_misses_and_instances_per_bin() -> None:
    assert SCRIPT["n_bins"](result(), "a", 100.0) == 3  # the last arrival (250 s) is in bin 2
    assert SCRIPT["n_bins"](result(), "b", 100.0) == 2
    requests, misses = SCRIPT["misses_by_bin"](result(), "a", 100.0, 2)
    assert requests.tolist() == [3, 2]
    assert misses.tolist() == [1, 1]  # not the 2 met in bin 0
    held = SCRIPT["held_by_bin"](result(), "a", 100.0, 2)
    assert held.tolist() == [2.0, 2.0]  # (1 + 3) / 2 and (2 + 2) / 2: ready and starting both held
    # (the sample at 200 s is past the last bin, as a run's tail after the model's traffic is)


def test_the_hindsight_schedule_buys_an_instance_only_where_it_pays_the_price() -> None:
    # 2 bins of half an hour, 4 GPUs an instance: one more instance costs 2 GPU-hours a bin.
    fixed = {1: np.array([100, 10]), 2: np.array([40, 4]), 3: np.array([35, 0])}
    # price 10: bin 0 buys the 2nd (60 avoided >= 20) not the 3rd (5 < 20); bin 1 none (6 < 20)
    assert SCRIPT["hindsight"](fixed, 4, 0.5, 10.0) == ([2, 1], 50, 6.0)
    # price 2: the 3rd pays in bin 0 (5 >= 4), and bin 1 buys both (6 >= 4, then 4 >= 4)
    assert SCRIPT["hindsight"](fixed, 4, 0.5, 2.0) == ([3, 3], 35, 12.0)


def test_a_schedule_in_the_whole_run_keeps_the_other_models_as_the_run_had_them(tmp_path: Path) -> None:
    run = replace(result(), gpu_hours=10.0, gpu_hours_by_model={"a": 4.0, "b": 6.0})
    # 6 interactive requests: b's one missed (TTFT 10 s), a's replaced by 1 miss and 2.5 GPU-hours
    att, gpu_h = SCRIPT["whole_run"](run, "a", 1, 2.5)
    assert (round(att, 9), gpu_h) == (round(1 - 2 / 6, 9), 8.5)
    # the run itself: a's own 2 misses (50 s, 120 s) and its own GPU-hours give the run's figures
    assert SCRIPT["whole_run"](run, "a", 2, 4.0) == (0.5, 10.0)


def test_the_frontier_to_place_schedules_against_must_be_of_the_same_run(tmp_path: Path) -> None:
    front = [{"instances": {"a": 1}, "interactive_attainment": 0.9, "batch_attainment": 1.0, "gpu_hours": 5.0}]
    path = tmp_path / "summary.json"
    path.write_text(json.dumps([{"policy": "static", "scenario": "s", "seed": 2},
                                {"policy": "p", "scenario": "s", "seed": 2, "frontier": front}]))
    assert SCRIPT["load_frontier"](str(path), "s", 2) == front
    with pytest.raises(ValueError, match="seed 2, not s seed 1"):
        SCRIPT["load_frontier"](str(path), "s", 1)
    path.write_text(json.dumps([{"policy": "p", "scenario": "s", "seed": 2}]))
    with pytest.raises(ValueError, match="no frontier"):
        SCRIPT["load_frontier"](str(path), "s", 2)
