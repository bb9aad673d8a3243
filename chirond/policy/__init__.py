"""Scaling policies behind a registry. Each is pure: `plan(snapshot, state) -> Decision`."""

from __future__ import annotations

from collections.abc import Mapping

from chirond.policy.base import Policy
from chirond.policy.chiron import ChironPolicy
from chirond.policy.chirond import ChirondPolicy
from chirond.policy.llumnix import LlumnixPolicy
from chirond.policy.static import StaticPolicy
from chirond.profiles import Profile

REGISTRY: dict[str, type[Policy]] = {
    cls.name: cls for cls in (StaticPolicy, LlumnixPolicy, ChironPolicy, ChirondPolicy)
}
# Names that expand to several runs of a registered policy (see chirond.sim.compare).
SWEEPS: dict[str, str] = {"llumnix-tuned": "llumnix"}


def names() -> list[str]:
    return [*REGISTRY, *SWEEPS]


def make_policy(name: str, profiles: Mapping[str, Profile], params: Mapping[str, object] | None = None) -> Policy:
    try:
        cls = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(names())}") from None
    return cls(profiles, params)
