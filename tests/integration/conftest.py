"""Integration tests against a real Slurm 22.05 cluster and sshd on 127.0.0.1, brought up by
`bash scripts/loopback-cluster.sh up`. Without that cluster the tests FAIL (set
CHIROND_SKIP_INTEGRATION=1 to skip them instead)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.loopback import UP_HINT, LoopbackCluster, SlurmJobs, cluster_problem, state_dir


@pytest.fixture(scope="session")
def loopback_cluster() -> LoopbackCluster:
    if os.environ.get("CHIROND_SKIP_INTEGRATION") == "1":
        pytest.skip("CHIROND_SKIP_INTEGRATION=1")
    problem, cluster = cluster_problem(state_dir())
    if problem is not None or cluster is None:
        pytest.fail(f"the loopback Slurm cluster is not usable ({problem}); {UP_HINT}", pytrace=False)
    return cluster


@pytest.fixture
def slurm_jobs(loopback_cluster: LoopbackCluster, tmp_path: Path) -> Iterator[SlurmJobs]:
    jobs = SlurmJobs(loopback_cluster, tmp_path)
    try:
        yield jobs
    finally:
        jobs.cancel_all()
