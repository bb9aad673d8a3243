"""The local backend's `openai` client tests (tests/component/test_daemon.py), run unchanged against the
Slurm backend on the loopback cluster: the same test bodies, with a `daemon_factory` whose daemon
submits each instance as a real sbatch job (simulated vLLM inside slurm/chirond-instance.sbatch).

Left out: the test that kills an instance by its local process id (a local job id is "local-PID");
its Slurm counterparts are test_slurm_daemon.py (scancel behind the daemon's back) and
test_slurm_scaling.py (a node set down mid-stream)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from chirond.cluster.slurm_backend import SlurmBackend
from chirond.daemon import Daemon
from tests.support import openai_cases as cases
from tests.support import wait_for
from tests.support.config import make_config
from tests.support.daemon import ready_count
from tests.support.loopback import LoopbackCluster
from tests.support.slurm_daemon import cancel_leftovers, slurm_settings, wait_inactive

test_chat_and_completions_streaming_and_not = cases.chat_and_completions_streaming_and_not
test_bad_inputs_get_openai_errors_and_the_daemon_keeps_serving = (
    cases.bad_inputs_get_openai_errors_and_the_daemon_keeps_serving
)
test_queue_full_gets_429_with_retry_after = cases.queue_full_gets_429_with_retry_after
test_batch_work_is_preempted_for_interactive_and_resumes = (
    cases.batch_work_is_preempted_for_interactive_and_resumes
)
test_scale_from_zero_holds_requests_and_counts_ttft_from_arrival = (
    cases.scale_from_zero_holds_requests_and_counts_ttft_from_arrival
)
test_client_disconnect_aborts_the_upstream_request = cases.client_disconnect_aborts_the_upstream_request


@pytest.fixture
async def daemon_factory(loopback_cluster: LoopbackCluster, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """tests/component/conftest.py's factory (same keyword overrides), with daemon.backend = "slurm".
    At teardown the daemon stops and none of its jobs may be left active."""
    started: list[Daemon] = []

    async def start(wait_ready: int = 1, **over: Any) -> Daemon:
        cfg = make_config(tmp_path, **over)
        cfg = dataclasses.replace(
            cfg,
            daemon=dataclasses.replace(cfg.daemon, backend="slurm"),
            slurm=slurm_settings(tmp_path, loopback_cluster),
        )
        d = Daemon(cfg)
        assert isinstance(d.backend, SlurmBackend)
        started.append(d)
        await d.start()
        await wait_for(lambda: ready_count(d) >= wait_ready, 60, f"{wait_ready} ready instance(s)")
        return d

    yield start
    for d in started:
        b = d.backend
        assert isinstance(b, SlurmBackend)
        try:
            await d.stop()
            assert b.daemon_id is not None
            await wait_inactive(b.daemon_id)
        finally:
            cancel_leftovers(b.daemon_id)
