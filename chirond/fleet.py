"""The daemon's world for the control loop: instances as jobs on a backend (local processes or
Slurm), health checks, /metrics scrapes (direct or over SSH), tunnels, requeues and stops. It
implements the control loop's `Actuator`; the tick, lifecycle rules and reconciler are shared
with the simulator (chirond/control/)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any

import aiohttp

from chirond.clock import Clock, local_day_s
from chirond.cluster.backend import Backend, BackendError, JobFacts, JobState, LaunchSpec
from chirond.cluster.instances import DaemonInstance
from chirond.cluster.probe import EngineStats, ProbeError, scrape
from chirond.cluster.ssh import SshTransport, scrape_over_ssh
from chirond.cluster.transport import TransportError
from chirond.config import Config
from chirond.control.instance import Instance
from chirond.control.loop import ControlLoop, Timeouts
from chirond.control.observations import FAILURE_WINDOW_S
from chirond.control.snapshot import Backlog, ModelSpec
from chirond.dispatch import Dispatcher
from chirond.engines import engine_command, startup_s
from chirond.metrics import Metrics
from chirond.model import EngineArgs, Launch, Pool, Request, Snapshot
from chirond.policy.base import Policy
from chirond.serve.gateway import Gateway
from chirond.serve.unavailable import Unavailable, why_unavailable

log = logging.getLogger("chirond")

HEALTH_POLL_S = 0.25  # real seconds between /health probes of a starting engine


def model_specs(cfg: Config) -> dict[str, ModelSpec]:
    """The control loop's view of the configured models; start-up on the daemon's clock."""
    speedup = cfg.daemon.clock_speedup
    return {
        n: ModelSpec(n, m.slo, m.profile, m.min_instances, m.max_instances, startup_s(m) * speedup,
                     m.initial_instances, m.initial_instances, idle_timeout_s=m.idle_timeout_s,
                     min_instances_by_hour=m.min_instances_by_hour)
        for n, m in cfg.models.items()
    }


class Fleet:
    def __init__(
        self,
        cfg: Config,
        backend: Backend,
        ssh: SshTransport | None,
        policy: Policy,
        dispatcher: Dispatcher,
        gateway: Gateway,
        metrics: Metrics,
        clock: Clock,
        backlog: Backlog,
        engine_env: dict[str, str],
    ) -> None:
        self.cfg = cfg
        self.backend = backend
        self.ssh = ssh
        self.gateway = gateway
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.clock = clock
        self.engine_env = engine_env  # VLLM_API_KEY for every engine
        lc = cfg.lifecycle
        timeouts = Timeouts(lc.drain_timeout_s, lc.health_timeout_s, cfg.daemon.stale_after_s)
        self.control = ControlLoop(policy, dispatcher, model_specs(cfg), self, backlog, timeouts, origin=clock(),
                                   day_clock=lambda now: local_day_s(clock.wall(now)))
        self.control.keep_log = False  # the daemon logs every tick line instead
        self.instances: dict[int, DaemonInstance] = self.control.instances  # type: ignore[assignment]
        ssh_cfg = cfg.slurm.ssh if cfg.daemon.backend == "slurm" and cfg.slurm is not None else None
        self.ssh_metrics = ssh is not None and ssh_cfg is not None and ssh_cfg.metrics == "ssh"
        self.ssh_tunnel = ssh is not None and ssh_cfg is not None and ssh_cfg.traffic == "tunnel"
        self.ssh_scrapes = 0  # scrapes over the SSH connection (for tests and status)
        # traffic = "tunnel": instance id -> (engine host, engine port, local URL through the tunnel)
        self._tunnels: dict[int, tuple[str, int, str]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._session: aiohttp.ClientSession | None = None
        self.last_reason = ""
        self.floors: dict[str, int] = {}  # model -> the fewest instances its last tick allowed (min or hourly floor)
        self.tick_changed = True  # the last tick acted or saw an instance change state (logged at INFO)
        self._last_states: tuple[tuple[int, object], ...] = ()
        self.refusals: dict[str, str] = {}  # model -> why the backend refused its last launch
        # model -> when its instances failed to start (ended or timed out before their first
        # health check); unlike the control loop's failures, an instance that served and then
        # hit its time limit is not one.
        self.start_failures: dict[str, list[float]] = {m: [] for m in cfg.models}

    # ---------------------------------------------------------------- lifetime

    async def start(self) -> None:
        """Adopt what an earlier run left, then start what is missing of the initial instances."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
        adopted = await self._adopt()
        now = self.clock()
        before = set(self._tasks)
        for act in self.control.initial_launches(adopted):
            self.control.launch(act, now, counted=False)
        await asyncio.gather(*(self._tasks - before), return_exceptions=True)  # the submissions: jobs exist

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _adopt(self) -> dict[str, int]:
        """Take over the jobs an earlier run left (kill -9, crash, keep_jobs_on_stop): they become
        instances under their old ids, and their facts go the usual way (running -> health -> ready).
        New ids start above theirs, so no two live jobs share a name. Returns adopted jobs per model."""
        jobs = await self.backend.adopt(list(self.cfg.models))
        counts: dict[str, int] = {}
        for a in jobs:
            m = self.cfg.models[a.model]
            args = self.control.policy.engine_args(a.model, m.slo)
            inst = self.new_instance(a.instance_id, a.model, self.control.policy.initial_pool, args, self.clock())
            inst.job_id = a.job_id
            self.control.adopt(inst)
            counts[a.model] = counts.get(a.model, 0) + 1
            log.info("instance %d (%s) adopted: job %s, %s", inst.id, a.model, a.job_id, a.state.value)
        if jobs:
            self._apply_facts(await self.backend.poll(), self.clock())
        return counts

    # ---------------------------------------------------------------- the tick

    async def tick(self) -> str:
        """Observe, then the shared control tick. Returns the tick's line."""
        now = self.clock()
        self._apply_facts(await self.backend.poll(), now)
        await self._scrape_all(now)
        snap, decision = self.control.tick(now, self.backend.free_gpus())
        for act in decision.actions:
            if not isinstance(act, Launch) and (inst := self.instances.get(act.instance)) is not None:
                self.metrics.scaling.labels(inst.model, type(act).__name__.lower()).inc()
        self.last_reason = decision.reason
        self.floors = {m.name: m.min_instances for m in snap.models}
        states = tuple((i.id, i.state) for m in snap.models for i in m.instances)
        self.tick_changed = bool(decision.actions) or states != self._last_states
        self._last_states = states
        return self.control.describe(snap, decision)

    def snapshot(self, now: float) -> Snapshot:
        """What the policy would see now (takes the instances' request observations)."""
        return self.control.snapshot(now, self.backend.free_gpus())

    # ---------------------------------------------------------------- the actuator

    def new_instance(self, inst_id: int, model: str, pool: Pool, args: EngineArgs, now: float) -> DaemonInstance:
        return DaemonInstance(inst_id, model, pool, self.cfg.models[model].profile.gpus, args, now)

    def launch(self, inst: Instance) -> bool:
        assert isinstance(inst, DaemonInstance)
        self._spawn(self._submit(inst))
        return True

    def cancel(self, inst: Instance, reason: str) -> None:
        assert isinstance(inst, DaemonInstance)
        if inst.ready_at is None and inst.running_since is not None and reason.startswith("not healthy"):
            self.start_failures[inst.model].append(self.clock())  # the lifecycle's health timeout
            self.metrics.start_failures.labels(inst.model).inc()
        self.gateway.instance_lost(inst.id)  # whatever still runs there goes back to the queues
        log.info("instance %d (%s) stopping: %s", inst.id, inst.model, reason)
        if inst.job_id is not None:  # else the submission cancels it once the backend took it
            self._spawn(self.backend.cancel(inst.job_id, self.cfg.lifecycle.stop_grace_s))

    def kick(self, model: str) -> None:
        self.gateway.kick(model)

    async def _submit(self, inst: DaemonInstance) -> None:
        m = self.cfg.models[inst.model]
        host = self.cfg.slurm.bind_host if self.cfg.daemon.backend == "slurm" and self.cfg.slurm else "127.0.0.1"
        spec = LaunchSpec(inst.id, inst.model, engine_command(m, inst.args, host), {**m.env, **self.engine_env},
                          gpus=m.profile.gpus)
        try:
            inst.job_id = await self.backend.submit(spec)
        except BackendError as e:
            self.control.refused(inst)
            self.refusals[inst.model] = str(e)
            self.metrics.launch_refusals.labels(inst.model).inc()
            log.warning("launch of a %s instance refused: %s", inst.model, e)
            return
        except Exception:  # no record may stay without a job: it would count against max_instances
            self.control.refused(inst)
            log.exception("launch of a %s instance failed", inst.model)
            return
        self.refusals.pop(inst.model, None)
        self.metrics.scaling.labels(inst.model, "launch").inc()
        log.info("instance %d (%s, %s pool) launched as job %s", inst.id, inst.model, inst.pool.value, inst.job_id)
        if inst.cancel_sent_at is not None:  # stopped while it was being submitted
            await self.backend.cancel(inst.job_id, self.cfg.lifecycle.stop_grace_s)
            return
        self._apply_facts(await self.backend.poll(), self.clock())
        if inst.job_state is not JobState.RUNNING:
            self._spawn(self._watch_start(inst))

    async def _watch_start(self, inst: DaemonInstance) -> None:
        """Poll (the backend rate-limits itself) until a new job runs, so that its health check
        starts within a second or two rather than at the next tick."""
        step = self.cfg.slurm.squeue_min_interval_s if self.cfg.slurm is not None else HEALTH_POLL_S
        limit = time.monotonic() + self.cfg.lifecycle.health_timeout_s / self.clock.speedup
        while (inst.id in self.instances and inst.job_state is not JobState.RUNNING
               and inst.cancel_sent_at is None and time.monotonic() < limit):
            await asyncio.sleep(step)
            self._apply_facts(await self.backend.poll(), self.clock())

    # ---------------------------------------------------------------- facts

    def _apply_facts(self, facts: dict[str, JobFacts], now: float) -> None:
        for inst in list(self.instances.values()):
            f = facts.get(inst.job_id or "")
            if f is None:
                continue  # unknown this time: never read as ended
            inst.detail = f.detail
            if f.host is not None:
                inst.host, inst.port = f.host, f.port
            if f.state is JobState.RUNNING and inst.job_state is not JobState.RUNNING:
                inst.job_state = JobState.RUNNING
                ends = None if f.ends_at is None else now + (f.ends_at - time.time()) * self.clock.speedup
                self.control.running(inst, now, ends)
                self._spawn(self._await_healthy(inst))
            elif f.state is JobState.ENDED:
                self._end(inst, now, f.detail or "ended")
            elif f.state is JobState.PENDING and inst.job_state is JobState.RUNNING:
                self._requeued(inst, now, f.detail or "requeued")

    def _release(self, inst: DaemonInstance) -> int:
        """Its engine is gone: requests back to the queues, series and tunnel dropped."""
        lost = self.gateway.instance_lost(inst.id)
        self.metrics.drop_instance(inst.model, inst.id)
        tunnel = self._tunnels.pop(inst.id, None)
        if tunnel is not None and self.ssh is not None:
            self._spawn(self.ssh.close_forward(tunnel[0], tunnel[1]))
        return len(lost)

    def _end(self, inst: DaemonInstance, now: float, reason: str) -> None:
        if inst.ready_at is None and inst.cancel_sent_at is None:
            self.start_failures[inst.model].append(now)  # died before it ever served
            self.metrics.start_failures.labels(inst.model).inc()
        failed = self.control.ended(inst, now)
        lost = self._release(inst)
        if failed:
            log.warning("instance %d (%s) failed: %s; %d request(s) requeued", inst.id, inst.model, reason, lost)
        else:
            log.info("instance %d (%s) ended: %s", inst.id, inst.model, reason)

    def _requeued(self, inst: DaemonInstance, now: float, reason: str) -> None:
        """Its job went back to Slurm's queue (a requeue): the engine is gone. It starts over:
        pending -> running (a new address) -> health check -> ready."""
        lost = self._release(inst)
        inst.job_state, inst.host, inst.port, inst.scraped_at = JobState.PENDING, None, None, None
        inst.routable, inst.gen_mark = True, 0.0
        log.warning("instance %d (%s) lost its engine: %s; %d request(s) requeued", inst.id, inst.model, reason, lost)
        if self.control.requeued(inst, now):
            self._spawn(self._watch_start(inst))

    async def _await_healthy(self, inst: DaemonInstance) -> None:
        """Probe /health until it answers; the start timeout is the control loop's rule."""
        assert self._session is not None
        while inst.id in self.instances and inst.cancel_sent_at is None:
            if inst.job_state is not JobState.RUNNING or inst.ready_at is not None:
                return  # requeued (a new check starts when it runs again), or ready already
            url = await self._tunnel(inst) if self.ssh_tunnel else inst.url
            if url is not None:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                    async with self._session.get(url + "/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                        if r.status == 200:
                            self._ready(inst)
                            return
            await asyncio.sleep(HEALTH_POLL_S)

    def _ready(self, inst: DaemonInstance) -> None:
        now = self.clock()
        cap, _ = self.control.ready(inst, now)
        self.metrics.cap.labels(inst.model, str(inst.id)).set(cap)
        log.info("instance %d (%s, %s pool) ready at %s after %.1f s", inst.id, inst.model, inst.pool.value,
                 self.instance_url(inst.id) or inst.url, now - inst.launched_at)

    async def _tunnel(self, inst: DaemonInstance) -> str | None:
        """traffic = "tunnel": the local URL forwarded to the instance (opened again after a
        reconnect: SshTransport.forward reuses a live listener, so this is cheap when nothing
        changed). None while the transport is down; the last URL stays for the request path."""
        assert self.ssh is not None
        if inst.host is None or inst.port is None:
            return None
        try:
            local = await self.ssh.forward(inst.host, inst.port)
        except TransportError as e:
            log.debug("instance %d: no tunnel to %s:%d: %s", inst.id, inst.host, inst.port, e)
            return None
        url = f"http://127.0.0.1:{local}"
        old = self._tunnels.get(inst.id)
        if old is None or old[2] != url:
            if inst.id not in self.instances:  # ended while the forward was opened
                await self.ssh.close_forward(inst.host, inst.port)
                return None
            self._tunnels[inst.id] = (inst.host, inst.port, url)
            log.info("instance %d: %s:%d tunnelled at %s", inst.id, inst.host, inst.port, url)
        return url

    async def _scrape_one(self, inst: DaemonInstance) -> EngineStats:
        assert self._session is not None
        timeout = self.cfg.daemon.scrape_timeout_s
        if self.ssh_tunnel:
            await self._tunnel(inst)  # re-forward after a reconnect, before requests need it
        if self.ssh_metrics:
            assert self.ssh is not None and inst.host is not None and inst.port is not None
            self.ssh_scrapes += 1
            return await scrape_over_ssh(self.ssh, inst.host, inst.port, timeout)
        url = self.instance_url(inst.id)
        if url is None:
            raise ProbeError(f"instance {inst.id}: no tunnel (ssh down)")
        return await scrape(self._session, url, timeout)

    async def _scrape_all(self, now: float) -> None:
        live = [i for i in self.instances.values() if i.ready_at is not None and i.url]
        if not live:
            return
        results = await asyncio.gather(*(self._scrape_one(i) for i in live), return_exceptions=True)
        for inst, res in zip(live, results, strict=True):
            if isinstance(res, BaseException):
                if isinstance(res, asyncio.CancelledError):
                    raise res
                if inst.stale_since is None:
                    inst.stale_since = now
                    log.warning("instance %d: scrape failed: %s", inst.id,
                                res if isinstance(res, ProbeError | TransportError) else res.__class__.__name__)
                continue
            if inst.scraped_at is not None and now > inst.scraped_at:
                inst.tokens_per_s = max(0.0, (res.generation_tokens - inst.gen_mark) / (now - inst.scraped_at))
            inst.gen_mark = res.generation_tokens
            inst.running, inst.waiting, inst.kv_usage = int(res.running), int(res.waiting), res.kv_usage
            inst.scraped_at, inst.stale_since = now, None
            if not inst.routable and inst.drain_requested_at is None:
                inst.routable = True  # answered again: route to it again
                self.dispatcher.set_routable(inst.id, True)
                self.gateway.kick(inst.model)

    # ---------------------------------------------------------------- the request path's questions

    def instance_url(self, inst_id: int) -> str | None:
        if self.ssh_tunnel:
            t = self._tunnels.get(inst_id)
            return t[2] if t is not None and inst_id in self.instances else None
        inst = self.instances.get(inst_id)
        return inst.url if inst is not None else None

    def instance_failed(self, inst_id: int, reason: str) -> None:
        """An attempt failed at the connection level: stop routing there until a scrape succeeds
        (the backend poll tells whether the process is gone)."""
        inst = self.instances.get(inst_id)
        if inst is None or not inst.routable:
            return
        log.warning("instance %d (%s): %s; not routing to it until it answers again", inst_id, inst.model, reason)
        inst.routable = False
        if inst_id in self.dispatcher.slots:
            self.dispatcher.set_routable(inst_id, False)

    def unavailable(self, model: str) -> Unavailable | None:
        """Why `model` cannot serve a request soon (disabled, launches refused, starts failing), or None."""
        ready = sum(1 for i in self.instances.values() if i.model == model and i.ready_at is not None and i.routable)
        now = self.clock()
        failures = self.start_failures[model] = [f for f in self.start_failures[model] if f > now - FAILURE_WINDOW_S]
        recent = len(failures)
        return why_unavailable(model, self.control.specs[model].max_instances, ready, self.refusals.get(model), recent)

    def upstream_priority(self, inst_id: int, req: Request) -> int | None:
        """vLLM's per-request priority (the dispatcher's), where the instance's engine runs
        priority scheduling."""
        inst = self.instances.get(inst_id)
        if inst is None or not inst.args.priority:
            return None
        return req.priority

