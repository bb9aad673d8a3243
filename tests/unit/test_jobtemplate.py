"""The instance job template (chirond.cluster.jobtemplate + slurm/chirond-instance.sbatch): golden
files, validation, names and tags. The rendered script run under bash is in
tests/component/test_jobtemplate_run.py.

Regenerate the golden files after an intended change:  CHIROND_UPDATE_GOLDEN=1 pytest tests/unit/test_jobtemplate.py
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from typing import Any

import pytest

from chirond.cluster.jobtemplate import (
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
from tests.support.jobtemplate import CASES, DAEMON, GOLDEN

UPDATE = os.environ.get("CHIROND_UPDATE_GOLDEN") == "1"


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
