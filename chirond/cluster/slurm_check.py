"""What `chirond check-config` (chirond/check_config.py) asks Slurm about `[backend.slurm]` before
anything is submitted, past the partition: a custom job template must render and pass `bash -n`
(chirond/cluster/slurm_job.py, which the backend runs at start-up too); the account must exist
where accounting can say so (`sacctmgr`); and Slurm must accept one sample job per model
(`sbatch --test-only`: partition, account, QoS, reservation, GRES and time limit as the scheduler
judges them; it submits nothing).

Problems are returned as text naming the key (`backend.slurm.account: ...`); the caller adds the file."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from chirond.cluster.slurm_cli import SlurmCli
from chirond.cluster.slurm_job import PreflightError, key, read_template, sample_job, template_problem
from chirond.cluster.transport import LocalTransport, SlurmError, TransportError
from chirond.config import SlurmBackendConfig

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
