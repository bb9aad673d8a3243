"""What `chirond check-config` asks Slurm about `[backend.slurm]` before anything is submitted, past
the partition (config.probe_slurm): a custom job template must render and pass `bash -n`; the account
must exist where accounting can say so (`sacctmgr`); and Slurm must accept one sample job per model
(`sbatch --test-only`: partition, account, QoS, reservation, GRES and time limit as the scheduler
judges them; it submits nothing). The backend runs the template check at start-up too.

Problems are returned as text naming the key (`backend.slurm.account: ...`); the caller adds the file."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import re
import subprocess
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from chirond.cluster.backend import LaunchSpec
from chirond.cluster.jobtemplate import JobTemplateError, render_job
from chirond.cluster.slurm import LocalTransport, SlurmCli, SlurmError, TransportError
from chirond.cluster.slurm_backend import make_job_spec
from chirond.config import SlurmBackendConfig

CHECK_DAEMON_ID = "check-config"  # stands in for the daemon id in sample jobs (a valid tag, never submitted)
BASH_TIMEOUT_S = 10.0

# Slurm's refusal -> the key that most likely caused it (first match wins).
_REFUSAL_KEYS: tuple[tuple[str, str], ...] = (
    (r"account", "account"),
    (r"qos", "qos"),
    (r"reservation", "reservation"),
    (r"partition", "partition"),
    (r"time limit", "time_limit_s"),
    (r"gres|node configuration is not available|gpu", "gres_type"),
    (r"memory", "mem_gb"),
    (r"cpu", "cpus_per_task"),
)


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


def refusal_key(message: str) -> str:
    """The [backend.slurm] key a refusal of `sbatch --test-only` most likely points at."""
    low = message.lower()
    for pattern, name in _REFUSAL_KEYS:
        if re.search(pattern, low):
            return key(name)
    return "backend.slurm"


@contextlib.asynccontextmanager
async def slurm_cli(cfg: SlurmBackendConfig) -> AsyncIterator[SlurmCli]:
    """Slurm's commands as the backend runs them: here, or over SSH to the login node."""
    if cfg.ssh is None:
        yield SlurmCli(LocalTransport(), cfg.user or getpass.getuser(), timeout_s=cfg.command_timeout_s)
        return
    from chirond.cluster.ssh import SshTransport

    ssh = SshTransport(cfg.ssh)
    try:
        yield SlurmCli(ssh, cfg.user or cfg.ssh.user or getpass.getuser(), timeout_s=cfg.command_timeout_s)
    finally:
        await ssh.close()


async def preflight(cfg: SlurmBackendConfig, run_dir: Path, models: Mapping[str, int]) -> list[str]:
    """Template, account and `sbatch --test-only` for each model (name -> GPUs per instance).
    Returns notes for the summary; raises PreflightError naming the key on the first problem."""
    problem = await asyncio.to_thread(template_problem, cfg, run_dir)
    if problem is not None:
        raise PreflightError(problem)
    template = read_template(cfg)
    notes = []
    async with slurm_cli(cfg) as cli:
        if cfg.account:
            notes.append(await _check_account(cli, cfg.account))
        for model, gpus in models.items():
            script, args = sample_job(cfg, run_dir, model, gpus, template)
            try:
                verdict = await cli.sbatch_test(script, args)
            except SlurmError as e:
                if isinstance(e, TransportError):
                    raise
                reason = e.stderr.strip() or str(e)
                raise PreflightError(
                    f"{refusal_key(reason)}: Slurm refuses a job for model {model!r} "
                    f"(sbatch --test-only, nothing submitted): {' '.join(reason.split())}"
                ) from None
            notes.append(f"model {model}: sbatch --test-only accepts its job ({verdict})")
    return notes


async def _check_account(cli: SlurmCli, account: str) -> str:
    """A note on the account, or PreflightError when accounting says it does not exist."""
    try:
        known = await cli.account_exists(account)
    except SlurmError as e:  # sacctmgr missing or the database down: not this config's fault
        return f"account {account} not checked ({' '.join(str(e).split())})"
    if known is None:
        return f"account {account} not checked (no accounting database here; sbatch --test-only judged the job)"
    if not known:
        raise PreflightError(
            f"{key('account')}: no account {account!r} in Slurm's accounting database "
            f"(sacctmgr show account {account} lists nothing)"
        )
    return f"account {account} exists"
