"""`chirond replay`: one daemon subprocess per policy, started with a generated config, driven by
the client until the scenario's workload is answered (or its horizon passes), then stopped with
SIGTERM (SIGKILL after a bound, and its engines by PID), whatever happened, Ctrl-C included."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from chirond.replay.driver import Driver, Recording, parse_metrics
from chirond.replay.plan import ReplayPlan, daemon_config, lag_verdict, make_plan
from chirond.replay.result import (
    Extras,
    Sample,
    build_result,
    client_lags,
    daemon_loop_lag,
    per_model_extras,
)
from chirond.sim.results import RunResult
from chirond.startup_checks import connections_allowed

DEFAULT_SPEEDUP = 5.0  # sustained by a loaded 2-core machine on benchmarks/scenarios/replay-check.toml
DEFAULT_LAG_FRACTION = 0.1
STOP_WAIT_S = 30.0  # real seconds after SIGTERM before SIGKILL
START_WAIT_S = 60.0  # real seconds for the daemon to answer /health
EXIT_LAG = 3

DESCRIPTION = """\
Run the real daemon (`chirond serve`, local backend, simulated vLLM engines) on this machine
against a scenario's workload, K times faster than real time: a dry run of a deployment before
buying GPUs, and the check that `chirond simulate` and the daemon agree. One daemon per policy,
each with a generated config (in OUT/POLICY/chirond.toml) that carries the scenario's models,
SLOs, instance limits, tick, cold starts (divided by K), Slurm queue waits and job time limits
(emulated by the local backend). Every interactive request goes over HTTP to /v1/completions,
streamed, at its arrival time / K; every batch through the Files and Batches API with a
completion window equal to its deadline. Results: the same table, summary.json keys and plots
as `chirond simulate`, plus replay-only fields (speedup, client and event-loop lag, trustworthy).

If this machine cannot keep up with K (requests sent late, event loops stalled by more than
--lag-fraction of the tightest TTFT SLO), the run is marked trustworthy: false, a warning says
why, and the exit status is 3 unless --allow-lag.
"""

EPILOG = """\
examples:
  chirond replay benchmarks/scenarios/replay-check.toml --policies chirond
  chirond replay SCENARIO.toml --speedup 4 --policies chirond,static --out out/replay
  chirond replay SCENARIO.toml --speedup 20 --allow-lag      # a quick look, numbers not trusted

exit status: 0 done and trustworthy; 3 done but the machine lagged; 2 bad scenario or config;
1 the daemon failed.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", help="scenario TOML file (see docs/scenarios.md)")
    p.add_argument("--speedup", type=float, default=DEFAULT_SPEEDUP,
                   help=f"daemon-clock seconds per real second (default {DEFAULT_SPEEDUP:g})")
    p.add_argument("--policies", help="comma-separated; default: the scenario's [policies] run list")
    p.add_argument("--seed", type=int, help="override the scenario's seed (workload and queue waits)")
    p.add_argument("--out", help="output directory (default out/replay-SCENARIO)")
    p.add_argument("--requests", action="store_true",
                   help="also write requests.csv, one row per request (joins a simulation's by id)")
    p.add_argument("--lag-fraction", type=float, default=DEFAULT_LAG_FRACTION,
                   help=f"lag allowed, as a fraction of the tightest TTFT SLO (default {DEFAULT_LAG_FRACTION:g})")
    p.add_argument("--allow-lag", action="store_true", help="exit 0 even when the machine did not keep up")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                   help="the daemon's log level (its log: OUT/POLICY/daemon.log)")


# ---------------------------------------------------------------- ports


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def engine_ports(listen_port: int, width: int = 400) -> tuple[int, int]:
    """A range of ports for the engines, in 20000-29999 (below the ephemeral range, where
    listen_port is), picked by PID so that concurrent replays rarely share one (the local
    backend skips ports in use anyway)."""
    lo = 20000 + (os.getpid() * 7919) % (10000 - width)
    if lo <= listen_port < lo + width:
        lo = 20000 if listen_port >= 20000 + width else 29999 - width
    return lo, lo + width - 1


# ---------------------------------------------------------------- one run


class DaemonFailed(RuntimeError):
    pass


def _say(msg: str) -> None:
    if sys.stderr.isatty():
        print("\r\033[K" + msg, end="", file=sys.stderr, flush=True)
    else:
        print(msg, file=sys.stderr, flush=True)


async def _scrape(http: aiohttp.ClientSession, base: str) -> Sample:
    async with http.get(base + "/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
        return parse_metrics(await r.text())


async def _wait_ready(
    proc: asyncio.subprocess.Process, plan: ReplayPlan, base: str, log_path: Path
) -> Sample:
    """Until /health answers and every model has its initial instances ready; the last scrape."""
    k = plan.speedup
    need = {m.name: max(m.initial_instances, m.min_instances) for m in plan.models}
    cold = max((m.cold_start_s for m in plan.models), default=0.0)
    bound = START_WAIT_S + (cold + plan.scenario.cluster.queue_wait_s[1]) / k * 3 + 30
    end = time.monotonic() + bound
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < end:
            if proc.returncode is not None:
                raise DaemonFailed(f"the daemon exited with status {proc.returncode}; see {log_path}:\n"
                                   + _tail(log_path))
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError, ValueError):
                s = await _scrape(http, base)
                ready = {
                    n: sum(v for (name, lab), v in s.items()
                           if name == "chirond_instances" and dict(lab).get("model") == n
                           and dict(lab).get("state") == "ready")
                    for n in need
                }
                if all(ready[n] >= need[n] for n in need):
                    return s
            await asyncio.sleep(0.2)
    raise DaemonFailed(f"the initial instances were not ready within {bound:.0f} s; see {log_path}:\n"
                       + _tail(log_path))


def _tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


_STARTED = re.compile(r"started pid (\d+)")


async def _stop(proc: asyncio.subprocess.Process, log_path: Path, ports: tuple[int, int]) -> None:
    """SIGTERM the daemon (it stops its engines), SIGKILL after STOP_WAIT_S; then any engine it
    started (by the PIDs in its log) that is still there: a fake-vllm leading its own process group
    on a port of this run's range."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_WAIT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    with contextlib.suppress(OSError):
        for pid in {int(p) for p in _STARTED.findall(log_path.read_text(errors="replace"))}:
            with contextlib.suppress(OSError, ValueError):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                args = cmd.split(b"\0")
                port = int(args[args.index(b"--port") + 1]) if b"--port" in args else -1
                if b"fake-vllm" in cmd and ports[0] <= port <= ports[1] and os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)


_FAILED = re.compile(r"instance \d+ \(\S+\) (failed|lost its engine)")
_TICK = re.compile(r"\btick \d+ .*\|")


def _log_facts(log_path: Path, offset: int) -> tuple[int, list[str]]:
    """Instance failures and the tick lines that acted, after byte `offset` of the daemon's log."""
    with open(log_path, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    failures = len(_FAILED.findall(text))
    ticks = [line.split(": ", 1)[-1] for line in text.splitlines()
             if _TICK.search(line) and not line.rstrip().endswith("no action")]
    return failures, ticks


async def replay_one(
    plan: ReplayPlan, out: Path, *, lag_fraction: float, log_level: str, quiet: bool = False
) -> tuple[RunResult, Extras]:
    run_dir = out / plan.policy
    state = run_dir / "state"
    run_dir.mkdir(parents=True, exist_ok=True)
    listen = free_port()
    ports = engine_ports(listen)
    cfg_path = run_dir / "chirond.toml"
    cfg_path.write_text(daemon_config(plan, listen_port=listen, port_range=ports, state_dir=state,
                                      log_level=log_level, max_connections=connections_allowed()))
    from chirond.config import ConfigError, load_config

    try:
        load_config(cfg_path)
    except ConfigError as e:
        raise DaemonFailed(f"the generated config is refused: {e}") from e
    log_path = run_dir / "daemon.log"
    base = f"http://127.0.0.1:{listen}"
    t_wall = time.monotonic()
    with open(log_path, "wb") as logf:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chirond", "serve", "--config", str(cfg_path),
            stdin=asyncio.subprocess.DEVNULL, stdout=logf, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal reaches us, and we stop it in order
        )  # fmt: skip
    try:
        if not quiet:
            _say(f"[{plan.policy}] starting the daemon (pid {proc.pid}) and its initial instances")
        start_sample = await _wait_ready(proc, plan, base, log_path)
        offset = log_path.stat().st_size
        t0 = time.monotonic()
        k = plan.speedup
        deadline = plan.scenario.horizon_s / k
        driver = Driver(plan, base, deadline_real_s=deadline,
                        progress=None if quiet else (lambda s: _say(f"[{plan.policy}] {s}")))
        rec: Recording = await driver.run(t0)
        if proc.returncode is not None:
            raise DaemonFailed(f"the daemon exited with status {proc.returncode} during the run; see {log_path}:\n"
                               + _tail(log_path))
    finally:
        await _stop(proc, log_path, ports)
        if not quiet and sys.stderr.isatty():
            print(file=sys.stderr)
    failures, ticks = _log_facts(log_path, offset)
    from chirond.sim.compare import setups
    from chirond.sim.runner import gpu_hours_lower_bound

    models, _, _ = setups(plan.scenario)
    all_reqs = [*plan.interactive, *(r for b in plan.batches for r in b.requests)]
    result, _reqs = build_result(
        plan, rec, start_sample=start_sample, wall_s=time.monotonic() - t_wall, failures=failures, log=ticks,
        lower_bound=gpu_hours_lower_bound(models, all_reqs),
    )
    final = rec.scrapes[-1][1] if rec.scrapes else {}
    p50, p99, lag_max = client_lags(rec, k)
    loop_max = max(rec.loop_lags, default=0.0) * k
    daemon_lag = daemon_loop_lag(rec.scrapes, k)
    verdict = lag_verdict(speedup=k, slo_ttft_s=[m.ttft_s for m in plan.models], client_lag_p99_s=p99,
                          client_loop_lag_max_s=loop_max, daemon_loop_lag_max_s=daemon_lag, fraction=lag_fraction)
    errors: dict[str, int] = {}
    for s in rec.sent:
        if s.error or (s.status and s.status != 200):
            key = f"HTTP {s.status}" if s.status and s.status != 200 else s.error.split(":")[0]
            errors[key] = errors.get(key, 0) + 1
    for b in rec.batches:
        if b.error:
            errors[f"batch: {b.error}"] = errors.get(f"batch: {b.error}", 0) + 1
    warnings = list(plan.warnings) + list(verdict.reasons)
    if rec.timed_out:
        warnings.append(f"the horizon ({plan.scenario.horizon_s:g} s) passed before every request was answered")
    if daemon_lag is None:
        warnings.append("the daemon exports no chirond_event_loop_lag_seconds: its event-loop lag is not checked")
    extras = Extras(
        speedup=k,
        client_lag_p50_s=p50, client_lag_p99_s=p99, client_lag_max_s=lag_max,
        client_loop_lag_max_s=loop_max, loop_lag_max_s=daemon_lag,
        trustworthy=verdict.trustworthy,
        warnings=warnings,
        not_answered=sum(1 for s in rec.sent if np.isnan(s.finish)),
        wrong_length=sum(1 for s, r in zip(rec.sent, plan.interactive, strict=True)
                         if s.tokens >= 0 and s.tokens != r.output_tokens),
        errors=errors,
        per_model=per_model_extras(plan, result, start_sample, final),
        timed_out=rec.timed_out,
    )  # fmt: skip
    return result, extras


def merge_summary(summary: dict[str, Any], extras: Extras) -> dict[str, Any]:
    """`chirond simulate`'s summary plus the replay-only fields; per-model GPU-hours and launches
    go into per_model next to the simulator's keys."""
    out = dict(summary)
    x = extras.to_json()
    per_model = x.pop("per_model")
    out.update(x)
    out["per_model"] = {n: {**v, **per_model.get(n, {})} for n, v in summary.get("per_model", {}).items()}
    return out


# ---------------------------------------------------------------- the command


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from chirond.sim.report import (
        print_table,
        summarize,
        write_markdown,
        write_plots,
        write_run_logs,
        write_summary,
    )
    from chirond.sim.scenario import ScenarioError, build_workload, load_scenario

    console = Console()
    try:
        sc = load_scenario(args.scenario)
        seed = sc.seed if args.seed is None else args.seed
        policies = [p.strip() for p in args.policies.split(",") if p.strip()] if args.policies else list(sc.policies)
        work = build_workload(sc, np.random.default_rng(seed))
        reqs = [r for rs in work.values() for r in rs]
        plans = [make_plan(sc, p, reqs, args.speedup, seed) for p in policies]
        if not args.lag_fraction > 0:
            raise ScenarioError(f"--lag-fraction must be > 0, got {args.lag_fraction}")
    except (ScenarioError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out or f"out/replay-{sc.name}")
    results: list[RunResult] = []
    summaries: list[dict[str, Any]] = []
    try:
        for plan in plans:
            for w in plan.warnings:
                console.print(f"[yellow]warning:[/] {w}")
            result, extras = asyncio.run(replay_one(plan, out, lag_fraction=args.lag_fraction,
                                                    log_level=args.log_level))
            results.append(result)
            summaries.append(merge_summary(summarize(result), extras))
            if not extras.trustworthy:
                console.print(f"[bold red]NOT TRUSTWORTHY[/] ({plan.policy}, speedup {plan.speedup:g}):")
                for reason in extras.warnings:
                    console.print(f"  {reason}")
    except DaemonFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; the daemon was stopped", file=sys.stderr)
        return 130
    print_table(summaries, console, title=f"{sc.name}: replay at speedup {args.speedup:g} (seed {seed})")
    for s in summaries:
        console.print(
            f"{s['policy']}: client send lag p99 {s['client_lag_p99_s']:.3f} s, client loop lag max "
            f"{s['client_loop_lag_max_s']:.3f} s, daemon loop lag max "
            f"{'-' if s['loop_lag_max_s'] is None else format(s['loop_lag_max_s'], '.3f')} s (daemon clock); "
            f"trustworthy: {str(s['trustworthy']).lower()}"
        )
    path = write_summary(summaries, out)
    plots = [] if args.no_plots else write_plots(results, out)
    write_markdown(summaries, out / "summary.md", plots)
    logs = ", ".join(p.name for p in write_run_logs(results, out, args.requests))
    (out / "replay.json").write_text(json.dumps({"scenario": str(sc.path), "speedup": args.speedup, "seed": seed,
                                                 "policies": policies}, indent=1) + "\n")
    console.print(f"wrote {path}, {out / 'summary.md'}, {logs} and {len(plots)} plots in {out}")
    if not all(s["trustworthy"] for s in summaries) and not args.allow_lag:
        return EXIT_LAG
    return 0
