"""etc/chirond.service: the settings the daemon relies on are there (notify, restart, the dedicated
user, the stop budget against the daemon's own timeouts, the sandbox and what it must not hold),
and every directive has its comment. `systemd-analyze` on it: tests/component/test_service_unit_verify.py."""

from __future__ import annotations

import configparser
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from chirond.cluster import local as local_backend
from chirond.config import DaemonConfig, LifecycleConfig

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "etc" / "chirond.service"
EXAMPLE = ROOT / "etc" / "chirond.toml"

HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "read-only",
    "PrivateTmp": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "RestrictRealtime": "yes",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
    "UMask": "0027",
}
# Settings that would break chirond (GPUs hidden, no network, Slurm/munge/ssh confused, engines'
# generated code refused, Apptainer's namespaces refused, a changing uid in Slurm's accounting).
FORBIDDEN = (
    "PrivateNetwork",
    "PrivateUsers",
    "PrivateDevices",
    "DevicePolicy",
    "DeviceAllow",
    "ProtectClock",
    "MemoryDenyWriteExecute",
    "RestrictNamespaces",
    "SystemCallFilter",
    "DynamicUser",
    "IPAddressDeny",
)


def _parse(text: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"),
                                   inline_comment_prefixes=None, empty_lines_in_values=False)
    cp.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    cp.read_string(text)
    return cp


@pytest.fixture(scope="module")
def unit() -> configparser.ConfigParser:
    return _parse(UNIT.read_text())


def _seconds(span: str) -> float:
    """A systemd time span ("90", "90s", "1min 30s", "2.5min") in seconds."""
    units = {"": 1.0, "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0, "ms": 1e-3, "msec": 1e-3,
             "us": 1e-6, "usec": 1e-6, "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
             "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span.strip())
    assert parts and "".join(n + u for n, u in parts) == re.sub(r"\s+", "", span), f"not a time span: {span!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_seconds_parser() -> None:
    assert _seconds("90") == 90 and _seconds("90s") == 90 and _seconds("1min 30s") == 90
    assert _seconds("2.5min") == 150 and _seconds("500ms") == 0.5
    with pytest.raises(AssertionError):
        _seconds("soon")


def test_sections(unit: configparser.ConfigParser) -> None:
    assert unit.sections() == ["Unit", "Service", "Install"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "network-online.target" in unit["Unit"]["Wants"].split()
    assert "network-online.target" in unit["Unit"]["After"].split()


def test_notify_and_restart(unit: configparser.ConfigParser) -> None:
    s = unit["Service"]
    assert s["Type"] == "notify"
    assert s["NotifyAccess"] == "main"
    assert s["Restart"] == "on-failure"
    assert _seconds(s["RestartSec"]) == 5
    assert s["RestartPreventExitStatus"].split() == ["2"]  # chirond serve's exit status for a config error
    watchdog = _seconds(s["WatchdogSec"])
    assert watchdog == 30
    assert watchdog > 2 * DaemonConfig().tick_s  # several control ticks fit in one watchdog period
    assert s["KillMode"] == "mixed"  # SIGTERM to the daemon alone: it drains, then stops its engines
    assert s["OOMPolicy"] == "continue"  # an engine killed by the OOM killer must not stop the service
    assert "ExecReload" not in s, "the daemon does not handle SIGHUP yet: ExecReload would terminate it"


def test_exec_start(unit: configparser.ConfigParser) -> None:
    argv = shlex.split(unit["Service"]["ExecStart"])
    assert argv[0] == "/usr/local/bin/chirond"
    assert argv[1:] == ["serve", "--config", "/etc/chirond/chirond.toml"]


def test_dedicated_user(unit: configparser.ConfigParser) -> None:
    s = unit["Service"]
    assert s["User"] == "chirond" and s["Group"] == "chirond"
    assert "DynamicUser" not in s  # a stable uid: Slurm jobs and accounting belong to it


def test_directories_match_the_config_defaults(unit: configparser.ConfigParser) -> None:
    s = unit["Service"]
    assert s["StateDirectory"] == "chirond"
    assert s["RuntimeDirectory"] == "chirond"
    state = Path("/var/lib") / s["StateDirectory"]
    assert DaemonConfig().state_dir == state
    assert Path(s["WorkingDirectory"]) == state  # writable, unlike the default /
    example = tomllib.loads(EXAMPLE.read_text())
    assert Path(example["daemon"]["state_dir"]) == state


def _stop_budget_s(daemon: dict[str, float], local: dict[str, float]) -> float:
    """The longest a clean stop takes: the drain, the engines' SIGTERM grace, the wait after SIGKILL."""
    return daemon["shutdown_timeout_s"] + local["stop_grace_s"] + local_backend._KILL_WAIT_S


def test_stop_timeout_covers_the_daemons_shutdown(unit: configparser.ConfigParser) -> None:
    stop_s = _seconds(unit["Service"]["TimeoutStopSec"])
    d, lb = DaemonConfig(), LifecycleConfig()
    defaults = _stop_budget_s({"shutdown_timeout_s": d.shutdown_timeout_s}, {"stop_grace_s": lb.stop_grace_s})
    assert stop_s > defaults + 10, f"TimeoutStopSec={stop_s:g}s leaves no margin over {defaults:g}s"
    example = tomllib.loads(EXAMPLE.read_text())
    shipped = _stop_budget_s(
        {"shutdown_timeout_s": example["daemon"].get("shutdown_timeout_s", d.shutdown_timeout_s)},
        {"stop_grace_s": example["lifecycle"].get("stop_grace_s", lb.stop_grace_s)},
    )
    assert stop_s > shipped + 10


def test_hardening(unit: configparser.ConfigParser) -> None:
    s = unit["Service"]
    for key, value in HARDENING.items():
        assert key in s, f"{key} missing"
        assert s[key] == value, f"{key}={s[key]!r}, expected {value!r}"
    families = s["RestrictAddressFamilies"].split()
    assert not families[0].startswith("~"), "an allow list, not a deny list"
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(families)
    assert set(families) <= {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}


def test_nothing_that_breaks_gpus_network_or_slurm(unit: configparser.ConfigParser) -> None:
    present = [k for k in FORBIDDEN if any(k in unit[sec] for sec in unit.sections())]
    assert present == []


def test_every_directive_is_commented() -> None:
    """Each `Key=value` line comes right after a comment line, and no value holds a '#' (systemd has
    no trailing comments: it would be part of the value)."""
    lines = UNIT.read_text().splitlines()
    uncommented = []
    for i, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith(("#", ";", "[")):
            continue
        assert "=" in line, f"line {i + 1}: not a directive: {line!r}"
        assert "#" not in line, f"line {i + 1}: a '#' after a value is not a comment in a unit file"
        if i == 0 or not lines[i - 1].lstrip().startswith("#"):
            uncommented.append(f"{i + 1}: {line}")
    assert uncommented == []
