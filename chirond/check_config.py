"""`chirond check-config FILE`: load the config, print what the daemon would run, warn about legal
but probably unintended settings, and with the Slurm backend ask Slurm (here or over SSH, as the
daemon would) whether the partition exists, the nodes can hold each model's GPUs, the account
exists and it would take each model's job (`sbatch --test-only`; nothing is submitted).

The schema and its validation are chirond/config.py; what is asked of Slurm past the partition is
chirond/cluster/slurm_check.py.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import ipaddress
import shlex
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from chirond.cluster.slurm_backend import partition_problem
from chirond.cluster.slurm_check import PreflightError, preflight, slurm_cli
from chirond.cluster.slurm_parse import NodeInfo
from chirond.cluster.transport import SlurmError, TransportError
from chirond.config import Config, ConfigError, ModelConfig, SlurmBackendConfig, load_config, load_keys
from chirond.engines import is_vllm_server
from chirond.policy import make_policy
from chirond.startup_checks import check_startup
from chirond.tomltable import key_path


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def config_warnings(cfg: Config) -> list[str]:
    """Legal but probably unintended settings."""
    out = []
    d, a = cfg.daemon, cfg.api
    policy = make_policy(d.policy, {name: m.profile for name, m in cfg.models.items()}, d.policy_params)
    if a.auth == "open" and not _is_loopback(d.listen_host):
        out.append(f'api.auth = "open" on {d.listen_host}: anyone who reaches port {d.listen_port} can use the models')
    if a.auth == "keys" and a.keys_file is not None and not load_keys(a.keys_file):
        out.append(f"api.keys_file {a.keys_file} holds no keys: every request will be refused")
    if d.backend == "local":  # Slurm instances listen on compute nodes, not next to the daemon
        lo, hi = cfg.local.port_range
        if lo <= d.listen_port <= hi:
            out.append(f"daemon.listen_port {d.listen_port} lies inside backend.local.port_range [{lo}, {hi}]")
    for m in cfg.models.values():
        if any(arg == "--api-key" or arg.startswith("--api-key=") for arg in m.command):
            out.append(
                f"{key_path('models', m.name, 'command')} sets --api-key: vLLM then ignores the engine key chirond "
                "gives it (VLLM_API_KEY) and refuses chirond's requests; leave it out"
            )
        if m.command and is_vllm_server(m.command):
            out += _vllm_command_warnings(m, policy.engine_args(m.name, m.slo).priority)
        if m.command and not is_vllm_server(m.command):
            out.append(
                f"{key_path('models', m.name, 'command')} does not look like `vllm serve`: chirond cannot add its "
                "engine guard (--middleware), so the engine's routes outside /v1 (/invocations, /tokenize, ...) "
                "answer anyone who reaches its port"
            )
        floor = m.profile.step_s(1, 0)
        if m.slo.tpot_s < floor:
            out.append(
                f"{key_path('models', m.name, 'slo', 'tpot_s')} = {m.slo.tpot_s:g} s is below one decode step of "
                f"{m.profile.name} ({floor * 1000:.0f} ms): no batch size meets it"
            )
    return out


def _flag_value(argv: tuple[str, ...], flag: str) -> str | None:
    """The value of `--flag VALUE` or `--flag=VALUE` in argv; "" for a bare flag; None when absent."""
    for i, arg in enumerate(argv):
        if arg == flag:
            nxt = argv[i + 1] if i + 1 < len(argv) else ""
            return "" if nxt.startswith("--") else nxt
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _vllm_command_warnings(m: ModelConfig, sends_priority: bool) -> list[str]:
    """What a `vllm serve` command lacks that chirond's traffic needs."""
    where = key_path("models", m.name, "command")
    out = []
    runner = _flag_value(m.command, "--runner")
    if runner not in (None, "auto", "pooling" if m.task == "embed" else "generate"):
        out.append(f"{where} sets --runner {runner} but the model's task is {m.task!r}: its engine will not serve "
                   f"{'/v1/embeddings' if m.task == 'embed' else 'chat and completions'} (set task, or drop --runner)")
    if m.task == "generate" and (_flag_value(m.command, "--enable-auto-tool-choice") is None
                                 or not _flag_value(m.command, "--tool-call-parser")):
        out.append(f"{where} cannot serve `tools`: vLLM answers 400 to every chat request with tools unless the "
                   "command has --enable-auto-tool-choice and --tool-call-parser (Llama 3.1: llama3_json)")
    if sends_priority and _flag_value(m.command, "--scheduling-policy") not in ("{scheduling_policy}", "priority"):
        out.append(f"{where} lacks --scheduling-policy {{scheduling_policy}} (or priority) while the policy sends "
                   "priorities: vLLM then ignores them and batch work competes with interactive work in the engine")
    return out


def _engine(m: ModelConfig) -> str:
    if m.command:
        return " ".join(shlex.quote(arg) if any(c.isspace() for c in arg) or not arg else arg for arg in m.command)
    startup = f"{m.sim_startup_s:g} s" if m.sim_startup_s is not None else "profile's cold start"
    return f"simulated server, speedup {m.sim_speedup:g}, start-up {startup}"


def print_summary(cfg: Config, console: Console) -> None:
    """What the daemon would run: listen address, backend, policy, then each model."""
    d, a, loc = cfg.daemon, cfg.api, cfg.local
    if a.auth == "open":
        auth = "open (no keys)"
    elif a.keys_file is None:
        auth = "keys (minted with `chiron token` only)"
    else:
        auth = f"keys ({len(load_keys(a.keys_file))} in {a.keys_file}, and minted with `chiron token`)"
    params = ", ".join(f"{k}={v:g}" for k, v in d.policy_params.items()) or "defaults"
    console.print(f"[bold green]{escape(str(cfg.path))}: OK[/]")
    console.print(f"listen   http://{escape(d.listen_host)}:{d.listen_port}, auth {escape(auth)}")
    if cfg.slurm is not None and d.backend == "slurm":
        console.print(f"backend  slurm: {escape(_slurm_summary(cfg.slurm, d.state_dir))}")
    else:
        console.print(f"backend  {d.backend}: {loc.gpus} GPUs, ports {loc.port_range[0]}-{loc.port_range[1]}")
    console.print(f"policy   {d.policy} ({escape(params)}), tick {d.tick_s:g} s")
    console.print(f"state    {escape(str(d.state_dir))}, log level {d.log_level}")
    for m in cfg.models.values():
        gpus = f"{m.profile.gpus} GPU{'s' if m.profile.gpus > 1 else ''}/instance"
        console.print(f"model    [bold]{escape(m.name)}[/]: profile {escape(m.profile.name)}, {gpus}")
        console.print(
            f"         SLO TTFT {m.slo.ttft_s:g} s, TPOT {m.slo.tpot_s:g} s; "
            f"instances min {m.min_instances}, initial {m.initial_instances}, max {m.max_instances}"
        )
        if m.min_instances_by_hour:
            h = m.min_instances_by_hour
            steps = ", ".join(f"{n} from {i:02d}:00" for i, n in enumerate(h) if i == 0 or n != h[i - 1])
            console.print(f"         floor by the local hour: {steps}")
        if m.learned_floor_price > 0:
            console.print(f"         floor learned from yesterday's traffic at {m.learned_floor_price:g} SLO misses "
                          "per GPU-hour (chirond learn-floor; above the floor by the hour)")
        console.print(f"         engine: {escape(_engine(m))}")


def _slurm_summary(s: SlurmBackendConfig, state_dir: Path) -> str:
    kind = f"{s.gres_type}:" if s.gres_type else ""
    gpu = f"--gres=gpu:{kind}N" if s.gpus_flag == "gres" else f"--gpus={kind}N"
    limit = f"{s.time_limit_s:g} s" if s.time_limit_s is not None else "the partition's default"
    bits = [f"partition {s.partition}"] + [f"{k} {getattr(s, k)}" for k in ("account", "qos", "reservation")
                                           if getattr(s, k)]
    bits += [f"GPUs {gpu}", f"time limit {limit}", f"run dir {s.run_dir or state_dir / 'jobs'}",
             f"user {s.user or getpass.getuser()}"]
    if s.template is not None:
        bits.append(f"job template {s.template}")
    if s.ssh is not None:
        via = f" via {s.ssh.jump_host}" if s.ssh.jump_host else ""
        bits.append(f"commands over ssh to {s.ssh.user + '@' if s.ssh.user else ''}{s.ssh.host}:{s.ssh.port}{via}"
                    f" (metrics {s.ssh.metrics}, traffic {s.ssh.traffic})")
    return ", ".join(bits)


def probe_slurm(cfg: Config) -> str:
    """Ask this machine's Slurm (sinfo) whether the configured partition exists and its nodes can
    hold each model's GPUs. Returns a one-line summary; raises ConfigError with the key path."""
    s = cfg.slurm
    assert s is not None
    where = f"{cfg.path}: {key_path('backend', 'slurm')}"

    async def ask() -> list[NodeInfo]:
        async with slurm_cli(s) as cli:  # here, or over SSH to the login node, as the backend runs them
            return await cli.sinfo()

    try:
        nodes = asyncio.run(ask())
    except TransportError as e:
        raise ConfigError(f"{where}: cannot ask Slurm about the partition: {e} "
                          "(are Slurm's commands, sinfo sbatch squeue scancel, installed on this machine?)") from None
    except SlurmError as e:
        raise ConfigError(f"{where}: sinfo failed: {e}") from None
    problem = partition_problem(nodes, s.partition)
    if problem is not None:
        raise ConfigError(f"{cfg.path}: {key_path('backend', 'slurm', 'partition')}: {problem}")
    mine = [n for n in nodes if s.partition in n.partitions]
    biggest = max(n.gpus_total for n in mine)
    for m in cfg.models.values():
        if m.profile.gpus > biggest:
            raise ConfigError(
                f"{cfg.path}: {key_path('models', m.name, 'profile')}: {m.profile.name} needs {m.profile.gpus} GPUs "
                f"per instance; the largest node of partition {s.partition!r} has {biggest}"
            )
    usable = [n for n in mine if n.usable]
    summary = (f"partition {s.partition}: {len(usable)} of {len(mine)} node(s) usable, "
               f"{sum(n.gpus_free for n in usable)} of {sum(n.gpus_total for n in mine)} GPUs free")
    return "\n".join([summary, *slurm_preflight(cfg)])


def slurm_preflight(cfg: Config) -> list[str]:
    """A custom job template renders and passes `bash -n`; the account exists (where sacctmgr can
    tell); Slurm accepts one sample job per model (`sbatch --test-only`: nothing is submitted).
    Returns notes for the summary; raises ConfigError naming the key."""
    s = cfg.slurm
    assert s is not None
    run_dir = s.run_dir or cfg.daemon.state_dir / "jobs"
    try:
        return asyncio.run(preflight(s, run_dir, {n: m.profile.gpus for n, m in cfg.models.items()}))
    except PreflightError as e:
        raise ConfigError(f"{cfg.path}: {e}") from None
    except (TransportError, SlurmError) as e:
        raise ConfigError(f"{cfg.path}: {key_path('backend', 'slurm')}: cannot check a sample job with Slurm: {e}"
                          ) from None


def check_config_main(args: argparse.Namespace) -> int:
    """`chirond check-config FILE`: 0 and a summary when the file is good, 2 and the error if not.
    With the Slurm backend it also asks Slurm whether the partition exists, the account exists and
    it would take each model's job (`sbatch --test-only`; nothing is submitted)."""
    deprecated: list[str] = []
    try:
        cfg = load_config(args.config, warn=deprecated.append)
        check_startup(cfg)
        warnings = [*deprecated, *config_warnings(cfg)]
        probed = probe_slurm(cfg) if cfg.daemon.backend == "slurm" else None
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_summary(cfg, Console())
    if probed is not None:
        for i, line in enumerate(probed.splitlines()):
            Console().print(f"{'slurm' if i == 0 else '':9}{escape(line)}")
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0
