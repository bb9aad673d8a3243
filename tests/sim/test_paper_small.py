"""CI runs the reduced paper scenario with every policy and checks the claims docs/policies.md makes
about their order (the full paper.toml is measured in benchmarks/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chirond.sim.compare import compare
from chirond.sim.report import summarize
from chirond.sim.scenario import load_scenario

SCENARIO = Path(__file__).resolve().parents[2] / "benchmarks" / "scenarios" / "paper-small.toml"


@pytest.fixture(scope="module")
def summaries() -> dict[str, dict[str, object]]:
    sc = load_scenario(SCENARIO)
    results = compare(sc, list(sc.policies), jobs=2)
    return {r.policy: summarize(r) for r in results}


def test_every_policy_ran(summaries: dict[str, dict[str, object]]) -> None:
    assert set(summaries) == {"static", "llumnix", "llumnix-tuned", "chiron", "chirond"}
    for s in summaries.values():
        assert s["unfinished"] == 0
        assert float(s["gpu_hours"]) >= float(s["gpu_hours_lower_bound"])  # type: ignore[arg-type]


def test_chirond_has_the_best_interactive_attainment_and_meets_every_deadline(
    summaries: dict[str, dict[str, object]],
) -> None:
    ours = float(summaries["chirond"]["interactive_attainment"])  # type: ignore[arg-type]
    for name, s in summaries.items():
        if name != "chirond":
            assert ours > float(s["interactive_attainment"]) + 0.01, name  # type: ignore[arg-type]
    assert summaries["chirond"]["batch_attainment"] == 1.0


def test_no_policy_within_one_point_uses_fewer_gpu_hours(summaries: dict[str, dict[str, object]]) -> None:
    ours = summaries["chirond"]
    for name, s in summaries.items():
        close = abs(float(s["interactive_attainment"]) - float(ours["interactive_attainment"])) <= 0.01  # type: ignore[arg-type]
        if name != "chirond" and close:
            assert float(s["gpu_hours"]) >= float(ours["gpu_hours"]), name  # type: ignore[arg-type]
