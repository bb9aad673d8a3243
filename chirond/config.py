"""The daemon's one TOML file, read into frozen dataclasses. Unknown keys are rejected with the
valid list; every error names the key path (`models.llama-8b.slo.ttft_s`) and the reason.

The types below are the contract the rest of the daemon reads; `load_config` fills them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from chirond.model import Slo
from chirond.profiles import Profile


class ConfigError(ValueError):
    """A bad config: the message names the file, the key path and the reason."""


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8000
    state_dir: Path = Path("/var/lib/chirond")  # logs of instances, run files
    tick_s: float = 5.0  # control loop period
    scrape_timeout_s: float = 2.0  # per instance /metrics scrape
    stale_after_s: float = 15.0  # an instance whose scrape failed this long is marked stale
    policy: str = "chirond"
    policy_params: dict[str, float] = field(default_factory=dict)
    backend: str = "local"  # "local" (more in later releases)
    log_level: str = "info"


@dataclass(frozen=True, slots=True)
class ApiConfig:
    auth: str = "keys"  # "keys": bearer keys from keys_file; "open": no auth (local use only)
    keys_file: Path | None = None  # lines "KEY [NAME]"; '#' comments
    max_body_bytes: int = 4 * 1024 * 1024
    max_queue_interactive: int = 1024  # per model; beyond it: 429 with Retry-After
    max_queue_batch: int = 65536  # per model; beyond it: 429 with Retry-After
    max_wait_s: float = 600.0  # a queued request waits at most this long, then 503 with Retry-After
    retry_after_s: int = 5
    max_retries: int = 2  # retries on another instance when one fails before the first byte
    batch_header: str = "X-Chirond-Class"  # header value "batch" marks a request batch-class
    batch_deadline_s: float = 3600.0  # deadline of a batch-class request, from its arrival


@dataclass(frozen=True, slots=True)
class LocalBackendConfig:
    gpus: int = 8  # GPUs this machine pretends to have: bounds instances * gpus per instance
    port_range: tuple[int, int] = (20000, 29999)
    health_timeout_s: float = 900.0  # launch to /health 200, else the instance counts as failed
    drain_timeout_s: float = 120.0  # a draining instance is stopped when idle or after this
    stop_grace_s: float = 10.0  # SIGTERM, then SIGKILL after this


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str  # what clients send as `model`, and --served-model-name
    profile_path: Path
    profile: Profile
    slo: Slo
    min_instances: int = 0
    max_instances: int = 4
    initial_instances: int = 0
    # The engine command. Placeholders: {model} {port} {host} {profile} {max_num_seqs}
    # {max_num_batched_tokens} {scheduling_policy} {gpus}. Default: the simulated server.
    command: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    # For the simulated server only (ignored by a real command): real-time speedup and start-up time.
    sim_speedup: float = 1.0
    sim_startup_s: float | None = None  # None: the profile's cold start divided by sim_speedup


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    daemon: DaemonConfig
    api: ApiConfig
    local: LocalBackendConfig
    models: dict[str, ModelConfig]
