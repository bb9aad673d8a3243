"""A scripted Slurm for chirond.cluster.slurm_backend: answers Slurm's commands by name with
recorded 22.05 output (tests/data/slurm/22.05/) or what the test queues; a SlurmBackend over it."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chirond.cluster.backend import LaunchSpec
from chirond.cluster.slurm import CommandResult, LocalTransport, SlurmCli
from chirond.cluster.slurm_backend import SlurmBackend
from chirond.config import SlurmBackendConfig
from tests.support.fakes import Clock
from tests.support.paths import DATA

REC = DATA / "slurm" / "22.05"
USER = "chirond-test"
T0 = 1795246400.0  # just after the recorded jobs (November 2026)
EMPTY_SQUEUE = json.dumps({"errors": [], "jobs": []})
NO_ACCOUNTING = (1, "", "sacct: error: Slurm accounting storage is disabled\n")
ARGV = (sys.executable, "-m", "chirond", "fake-vllm", "--model", "llama-8b", "--port", "{port}")


class FakeSlurm:
    """Answers Slurm's commands by name: queued answers first, then the default for that name."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[str, ...], bytes | None]] = []
        self.queued: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
        self.default: dict[str, tuple[int, str, str]] = {
            "squeue": (0, EMPTY_SQUEUE, ""),
            "sinfo": (0, (REC / "sinfo-drain.json").read_text(), ""),
            "scancel": (0, "", ""),
            "sacct": NO_ACCOUNTING,
            "cat": (1, "", "cat: x: No such file or directory\n"),
        }

    async def run(self, argv: Sequence[str], timeout_s: float, input: bytes | None = None) -> CommandResult:
        self.calls.append((tuple(argv), input))
        q = self.queued[argv[0]]
        rc, out, err = q.pop(0) if q else self.default[argv[0]]
        return CommandResult(tuple(argv), rc, out, err, 0.001)

    def argvs(self, name: str) -> list[tuple[str, ...]]:
        return [a for a, _ in self.calls if a[0] == name]

    def sbatch_ids(self, *ids: str) -> None:
        self.queued["sbatch"] += [(0, f"{i}\n", "") for i in ids]


class FakeLocalSlurm(FakeSlurm, LocalTransport):
    """The same, posing as the local transport: the backend then reads address files itself."""


def make_backend(tmp_path: Path, fake: FakeSlurm | None = None, clock: Clock | None = None,
                 **cfg: Any) -> tuple[SlurmBackend, FakeSlurm, Clock]:
    fake = fake or FakeSlurm()
    clock = clock or Clock(T0)
    cli = SlurmCli(fake, USER, min_squeue_interval_s=2.0, clock=clock, wall_clock=clock)
    c = SlurmBackendConfig(partition=cfg.pop("partition", "a100"), run_dir=tmp_path / "jobs", **cfg)
    return SlurmBackend(c, tmp_path / "state", cli=cli, clock=clock), fake, clock


async def started(tmp_path: Path, **kw: Any) -> tuple[SlurmBackend, FakeSlurm, Clock]:
    b, fake, clock = make_backend(tmp_path, **kw)
    await b.start()
    return b, fake, clock


def spec(instance_id: int = 7, gpus: int = 1, **kw: Any) -> LaunchSpec:
    return LaunchSpec(instance_id, kw.pop("model", "llama-8b"), kw.pop("argv", ARGV), gpus=gpus, **kw)


RUNNING_JOB = next(j for j in json.loads((REC / "squeue-all.json").read_text())["jobs"] if j["job_id"] == 11)


def sq_job(job_id: int, name: str, comment: str, state: str = "RUNNING") -> dict[str, Any]:
    """A squeue --json job of USER, after the recorded running one."""
    return {**RUNNING_JOB, "job_id": job_id, "name": name, "comment": comment, "job_state": state,
            "state_reason": "Resources" if state == "PENDING" else "None", "submit_time": int(T0) - 100 + job_id}


def squeue_json(*jobs: dict[str, Any]) -> tuple[int, str, str]:
    return 0, json.dumps({"errors": [], "jobs": list(jobs)}), ""


# A minimal [backend.slurm] config; {extra} goes into [backend.slurm].
SLURM_BASE = """
[daemon]
backend = "slurm"
state_dir = "state"
[api]
auth = "open"
[backend.slurm]
partition = "a100"
{extra}
[models.m]
profile = "llama-3.1-8b_a100-80gb_tp1"
slo = {{ ttft_s = 1.0, tpot_s = 0.1 }}
min_instances = 2
"""


def write_slurm(tmp_path: Path, extra: str = "", base: str = SLURM_BASE) -> Path:
    path = tmp_path / "chirond.toml"
    path.write_text(base.format(extra=extra))
    return path
