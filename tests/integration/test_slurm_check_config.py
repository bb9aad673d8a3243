"""`chirond check-config` against the loopback cluster's real Slurm: settings the scheduler refuses
(a GPU type no node has, a reservation that does not exist) fail with the key and Slurm's reason,
found by `sbatch --test-only`; a custom job template that lacks a placeholder or is not valid bash
fails too; a good config passes. Nothing is ever submitted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from chirond.cli import chirond_main
from chirond.cluster.jobtemplate import TEMPLATE_PATH
from tests.support.loopback import LoopbackCluster, run

CONFIG = """
[daemon]
backend = "slurm"
state_dir = "state"
[api]
auth = "open"
[backend.slurm]
partition = "{partition}"
time_limit_s = 600
{extra}
[models.check-config-probe]
profile = "llama-3.1-8b_a100-80gb_tp1"
slo = {{ ttft_s = 1.0, tpot_s = 0.1 }}
"""


def sample_jobs() -> list[str]:
    """Jobs anyone submitted under the sample job's name (there must never be one)."""
    return run("squeue", "-h", "-t", "all", "-n", "chirond-check-config-probe-0", "-o", "%i").stdout.split()


async def check(path: Path, extra: str, c: LoopbackCluster) -> int:
    path.write_text(CONFIG.format(partition=c.partition, extra=extra))
    return await asyncio.to_thread(chirond_main, ["check-config", str(path)])


async def test_check_config_asks_sbatch_test_only_and_checks_the_template(
    loopback_cluster: LoopbackCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "chirond.toml"
    assert await check(path, f'gres_type = "{loopback_cluster.gpu_type}"', loopback_cluster) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "model check-config-probe: sbatch --test-only accepts its job (Job " in out
    assert f"in partition {loopback_cluster.partition})" in out

    for extra, key, reason in (
        ('gres_type = "h100"', "gres_type", "Requested node configuration is not available"),
        ('reservation = "no-such-reservation"', "reservation", "Requested reservation is invalid"),
    ):
        assert await check(path, extra, loopback_cluster) == 2, extra
        err = capsys.readouterr().err
        assert f"{path}: backend.slurm.{key}: Slurm refuses a job for model 'check-config-probe' " \
               "(sbatch --test-only, nothing submitted): " in err, err  # fmt: skip
        assert reason in err

    (tmp_path / "no-hooks.sbatch").write_text(TEMPLATE_PATH.read_text().replace("@@SITE_HOOKS@@", ""))
    assert await check(path, 'template = "no-hooks.sbatch"', loopback_cluster) == 2
    assert f"backend.slurm.template: {tmp_path}/no-hooks.sbatch: lacks placeholder(s) @@SITE_HOOKS@@" \
        in capsys.readouterr().err  # fmt: skip
    (tmp_path / "bad.sbatch").write_text(TEMPLATE_PATH.read_text().replace("set -u\n", "set -u\nif then\n"))
    assert await check(path, 'template = "bad.sbatch"', loopback_cluster) == 2
    assert "the rendered script is not valid bash: line" in capsys.readouterr().err
    (tmp_path / "own.sbatch").write_text(TEMPLATE_PATH.read_text())
    assert await check(path, 'template = "own.sbatch"', loopback_cluster) == 0
    assert f"job template {tmp_path}/own.sbatch" in " ".join(capsys.readouterr().out.split())

    assert sample_jobs() == []  # --test-only submitted nothing
