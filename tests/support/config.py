"""Daemon configs for tests: `make_config` builds a local-backend Config in code (no file);
the TOML texts are whole config files for tests that go through load_config."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from chirond.batch.store import BatchLimits
from chirond.config import ApiConfig, Config, DaemonConfig, LifecycleConfig, LocalBackendConfig, ModelConfig
from chirond.model import Slo
from chirond.profiles import load_profile
from chirond.users import UsersConfig
from tests.support.paths import PROFILE_8B


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
    local = LocalBackendConfig(gpus=4)
    lifecycle = LifecycleConfig(health_timeout_s=60.0, drain_timeout_s=10.0, stop_grace_s=3.0)
    model = ModelConfig(name="llama-8b", profile_path=PROFILE_8B, profile=load_profile(PROFILE_8B),
                        slo=Slo(ttft_s=2.0, tpot_s=0.2), min_instances=1, max_instances=2, initial_instances=1,
                        sim_speedup=4.0, sim_startup_s=0.3)
    return Config(
        path=tmp / "test.toml",
        daemon=replace(daemon, **groups["daemon"]),
        api=replace(api, **groups["api"]),
        local=replace(local, **groups["local"]),
        lifecycle=lifecycle,
        models={"llama-8b": replace(model, **groups["model"])},
        batch=replace(BatchLimits(), **groups["batch"]),
        users=replace(UsersConfig(), **groups["users"]),
    )


EMBED_MODEL = "e5-8b"


def with_embedding_model(cfg: Config, name: str = EMBED_MODEL) -> Config:
    """`cfg` plus an embedding model (`task = "embed"`) like its first model: fake-vllm serves it
    with `--runner pooling`."""
    first = next(iter(cfg.models.values()))
    return replace(cfg, models={**cfg.models, name: replace(first, name=name, task="embed")})


# A Slurm-backed daemon with the static policy and one model "m" (min 1): for a daemon over FakeBackend.
SLURM_STATIC_TOML = """
[daemon]
backend = "slurm"
policy = "static"
tick_s = 1
state_dir = "state"
[api]
auth = "open"
[backend.slurm]
partition = "a100"
squeue_min_interval_s = 0.05
[models.m]
profile = "llama-3.1-8b_a100-80gb_tp1"
slo = { ttft_s = 1.0, tpot_s = 0.1 }
min_instances = 1
"""


def serve_toml(port: int, *, gpus: int = 2, ports: int = 200, min_instances: int = 1, max_instances: int = 1,
               sim_speedup: float = 2.0, sim_startup_s: float = 0.3, daemon: dict[str, Any] | None = None,
               api: dict[str, Any] | None = None) -> dict[str, Any]:
    """A `chirond serve` config (as a dict for tests.support.write_toml): the local backend, the 8B
    profile as "llama-8b", listening on `port` with engine ports port+1 .. port+`ports`."""
    from tests.support.toml import Inline

    return {
        "daemon": {"listen_port": port, "state_dir": "state", "tick_s": 0.5, "policy": "static", **(daemon or {})},
        "api": api or {"auth": "open"},
        "backend": {"local": {"gpus": gpus, "port_range": [port + 1, port + ports]}},
        "models": {"llama-8b": {
            "profile": str(PROFILE_8B), "slo": Inline(ttft_s=2.0, tpot_s=0.2), "min_instances": min_instances,
            "max_instances": max_instances, "sim_speedup": sim_speedup, "sim_startup_s": sim_startup_s,
        }},
    }
