"""The built wheel works outside the repository: built from a copy of the source, installed into a
fresh venv in a temporary directory, it carries the example configs, the unit and the scenarios,
and `chirond check-config` (the bundled demo config), `chiron profile <bare name>`, `chirond
simulate paper-small`, `chirond install --print`, completion and man pages run from there. The fresh venv gets chirond
from the wheel only; its dependencies come from the test's own environment (a path in a .pth
file), so the test needs no package index beyond the build's own setuptools."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.support.paths import ROOT

_SKIP = shutil.ignore_patterns(".git", ".venv", "build", "dist", "out", "*.egg-info", "__pycache__", ".*_cache",
                               "sim-out*", "tests")


def _run(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "LANG": "C.UTF-8", "COLUMNS": "200"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_the_wheel_installed_in_a_fresh_venv_runs_the_bundled_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=_SKIP, symlinks=True)
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(src)],
                 tmp_path)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("chirond-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    installed = _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                     tmp_path)
    assert installed.returncode == 0, installed.stderr
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path)
                .stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    bin_ = venv / "bin"

    where = _run([str(bin_ / "chirond"), "install", "--print", "--json"], work)
    assert where.returncode == 0, where.stderr
    paths = json.loads(where.stdout)
    for key in ("example_config", "demo_config", "systemd_unit", "scenarios_dir", "profiles_dir"):
        assert Path(paths[key]).exists() and Path(paths[key]).is_relative_to(site), (key, paths[key])
    assert "paper-small" in paths["scenarios"] and "[Service]" in Path(paths["systemd_unit"]).read_text()

    check = _run([str(bin_ / "chirond"), "check-config", paths["demo_config"]], work)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "llama-8b" in check.stdout

    prof = _run([str(bin_ / "chiron"), "profile", "llama-3.1-8b_a100-80gb_tp1"], work)
    assert prof.returncode == 0, prof.stderr
    assert "cold start" in prof.stdout

    comp = _run([str(bin_ / "chirond"), "install", "--completion", "bash"], work)
    assert comp.returncode == 0 and "complete -o filenames -F _chiron chiron" in comp.stdout, comp.stderr
    assert _run(["bash", "-n", "-c", comp.stdout], work).returncode == 0
    man = _run([str(bin_ / "chirond"), "install", "--man", str(work / "man")], work)
    assert man.returncode == 0, man.stderr
    assert (work / "man" / "chiron.1").read_text().startswith(".TH CHIRON 1")

    sim = _run([str(bin_ / "chirond"), "simulate", "paper-small", "--policies", "static", "--jobs", "1",
                "--out", str(work / "sim")], work)
    assert sim.returncode == 0, sim.stderr
    (static,) = json.loads((work / "sim" / "summary.json").read_text())
    assert static["policy"] == "static" and static["requests"] > 0
