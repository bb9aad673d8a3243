"""etc/chirond.service checked by `systemd-analyze` (verify, security) where it is installed: a child
process each, so here rather than in tests/unit/test_service_unit.py."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT

UNIT = ROOT / "etc" / "chirond.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed here (Debian: apt-get install systemd)"
)


# ---------------------------------------------------------------- systemd-analyze


def _verify(text: str, tmp_path: Path) -> tuple[int, list[str], str]:
    """Run `systemd-analyze verify` on `text` saved as chirond.service; returns its exit status, the
    lines that concern the unit, and the whole output."""
    assert SYSTEMD_ANALYZE is not None
    path = tmp_path / "chirond.service"
    path.write_text(text)
    r = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(path)], capture_output=True, text=True,
                       timeout=120, env={"PATH": "/usr/bin:/bin", "SYSTEMD_LOG_COLOR": "0", "LANG": "C"})
    out = r.stderr + r.stdout
    return r.returncode, [ln for ln in out.splitlines() if "chirond" in ln], out


def _runnable(text: str) -> str:
    """The unit with ExecStart on the chirond installed here: verify requires the binary to exist."""
    exe = shutil.which("chirond")
    if exe is None:
        pytest.skip("no `chirond` on PATH (pip install -e .): systemd-analyze verify needs ExecStart to exist")
    new, n = re.subn(r"^ExecStart=/usr/local/bin/chirond ", f"ExecStart={exe} ", text, flags=re.M)
    assert n == 1
    return new


@needs_systemd_analyze
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    rc, problems, out = _verify(_runnable(UNIT.read_text()), tmp_path)
    assert problems == [], out
    assert rc == 0, out


@needs_systemd_analyze
def test_systemd_analyze_verify_catches_mistakes(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key and a missing binary are reported."""
    text = _runnable(UNIT.read_text()).replace("ProtectSystem=strict", "ProtectSytem=strict")
    _, problems, out = _verify(text, tmp_path)
    assert any("Unknown key" in p and "ProtectSytem" in p for p in problems), out
    rc, problems, out = _verify(UNIT.read_text().replace("/usr/local/bin/chirond", "/nonexistent/chirond"),
                                tmp_path)
    assert rc != 0 and any("not executable" in p for p in problems), out


@needs_systemd_analyze
def test_systemd_analyze_security(tmp_path: Path) -> None:
    """The sandbox keeps systemd's exposure score at most "MEDIUM" (4.7 "OK" with systemd 252)."""
    assert SYSTEMD_ANALYZE is not None
    path = tmp_path / "chirond.service"
    path.write_text(_runnable(UNIT.read_text()))
    r = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(path)],
                       capture_output=True, text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "SYSTEMD_LOG_COLOR": "0", "LANG": "C"})
    m = re.search(r"Overall exposure level for chirond\.service: (\d+(?:\.\d+)?)", r.stdout + r.stderr)
    if m is None:
        pytest.skip(f"systemd-analyze security --offline is not supported here (systemd < 250?): {r.stderr[-300:]}")
    assert float(m.group(1)) <= 6.0, r.stdout
