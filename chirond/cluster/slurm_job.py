"""The job chirond submits for one instance under `[backend.slurm]`: its JobSpec (`make_job_spec`,
shared by the backend and check-config's sample jobs), and a custom job template read and checked
(`template_problem`: placeholders, `bash -n`), which the backend runs at start-up and check-config
before it asks Slurm anything.

Problems are text naming the key (`backend.slurm.template: ...`); the caller adds the file."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

from chirond.cluster.backend import LaunchSpec
from chirond.cluster.jobtemplate import JobSpec, JobTemplateError, render_job
from chirond.config import SlurmBackendConfig

CHECK_DAEMON_ID = "check-config"  # stands in for the daemon id in sample jobs (a valid tag, never submitted)
BASH_TIMEOUT_S = 10.0


def make_job_spec(c: SlurmBackendConfig, run_dir: Path, daemon_id: str, spec: LaunchSpec) -> JobSpec:
    """The job that runs `spec` under [backend.slurm] `c` (also check-config's sample job)."""
    argv = spec.argv
    # The simulated server's command starts with the daemon's interpreter; the job uses `python`.
    if argv and argv[0] == sys.executable and c.python != sys.executable:
        argv = (c.python, *argv[1:])
    return JobSpec(
        model=spec.model, instance_id=spec.instance_id, daemon_id=daemon_id, engine_argv=argv,
        run_dir=str(run_dir), partition=c.partition, account=c.account, qos=c.qos,
        reservation=c.reservation, gpus=spec.gpus, gpu_type=c.gres_type, gpu_option=c.gpus_flag,
        cpus_per_task=c.cpus_per_task, mem=mem_option(c.mem_gb),
        time_limit_s=spec.time_limit_s if spec.time_limit_s is not None else c.time_limit_s,
        warn_before_s=c.signal_before_end_s, site_hooks=c.site_hooks, env=dict(spec.env), python=c.python,
        port_range=c.port_range, bind_host=c.bind_host, advertise_host=c.advertise_host,
    )  # fmt: skip


def mem_option(mem_gb: float | None) -> str:
    """sbatch --mem for `mem_gb`: whole gigabytes as "64G", anything else in megabytes (rounded up)."""
    if mem_gb is None:
        return ""
    return f"{int(mem_gb)}G" if float(mem_gb).is_integer() else f"{math.ceil(mem_gb * 1024)}M"


class PreflightError(ValueError):
    """A setting Slurm (or bash) refuses; the message starts with the key path."""


def key(name: str) -> str:
    return f"backend.slurm.{name}"


def read_template(cfg: SlurmBackendConfig) -> str | None:
    """The custom template's text (None: the shipped one). Raises PreflightError when unreadable."""
    if cfg.template is None:
        return None
    try:
        return Path(cfg.template).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise PreflightError(f"{key('template')}: cannot read {cfg.template}: {e}") from None


def sample_job(
    cfg: SlurmBackendConfig, run_dir: Path, model: str, gpus: int, template: str | None
) -> tuple[str, list[str]]:
    """(script, sbatch options) of a job for `model` as the backend would render it."""
    spec = make_job_spec(cfg, run_dir, CHECK_DAEMON_ID, LaunchSpec(0, model, ("true",), gpus=gpus))
    script, args = render_job(spec, template)
    return script, [*args, *cfg.extra_sbatch_args]


def template_problem(cfg: SlurmBackendConfig, run_dir: Path) -> str | None:
    """Why the configured job template cannot be used (a missing or unknown placeholder, a shell
    syntax error), or None. Only a custom template is checked: the shipped one is tested."""
    if cfg.template is None:
        return None
    try:
        script, _ = sample_job(cfg, run_dir, "check", 1, read_template(cfg))
    except PreflightError as e:
        return str(e)
    except JobTemplateError as e:
        return f"{key('template')}: {cfg.template}: {str(e).removeprefix('template: ')}"
    try:
        res = subprocess.run(
            ["bash", "-n"], input=script, capture_output=True, text=True, timeout=BASH_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None  # no bash here to ask; sbatch --test-only still looks at the job
    if res.returncode != 0:
        err = " ".join(res.stderr.replace("bash: line", "line").split())
        return f"{key('template')}: {cfg.template}: the rendered script is not valid bash: {err}"
    return None
