"""Bare names of shipped profiles and scenarios resolve everywhere; a scenario copied out of the
repository still finds its profiles and traces."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from chirond import bundled
from chirond.cli import chiron_main
from chirond.profiles import ProfileError, find_profile
from chirond.sim.scenario import load_scenario


def test_a_bare_scenario_name_is_the_shipped_scenario() -> None:
    assert bundled.scenario_path("paper-small") == bundled.directory("scenarios") / "paper-small.toml"
    assert bundled.scenario_path("paper-small.toml").is_file()
    assert bundled.scenario_path("no-such") == Path("no-such")  # left for the loader to refuse
    assert "paper-small" in bundled.available_scenarios()
    assert load_scenario("paper-small").name


def test_a_scenario_copied_elsewhere_finds_the_shipped_profiles_and_traces(tmp_path: Path) -> None:
    copy = tmp_path / "mine.toml"
    shutil.copyfile(bundled.scenario_path("paper-small"), copy)
    sc = load_scenario(copy)
    assert all(m.profile_path.parent == bundled.PROFILES_DIR for m in sc.models)
    assert all(w.params["path"].parent == bundled.DATA_DIR for m in sc.models for w in m.workloads
               if "path" in w.params)


def test_a_bare_profile_name_resolves_and_an_unknown_one_lists_the_shipped(capsys: pytest.CaptureFixture[str]) -> None:
    assert find_profile("llama-3.1-8b_a100-80gb_tp1") == bundled.PROFILES_DIR / "llama-3.1-8b_a100-80gb_tp1.toml"
    with pytest.raises(ProfileError, match=r"shipped: .*llama-3\.1-8b_a100-80gb_tp1"):
        find_profile("no-such-profile")
    assert chiron_main(["profile", "llama-3.1-8b_a100-80gb_tp1"]) == 0
    assert "cold start" in capsys.readouterr().out
