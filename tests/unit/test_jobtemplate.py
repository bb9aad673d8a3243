"""The instance job template (chirond.cluster.jobtemplate + slurm/chirond-instance.sbatch): golden
files, validation, quoting against hostile values, and the rendered script run for real (outside
Slurm, with SLURM_JOB_ID set by hand): port choice, address file, signal handling, exit status.

Regenerate the golden files after an intended change:  CHIROND_UPDATE_GOLDEN=1 pytest tests/unit/test_jobtemplate.py
"""

from __future__ import annotations

import json
import math
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

from chirond.cluster.jobtemplate import (
    EXIT_BAD_HOST,
    EXIT_NO_PORT,
    JobSpec,
    JobTemplateError,
    addr_path,
    default_template,
    job_name,
    ownership_tag,
    parse_addr_json,
    parse_job_name,
    parse_ownership_tag,
    render_job,
    sanitize_model,
)

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "slurm" / "golden"
PROFILE_8B = ROOT / "profiles" / "llama-3.1-8b_a100-80gb_tp1.toml"
DAEMON = "0f1e2d3c-aaaa-bbbb-cccc-000000000001"
UPDATE = os.environ.get("CHIROND_UPDATE_GOLDEN") == "1"

CASES: dict[str, JobSpec] = {
    # A production-like vLLM job: every optional scheduler field, typed GRES, hooks, env.
    "vllm-a100": JobSpec(
        model="meta-llama/Llama-3.1-8B-Instruct",
        instance_id=12,
        daemon_id=DAEMON,
        engine_argv=("vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct", "--host", "0.0.0.0", "--port", "{port}",
                     "--max-num-seqs", "256", "--served-model-name", "llama-8b", "--shutdown-timeout", "60"),
        run_dir="/shared/chirond/run",
        partition="a100",
        account="inference",
        qos="normal",
        reservation="llm-serving",
        gpus=1,
        gpu_type="a100",
        cpus_per_task=8,
        mem="64G",
        time_limit_s=4 * 3600,
        warn_before_s=300,
        site_hooks=("module load cuda/12.4", "source /shared/venvs/vllm/bin/activate"),
        env={"HF_HOME": "/shared/hf", "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "INFO"},
    ),
    # The simulated server on the loopback cluster: only the required fields, --gpus flavour.
    "fake-vllm-minimal": JobSpec(
        model="llama-8b",
        instance_id=0,
        daemon_id=DAEMON,
        engine_argv=("python3", "-m", "chirond", "fake-vllm", "--profile", str(PROFILE_8B.relative_to(ROOT)),
                     "--model", "llama-8b", "--host", "127.0.0.1", "--port={port}"),
        run_dir="/tmp/chirond-loopback/run",
        gpus=2,
        gpu_option="gpus",
        warn_before_s=None,
        advertise_host="127.0.0.1",
        port_range=(41000, 41999),
    ),
}

HOSTILE = [
    "x; rm -rf /",
    "$(id)",
    "`id`",
    "a\nb; id",
    "it's \"quoted\"",
    "$HOME ${PATH} \\ *",
    "--x={port}",
    "{port}{port}",
    "",
]


def bash_syntax_ok(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    f = tmp_path / "check.sh"
    f.write_text(text)
    return subprocess.run(["bash", "-n", str(f)], capture_output=True, text=True, timeout=30)


# --- golden files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    script, args = render_job(CASES[case])
    script_file, args_file = GOLDEN / f"{case}.sbatch", GOLDEN / f"{case}.args.json"
    if UPDATE:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        script_file.write_text(script)
        args_file.write_text(json.dumps(args, indent=2) + "\n")
    assert script == script_file.read_text(), f"{script_file} differs: CHIROND_UPDATE_GOLDEN=1 if intended"
    assert args == json.loads(args_file.read_text())


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.sbatch")), ids=lambda p: p.name)
def test_golden_scripts_are_valid_bash(path: Path) -> None:
    r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_golden_files_cover_every_case() -> None:
    assert {p.name.removesuffix(".sbatch") for p in GOLDEN.glob("*.sbatch")} == set(CASES)


def test_sbatch_options() -> None:
    _, args = render_job(CASES["vllm-a100"])
    assert args == [
        "--job-name=chirond-meta-llama-Llama-3.1-8B-Instruct-12",
        f"--comment=chirond:{DAEMON}:12",
        "--partition=a100",
        "--account=inference",
        "--qos=normal",
        "--reservation=llm-serving",
        "--nodes=1",
        "--ntasks=1",
        "--cpus-per-task=8",
        "--mem=64G",
        "--gres=gpu:a100:1",
        "--time=240",
        "--signal=B:USR1@300",
        "--output=/shared/chirond/run/chirond-meta-llama-Llama-3.1-8B-Instruct-12-%j.log",
        "--chdir=/shared/chirond/run",
        "--no-requeue",
    ]
    _, args = render_job(CASES["fake-vllm-minimal"])
    assert "--gpus=2" in args
    assert not [a for a in args if a.startswith(("--partition", "--account", "--qos", "--reservation", "--signal",
                                                  "--time", "--mem", "--cpus", "--gres", "--error"))]


@pytest.mark.parametrize(("over", "expect"), [
    ({"gpus": 0}, []),
    ({"gpus": 4, "gpu_option": "gres"}, ["--gres=gpu:4"]),
    ({"gpus": 2, "gpu_option": "gres", "gpu_type": "h100"}, ["--gres=gpu:h100:2"]),
    ({"gpus": 2, "gpu_option": "gpus"}, ["--gpus=2"]),
    ({"gpus": 2, "gpu_option": "gpus", "gpu_type": "a100"}, ["--gpus=a100:2"]),
])
def test_gpu_request(over: dict[str, Any], expect: list[str]) -> None:
    _, args = render_job(replace(CASES["fake-vllm-minimal"], **over))
    assert [a for a in args if a.startswith(("--gres", "--gpus"))] == expect


@pytest.mark.parametrize(("seconds", "minutes"), [(60, 1), (61, 2), (3600, 60), (0.5, 1), (86400 + 1, 1441)])
def test_time_limit_rounds_up_to_minutes(seconds: float, minutes: int) -> None:
    _, args = render_job(replace(CASES["fake-vllm-minimal"], time_limit_s=seconds))
    assert f"--time={minutes}" in args


def test_requeue_and_custom_log_paths() -> None:
    _, args = render_job(replace(CASES["fake-vllm-minimal"], requeue=True, output="/logs/%x-%j.out",
                                 error="/logs/%x-%j.err"))
    assert "--requeue" in args and "--no-requeue" not in args
    assert "--output=/logs/%x-%j.out" in args and "--error=/logs/%x-%j.err" in args


# --- validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    ("partition", "a100 b"),
    ("partition", "a100;id"),
    ("account", "$(id)"),
    ("qos", "normal\n#SBATCH --qos=high"),
    ("reservation", "r`id`"),
    ("gpu_type", "a100:2"),
    ("gpu_option", "both"),
    ("gpus", -1),
    ("cpus_per_task", 0),
    ("mem", "64 GB"),
    ("mem", "64G;id"),
    ("time_limit_s", 0),
    ("time_limit_s", -60),
    ("time_limit_s", math.nan),
    ("time_limit_s", math.inf),
    ("warn_before_s", 0),
    ("warn_before_s", 70000),
    ("port_range", (80, 90)),
    ("port_range", (30000, 20000)),
    ("port_range", (20000, 70000)),
    ("run_dir", "relative/run"),
    ("run_dir", "/run/%j"),
    ("run_dir", "/run\n--qos=high"),
    ("output", "logs/%j.out"),
    ("error", "/logs/x\n"),
    ("daemon_id", "abc:def"),
    ("instance_id", -1),
    ("bind_host", "0.0.0.0; id"),
    ("advertise_host", "host name"),
    ("engine_argv", ()),
    ("engine_argv", ("vllm", "a\0b")),
    ("env", {"1BAD": "x"}),
    ("env", {"BAD-NAME": "x"}),
    ("env", {"OK": "nul\0byte"}),
    ("site_hooks", ("module load cuda\nid",)),
    ("site_hooks", ("ok", "nul\0")),
    ("model", ""),
    ("model", "///"),
    ("python", "python3\nid"),
])
def test_bad_values_are_refused_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(JobTemplateError) as e:
        render_job(replace(CASES["vllm-a100"], **{field: value}))
    assert str(e.value).startswith(field)


def test_template_placeholders_are_checked() -> None:
    spec = CASES["fake-vllm-minimal"]
    with pytest.raises(JobTemplateError, match=r"lacks placeholder.*SITE_HOOKS"):
        render_job(spec, default_template().replace("@@SITE_HOOKS@@", ""))
    with pytest.raises(JobTemplateError, match="unknown placeholder @@NOPE@@"):
        render_job(spec, default_template() + "\n# @@NOPE@@\n")


# --- names, tags, address file ----------------------------------------------------------------------


@pytest.mark.parametrize(("model", "sanitized"), [
    ("llama-8b", "llama-8b"),
    ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama-Llama-3.1-8B-Instruct"),
    ("x; rm -rf /", "x-rm-rf"),
    ("$(id)`id`", "id-id"),
    ("a\nb", "a-b"),
    ("-.weird.-", "weird"),
    ("m" * 100, "m" * 64),
])
def test_model_names_are_sanitised_for_the_job_name(model: str, sanitized: str) -> None:
    assert sanitize_model(model) == sanitized
    name = job_name(model, 42)
    assert name == f"chirond-{sanitized}-42"
    assert parse_job_name(name) == (sanitized, 42)


def test_names_and_tags_round_trip() -> None:
    assert parse_job_name("interactive") is None
    assert parse_job_name("chirond-llama-8b") is None
    assert ownership_tag(DAEMON, 7) == f"chirond:{DAEMON}:7"
    assert parse_ownership_tag(f" chirond:{DAEMON}:7\n") == (DAEMON, 7)
    assert parse_ownership_tag("chirond:other") is None
    assert parse_ownership_tag("") is None


def test_parse_addr_json() -> None:
    text = '{"job_id": "123", "instance_id": 4, "host": "gpu01", "port": 20123, "node": "gpu01", "started_at": 1717}'
    a = parse_addr_json(text, job_id="123")
    assert (a.job_id, a.host, a.port, a.node, a.started_at, a.instance_id) == ("123", "gpu01", 20123, "gpu01", 1717, 4)
    with pytest.raises(ValueError, match="names job 123, not 124"):
        parse_addr_json(text, job_id="124")
    for bad in ("", "[]", "{", '{"job_id": "1", "host": "h", "started_at": 1}',
                '{"job_id": "1", "host": "", "port": 1, "started_at": 1}',
                '{"job_id": "1", "host": "h", "port": 70000, "started_at": 1}'):
        with pytest.raises(ValueError):
            parse_addr_json(bad)
    assert addr_path("/run", "55") == "/run/55.addr.json"


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


def free_port_block(n: int) -> int:
    """The first of n consecutive ports that are free now (best effort)."""
    for base in range(42000, 60000, 97):
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port block")


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
    assert not list(Path(spec.run_dir).glob(".*"))  # the temporary file was renamed, not left behind
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
