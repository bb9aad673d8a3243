"""The files chirond ships besides its code: the example configs, the systemd unit, the simulator's
scenarios and the performance profiles. In a checkout they are where the repository keeps them
(etc/, benchmarks/scenarios/); an installed wheel carries copies under chirond/data/share (setup.py
puts them there), so `chirond install --print`, `chirond simulate paper-small` and the rest work
the same from either."""

from __future__ import annotations

from pathlib import Path

import chirond

PACKAGE_DIR = Path(chirond.__file__).resolve().parent
DATA_DIR = PACKAGE_DIR / "data"
PROFILES_DIR = DATA_DIR / "profiles"
_SHARE = DATA_DIR / "share"  # in a wheel
_CHECKOUT = PACKAGE_DIR.parent  # in a checkout: the repository root

# Where each kind of file lives: (in a wheel, in a checkout); setup.py copies one to the other.
LAYOUT = {"etc": ("etc", "etc"), "scenarios": ("scenarios", "benchmarks/scenarios")}
SHIPPED = {"etc": ("chirond.toml", "demo.toml", "chirond.service")}  # scenarios: every *.toml


def directory(kind: str) -> Path:
    wheel, checkout = LAYOUT[kind]
    shared = _SHARE / wheel
    return shared if shared.is_dir() else _CHECKOUT / checkout


def etc_file(name: str) -> Path:
    """chirond.toml (the example for a site), demo.toml, chirond.service (the systemd unit)."""
    return directory("etc") / name


def available_scenarios() -> list[str]:
    return sorted(p.stem for p in directory("scenarios").glob("*.toml"))


def scenario_path(raw: str | Path) -> Path:
    """A scenario file: a path as given when it exists, else a shipped scenario's bare name
    (`paper-small` or `paper-small.toml`); the path as given when neither (the loader says so)."""
    p = Path(raw)
    if p.exists() or p.parent != Path("."):
        return p
    shipped = directory("scenarios") / (p.name if p.suffix == ".toml" else p.name + ".toml")
    return shipped if shipped.is_file() else p


def data_file(path: Path) -> Path:
    """A data file a scenario names relative to itself (`../../chirond/data/x.csv`): as given when
    it exists, else the shipped file of that name (a scenario copied out of the repository)."""
    if path.is_file():
        return path
    for d in (DATA_DIR, PROFILES_DIR):
        if (d / path.name).is_file():
            return d / path.name
    return path
