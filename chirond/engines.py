"""What an engine is started with: its command line (a site's `command` template, or chirond's
simulated server), its expected start-up time, and the key every engine demands."""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from pathlib import Path

from chirond.config import ModelConfig
from chirond.engine_guard import MIDDLEWARE, MODULE_NAME, source
from chirond.model import EngineArgs

_VLLM_MODULES = ("vllm.entrypoints.openai.api_server", "vllm.entrypoints.cli.main")


def engine_command(m: ModelConfig, args: EngineArgs, host: str = "127.0.0.1") -> tuple[str, ...]:
    """The argv of one instance; `{port}` is left for the backend, which allocates it. `host` is
    the address the engine listens on (loopback for local instances, all interfaces on a node)."""
    values = {
        "model": m.name,
        "host": host,
        "profile": str(m.profile_path),
        "max_num_seqs": str(args.max_num_seqs),
        "max_num_batched_tokens": str(args.max_num_batched_tokens),
        "scheduling_policy": "priority" if args.priority else "fcfs",
        "gpus": str(m.profile.gpus),
    }
    if m.command:
        out = []
        for arg in m.command:
            for k, v in values.items():
                arg = arg.replace("{" + k + "}", v)
            out.append(arg)
        return guarded(pooling(tuple(out), m.task))
    runner = ("--runner", "pooling") if m.task == "embed" else ()
    return (
        sys.executable, "-m", "chirond", "fake-vllm",
        "--profile", values["profile"], "--model", m.name, "--host", host, "--port", "{port}",
        "--max-num-seqs", values["max_num_seqs"], "--max-num-batched-tokens", values["max_num_batched_tokens"],
        "--scheduling-policy", values["scheduling_policy"],
        "--speedup", repr(m.sim_speedup), "--startup-s", repr(startup_s(m)), *runner,
    )  # fmt: skip


def is_vllm_server(argv: tuple[str, ...] | list[str]) -> bool:
    """Whether `argv` starts vLLM's OpenAI server: `vllm serve` (also inside a wrapper such as
    `apptainer exec IMAGE vllm serve`) or `python -m vllm.entrypoints.openai.api_server`."""
    for i, arg in enumerate(argv):
        if os.path.basename(arg) == "vllm" and i + 1 < len(argv) and argv[i + 1] == "serve":
            return True
        if arg in _VLLM_MODULES and i > 0 and argv[i - 1] == "-m":
            return True
    return False


def pooling(argv: tuple[str, ...], task: str) -> tuple[str, ...]:
    """An embedding model's vLLM command with `--runner pooling` added when the site's command does
    not choose a runner itself: vLLM then serves /v1/embeddings (converting a causal LM with its
    `--convert auto`) and no generation routes. Other tasks and commands unchanged."""
    if task != "embed" or not is_vllm_server(argv) or any(a == "--runner" or a.startswith("--runner=") for a in argv):
        return argv
    return (*argv, "--runner", "pooling")


def guarded(argv: tuple[str, ...]) -> tuple[str, ...]:
    """A vLLM server command with chirond's engine guard added (`--middleware`), so that no route
    but /health and /metrics answers without the engine key; other commands unchanged."""
    if not is_vllm_server(argv) or MIDDLEWARE in argv:
        return argv
    return (*argv, "--middleware", MIDDLEWARE)


def write_guard(folder: Path) -> Path:
    """Write the guard module into `folder` (made if missing) for PYTHONPATH; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{MODULE_NAME}.py"
    text = source()
    if not path.exists() or path.read_text() != text:
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    return folder


def startup_s(m: ModelConfig) -> float:
    """Expected launch-to-ready time of one instance, in real seconds."""
    if m.command:
        return m.profile.cold_start_s
    return m.sim_startup_s if m.sim_startup_s is not None else m.profile.cold_start_s / m.sim_speedup


def engine_key(state_dir: Path) -> str:
    """The key every engine requires on /v1 (vLLM reads VLLM_API_KEY; chirond sends it), so that
    users who can reach an engine's port (any node user; any cluster user with Slurm) cannot go
    around chirond's keys, queues and quotas. Kept in the state directory (0600) so that engines
    adopted after a restart still take it."""
    path = state_dir / "engine.key"
    with contextlib.suppress(FileNotFoundError):
        key = path.read_text().strip()
        if key:
            return key
    key = secrets.token_urlsafe(32)
    tmp = path.with_name(f".engine.key.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return key
