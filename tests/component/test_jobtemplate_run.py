"""The instance job template rendered and run for real under bash (outside Slurm, with SLURM_JOB_ID set
by hand): `bash -n` on the golden scripts and on hostile values, port choice, address file, signal
handling, exit status. The pure parts are in tests/unit/test_jobtemplate.py."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from chirond import engine_guard
from chirond.cluster.jobtemplate import (
    EXIT_BAD_HOST,
    EXIT_NO_PORT,
    JobSpec,
    addr_path,
    parse_addr_json,
    render_job,
)
from tests.support import ROOT, free_port_block
from tests.support.jobtemplate import CASES, DAEMON, GOLDEN, HOSTILE
from tests.support.paths import PROFILE_8B


def bash_syntax_ok(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    f = tmp_path / "check.sh"
    f.write_text(text)
    return subprocess.run(["bash", "-n", str(f)], capture_output=True, text=True, timeout=30)

@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.sbatch")), ids=lambda p: p.name)
def test_golden_scripts_are_valid_bash(path: Path) -> None:
    r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr

# --- hostile values: quoting ------------------------------------------------------------------------


def test_hostile_values_stay_quoted(tmp_path: Path) -> None:
    spec = replace(CASES["vllm-a100"], model="x; rm -rf /", engine_argv=("vllm", *HOSTILE),
                   env={"EVIL": "$(id)\n`id`; rm -rf /", "Q": "it's"})
    script, args = render_job(spec)
    r = bash_syntax_ok(script, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "CHIROND_MODEL='x; rm -rf /'\n" in script
    assert "export EVIL='$(id)\n`id`; rm -rf /'\n" in script
    assert "export Q='it'\"'\"'s'\n" in script
    for arg in HOSTILE:
        if "{port}" not in arg:
            assert f"\n  {shlex.quote(arg)}\n" in script
    assert '\n  --x="$CHIROND_PORT"\n' in script
    assert '\n  "$CHIROND_PORT""$CHIROND_PORT"\n' in script
    assert "--job-name=chirond-x-rm-rf-12" in args
    # Nothing hostile reached an sbatch option.
    assert not [a for a in args if any(c in a for c in ";$`\n ")]


# --- the script, run for real -----------------------------------------------------------------------



def job_spec(tmp_path: Path, engine: tuple[str, ...], **over: Any) -> JobSpec:
    lo = free_port_block(4)
    base = dict(model="llama-8b", instance_id=3, daemon_id=DAEMON, engine_argv=engine,
                run_dir=str(tmp_path / "run"), python=sys.executable, bind_host="127.0.0.1",
                advertise_host="127.0.0.1", port_range=(lo, lo + 3))
    return JobSpec(**{**base, **over})


class Job:
    """The rendered script running under bash, as sbatch would start it (no Slurm involved)."""

    def __init__(self, tmp_path: Path, spec: JobSpec, job_id: str, env: dict[str, str] | None = None) -> None:
        script, _ = render_job(spec)
        self.path = tmp_path / f"job-{job_id}.sh"
        self.path.write_text(script)
        self.stderr_path = tmp_path / f"job-{job_id}.err"
        self.job_id = job_id
        self.spec = spec
        full_env = {**os.environ, "SLURM_JOB_ID": job_id, "SLURMD_NODENAME": "gpu07", "PYTHONPATH": str(ROOT),
                    **(env or {})}
        if not job_id:
            del full_env["SLURM_JOB_ID"]
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(["bash", str(self.path)], stdin=subprocess.DEVNULL, stdout=err,
                                         stderr=err, env=full_env, cwd=tmp_path)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def address(self, timeout: float = 15.0) -> dict[str, Any]:
        f = Path(addr_path(self.spec.run_dir, self.job_id))
        wait_for(lambda: f.exists() or self.proc.poll() is not None, timeout, self)
        assert f.exists(), self.stderr
        return json.loads(f.read_text())

    def wait(self, timeout: float = 20.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"job script still running after {timeout}s:\n{self.stderr}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def wait_for(cond: Callable[[], bool], timeout: float, job: Job | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out" + (f"; job stderr:\n{job.stderr}" if job else ""))
        time.sleep(0.02)


@pytest.fixture
def jobs() -> Iterator[list[Job]]:
    started: list[Job] = []
    yield started
    for j in started:
        j.kill()


# An engine that records its argv and environment, then exits with the status in $ENGINE_EXIT.
RECORDER = ("import json, os, sys; json.dump({'argv': sys.argv[1:], 'env': dict(os.environ)}, "
            "open(os.environ['RECORD'], 'w')); sys.exit(int(os.environ.get('ENGINE_EXIT', '0')))")

# An engine that waits for SIGTERM, notes it, and exits 7; it ignores nothing else.
SLEEPER = ("import os, signal, sys, time, pathlib\n"
           "d = pathlib.Path(os.environ['MARKS'])\n"
           "def term(*_):\n"
           "    (d / 'term').write_text('1'); sys.exit(7)\n"
           "signal.signal(signal.SIGTERM, term)\n"
           "(d / 'ready').write_text('1')\n"
           "while True: time.sleep(0.05)\n")


def test_hostile_values_reach_the_engine_verbatim(tmp_path: Path, jobs: list[Job]) -> None:
    sentinel = tmp_path / "pwned"
    payloads = [f"$(touch {sentinel})", f"`touch {sentinel}`", f"a; touch {sentinel}", f"x\ntouch {sentinel}",
                "it's \"q\"", "$HOME ${PATH} \\ *", "--port={port}", "{port}", ""]
    model = f"m; touch {sentinel}"
    record = tmp_path / "record.json"
    spec = job_spec(tmp_path, (sys.executable, "-c", RECORDER, *payloads), model=model,
                    env={"RECORD": str(record), "EVIL": f"$(touch {sentinel})\n`touch {sentinel}`; touch {sentinel}"})
    job = Job(tmp_path, spec, "4242")
    jobs.append(job)
    assert job.wait() == 0, job.stderr
    port = job.address()["port"]
    got = json.loads(record.read_text())
    assert got["argv"] == [p.replace("{port}", str(port)) for p in payloads]
    assert got["env"]["EVIL"] == spec.env["EVIL"]
    assert got["env"]["CHIROND_MODEL"] == model
    assert got["env"]["CHIROND_PORT"] == str(port)
    assert got["env"]["CHIROND_INSTANCE_ID"] == "3"
    # chirond's engine guard lies first on PYTHONPATH, as the module vLLM's --middleware imports.
    guard = Path(got["env"]["PYTHONPATH"].split(":")[0]) / f"{engine_guard.MODULE_NAME}.py"
    assert guard.read_text() == engine_guard.source()
    assert not sentinel.exists()


def test_address_file_then_engine_status(tmp_path: Path, jobs: list[Job]) -> None:
    record = tmp_path / "record.json"
    spec = job_spec(tmp_path, (sys.executable, "-c", RECORDER), env={"RECORD": str(record), "ENGINE_EXIT": "5"})
    job = Job(tmp_path, spec, "1001")
    jobs.append(job)
    assert job.wait() == 5
    a = parse_addr_json(Path(addr_path(spec.run_dir, "1001")).read_text(), job_id="1001")
    lo, hi = spec.port_range
    assert a.host == "127.0.0.1" and a.node == "gpu07" and a.instance_id == 3
    assert a.port == lo + 1001 % (hi - lo + 1)  # the job id picks the first port to try
    assert abs(a.started_at - time.time()) < 60
    assert not list(Path(spec.run_dir).glob(".*.addr.json*"))  # the temporary file was renamed, not left behind
    assert "engine exited with status 5" in job.stderr


def test_busy_ports_are_skipped_and_none_free_fails(tmp_path: Path, jobs: list[Job]) -> None:
    record = tmp_path / "record.json"
    spec = job_spec(tmp_path, (sys.executable, "-c", RECORDER), env={"RECORD": str(record)})
    lo = spec.port_range[0]
    job_id = str(4 * 1000)  # 4000 % 4 == 0: the first port tried is lo
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", lo))
        busy.listen()
        job = Job(tmp_path, spec, job_id)
        jobs.append(job)
        assert job.wait() == 0, job.stderr
        assert job.address()["port"] == lo + 1

        one = replace(spec, port_range=(lo, lo), run_dir=str(tmp_path / "run2"))
        job = Job(tmp_path, one, job_id)
        jobs.append(job)
        assert job.wait() == EXIT_NO_PORT
        assert "no free TCP port" in job.stderr
        assert not Path(addr_path(one.run_dir, job_id)).exists()


def test_refuses_to_run_outside_a_job(tmp_path: Path, jobs: list[Job]) -> None:
    spec = job_spec(tmp_path, ("true",))
    job = Job(tmp_path, spec, "")
    jobs.append(job)
    assert job.wait() == EXIT_BAD_HOST
    assert "run this through sbatch" in job.stderr


def test_usr1_is_logged_and_term_is_forwarded(tmp_path: Path, jobs: list[Job]) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    spec = job_spec(tmp_path, (sys.executable, "-c", SLEEPER), env={"MARKS": str(marks)})
    job = Job(tmp_path, spec, "2002")
    jobs.append(job)
    job.address()
    wait_for(lambda: (marks / "ready").exists(), 15, job)

    job.proc.send_signal(signal.SIGUSR1)  # Slurm's --signal=B:USR1@N reaches the batch shell only
    wait_for(lambda: "SIGUSR1" in job.stderr, 10, job)
    time.sleep(0.3)
    assert job.proc.poll() is None, "USR1 must not end the job"
    assert not (marks / "term").exists()

    job.proc.send_signal(signal.SIGTERM)
    assert job.wait() == 7  # the engine's own status after it handled TERM
    assert (marks / "term").exists()
    assert "forwarding to the engine" in job.stderr


def test_fake_vllm_serves_at_the_reported_address_and_drains_on_term(tmp_path: Path, jobs: list[Job]) -> None:
    """The whole contract with the project's simulated server as the engine."""
    spec = job_spec(tmp_path, (sys.executable, "-m", "chirond", "fake-vllm", "--profile", str(PROFILE_8B),
                               "--model", "llama-8b", "--host", "127.0.0.1", "--port", "{port}",
                               "--startup-s", "0", "--shutdown-timeout", "1"))
    job = Job(tmp_path, spec, "3003")
    jobs.append(job)
    a = parse_addr_json(json.dumps(job.address()), job_id="3003")
    url = f"http://{a.host}:{a.port}/health"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return job.proc.poll() is not None

    wait_for(healthy, 30, job)
    assert job.proc.poll() is None, job.stderr
    job.proc.send_signal(signal.SIGTERM)
    assert job.wait(30) == 0, job.stderr
