"""The local backend: every instance is a child process of the daemon on this machine.

Each child runs in its own session (so its own process group): a signal to the group reaches the
engine's helpers too (vLLM's EngineCore and worker processes), and nothing of an instance survives
its leader. GPUs are bookkeeping: `cfg.gpus` indices handed out through CUDA_VISIBLE_DEVICES, so
real engines on a GPU box get distinct devices and simulated ones get a bound on how many run.

Job lifecycle as `poll()` reports it: RUNNING from submit until the leader exits, then ENDED with
"exit code N" or "killed by SIGNAME" in two consecutive polls (so a caller that misses one still
sees it), then the job is forgotten. Its GPUs and port are free as soon as the leader has exited.
`LaunchSpec.time_limit_s` is reported as `ends_at` but not enforced: no scheduler kills a local
process, and the daemon replaces instances before their limit anyway.

Slurm emulation, for dry runs (`chirond replay`): with `queue_wait_s = [lo, hi]` a job stays
PENDING for a wait drawn uniformly from that range (seeded with `seed`, as the simulator's
partition draws it) before its process starts; such a job is named "local-wait-N". It holds its
port while it waits, and its GPUs: a launch that does not fit is refused at once, unless
`queue_when_full`, where it waits PENDING until GPUs are free (first fit in submission order, with
backfill, as the simulator's partition places jobs) and holds none meanwhile. With
`time_limit_s` its leader is killed (SIGKILL, as the simulator's partition ends a job at once) that
long after it started, and `JobFacts.ends_at` says when. Both are in seconds of the daemon's clock:
`speedup` (the daemon's clock seconds per real second) converts them to real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import socket
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chirond.cluster.backend import AdoptedJob, BackendError, JobFacts, JobState, LaunchSpec
from chirond.config import LifecycleConfig, LocalBackendConfig
from chirond.engine_guard import MIDDLEWARE
from chirond.engines import write_guard

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
_ENDED_REPORTS = 2  # polls that report a job ENDED before it is forgotten (the protocol's "twice")
_KILL_WAIT_S = 10.0  # after SIGKILL a process is gone within milliseconds unless stuck in the kernel
_QUEUE_POLL_S = 0.02  # how often the emulated queue looks for jobs to start (real seconds)


@dataclass(slots=True, eq=False)
class _Child:
    job_id: str
    instance_id: int
    proc: asyncio.subprocess.Process | None  # None while it waits in the emulated queue
    port: int
    gpus: tuple[int, ...]
    started_at: float | None
    ends_at: float | None
    ended_reports: int = 0
    swept: bool = False  # leftovers of its process group killed after the leader exited
    killer: asyncio.Task[None] | None = None  # cancel(): SIGKILL after the grace period
    kill_deadline: float = float("inf")  # loop time of that SIGKILL
    spec: LaunchSpec | None = None  # while it waits in the emulated queue
    eligible_at: float = 0.0  # loop time its queue wait ends
    limiter: asyncio.TimerHandle | None = None  # the emulated time limit
    end_detail: str = ""  # why it ended without a process (cancelled or unrunnable while waiting)
    limit_hit: bool = False

    @property
    def alive(self) -> bool:
        if self.proc is None:
            return not self.end_detail
        return self.proc.returncode is None


def describe_exit(returncode: int) -> str:
    """`Popen.returncode` in words: "exit code 3", "killed by SIGKILL"."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"


def _port_is_free(port: int) -> bool:
    # SO_REUSEADDR like the servers we launch (uvicorn, aiohttp, http.server): a port held only by
    # TIME_WAIT connections is usable, one with a listener is not.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


class LocalBackend:
    name = "local"

    def __init__(
        self,
        cfg: LocalBackendConfig,
        state_dir: Path,
        clock: Callable[[], float] = time.time,
        speedup: float = 1.0,
        stop_grace_s: float = LifecycleConfig().stop_grace_s,  # [lifecycle]: SIGTERM, then SIGKILL after this
    ) -> None:
        if not speedup > 0:
            raise ValueError(f"speedup must be > 0, got {speedup!r}")
        self._cfg = cfg
        self._log_dir = Path(state_dir) / "instances"
        self._clock = clock
        self._speedup = speedup
        self._stop_grace_s = stop_grace_s
        self._rng = np.random.default_rng([cfg.seed, 7])
        self._waiting = 0  # jobs named local-wait-N so far
        self._scheduler: asyncio.Task[None] | None = None  # starts waiting jobs (emulated queue)
        self._children: dict[str, _Child] = {}
        self._killers: set[asyncio.Task[None]] = set()  # outlive their job's entry; stop() ends them
        self._lock = asyncio.Lock()  # submit awaits between choosing a port/GPUs and recording them
        lo, hi = cfg.port_range
        if not 0 < lo <= hi < 65536:
            raise ValueError(f"local.port_range {cfg.port_range} is not a valid inclusive port range")
        self._next_port = lo

    async def start(self) -> None:
        self._log_dir.mkdir(parents=True, exist_ok=True)

    async def adopt(self, models: Collection[str]) -> list[AdoptedJob]:
        """Nothing to adopt: a child is known only to the process that started it (its GPUs and port
        are bookkeeping here). A daemon stopped normally stops its children; under systemd
        (KillMode=mixed) the unit's cgroup is killed before a restart after a crash. A daemon run
        by hand and killed with SIGKILL leaves its engines running, unadopted: stop them yourself."""
        return []

    def free_gpus(self) -> int:
        return self._cfg.gpus - len(self._taken())

    def _taken(self) -> set[int]:
        """GPUs of running jobs, and of waiting ones unless they queue for GPUs."""
        return {g for c in self._children.values() if c.alive for g in c.gpus}

    def _free(self) -> list[int]:
        taken = self._taken()
        return [g for g in range(self._cfg.gpus) if g not in taken]

    async def submit(self, spec: LaunchSpec) -> str:
        if not spec.argv:
            raise BackendError(f"instance {spec.instance_id}: empty command")
        if spec.gpus < 0:
            raise BackendError(f"instance {spec.instance_id}: gpus must be >= 0, not {spec.gpus}")
        queue = self._cfg.queue_when_full
        async with self._lock:
            free = self._free()
            if spec.gpus > (self._cfg.gpus if queue else len(free)):
                raise BackendError(
                    f"instance {spec.instance_id} needs {spec.gpus} GPU(s); {len(free)} of {self._cfg.gpus} free"
                )
            port = self._allocate_port()
            wait_s = self._queue_wait()
            if wait_s > 0 or (queue and (spec.gpus > len(free) or self._queued())):
                self._waiting += 1
                gpus = () if queue else tuple(free[: spec.gpus])  # queueing for GPUs: placed when it starts
                c = _Child(f"local-wait-{self._waiting}", spec.instance_id, None, port, gpus, None, None, spec=spec)
                c.eligible_at = asyncio.get_running_loop().time() + wait_s
                self._children[c.job_id] = c
                if self._scheduler is None or self._scheduler.done():
                    self._scheduler = asyncio.create_task(self._schedule(), name="chirond-local-queue")
                log.info("%s: instance %d waits in the emulated queue (%.1f s, then for %d GPU(s))", c.job_id,
                         spec.instance_id, wait_s, spec.gpus if queue else 0)
                return c.job_id
            gpus = tuple(free[: spec.gpus])
            proc, started_at = await self._spawn(spec, port, gpus)
            job_id = f"local-{proc.pid}"
            old = self._children.pop(job_id, None)
            if old is not None:  # the pid was reused while the old job waited to be reported: it ended
                log.warning("pid %d reused; dropping the end report of instance %d", proc.pid, old.instance_id)
            c = _Child(job_id, spec.instance_id, proc, port, gpus, started_at, None)
            self._children[job_id] = c
            self._running(c, spec)
        return job_id

    def _queue_wait(self) -> float:
        """Real seconds this job waits in the emulated queue (0 without one)."""
        lo, hi = self._cfg.queue_wait_s
        wait = float(self._rng.uniform(lo, hi)) if hi > lo else lo
        return wait / self._speedup

    async def _spawn(
        self, spec: LaunchSpec, port: int, gpus: tuple[int, ...]
    ) -> tuple[asyncio.subprocess.Process, float]:
        argv = [a.replace("{port}", str(port)) for a in spec.argv]
        devices = _visible_devices(gpus, self._cfg.gpus)
        env = {**os.environ, **spec.env, "CUDA_VISIBLE_DEVICES": devices}
        if MIDDLEWARE in argv:  # vLLM imports chirond's engine guard from PYTHONPATH
            guard = str(write_guard(self._log_dir.parent / "engine-guard"))
            env["PYTHONPATH"] = guard + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")

        self._log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self._log_dir / f"{spec.instance_id}.log"
        started_at = self._clock()
        with open(log_path, "ab") as logf:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            header = f"--- chirond {stamp}: port {port}, CUDA_VISIBLE_DEVICES={devices}: {shlex.join(argv)}\n"
            logf.write(header.encode())
            logf.flush()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=logf,
                    stderr=asyncio.subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # own process group: signals reach the engine's helpers
                )
            except OSError as e:
                raise BackendError(f"instance {spec.instance_id}: cannot run {argv[0]!r}: {e}") from e
        # (the child holds its own copy of the log descriptor; ours closes here)
        log.info("started pid %d: instance %d on port %d, GPUs %s", proc.pid, spec.instance_id, port,
                 devices or "none")
        return proc, started_at

    def _running(self, c: _Child, spec: LaunchSpec) -> None:
        """The job's process runs: its limit (the emulated one is enforced, the spec's reported)."""
        assert c.proc is not None and c.started_at is not None
        limit_s = self._cfg.time_limit_s / self._speedup if self._cfg.time_limit_s > 0 else None
        if limit_s is not None:
            c.ends_at = c.started_at + limit_s
            c.limiter = asyncio.get_running_loop().call_later(limit_s, self._time_limit, c)
        elif spec.time_limit_s is not None:
            c.ends_at = c.started_at + spec.time_limit_s

    def _queued(self) -> list[_Child]:
        """Jobs waiting in the emulated queue, in submission order."""
        return [c for c in self._children.values() if c.proc is None and not c.end_detail]

    async def _schedule(self) -> None:
        """Start waiting jobs whose queue wait is over and that fit (first fit in submission order,
        smaller jobs backfilling), until none waits."""
        loop = asyncio.get_running_loop()
        while waiting := self._queued():
            async with self._lock:
                for c in waiting:
                    if c.end_detail or c.eligible_at > loop.time() or c.spec is None:
                        continue
                    if not c.gpus:
                        free = self._free()
                        if len(free) < c.spec.gpus:
                            continue
                        c.gpus = tuple(free[: c.spec.gpus])
                    try:
                        c.proc, c.started_at = await self._spawn(c.spec, c.port, c.gpus)
                    except BackendError as e:
                        log.warning("%s: %s", c.job_id, e)
                        c.end_detail = str(e)
                        continue
                    self._running(c, c.spec)
                    c.spec = None
            await asyncio.sleep(_QUEUE_POLL_S)

    def _time_limit(self, c: _Child) -> None:
        if c.alive:
            log.info("%s (instance %d) reached its time limit: killing it", c.job_id, c.instance_id)
            c.limit_hit = True
            self._signal_group(c, signal.SIGKILL)

    async def poll(self) -> dict[str, JobFacts]:
        facts: dict[str, JobFacts] = {}
        for job_id, c in list(self._children.items()):
            if c.proc is None:
                if not c.end_detail:
                    facts[job_id] = JobFacts(job_id, c.instance_id, JobState.PENDING, detail="queue wait (emulated)")
                    continue
                facts[job_id] = JobFacts(job_id, c.instance_id, JobState.ENDED, detail=c.end_detail)
            else:
                rc = c.proc.returncode
                if rc is None:
                    facts[job_id] = JobFacts(
                        job_id, c.instance_id, JobState.RUNNING, HOST, c.port, c.started_at, c.ends_at
                    )
                    continue
                self._sweep(c)  # a crashed leader may leave helpers holding GPU memory
                detail = "time limit" if c.limit_hit else describe_exit(rc)
                facts[job_id] = JobFacts(
                    job_id, c.instance_id, JobState.ENDED, HOST, c.port, c.started_at, c.ends_at, detail
                )
            c.ended_reports += 1
            if c.ended_reports >= _ENDED_REPORTS:
                del self._children[job_id]
        return facts

    async def cancel(self, job_id: str, grace_s: float) -> None:
        """SIGTERM to the job's process group now, SIGKILL after `grace_s` (an internal task; returns
        at once). Unknown or ended jobs are ignored, so a repeated cancel is harmless; a repeat with a
        shorter grace brings the SIGKILL forward."""
        c = self._children.get(job_id)
        if c is None or not c.alive:
            return
        if c.proc is None:  # still waiting in the emulated queue: it never starts
            c.end_detail = "cancelled while pending"
            return
        self._signal_group(c, signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + max(0.0, grace_s)
        if c.killer is not None and not c.killer.done():
            if deadline >= c.kill_deadline:
                return
            c.killer.cancel()
        c.kill_deadline = deadline
        c.killer = asyncio.create_task(self._kill_at(c, deadline), name=f"chirond-kill-{job_id}")
        self._killers.add(c.killer)
        c.killer.add_done_callback(self._killers.discard)

    async def stop(self) -> None:
        """Stop every child: SIGTERM to each group, SIGKILL after `stop_grace_s`, reap them all."""
        killers = list(self._killers)
        starters = [self._scheduler] if self._scheduler is not None else []
        for k in (*killers, *starters):
            k.cancel()
        await asyncio.gather(*killers, *starters, return_exceptions=True)
        for c in self._children.values():
            if c.limiter is not None:
                c.limiter.cancel()
            if c.proc is None and not c.end_detail:
                c.end_detail = "cancelled while pending"

        live = [c for c in self._children.values() if c.alive]
        for c in live:
            self._signal_group(c, signal.SIGTERM)
        waits = [asyncio.create_task(c.proc.wait()) for c in live if c.proc is not None]
        try:
            if waits:
                await asyncio.wait(waits, timeout=self._stop_grace_s)
            for c in live:
                if c.alive:
                    log.warning("%s did not stop within %gs of SIGTERM; killing it", c.job_id, self._stop_grace_s)
                    self._signal_group(c, signal.SIGKILL)
            pending = [w for w in waits if not w.done()]
            if pending:
                await asyncio.wait(pending, timeout=_KILL_WAIT_S)
        finally:
            for w in waits:
                w.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        for c in self._children.values():
            if c.alive and c.proc is not None:
                log.error("%s (pid %d) survived SIGKILL for %gs", c.job_id, c.proc.pid, _KILL_WAIT_S)
            elif c.proc is not None:
                self._sweep(c)

    # --- internals ---------------------------------------------------------------------------------

    def _allocate_port(self) -> int:
        """The next free port after the last one handed out (not the lowest): a port just given up
        may still have clients or scrapes aimed at the instance that had it."""
        lo, hi = self._cfg.port_range
        n = hi - lo + 1
        taken = {c.port for c in self._children.values() if c.alive}
        for k in range(n):
            port = lo + (self._next_port - lo + k) % n
            if port not in taken and _port_is_free(port):
                self._next_port = lo + (port - lo + 1) % n
                return port
        raise BackendError(f"no free TCP port on {HOST} in local.port_range {lo}-{hi}")

    def _signal_group(self, c: _Child, sig: signal.Signals) -> None:
        # The leader's pid is the group id (start_new_session). While the leader is unreaped the id
        # cannot be reused, so this reaches our group only.
        if c.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(c.proc.pid, sig)

    def _sweep(self, c: _Child) -> None:
        """SIGKILL what is left of an ended job's process group, once."""
        if c.swept or c.proc is None:
            return
        c.swept = True
        if c.limiter is not None:
            c.limiter.cancel()
        # After the leader is reaped its pid may be reused; never hit a live child of ours that got it.
        pid = c.proc.pid
        if any(o is not c and o.alive and o.proc is not None and o.proc.pid == pid for o in self._children.values()):
            return
        self._signal_group(c, signal.SIGKILL)

    async def _kill_at(self, c: _Child, deadline: float) -> None:
        assert c.proc is not None
        delay = deadline - asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(c.proc.wait(), timeout=max(0.0, delay))
        except TimeoutError:
            log.warning("%s still running %gs after SIGTERM; sending SIGKILL", c.job_id, max(0.0, delay))
            self._signal_group(c, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(c.proc.wait(), timeout=_KILL_WAIT_S)
        if not c.alive:
            self._sweep(c)


def _visible_devices(gpus: tuple[int, ...], total: int) -> str:
    """CUDA_VISIBLE_DEVICES for GPU indices `gpus`. When the daemon itself is limited to some devices
    (e.g. Slurm set CUDA_VISIBLE_DEVICES=4,5 without cgroup renumbering), index i means the i-th of
    those: a child given "0" would otherwise escape to a device that is not ours."""
    parent = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if len(parent) >= total:
        return ",".join(parent[g] for g in gpus)
    return ",".join(str(g) for g in gpus)
