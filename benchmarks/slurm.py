"""The Slurm backend on the loopback cluster (`bash scripts/loopback-cluster.sh up`): how fast a load
spike becomes a ready Slurm job, how often the daemon asks slurmctld, and what one control tick
costs at 8 and 64 instances. Prints tables and writes them into docs/benchmarks.md.

    python benchmarks/slurm.py                    # everything (about 3 minutes)
    python benchmarks/slurm.py --no-doc --steady-s 20 --spikes 1

(i)   spike -> Launch -> sbatch returned -> job RUNNING seen -> ready: an in-process daemon (chirond
      policy, 8B profile, simulated server), 12 concurrent long streams against a cap of 8; the
      policy's plan() and the backend's submit() are wrapped to timestamp the Launch decision and
      sbatch; Instance.running_since / ready_at give the rest. Between trials the load stops and
      the daemon drains back to one instance.
(ii)  Slurm commands per minute at steady state (one ready instance, static policy, no requests),
      counted with SlurmCli.calls.
(iii) one control tick at N instances with a synthetic backend: N RUNNING jobs whose addresses are N
      ports of one aiohttp server in a separate process, each serving a recorded vLLM /metrics text;
      Daemon.tick() (poll, scrape, snapshot, policy, reconcile) is called in a loop and timed with
      perf_counter (wall) and process_time (the daemon process's CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- slurm:begin -->", "<!-- slurm:end -->"
PROFILE_8B = ROOT / "profiles" / "llama-3.1-8b_a100-80gb_tp1.toml"
METRICS_TEXT = ROOT / "tests" / "data" / "vllm_metrics" / "vllm-0.10.2.txt"
MODEL = "llama-8b"
LOOPBACK = Path(os.environ.get("CHIROND_LOOPBACK_DIR", "/tmp/chirond-loopback")) / "cluster.json"


# ---------------------------------------------------------------------------- config and helpers


def make_config(
    tmp: Path,
    *,
    policy: str,
    tick_s: float,
    squeue_s: float,
    n: int = 1,
    slurm: bool = True,
    slo: tuple[float, float] = (2.0, 0.2),
    params: dict[str, float] | None = None,
) -> Any:
    from chirond.config import (
        ApiConfig,
        Config,
        DaemonConfig,
        LifecycleConfig,
        LocalBackendConfig,
        ModelConfig,
        SlurmBackendConfig,
    )
    from chirond.model import Slo
    from chirond.profiles import load_profile

    model = ModelConfig(
        name=MODEL,
        profile_path=PROFILE_8B,
        profile=load_profile(PROFILE_8B),
        slo=Slo(*slo),
        min_instances=n,
        max_instances=max(n, 3),
        initial_instances=n,
        sim_speedup=4.0,
        sim_startup_s=0.5,
    )
    sl = None
    if slurm:
        info = json.loads(LOOPBACK.read_text())
        sl = SlurmBackendConfig(
            partition=info["partition"],
            gres_type=info["gpu_type"],
            time_limit_s=600,
            signal_before_end_s=60,
            run_dir=tmp / "jobs",
            python=sys.executable,
            port_range=(32000, 32999),
            bind_host="127.0.0.1",
            advertise_host="127.0.0.1",
            squeue_min_interval_s=squeue_s,
            command_timeout_s=15,
        )
    return Config(
        path=tmp / "bench.toml",
        daemon=DaemonConfig(
            listen_host="127.0.0.1",
            listen_port=0,
            state_dir=tmp / "state",
            tick_s=tick_s,
            scrape_timeout_s=2.0,
            stale_after_s=15.0,
            policy=policy,
            policy_params=params or {},
            backend="slurm" if slurm else "local",
        ),
        api=ApiConfig(auth="open", max_wait_s=120.0, retry_after_s=1),
        local=LocalBackendConfig(),
        lifecycle=LifecycleConfig(health_timeout_s=60.0, drain_timeout_s=5.0, stop_grace_s=5.0),
        models={MODEL: model},
        slurm=sl,
    )


async def wait_until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


def ready(d: Any) -> list[Any]:
    return [i for i in d.instances.values() if i.ready_at is not None]


async def stop_daemon(d: Any) -> None:
    """Stop, then make sure none of its jobs is left (scancel by ownership tag)."""
    try:
        await d.stop()
    finally:
        daemon_id = getattr(d.backend, "daemon_id", None)
        if daemon_id:
            out = subprocess.run(["squeue", "-h", "-o", "%i|%k"], capture_output=True, text=True, check=False).stdout
            left = [ln.split("|")[0] for ln in out.splitlines() if f"chirond:{daemon_id}:" in ln]
            if left:
                subprocess.run(["scancel", *left], check=False)


async def stream(base: str, max_tokens: int) -> None:
    import aiohttp

    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "A long story, please."}],
        "max_tokens": max_tokens,
        "stream": True,
        "ignore_eos": True,
    }
    async with aiohttp.ClientSession() as s, s.post(base + "/v1/chat/completions", json=body) as r:
        async for _ in r.content.iter_any():
            pass


async def short(base: str) -> None:
    import aiohttp

    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    async with aiohttp.ClientSession() as s, s.post(base + "/v1/chat/completions", json=body) as r:
        assert r.status == 200, await r.text()
        await r.read()


# ---------------------------------------------------------------------------- (i) spike to ready


async def spikes(trials: int, tick_s: float, squeue_s: float) -> list[dict[str, float]]:
    from chirond.daemon import Daemon
    from chirond.model import Launch

    out: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="chirond-bench-") as tmp:
        # TTFT 0.3 s, TPOT 15 ms: the cap is 8 per instance and 12 streams queue 4 past 0.15 s.
        cfg = make_config(
            Path(tmp),
            policy="chirond",
            tick_s=tick_s,
            squeue_s=squeue_s,
            slo=(0.3, 0.015),
            params={"scale_down_hold_s": 3.0},
        )
        d = Daemon(cfg)
        marks: dict[str, float] = {}
        plan, submit = d.policy.plan, d.backend.submit

        def timed_plan(snap: Any, state: object) -> Any:
            dec = plan(snap, state)
            if any(isinstance(a, Launch) for a in dec.actions):
                marks.setdefault("launch", time.monotonic())
            return dec

        async def timed_submit(spec: Any) -> str:
            marks.setdefault("sbatch_start", time.monotonic())
            job = await submit(spec)
            marks.setdefault("sbatch_end", time.monotonic())
            return job

        d.policy.plan = timed_plan  # type: ignore[method-assign]
        d.backend.submit = timed_submit  # type: ignore[method-assign]
        await d.start()
        try:
            await wait_until(lambda: len(ready(d)) == 1, 60, "the first instance")
            base = f"http://127.0.0.1:{d.port}"
            await short(base)  # the policy sees interactive traffic and sets the SLO cap
            await wait_until(lambda: [s.cap for s in d.dispatcher.slots.values()] == [8], 3 * tick_s + 5, "cap 8")
            for _ in range(trials):
                marks.clear()
                known = set(d.instances)
                t0 = time.monotonic()
                load = [asyncio.create_task(stream(base, 20000)) for _ in range(12)]
                try:
                    await wait_until(lambda k=known: len(set(d.instances) - k) > 0, 10 * tick_s + 10, "a launch")
                    new = d.instances[(set(d.instances) - known).pop()]
                    await wait_until(lambda i=new: i.ready_at is not None, 60, "the new instance to be ready")
                finally:
                    for t in load:
                        t.cancel()
                    await asyncio.gather(*load, return_exceptions=True)
                assert new.running_since is not None and new.ready_at is not None
                out.append(
                    {
                        "launch": marks["launch"] - t0,
                        "sbatch_start": marks["sbatch_start"] - t0,
                        "sbatch_end": marks["sbatch_end"] - t0,
                        "running": new.running_since - t0,
                        "ready": new.ready_at - t0,
                    }
                )
                print(
                    f"  spike (tick {tick_s:g} s): " + ", ".join(f"{k} {v:.2f}" for k, v in out[-1].items()), flush=True
                )
                await wait_until(lambda: len(d.instances) == 1, 30 + 6 * tick_s, "the drain back to one instance")
        finally:
            await stop_daemon(d)
    return out


# ---------------------------------------------------------------------------- (ii) squeue per minute


async def steady(seconds: float, tick_s: float, squeue_s: float) -> dict[str, float]:
    from chirond.cluster.slurm_backend import SlurmBackend
    from chirond.daemon import Daemon

    with tempfile.TemporaryDirectory(prefix="chirond-bench-") as tmp:
        d = Daemon(make_config(Path(tmp), policy="static", tick_s=tick_s, squeue_s=squeue_s))
        b = d.backend
        assert isinstance(b, SlurmBackend)
        await d.start()
        try:
            await wait_until(lambda: len(ready(d)) == 1, 60, "the instance")
            await asyncio.sleep(tick_s)
            before, hits0, ticks0, t0 = Counter(b._cli.calls), b._cli.squeue_cache_hits, d.ticks, time.monotonic()
            await asyncio.sleep(seconds)
            calls = Counter(b._cli.calls)
            calls.subtract(before)
            span = time.monotonic() - t0
            per_min = 60.0 / span
            return {
                "tick_s": tick_s,
                "squeue_s": squeue_s,
                "span": span,
                "ticks": (d.ticks - ticks0) * per_min,
                "squeue": calls["squeue"] * per_min,
                "sinfo": calls["sinfo"] * per_min,
                "other": sum(v for k, v in calls.items() if k not in ("squeue", "sinfo")) * per_min,
                "hits": (b._cli.squeue_cache_hits - hits0) * per_min,
            }
        finally:
            await stop_daemon(d)


# ---------------------------------------------------------------------------- (iii) tick cost


def serve_metrics(n: int) -> None:
    """Child process: one aiohttp app on `n` ports serving /metrics (the recorded text) and /health;
    prints the ports as JSON, runs until stdin closes."""
    from aiohttp import web

    text = METRICS_TEXT.read_bytes()

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=text, content_type="text/plain")

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/health", health)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        ports = []
        for _ in range(n):
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            ports.append(runner.addresses[-1][1])
        print(json.dumps(ports), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await runner.cleanup()

    asyncio.run(main())


class SyntheticBackend:
    """N jobs RUNNING at once, at the ports of the metrics server."""

    name = "synthetic"

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.jobs: dict[str, tuple[int, int, bool]] = {}  # job id -> (instance id, port, ended)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def adopt(self, models: Collection[str]) -> list[Any]:
        return []

    async def submit(self, spec: Any) -> str:
        from chirond.cluster.backend import BackendError

        if len(self.jobs) >= len(self.ports):
            raise BackendError("no port left")
        job = str(1000 + len(self.jobs))
        self.jobs[job] = (spec.instance_id, self.ports[len(self.jobs)], False)
        return job

    async def poll(self) -> dict[str, Any]:
        from chirond.cluster.backend import JobFacts, JobState

        return {
            j: JobFacts(j, iid, JobState.ENDED if ended else JobState.RUNNING, "127.0.0.1", port)
            for j, (iid, port, ended) in self.jobs.items()
        }

    async def cancel(self, job_id: str, grace_s: float) -> None:
        iid, port, _ = self.jobs[job_id]
        self.jobs[job_id] = (iid, port, True)

    def free_gpus(self) -> int:
        return 0


async def tick_cost(n: int, ticks: int) -> dict[str, float]:
    from chirond.daemon import Daemon

    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-metrics", str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        ports = json.loads(proc.stdout.readline())
        with tempfile.TemporaryDirectory(prefix="chirond-bench-") as tmp:
            cfg = make_config(Path(tmp), policy="chirond", tick_s=3600.0, squeue_s=2.0, n=n, slurm=False)
            d = Daemon(cfg, backend=SyntheticBackend(ports))
            await d.start()  # the control loop ticks once, then sleeps for an hour: the ticks below are ours
            try:
                await wait_until(lambda: len(ready(d)) == n, 30, f"{n} ready instances")
                for _ in range(5):
                    await d.tick()
                assert all(i.stats is not None for i in d.instances.values())
                wall, cpu = [], []
                for _ in range(ticks):
                    w0, c0 = time.perf_counter(), time.process_time()
                    await d.tick()
                    wall.append((time.perf_counter() - w0) * 1000)
                    cpu.append((time.process_time() - c0) * 1000)
                assert len(d.instances) == n and not any(i.stale_since for i in d.instances.values())
            finally:
                await d.stop()
    finally:
        proc.stdin.close()
        proc.wait(10)
    wall.sort()
    return {
        "n": n,
        "ticks": ticks,
        "wall_mean": statistics.fmean(wall),
        "wall_p50": wall[len(wall) // 2],
        "wall_p99": wall[min(len(wall) - 1, int(0.99 * len(wall)))],
        "cpu_mean": statistics.fmean(cpu),
        "cpu_p99": sorted(cpu)[min(len(cpu) - 1, int(0.99 * len(cpu)))],
    }


# ---------------------------------------------------------------------------- main


def stats(rows: list[dict[str, float]], key: str) -> str:
    vals = [r[key] for r in rows]
    return f"{statistics.fmean(vals):.2f} ({min(vals):.2f}-{max(vals):.2f})"


async def run_all(
    a: argparse.Namespace,
) -> tuple[dict[float, list[dict[str, float]]], list[dict[str, float]], list[dict[str, float]]]:
    spike_rows = {0.5: await spikes(a.spikes, 0.5, 0.5), 5.0: await spikes(max(1, a.spikes - 1), 5.0, 2.0)}
    steady_rows = [await steady(a.steady_s, 5.0, 2.0), await steady(a.steady_s / 2, 0.5, 2.0)]
    tick_rows = [await tick_cost(8, a.ticks), await tick_cost(64, a.ticks)]
    return spike_rows, steady_rows, tick_rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spikes", type=int, default=3, help="spike trials at tick 0.5 s (one fewer at tick 5 s)")
    ap.add_argument("--steady-s", type=float, default=60.0, help="steady-state window at the default tick")
    ap.add_argument("--ticks", type=int, default=200, help="timed control ticks per instance count")
    ap.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    ap.add_argument("--serve-metrics", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve_metrics:
        serve_metrics(a.serve_metrics)
        return 0
    if not LOOPBACK.is_file():
        print(f"no {LOOPBACK}: run bash scripts/loopback-cluster.sh up", file=sys.stderr)
        return 2
    # As `chirond serve` runs: INFO logging (one line per tick), here to /dev/null.
    logging.basicConfig(level=logging.INFO, stream=open(os.devnull, "w"))  # noqa: SIM115
    spike_rows, steady_rows, tick_rows = asyncio.run(run_all(a))

    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} with `python benchmarks/slurm.py` on {platform.machine()}, "
        f"Python {platform.python_version()}, {os.cpu_count()} cores (shared), Slurm "
        f"{subprocess.run(['sinfo', '-V'], capture_output=True, text=True, check=False).stdout.strip()} "
        f"loopback cluster, user {getpass.getuser()}.",
        "",
        "Method. (i) An in-process daemon (policy `chirond`, one 8B model on the simulated server at "
        "`sim_speedup` 4, `sim_startup_s` 0.5, SLO TTFT 0.3 s / TPOT 15 ms so the policy's cap is 8 per "
        "instance, `scale_down_hold_s` 3) with one ready instance gets 12 concurrent long streams at once "
        "(aiohttp client in the same process); the times are from that moment to: the first `plan()` whose "
        "decision holds a `Launch` (plan wrapped), `backend.submit` called and returned (wrapped: sbatch through "
        "`SlurmCli`), the daemon seeing the job RUNNING (`Instance.running_since`, from its squeue poll), and "
        "the first `/health` 200 (`Instance.ready_at`). Then the load stops and the daemon drains back to one "
        "instance before the next trial. (ii) A daemon (policy `static`, one ready instance, no requests) "
        "with `squeue_min_interval_s` 2 (the default); Slurm commands are counted by `SlurmCli.calls` over the "
        "window and scaled to a minute. (iii) `Daemon.tick()` called back to back (the control loop itself "
        "sleeps, `tick_s` 3600) against a synthetic backend that reports N RUNNING jobs whose addresses are N "
        "ports of one aiohttp server in a separate process, each serving "
        "`tests/data/vllm_metrics/vllm-0.10.2.txt` (a reconstructed vLLM 0.10.2 page, 27 KB) and /health; "
        "the tick (backend poll, N scrapes, snapshot, `chirond` policy with min = max = N, reconcile) is timed "
        "with `perf_counter` (wall) and `process_time` (CPU of the daemon's process; the metrics server's CPU "
        "is not in it, but it shares the 2 cores, so it is in the wall time). Logging at INFO to /dev/null, "
        "as `chirond serve` logs one line per tick. The machine is shared and noisy: compare within one run.",
        "",
        "**Load spike to ready instance** (seconds after the first of 12 concurrent long streams; mean (min-max) "
        "over the trials; the simulated server starts in 0.5 s):",
        "",
        "| tick_s / squeue_min_interval_s | trials | Launch decided | sbatch called | sbatch returned "
        "| job RUNNING seen | ready (/health 200) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for tick, rows in spike_rows.items():
        lines.append(
            f"| {tick:g} s / {0.5 if tick == 0.5 else 2.0:g} s | {len(rows)} | {stats(rows, 'launch')} | "
            f"{stats(rows, 'sbatch_start')} | {stats(rows, 'sbatch_end')} | {stats(rows, 'running')} | "
            f"{stats(rows, 'ready')} |"
        )
    lines += [
        "",
        "**Slurm commands per minute at steady state** (one ready instance, static policy, no requests):",
        "",
        "| tick_s | squeue_min_interval_s | window s | ticks/min | squeue/min | squeue cache hits/min "
        "| sinfo/min | other/min |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in steady_rows:
        lines.append(
            f"| {r['tick_s']:g} | {r['squeue_s']:g} | {r['span']:.0f} | {r['ticks']:.1f} | "
            f"{r['squeue']:.1f} | {r['hits']:.1f} | {r['sinfo']:.1f} | {r['other']:.1f} |"
        )
    lines += [
        "",
        "**One control tick** (synthetic backend, N scraped endpoints; milliseconds):",
        "",
        "| instances | ticks | wall mean | wall p50 | wall p99 | CPU mean | CPU p99 |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in tick_rows:
        lines.append(
            f"| {r['n']:.0f} | {r['ticks']:.0f} | {r['wall_mean']:.1f} | {r['wall_p50']:.1f} | "
            f"{r['wall_p99']:.1f} | {r['cpu_mean']:.1f} | {r['cpu_p99']:.1f} |"
        )
    print("\n".join(lines))
    if a.no_doc:
        return 0
    text = DOC.read_text()
    block = "\n".join([BEGIN, *lines, END])
    if BEGIN in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n## Slurm backend\n\n" + block + "\n"
    DOC.write_text(text)
    print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
