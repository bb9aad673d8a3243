"""The daemon's one TOML file, read into frozen dataclasses. Unknown keys are rejected with the
valid list; every error names the file, the key path and the reason
(`chirond.toml: models.llama-8b.slo.ttft_s: must be a positive number, got -1`).

The types below are the contract the rest of the daemon reads; `load_config` fills them. The
reference for the file is docs/config.md; etc/chirond.toml is the commented example.

Why one module of about 700 lines: each section's dataclass and its reader stand side by side, so
a key's type, default, check and error message are read and changed in one place; the shared
table reader is chirond/tomltable.py and check-config is chirond/check_config.py.
"""

from __future__ import annotations

import logging
import math
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from chirond.batch.store import BatchLimits, window_seconds
from chirond.log_output import LOG_FORMATS
from chirond.model import Slo
from chirond.policy import REGISTRY, make_policy
from chirond.profiles import PROFILES_DIR, Profile, ProfileError, available_profiles, load_profile, resolve_profile
from chirond.tomltable import Table, TableError, key_path, read_toml, show
from chirond.users import UsersConfig, parse_users

log = logging.getLogger(__name__)

__all__ = ["key_path"]  # re-exported: the key path rule lives in chirond.tomltable


class ConfigError(TableError):
    """A bad config: the message names the file, the key path and the reason."""


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8000
    state_dir: Path = Path("/var/lib/chirond")  # logs of instances, run files; absolute once loaded
    tick_s: float = 5.0  # control loop period
    scrape_timeout_s: float = 2.0  # per instance /metrics scrape
    stale_after_s: float = 15.0  # an instance whose scrape failed this long is marked stale
    policy: str = "chirond"  # a key of chirond.policy.REGISTRY
    policy_params: dict[str, float] = field(default_factory=dict)  # overrides of the policy's defaults
    backend: str = "local"  # "local" (child processes) or "slurm" (one Slurm job per instance)
    log_level: str = "info"  # debug | info | warning | error
    log_format: str = "text"  # "text" (journald-aware) or "json" (one object per line)
    shutdown_timeout_s: float = 30.0  # on SIGTERM, in-flight requests get this long to finish
    # `chiron token|usage|status|admin` talk to the daemon here; peer credentials say who calls.
    control_socket: Path | None = None  # None: <state_dir>/control.sock
    control_idle_timeout_s: float = 5.0  # a control connection silent this long is closed
    control_max_connections_per_uid: int = 8  # open control connections per local account
    # Dry runs only (`chirond replay`): the daemon's clock runs this many times faster than real
    # time, against simulated engines sped up as much. 1 everywhere else.
    clock_speedup: float = 1.0

    @property
    def socket_path(self) -> Path:
        return self.control_socket or self.state_dir / "control.sock"


@dataclass(frozen=True, slots=True)
class ApiConfig:
    auth: str = "keys"  # "keys": bearer keys from keys_file and `chiron token`; "open": no auth (local use only)
    keys_file: Path | None = None  # lines "KEY [NAME]"; '#' comments; absolute once loaded
    max_body_bytes: int = 4 * 1024 * 1024
    max_queue_interactive: int = 1024  # per model; beyond it: 429 with Retry-After
    max_queue_batch: int = 65536  # per model; beyond it: 429 with Retry-After
    max_wait_s: float = 600.0  # a queued request waits at most this long, then 503 with Retry-After
    retry_after_s: int = 5
    # A request waiting for a slot looks this often whether its model can still start; a stream
    # waiting for an instance start gets an SSE comment with the state and ETA this often.
    keepalive_s: float = 5.0
    max_retries: int = 2  # retries on another instance when one fails before the first byte
    batch_header: str = "X-Chirond-Class"  # header value "batch" marks a request batch-class
    batch_deadline_s: float = 3600.0  # deadline of a batch-class request, from its arrival
    # The port's guards (chirond/serve/http_server.py, docs/admin.md "Limits"):
    idle_timeout_s: float = 75.0  # a connection with no new request this long after it opened (or after
    # its last answer) is closed: silent connections, idle keep-alive
    header_timeout_s: float = 10.0  # a request head not whole this long after its first bytes: cut off
    body_timeout_s: float = 30.0  # a request body that stops arriving this long is cut off
    max_connections: int = 1000  # open at once; over it an idle one is closed, else 503
    max_connections_per_client: int = 200  # per client address, likewise


@dataclass(frozen=True, slots=True)
class LocalBackendConfig:
    gpus: int = 8  # GPUs this machine pretends to have: bounds instances * gpus per instance
    port_range: tuple[int, int] = (20000, 29999)  # inclusive
    # Slurm emulation (dry runs, `chirond replay`), in seconds of the daemon's clock: a job waits
    # PENDING for a wait drawn uniformly from queue_wait_s (with `seed`), and its engine is killed
    # at time_limit_s after it starts running (0 = no limit).
    queue_wait_s: tuple[float, float] = (0.0, 0.0)
    time_limit_s: float = 0.0
    seed: int = 0
    queue_when_full: bool = False  # a job that does not fit waits PENDING for GPUs (Slurm) instead of being refused


@dataclass(frozen=True, slots=True)
class LifecycleConfig:
    """[lifecycle]: how long an instance may take to start, drain and stop, on either backend.
    (Before, these keys lived under [backend.local]; they are still read there, with a warning.)"""

    health_timeout_s: float = 900.0  # job running to /health 200 (queue wait not counted), else the instance failed
    drain_timeout_s: float = 120.0  # a draining instance is stopped when idle or after this
    stop_grace_s: float = 10.0  # SIGTERM, then SIGKILL (Slurm: a plain scancel) after this


@dataclass(frozen=True, slots=True)
class SlurmBackendConfig:
    """[backend.slurm]: one Slurm job per instance (chirond/cluster/slurm_backend.py)."""

    partition: str  # required
    account: str = ""  # "" = omitted (the user's default account, QoS, no reservation)
    qos: str = ""
    reservation: str = ""
    gres_type: str = ""  # GPU type, e.g. "a100"; "" = any type
    gpus_flag: str = "gres"  # "gres": --gres=gpu[:TYPE]:N (any Slurm); "gpus": --gpus=[TYPE:]N (cons_tres)
    time_limit_s: float | None = None  # None = the partition's default time limit
    signal_before_end_s: int = 120  # --signal=B:USR1@N: the job logs the warning; Slurm checks about once a minute
    cpus_per_task: int | None = None  # None = omitted
    mem_gb: float | None = None  # None = omitted
    run_dir: Path | None = None  # address files and job logs; None = <daemon.state_dir>/jobs; absolute once loaded
    python: str = sys.executable  # in the job: the port picker, and the simulated server's interpreter
    site_hooks: tuple[str, ...] = ()  # shell lines run in the job before the engine (module load, venv)
    port_range: tuple[int, int] = (20000, 29999)  # inclusive; where the job looks for a free port on its node
    bind_host: str = "0.0.0.0"  # where the port is probed (the address the engine listens on)
    advertise_host: str = ""  # what chirond connects to; "" = the node's hostname
    squeue_min_interval_s: float = 2.0  # at most one squeue per interval, however often the daemon polls
    command_timeout_s: float = 30.0  # one Slurm command, then it is killed
    user: str = ""  # whose jobs squeue lists; "" = the daemon's user
    extra_sbatch_args: tuple[str, ...] = ()  # appended to chirond's sbatch options (a later option wins)
    keep_jobs_on_stop: bool = False  # false: stopping the daemon cancels the jobs it submitted
    template: Path | None = None  # own job template (absolute once loaded); None ("" in the file) = the shipped one
    ssh: SshConfig | None = None  # [backend.slurm.ssh]: run Slurm's commands on a login node; None = here


@dataclass(frozen=True, slots=True)
class SshConfig:
    """[backend.slurm.ssh]: Slurm's commands (and engine scrapes) over SSH to a login node
    (chirond/cluster/ssh.py)."""

    host: str  # the login node; required
    key_file: Path  # private key, no passphrase; required; absolute once loaded
    known_hosts: Path  # must hold the login node's (and jump host's) key; required; checking is never off
    port: int = 22
    user: str = ""  # "" = the daemon's user
    jump_host: str = ""  # "" = none; else "[user@]host[:port]", checked with the same key and known_hosts
    connect_timeout_s: float = 10.0
    command_timeout_s: float = 30.0  # upper bound for one command over SSH
    keepalive_s: float = 15.0  # keepalive interval; 3 unanswered probes close the connection
    metrics: str = "ssh"  # engines' /metrics: "ssh" = fetched on the login node; "direct" = from here
    traffic: str = "direct"  # requests: "direct" = to node:port; "tunnel" = through a forwarded local port


_JUMP_HOST = re.compile(
    r"(?:(?P<user>[A-Za-z_][A-Za-z0-9._-]*)@)?(?P<host>[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]+))?"
)


def parse_jump_host(spec: str) -> tuple[str, str, int]:
    """(user or "", host, port) from "[user@]host[:port]" (port 22 when left out; IPv6 in brackets).
    ValueError when it is not that."""
    m = _JUMP_HOST.fullmatch(spec)
    if m is None:
        raise ValueError(f"must be [user@]host[:port], got {spec!r}")
    port = int(m["port"]) if m["port"] else 22
    if not 1 <= port <= 65535:
        raise ValueError(f"must be [user@]host[:port] with a port in 1..65535, got {spec!r}")
    return m["user"] or "", m["host"].strip("[]"), port


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str  # what clients send as `model`, and --served-model-name
    profile_path: Path  # absolute, resolved from the `profile` key
    profile: Profile
    slo: Slo
    min_instances: int = 0
    max_instances: int = 4
    initial_instances: int = 0  # in the file, defaults to min_instances
    # The engine command. Placeholders: {model} {port} {host} {profile} {max_num_seqs}
    # {max_num_batched_tokens} {scheduling_policy} {gpus}. Default: the simulated server.
    command: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    # For the simulated server only (ignored by a real command): real-time speedup and start-up time.
    sim_speedup: float = 1.0
    sim_startup_s: float | None = None  # None: the profile's cold start divided by sim_speedup
    max_wait_s: float | None = None  # a queued request's longest wait for a slot; None: api.max_wait_s
    # With min_instances = 0: drained after this long without a request, or longer only while the
    # arrival rate says the next comes sooner than a cold start. None: the model's lead time
    # (queue wait + start-up), rent or buy.
    idle_timeout_s: float | None = None
    # A floor per hour of the local day (24 counts from midnight; empty: none), raised one lead time
    # ahead of each hour: a site's time-of-day schedule, e.g. from yesterday's traffic.
    min_instances_by_hour: tuple[int, ...] = ()
    # > 0: the daemon also learns a floor per hour from its own traffic of the day before, at this
    # many SLO misses per GPU-hour an hour's instance must avoid (chirond learn-floor, docs/config.md)
    learned_floor_price: float = 0.0
    # What the model serves, in vLLM's task names: "generate" (chat and completions) or "embed"
    # (/v1/embeddings; the engine runs with vLLM's `--runner pooling`). docs/serving.md.
    task: str = "generate"


@dataclass(frozen=True, slots=True)
class Config:
    path: Path  # the config file, absolute
    daemon: DaemonConfig
    api: ApiConfig
    local: LocalBackendConfig
    models: dict[str, ModelConfig]  # in file order
    slurm: SlurmBackendConfig | None = None  # [backend.slurm]; present whenever daemon.backend = "slurm"
    batch: BatchLimits = field(default_factory=BatchLimits)  # [batch]: the Files and Batches API
    users: UsersConfig = field(default_factory=UsersConfig)  # [users]: quotas and admins
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)  # [lifecycle]: start, drain, stop


# ---------------------------------------------------------------- the vocabulary

BACKENDS = ("local", "slurm")
GPUS_FLAGS = ("gres", "gpus")
AUTH_MODES = ("keys", "open")
SSH_METRICS = ("ssh", "direct")
SSH_TRAFFIC = ("direct", "tunnel")
LOG_LEVELS = ("debug", "info", "warning", "error")
TASKS = ("generate", "embed")
PLACEHOLDERS = (
    "model",
    "port",
    "host",
    "profile",
    "max_num_seqs",
    "max_num_batched_tokens",
    "scheduling_policy",
    "gpus",
)
MIN_KEY_CHARS = 16
MIN_BODY_BYTES = 1024
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")  # used with fullmatch
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
_RESERVED_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "host", "content-type", "content-length",
    "transfer-encoding", "connection", "upgrade", "te", "trailer", "expect", "keep-alive", "accept",
    "accept-encoding", "user-agent", "x-request-id", "forwarded", "x-forwarded-for",
})
MIN_TICK_S = 0.05
_NON_NEGATIVE_SUFFIXES = ("_s", "_tokens", "_gb", "_bytes", "_lines", "_requests")
_KEY_CHARS = re.compile(r"[A-Za-z0-9._~+/=-]+")  # what a client can send in "Authorization: Bearer"
_SLURM_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # partition, account, qos, reservation, GPU type (as jobtemplate)
_HOST = re.compile(r"[A-Za-z0-9_.:-]+")  # bind/advertise host as the job script accepts it
_USER = re.compile(r"[A-Za-z_][A-Za-z0-9._-]*")

_D, _A, _L = DaemonConfig(), ApiConfig(), LocalBackendConfig()
_M: dict[str, Any] = {f.name: f.default for f in fields(ModelConfig)}


def _keys(cls: Any, *skip: str) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls) if f.name not in skip)


ROOT_KEYS = ("daemon", "api", "backend", "models", "batch", "users", "lifecycle")
DAEMON_KEYS = _keys(DaemonConfig)
API_KEYS = _keys(ApiConfig)
BACKEND_KEYS = BACKENDS
LOCAL_KEYS = _keys(LocalBackendConfig)
LIFECYCLE_KEYS = _keys(LifecycleConfig)
DEPRECATED_LOCAL_KEYS = LIFECYCLE_KEYS  # [backend.local] keys that moved to [lifecycle]
SLURM_KEYS = _keys(SlurmBackendConfig, "ssh")  # plain keys; the [backend.slurm.ssh] sub-table is read apart
SSH_KEYS = _keys(SshConfig)
MODEL_KEYS = _keys(ModelConfig, "name", "profile_path")  # `profile` is the profile's path in the file
SLO_KEYS = _keys(Slo)
BATCH_KEYS = _keys(BatchLimits, "endpoints", "max_line_bytes")  # max_line_bytes: api.max_body_bytes


# ---------------------------------------------------------------- sections


def _daemon(t: Table) -> DaemonConfig:
    policy = t.string("policy", _D.policy, tuple(REGISTRY))
    params = t.sub("policy_params", tuple(REGISTRY[policy].defaults))  # the range is the policy's to check
    values = {key: params.number(key, 0.0, "any") for key in params.data}
    for key in params.data:  # units in key names: seconds, tokens, counts are never negative
        if key.endswith(_NON_NEGATIVE_SUFFIXES) and values[key] < 0:
            params.fail(key, f"must be >= 0, got {show(params.data[key])}")
    host = t.string("listen_host", _D.listen_host)
    if any(c.isspace() for c in host):
        t.fail("listen_host", f"must be a host name or address, got {show(host)}")
    tick_s = t.number("tick_s", _D.tick_s)
    if tick_s < MIN_TICK_S:
        t.fail("tick_s", f"must be at least {MIN_TICK_S} s (each tick scrapes every instance), got {show(tick_s)}")
    # A scrape that may outlast the tick makes every tick late; unset, the default shrinks to fit.
    scrape_timeout_s = t.number("scrape_timeout_s", min(_D.scrape_timeout_s, tick_s))
    if scrape_timeout_s > tick_s:
        t.fail("scrape_timeout_s", f"must be at most daemon.tick_s ({tick_s:g} s), got {show(scrape_timeout_s)}")
    return DaemonConfig(
        listen_host=host,
        listen_port=t.integer("listen_port", _D.listen_port, 1, 65535),
        state_dir=t.resolved_path("state_dir", _D.state_dir),
        tick_s=tick_s,
        scrape_timeout_s=scrape_timeout_s,
        stale_after_s=t.number("stale_after_s", _D.stale_after_s),
        policy=policy,
        policy_params=values,
        backend=t.string("backend", _D.backend, BACKENDS),
        log_level=t.string("log_level", _D.log_level, LOG_LEVELS),
        log_format=t.string("log_format", _D.log_format, LOG_FORMATS),
        shutdown_timeout_s=t.number("shutdown_timeout_s", _D.shutdown_timeout_s),
        control_socket=_socket_path(t),
        control_idle_timeout_s=t.number("control_idle_timeout_s", _D.control_idle_timeout_s),
        control_max_connections_per_uid=t.integer("control_max_connections_per_uid",
                                                  _D.control_max_connections_per_uid, 1),
        clock_speedup=t.number("clock_speedup", _D.clock_speedup),
    )


def _socket_path(t: Table) -> Path | None:
    if "control_socket" not in t.data:
        return None
    path = t.resolved_path("control_socket", Path())
    if len(str(path).encode()) > 107:  # sun_path holds 108 bytes with the terminating NUL
        t.fail("control_socket", f"a Unix socket path must be at most 107 bytes, got {len(str(path).encode())}")
    return path


_B = BatchLimits()


def _batch(t: Table) -> BatchLimits:
    windows = t.strings("windows") if "windows" in t.data else _B.windows
    for i, w in enumerate(windows):
        try:
            window_seconds(w)
        except ValueError as e:
            t.fail("windows", str(e), i)
    if "24h" not in windows:
        t.fail("windows", 'must include "24h" (the window OpenAI clients send)')
    return BatchLimits(
        max_file_bytes=t.integer("max_file_bytes", _B.max_file_bytes, 1),
        max_file_lines=t.integer("max_file_lines", _B.max_file_lines, 1),
        windows=windows,
        file_ttl_s=t.number("file_ttl_s", _B.file_ttl_s),
        deadline_bucket_s=t.number("deadline_bucket_s", _B.deadline_bucket_s),
        drr_quantum_tokens=t.integer("drr_quantum_tokens", _B.drr_quantum_tokens, 1),
    )


def _api(t: Table) -> ApiConfig:
    auth = t.string("auth", _A.auth, AUTH_MODES)
    keys_file = t.resolved_path("keys_file", None)
    # auth = "keys" without a keys_file: only the keys users mint with `chiron token`.
    if auth == "keys" and keys_file is not None:
        keys_file = t.existing_file("keys_file")
        try:
            load_keys(keys_file)
        except ConfigError as e:
            t.fail("keys_file", str(e))
    header = t.string("batch_header", _A.batch_header)
    if not _HEADER_NAME.fullmatch(header):
        t.fail("batch_header", f"must be an HTTP header name, got {show(header)}")
    if header.lower() in _RESERVED_HEADERS:
        t.fail("batch_header", f"{show(header)} already means something in HTTP or to chirond; pick another name")
    return ApiConfig(
        auth=auth,
        keys_file=keys_file,
        max_body_bytes=t.integer("max_body_bytes", _A.max_body_bytes, MIN_BODY_BYTES),
        max_queue_interactive=t.integer("max_queue_interactive", _A.max_queue_interactive),
        max_queue_batch=t.integer("max_queue_batch", _A.max_queue_batch),
        max_wait_s=t.number("max_wait_s", _A.max_wait_s),
        retry_after_s=t.integer("retry_after_s", _A.retry_after_s, 1),
        keepalive_s=t.number("keepalive_s", _A.keepalive_s),
        max_retries=t.integer("max_retries", _A.max_retries),
        batch_header=header,
        batch_deadline_s=t.number("batch_deadline_s", _A.batch_deadline_s),
        idle_timeout_s=t.number("idle_timeout_s", _A.idle_timeout_s),
        header_timeout_s=t.number("header_timeout_s", _A.header_timeout_s),
        body_timeout_s=t.number("body_timeout_s", _A.body_timeout_s),
        max_connections=t.integer("max_connections", _A.max_connections, 1),
        max_connections_per_client=t.integer("max_connections_per_client", _A.max_connections_per_client, 1),
    )


def _port_range(t: Table, default: tuple[int, int] = _L.port_range, lowest: int = 1) -> tuple[int, int]:
    v = t.data.get("port_range", list(default))
    ok = isinstance(v, list) and len(v) == 2 and all(type(p) is int and lowest <= p <= 65535 for p in v)
    if not ok or v[0] > v[1]:
        t.fail("port_range", f"must be [lo, hi] with {lowest} <= lo <= hi <= 65535, got {show(v)}")
    return v[0], v[1]


def _local(t: Table) -> LocalBackendConfig:
    return LocalBackendConfig(
        gpus=t.integer("gpus", _L.gpus, 1),
        port_range=_port_range(t),
        queue_wait_s=_queue_wait(t),
        time_limit_s=t.number("time_limit_s", _L.time_limit_s, "non-negative"),
        seed=t.integer("seed", _L.seed),
        queue_when_full=t.boolean("queue_when_full", _L.queue_when_full),
    )


_LC = LifecycleConfig()


def _lifecycle(t: Table, local: Table, warn: Callable[[str], None]) -> LifecycleConfig:
    """[lifecycle], or the same keys where they used to be, under [backend.local] (with a warning
    naming the new key). Both set is an error: which one was meant cannot be told."""
    values: dict[str, float] = {}
    for key in LIFECYCLE_KEYS:
        old, new = local.path(key), t.path(key)
        if key in local.data and key in t.data:
            local.fail(key, f"deprecated, and {new} is set too: keep only {new}")
        if key in local.data:
            warn(f"{old} is deprecated: use {new}")
            values[key] = local.number(key)
        else:
            values[key] = t.number(key, getattr(_LC, key))
    return LifecycleConfig(**values)


def _queue_wait(t: Table) -> tuple[float, float]:
    v = t.data.get("queue_wait_s", list(_L.queue_wait_s))
    ok = isinstance(v, list) and len(v) == 2 and all(
        isinstance(w, int | float) and not isinstance(w, bool) and 0 <= w < math.inf for w in v
    )
    if not ok or v[0] > v[1]:
        t.fail("queue_wait_s", f"must be [min, max] seconds with 0 <= min <= max, got {show(v)}")
    return float(v[0]), float(v[1])


_S: dict[str, Any] = {f.name: f.default for f in fields(SlurmBackendConfig)}


def _slurm_name(t: Table, key: str) -> str:
    v = t.optional_string(key)
    if v and not _SLURM_NAME.fullmatch(v):
        t.fail(key, f"must be a Slurm name of A-Z a-z 0-9 _ . -, got {show(v)}")
    return v


def _host(t: Table, key: str, default: str) -> str:
    v = t.optional_string(key) if not default else t.string(key, default)
    if v and not _HOST.fullmatch(v):
        t.fail(key, f"must be a host name or address (A-Z a-z 0-9 _ . : -), got {show(v)}")
    return v


def _one_line_strings(t: Table, key: str) -> tuple[str, ...]:
    items = t.strings(key)
    for i, item in enumerate(items):
        if "\n" in item or "\r" in item or "\0" in item:
            t.fail(key, "must be one line (no line break or NUL)", i)
    return items


def _slurm(t: Table) -> SlurmBackendConfig:
    if not t.data.get("partition"):
        t.fail("partition", "required: the Slurm partition the instance jobs run in")
    run_dir = t.resolved_path("run_dir", None)
    if run_dir is not None and "%" in str(run_dir):
        t.fail("run_dir", f"must not contain '%' (Slurm expands it in log file names), got {show(str(run_dir))}")
    extra = _one_line_strings(t, "extra_sbatch_args")
    for i, arg in enumerate(extra):
        if not arg.startswith("--"):
            t.fail("extra_sbatch_args", f"must be a long option such as \"--constraint=a100\", got {show(arg)}", i)
    user = t.optional_string("user")
    if user and not _USER.fullmatch(user):
        t.fail("user", f"must be a user name, got {show(user)}")
    return SlurmBackendConfig(
        partition=_slurm_name(t, "partition"),
        account=_slurm_name(t, "account"),
        qos=_slurm_name(t, "qos"),
        reservation=_slurm_name(t, "reservation"),
        gres_type=_slurm_name(t, "gres_type"),
        gpus_flag=t.string("gpus_flag", _S["gpus_flag"], GPUS_FLAGS),
        time_limit_s=t.number("time_limit_s", 0.0) if "time_limit_s" in t.data else None,
        signal_before_end_s=t.integer("signal_before_end_s", _S["signal_before_end_s"], 1, 65535),
        cpus_per_task=t.integer("cpus_per_task", 0, 1) if "cpus_per_task" in t.data else None,
        mem_gb=t.number("mem_gb", 0.0) if "mem_gb" in t.data else None,
        run_dir=run_dir,
        python=t.string("python", _S["python"]),
        site_hooks=_one_line_strings(t, "site_hooks"),
        port_range=_port_range(t, _S["port_range"], 1024),
        bind_host=_host(t, "bind_host", _S["bind_host"]),
        advertise_host=_host(t, "advertise_host", ""),
        squeue_min_interval_s=t.number("squeue_min_interval_s", _S["squeue_min_interval_s"]),
        command_timeout_s=t.number("command_timeout_s", _S["command_timeout_s"]),
        user=user,
        extra_sbatch_args=extra,
        keep_jobs_on_stop=t.boolean("keep_jobs_on_stop", _S["keep_jobs_on_stop"]),
        template=t.existing_file("template") if t.data.get("template", "") != "" else None,
        ssh=_ssh(t.sub("ssh", SSH_KEYS)) if "ssh" in t.data else None,
    )


_SSH: dict[str, Any] = {f.name: f.default for f in fields(SshConfig)}


def _ssh(t: Table) -> SshConfig:
    if "host" not in t.data:
        t.fail("host", "required: the login node that runs Slurm's commands")
    host = t.string("host", "")
    if not _HOST.fullmatch(host):
        t.fail("host", f"must be a host name or address (A-Z a-z 0-9 _ . : -), got {show(host)}")
    user = t.optional_string("user")
    if user and not _USER.fullmatch(user):
        t.fail("user", f"must be a user name, got {show(user)}")
    jump = t.optional_string("jump_host")
    if jump:
        try:
            parse_jump_host(jump)
        except ValueError as e:
            t.fail("jump_host", str(e))
    if t.data.get("known_hosts") == "":
        t.fail("known_hosts", "must name a known_hosts file: host keys are always checked")
    return SshConfig(
        host=host,
        key_file=t.existing_file("key_file", "the private key chirond logs in with"),
        known_hosts=t.existing_file("known_hosts", "a known_hosts file with the login node's host key "
                                    "(host keys are always checked)"),
        port=t.integer("port", _SSH["port"], 1, 65535),
        user=user,
        jump_host=jump,
        connect_timeout_s=t.number("connect_timeout_s", _SSH["connect_timeout_s"]),
        command_timeout_s=t.number("command_timeout_s", _SSH["command_timeout_s"]),
        keepalive_s=t.number("keepalive_s", _SSH["keepalive_s"]),
        metrics=t.string("metrics", _SSH["metrics"], SSH_METRICS),
        traffic=t.string("traffic", _SSH["traffic"], SSH_TRAFFIC),
    )


# ---------------------------------------------------------------- models


def _profile(t: Table, local: LocalBackendConfig | None) -> tuple[Path, Profile]:
    base = t.base
    if "profile" not in t.data:
        t.fail("profile", f"required: a profile file or name (available: {', '.join(available_profiles())})")
    raw = t.string("profile", "")
    path = resolve_profile(raw, base)
    if path is None:
        t.fail(
            "profile",
            f"no such profile: {raw!r} (looked in {base} and {PROFILES_DIR}; "
            f"available: {', '.join(available_profiles())})",
        )
    try:
        prof = load_profile(path)
    except ProfileError as e:
        t.fail("profile", str(e))
    if local is not None and prof.gpus > local.gpus:
        t.fail("profile", f"{prof.name} needs {prof.gpus} GPUs per instance; backend.local.gpus is {local.gpus}")
    return path, prof


def _slo(t: Table) -> Slo:
    if "slo" not in t.data:
        t.fail("slo", "required: a table with ttft_s and tpot_s, e.g. slo = { ttft_s = 1.0, tpot_s = 0.1 }")
    s = t.sub("slo", SLO_KEYS)
    return Slo(ttft_s=s.number("ttft_s"), tpot_s=s.number("tpot_s"))


def _instances(t: Table) -> tuple[int, int, int]:
    """(min, initial, max); initial defaults to min."""
    lo = t.integer("min_instances", _M["min_instances"])
    hi = t.integer("max_instances", _M["max_instances"])  # 0: disabled, requests get 503 at once
    initial = t.integer("initial_instances", lo)
    if lo > hi:
        t.fail("min_instances", f"must be <= max_instances ({hi}), got {lo}")
    if not lo <= initial <= hi:
        t.fail("initial_instances", f"must be between min_instances ({lo}) and max_instances ({hi}), got {initial}")
    return lo, initial, hi


def placeholders(arg: str) -> list[str]:
    """The `{name}`s in one command argument. Other braces are literal (a JSON argument is fine):
    the daemon fills placeholders by plain replacement, not str.format."""
    return _PLACEHOLDER.findall(arg)


def _command(t: Table) -> tuple[str, ...]:
    argv = t.strings("command")
    if argv and not argv[0].strip():
        t.fail("command", "the program must be a non-empty string", 0)
    seen: set[str] = set()
    for i, arg in enumerate(argv):
        for name in placeholders(arg):
            if name not in PLACEHOLDERS:
                valid = " ".join(f"{{{p}}}" for p in PLACEHOLDERS)
                t.fail("command", f"unknown placeholder {{{name}}} (valid: {valid})", i)
            seen.add(name)
    if argv and "port" not in seen:
        t.fail("command", "must contain {port}: the backend picks each instance's port")
    return argv


def _env(t: Table) -> dict[str, str]:
    env = t.sub("env", None)
    for key, value in env.data.items():
        if not _ENV_NAME.fullmatch(key):
            env.fail(key, "an environment variable name is A-Z a-z 0-9 _, not starting with a digit")
        if not isinstance(value, str):
            env.fail(key, f"must be a string, got {show(value)}")
    return dict(env.data)


def _model(name: str, t: Table, local: LocalBackendConfig | None) -> ModelConfig:
    if not MODEL_NAME.fullmatch(name):
        t.fail(
            "",
            "a model name is 1-128 characters of A-Z a-z 0-9 . _ : / -, starting with a letter or digit",
        )
    path, prof = _profile(t, local)
    slo = _slo(t)
    lo, initial, hi = _instances(t)
    return ModelConfig(
        name=name,
        profile_path=path,
        profile=prof,
        slo=slo,
        min_instances=lo,
        max_instances=hi,
        initial_instances=initial,
        command=_command(t),
        env=_env(t),
        sim_speedup=t.number("sim_speedup", _M["sim_speedup"]),
        sim_startup_s=t.number("sim_startup_s", 0.0, "non-negative") if "sim_startup_s" in t.data else None,
        max_wait_s=t.number("max_wait_s") if "max_wait_s" in t.data else None,
        idle_timeout_s=t.number("idle_timeout_s", 0.0, "non-negative") if "idle_timeout_s" in t.data else None,
        min_instances_by_hour=t.hourly_counts("min_instances_by_hour", hi),
        learned_floor_price=t.number("learned_floor_price", 0.0, "non-negative"),
        task=t.string("task", _M["task"], TASKS),
    )


def _models(root: Table, local: LocalBackendConfig | None) -> dict[str, ModelConfig]:
    """`local`: the GPUs instances must fit on; None when the backend is Slurm (the partition's nodes
    are checked by `chirond check-config`, which asks sinfo)."""
    table = root.sub("models", None)
    if not table.data:
        root.fail("models", 'at least one model is required: a [models."NAME"] table')
    models = {name: _model(name, table.sub(name, MODEL_KEYS, named=True), local) for name in table.data}
    if local is not None:
        _check_initial_gpus(str(root.file), models, local)
    return models


def _check_initial_gpus(file: str, models: Mapping[str, ModelConfig], local: LocalBackendConfig) -> None:
    """The instances started at boot (at least min_instances each) must fit on the GPUs."""
    need = sum(m.initial_instances * m.profile.gpus for m in models.values())
    if need > local.gpus:
        last = [m for m in models.values() if m.initial_instances][-1]
        share = ", ".join(f"{m.name} {m.initial_instances} x {m.profile.gpus}" for m in models.values())
        raise ConfigError(
            f"{file}: {key_path('models', last.name, 'initial_instances')}: the initial instances need {need} GPUs "
            f"({share}); backend.local.gpus is {local.gpus}"
        )


def _check_policy(t: Table, daemon: DaemonConfig, models: Mapping[str, ModelConfig]) -> None:
    """The policy must accept its parameters with these models' profiles."""
    try:
        make_policy(daemon.policy, {name: m.profile for name, m in models.items()}, daemon.policy_params)
    except ValueError as e:
        t.fail("policy_params", str(e))


# ---------------------------------------------------------------- the file


def load_config(path: str | Path, warn: Callable[[str], None] | None = None) -> Config:
    """Read and validate the daemon's config file. Raises ConfigError "FILE: key.path: reason".
    `warn(message)` hears of deprecated keys ("FILE: backend.local.stop_grace_s is deprecated: use
    lifecycle.stop_grace_s"); by default they are logged as warnings."""
    path = Path(path)
    file = str(path)
    warn = warn or log.warning
    root = Table(read_toml(path, ConfigError), ROOT_KEYS, file=file, error=ConfigError)
    backend = root.sub("backend", BACKEND_KEYS)
    local_table = backend.sub("local", (*LOCAL_KEYS, *DEPRECATED_LOCAL_KEYS))
    local = _local(local_table)
    lifecycle = _lifecycle(root.sub("lifecycle", LIFECYCLE_KEYS), local_table, lambda m: warn(f"{file}: {m}"))
    daemon_table = root.sub("daemon", DAEMON_KEYS)
    daemon = _daemon(daemon_table)
    slurm = None
    if "slurm" in backend.data or daemon.backend == "slurm":
        if "slurm" not in backend.data:
            backend.fail("slurm", 'required when daemon.backend = "slurm": a [backend.slurm] table with a partition')
        slurm = _slurm(backend.sub("slurm", (*SLURM_KEYS, "ssh")))
    api = _api(root.sub("api", API_KEYS))
    models = _models(root, local if daemon.backend == "local" else None)
    _check_policy(daemon_table, daemon, models)
    batch = _batch(root.sub("batch", BATCH_KEYS))
    users = parse_users(root.data.get("users", {}), root.on_error)  # it names the whole key path
    return Config(
        path=path.resolve(), daemon=daemon, api=api, local=local, models=models, slurm=slurm, batch=batch, users=users,
        lifecycle=lifecycle,
    )


def load_for_command(path: str | Path) -> Config | None:
    """A command's config, or None once its error is printed (the command then exits 2)."""
    try:
        return load_config(path)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def load_keys(path: Path) -> dict[str, str]:
    """API keys: one "KEY [NAME]" a line; '#' starts a comment, blank lines are skipped. Returns
    key -> name (a key without a name is named "keys-file-line-N": nothing of the key itself, since
    names appear on the unauthenticated /metrics). A key shorter than 16 characters, with
    characters a bearer token cannot carry, or seen twice is a ConfigError "FILE:LINE: reason"
    (the message never shows the key)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text: {e}") from None
    keys: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        words = line.split()
        comment = next((i for i, w in enumerate(words) if w.startswith("#")), len(words))
        words = words[:comment]
        if not words:
            continue
        if len(words) > 2:
            raise ConfigError(f"{path}:{n}: expected KEY [NAME], got {len(words)} fields")
        key = words[0]
        if len(key) < MIN_KEY_CHARS:
            raise ConfigError(f"{path}:{n}: key too short ({len(key)} characters; at least {MIN_KEY_CHARS})")
        if not _KEY_CHARS.fullmatch(key):
            raise ConfigError(f"{path}:{n}: a key may hold only A-Z a-z 0-9 and . _ ~ + / = -")
        if key in first_line:
            raise ConfigError(f"{path}:{n}: duplicate key (first on line {first_line[key]})")
        first_line[key] = n
        keys[key] = words[1] if len(words) == 2 else f"keys-file-line-{n}"
    return keys
