"""A chirond daemon in the test's event loop, in front of simulated vLLM instances that run as
real child processes (the local backend), all on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from chirond.batch.store import BatchLimits
from chirond.config import ApiConfig, Config, DaemonConfig, LocalBackendConfig, ModelConfig
from chirond.daemon import Daemon
from chirond.model import Slo
from chirond.profiles import load_profile
from chirond.users import UsersConfig

ROOT = Path(__file__).resolve().parents[2]
PROFILE_8B = ROOT / "profiles" / "llama-3.1-8b_a100-80gb_tp1.toml"


def make_config(tmp: Path, **over: Any) -> Config:
    """A small deployment: one 8B model on the simulated server, fast ticks. Keyword arguments
    override fields: daemon__tick_s=1, api__auth="keys", model__min_instances=0, batch__windows=(...), ..."""
    groups: dict[str, dict[str, Any]] = {"daemon": {}, "api": {}, "local": {}, "model": {}, "batch": {}, "users": {}}
    for k, v in over.items():
        g, _, field = k.partition("__")
        groups[g][field] = v
    daemon = DaemonConfig(listen_host="127.0.0.1", listen_port=0, state_dir=tmp / "state", tick_s=0.5,
                          scrape_timeout_s=1.0, stale_after_s=3.0, policy="chirond", log_level="info")
    api = ApiConfig(auth="open", max_wait_s=60.0, retry_after_s=1)
    local = LocalBackendConfig(gpus=4, health_timeout_s=60.0, drain_timeout_s=10.0, stop_grace_s=3.0)
    model = ModelConfig(name="llama-8b", profile_path=PROFILE_8B, profile=load_profile(PROFILE_8B),
                        slo=Slo(ttft_s=2.0, tpot_s=0.2), min_instances=1, max_instances=2, initial_instances=1,
                        sim_speedup=4.0, sim_startup_s=0.3)
    return Config(
        path=tmp / "test.toml",
        daemon=replace(daemon, **groups["daemon"]),
        api=replace(api, **groups["api"]),
        local=replace(local, **groups["local"]),
        models={"llama-8b": replace(model, **groups["model"])},
        batch=replace(BatchLimits(), **groups["batch"]),
        users=replace(UsersConfig(), **groups["users"]),
    )


async def wait_for(cond: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


def ready_count(d: Daemon, model: str = "llama-8b") -> int:
    return sum(1 for i in d.instances.values() if i.model == model and i.healthy_at is not None)


@pytest.fixture
async def daemon_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[Daemon] = []

    async def start(wait_ready: int = 1, **over: Any) -> Daemon:
        d = Daemon(make_config(tmp_path, **over))
        started.append(d)
        await d.start()
        await wait_for(lambda: ready_count(d) >= wait_ready, 60, f"{wait_ready} ready instance(s)")
        return d

    yield start
    for d in started:
        await d.stop()
