"""The composition root: builds the daemon's parts from the config, owns their tasks, and runs
the control loop: observe (backend facts, instance /metrics, the proxy's own timings) -> snapshot
-> the registered policy (the same code the simulator runs) -> reconcile through the backend."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from chirond.batch.service import BatchService, db_path
from chirond.clock import Clock
from chirond.cluster.backend import Backend, BackendError, JobFacts, JobState, LaunchSpec
from chirond.cluster.instances import Instance
from chirond.cluster.local import LocalBackend
from chirond.cluster.probe import EngineStats, ProbeError, scrape
from chirond.cluster.slurm import TransportError
from chirond.cluster.slurm_backend import SlurmBackend
from chirond.cluster.ssh import SshTransport, scrape_over_ssh
from chirond.config import Config, ConfigError, ModelConfig, load_config, load_keys
from chirond.control import ControlServer
from chirond.daemon_ops import operations
from chirond.dispatch import Dispatcher
from chirond.metrics import Metrics
from chirond.model import (
    Action,
    Cancel,
    Drain,
    InstanceState,
    InstanceView,
    Launch,
    ModelView,
    Pool,
    ReqClass,
    Request,
    SetBatchCap,
    SetPool,
    Snapshot,
)
from chirond.policy import make_policy
from chirond.sdnotify import Notifier, watchdog_loop
from chirond.serve import openai_api as oa
from chirond.serve.api import ProxyApi
from chirond.serve.gateway import Gateway, Job
from chirond.stats import ArrivalWindow
from chirond.users import InFlight, UsageCollector, UserStore, gpu_seconds

log = logging.getLogger("chirond")

HEALTH_POLL_S = 0.25
QUEUE_WAIT_WEIGHT = 0.3  # of the newest observation in the queue-wait average
PLACEHOLDERS = ("model", "host", "profile", "max_num_seqs", "max_num_batched_tokens", "scheduling_policy", "gpus")


def engine_command(
    m: ModelConfig, max_num_seqs: int, max_num_batched_tokens: int, priority: bool, host: str = "127.0.0.1"
) -> tuple[str, ...]:
    """The argv of one instance; `{port}` is left for the backend, which allocates it. `host` is
    the address the engine listens on (loopback for local instances, all interfaces on a node)."""
    values = {
        "model": m.name,
        "host": host,
        "profile": str(m.profile_path),
        "max_num_seqs": str(max_num_seqs),
        "max_num_batched_tokens": str(max_num_batched_tokens),
        "scheduling_policy": "priority" if priority else "fcfs",
        "gpus": str(m.profile.gpus),
    }
    if m.command:
        out = []
        for arg in m.command:
            for k, v in values.items():
                arg = arg.replace("{" + k + "}", v)
            out.append(arg)
        return tuple(out)
    return (
        sys.executable, "-m", "chirond", "fake-vllm",
        "--profile", values["profile"], "--model", m.name, "--host", host, "--port", "{port}",
        "--max-num-seqs", values["max_num_seqs"], "--max-num-batched-tokens", values["max_num_batched_tokens"],
        "--scheduling-policy", values["scheduling_policy"],
        "--speedup", repr(m.sim_speedup), "--startup-s", repr(startup_s(m)),
    )  # fmt: skip


def startup_s(m: ModelConfig) -> float:
    """Expected launch-to-ready time of one instance."""
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


def make_backend(cfg: Config) -> Backend:
    """The backend `daemon.backend` names: "local" (child processes) or "slurm" (one job per instance)."""
    if cfg.daemon.backend == "slurm":
        if cfg.slurm is None:
            raise ConfigError('daemon.backend = "slurm" needs a [backend.slurm] table')
        return SlurmBackend(cfg.slurm, cfg.daemon.state_dir)
    return LocalBackend(cfg.local, cfg.daemon.state_dir)


class Daemon:
    def __init__(self, cfg: Config, backend: Backend | None = None, clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or Clock(cfg.daemon.clock_speedup)
        profiles = {n: m.profile for n, m in cfg.models.items()}
        self.policy = make_policy(cfg.daemon.policy, profiles, cfg.daemon.policy_params)
        self.policy_state: object = None
        self.dispatcher = Dispatcher(self.policy.rules, {n: m.slo.ttft_s for n, m in cfg.models.items()})
        self.metrics = Metrics()
        self.gateway = Gateway(self.dispatcher, self.clock, on_preempt=self._on_preempt)
        self.backend: Backend = backend or make_backend(cfg)
        keys = load_keys(cfg.api.keys_file) if cfg.api.auth == "keys" and cfg.api.keys_file else {}
        self.api = ProxyApi(cfg, self.gateway, self, self.metrics, keys, self.clock)
        cfg.daemon.state_dir.mkdir(parents=True, exist_ok=True)
        self.engine_key = engine_key(cfg.daemon.state_dir)
        self.api.upstream_headers["Authorization"] = f"Bearer {self.engine_key}"
        self.users = UserStore(db_path(cfg.daemon.state_dir), cfg.users)
        self.users.open()
        self.metrics.registry.register(UsageCollector(self.users))
        self.api.verify_key = self.users.verify
        self.user_inflight = InFlight()  # interactive requests per user, for the quota
        self.batch = BatchService(cfg, self.api, self.dispatcher, self._check_batch_lines)
        self.batch.open()  # before the HTTP site listens: the Files and Batches routes use the store
        self.control = ControlServer(cfg.daemon.socket_path, operations(self), cfg.users, self.users)
        self.instances: dict[int, Instance] = {}
        self.windows = {n: ArrivalWindow() for n in cfg.models}
        self.batch_out_mean = dict.fromkeys(cfg.models, 0.0)
        self._batch_out_n = dict.fromkeys(cfg.models, 0)
        self.failures: dict[str, list[float]] = {n: [] for n in cfg.models}
        # Launch to running (Slurm's queue wait), moving average per model: part of the lead time
        # the policy plans with (handover before a time limit, batch deadlines).
        self.queue_wait = dict.fromkeys(cfg.models, 0.0)
        self._next_id = 1
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._control: asyncio.Task[None] | None = None
        self.ticks = 0
        self.last_reason = ""
        self._priority: dict[str, bool] = {}  # model -> engines run with priority scheduling
        self.notifier = Notifier({})  # systemd notifications: disabled here; serve() sets the real one
        self.loop_at = 0.0  # clock() when the control loop last went round (the watchdog reads it)
        # [backend.slurm.ssh]: the login node's transport, and whether metrics / traffic go over it.
        ssh = getattr(self.backend, "ssh", None)
        self.ssh: SshTransport | None = ssh if isinstance(ssh, SshTransport) else None
        ssh_cfg = cfg.slurm.ssh if cfg.daemon.backend == "slurm" and cfg.slurm is not None else None
        self.ssh_metrics = self.ssh is not None and ssh_cfg is not None and ssh_cfg.metrics == "ssh"
        self.ssh_tunnel = self.ssh is not None and ssh_cfg is not None and ssh_cfg.traffic == "tunnel"
        self.ssh_scrapes = 0  # scrapes over the SSH connection (for tests and status)
        # traffic = "tunnel": instance id -> (engine host, engine port, local URL through the tunnel)
        self._tunnels: dict[int, tuple[str, int, str]] = {}

    # ---------------------------------------------------------------- lifetime

    async def start(self) -> None:
        await self.backend.start()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=600),
        )
        self.api.session = self._session
        self._runner = web.AppRunner(self.api.app(), handler_cancellation=True, access_log=None)
        await self._runner.setup()
        d = self.cfg.daemon
        await web.TCPSite(self._runner, d.listen_host, d.listen_port, backlog=1024).start()
        log.info("chirond listening on http://%s:%d/v1 (policy %s, backend %s, models %s)", d.listen_host,
                 d.listen_port, self.policy.name, self.backend.name, ", ".join(self.cfg.models))
        adopted = await self._adopt()
        for name, m in self.cfg.models.items():
            n = self.policy.initial_instances(name, m.initial_instances, m.initial_instances)
            # Jobs adopted from an earlier run count: a restart submits only what is missing.
            for _ in range(max(0, max(n, m.min_instances) - adopted.get(name, 0))):
                await self._launch(name, self.policy.initial_pool)
        await self.batch.start()
        await self.control.start()
        self.loop_at = self.clock()
        self._control = asyncio.create_task(self._control_loop())

    async def _adopt(self) -> dict[str, int]:
        """Take over the jobs an earlier run left (kill -9, crash, keep_jobs_on_stop): they become
        instances under their old ids, and their facts go the usual way (running -> health -> ready).
        New ids start above theirs, so no two live jobs share a name. Returns adopted jobs per model."""
        jobs = await self.backend.adopt(list(self.cfg.models))
        now = self.clock()
        counts: dict[str, int] = {}
        for a in jobs:
            m = self.cfg.models[a.model]
            inst = Instance(a.instance_id, a.model, self.policy.initial_pool, m.profile.gpus, now, startup_s(m))
            inst.job_id = a.job_id
            inst.queue_wait_known = True  # submitted by an earlier run: its wait is not known
            self.instances[inst.id] = inst
            counts[a.model] = counts.get(a.model, 0) + 1
            self._next_id = max(self._next_id, inst.id + 1)
            log.info("instance %d (%s) adopted: job %s, %s", inst.id, a.model, a.job_id, a.state.value)
        if jobs:
            self._apply_facts(await self.backend.poll(), self.clock())
        return counts

    async def stop(self) -> None:
        """Graceful: refuse new requests, let in-flight ones finish (bounded), stop instances."""
        self.api.accepting = False
        end = self.clock() + self.cfg.daemon.shutdown_timeout_s
        await self.control.stop()
        await self.batch.stop()  # running lines stay queued in the store: they run after a restart
        while self.gateway.jobs and self.clock() < end:
            await self.clock.sleep(0.1 * self.clock.speedup)
        if self._control is not None:
            self._control.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._control
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        await self.backend.stop()
        if self._session is not None:
            await self._session.close()
        self.users.close()
        log.info("chirond stopped")

    @property
    def port(self) -> int:
        """The port it listens on (useful with listen_port = 0)."""
        assert self._runner is not None and self._runner.addresses
        return int(self._runner.addresses[0][1])

    def _spawn(self, coro: Any) -> None:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------------- the control loop

    async def _control_loop(self) -> None:
        tick_s = self.cfg.daemon.tick_s
        nxt = self.clock()
        while True:
            try:
                await self.tick()
            except Exception:  # one bad tick must not stop scaling; it is logged with its traceback
                log.exception("control tick failed")
            self.loop_at = self.clock()
            nxt += tick_s
            await self.clock.sleep(nxt - self.clock())

    async def tick(self) -> None:
        t0 = time.perf_counter()
        now = self.clock()
        self._apply_facts(await self.backend.poll(), now)
        await self._scrape_all(now)
        await self._finish_drains(now)
        snap = self.snapshot(now)
        decision = self.policy.plan(snap, self.policy_state)
        self.policy_state = decision.state
        for act in decision.actions:
            await self.apply(act, now)
        self.ticks += 1
        self.last_reason = decision.reason
        digest = _digest(snap)
        log.info("tick %d %s | %s | %s", self.ticks, digest, decision.reason,
                 ", ".join(map(_fmt_action, decision.actions)) or "no action")
        state = "serving" if self.api.accepting else f"draining, {len(self.gateway.jobs)} request(s) in flight"
        self.notifier.status(f"{state}; tick {self.ticks}: {digest}")
        self._gauges()
        self.users.flush()
        self.metrics.tick.observe(time.perf_counter() - t0)

    # ---------------------------------------------------------------- observe

    def _apply_facts(self, facts: dict[str, JobFacts], now: float) -> None:
        for inst in list(self.instances.values()):
            f = facts.get(inst.job_id or "")
            if f is None:
                continue  # unknown this time: never read as ended
            inst.detail = f.detail
            if f.host is not None:
                inst.host, inst.port = f.host, f.port
            if f.state is JobState.RUNNING and inst.job_state is not JobState.RUNNING:
                if not inst.queue_wait_known:
                    inst.queue_wait_known = True
                    wait = self.queue_wait[inst.model]
                    self.queue_wait[inst.model] = wait + QUEUE_WAIT_WEIGHT * (now - inst.launched_at - wait)
                inst.job_state = JobState.RUNNING
                inst.running_since = now
                if f.ends_at is not None:
                    inst.ends_at = now + (f.ends_at - time.time()) * self.clock.speedup
                self._spawn(self._await_healthy(inst))
            elif f.state is JobState.ENDED:
                failed = inst.cancel_sent_at is None
                self._end(inst, now, f.detail or "ended", failed)
            elif f.state is JobState.PENDING and inst.job_state is JobState.RUNNING:
                self._requeued(inst, now, f.detail or "requeued")

    def _requeued(self, inst: Instance, now: float, reason: str) -> None:
        """Its job went back to Slurm's queue (a requeue): the engine is gone. Its requests go back
        to the queues as for a lost instance, and it starts over: pending -> running (a new address)
        -> health check -> ready. A draining one is cancelled instead."""
        lost = self.gateway.instance_lost(inst.id)
        self.metrics.drop_instance(inst.model, inst.id)
        tunnel = self._tunnels.pop(inst.id, None)
        if tunnel is not None and self.ssh is not None:
            self._spawn(self.ssh.close_forward(tunnel[0], tunnel[1]))
        self.failures[inst.model].append(now)
        inst.job_state, inst.running_since, inst.healthy_at, inst.ends_at = JobState.PENDING, None, None, None
        inst.host = inst.port = inst.stats = inst.scraped_at = inst.scrape_failing_since = None
        inst.routable, inst.gen_mark, inst.gen_rate = True, 0.0, 0.0
        log.warning("instance %d (%s) lost its engine: %s; %d request(s) requeued", inst.id, inst.model, reason,
                    len(lost))
        if inst.drain_requested_at is not None:
            self._spawn(self._cancel(inst, "requeued while draining"))
        elif inst.cancel_sent_at is None:
            self._spawn(self._watch_start(inst))

    async def _await_healthy(self, inst: Instance) -> None:
        assert self._session is not None
        m = self.cfg.models[inst.model]
        limit = self.clock() + self.cfg.local.health_timeout_s
        while self.clock() < limit and inst.id in self.instances and inst.cancel_sent_at is None:
            if inst.job_state is not JobState.RUNNING or inst.healthy_at is not None:
                return  # requeued (a new check starts when it runs again), or ready already
            url = await self._tunnel(inst) if self.ssh_tunnel else inst.url
            if url is not None:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                    async with self._session.get(url + "/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                        if r.status == 200:
                            self._ready(inst)
                            return
            await self.clock.sleep(HEALTH_POLL_S * self.clock.speedup)
        if inst.id in self.instances and inst.cancel_sent_at is None:
            log.warning("instance %d (%s) not healthy within %.0f s: cancelling it", inst.id, m.name,
                        self.cfg.local.health_timeout_s)
            self.failures[inst.model].append(self.clock())
            await self._cancel(inst, "health timeout")

    def _ready(self, inst: Instance) -> None:
        now = self.clock()
        inst.healthy_at = now
        cap, batch_cap = self.policy.initial_cap(inst.model, inst.pool)
        self.dispatcher.add_instance(inst.id, inst.model, inst.pool, cap, batch_cap)
        self.metrics.cap.labels(inst.model, str(inst.id)).set(cap)
        log.info("instance %d (%s, %s pool) ready at %s after %.1f s", inst.id, inst.model, inst.pool.value,
                 self.instance_url(inst.id) or inst.url, now - inst.launched_at)
        self.gateway.kick(inst.model)

    async def _tunnel(self, inst: Instance) -> str | None:
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

    async def _scrape_one(self, inst: Instance) -> EngineStats:
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
        live = [i for i in self.instances.values() if i.healthy_at is not None and i.url]
        if not live:
            return
        results = await asyncio.gather(*(self._scrape_one(i) for i in live), return_exceptions=True)
        for inst, res in zip(live, results, strict=True):
            if isinstance(res, BaseException):
                if isinstance(res, asyncio.CancelledError):
                    raise res
                if inst.scrape_failing_since is None:
                    inst.scrape_failing_since = now
                    log.warning("instance %d: scrape failed: %s", inst.id,
                                res if isinstance(res, ProbeError | TransportError) else res.__class__.__name__)
                continue
            if inst.scraped_at is not None and now > inst.scraped_at:
                inst.gen_rate = max(0.0, (res.generation_tokens - inst.gen_mark) / (now - inst.scraped_at))
            inst.gen_mark = res.generation_tokens
            inst.stats, inst.scraped_at, inst.scrape_failing_since = res, now, None
            if not inst.routable and inst.drain_requested_at is None:
                inst.routable = True  # answered again: route to it again
                self.dispatcher.set_routable(inst.id, True)
                self.gateway.kick(inst.model)

    async def _finish_drains(self, now: float) -> None:
        for inst in list(self.instances.values()):
            if inst.drain_requested_at is None or inst.cancel_sent_at is not None:
                continue
            slot = self.dispatcher.slots.get(inst.id)
            idle = slot is None or slot.inflight == 0
            if idle or now - inst.drain_requested_at >= self.cfg.local.drain_timeout_s:
                await self._cancel(inst, "drained" if idle else "drain timeout")

    # ---------------------------------------------------------------- snapshot

    def snapshot(self, now: float) -> Snapshot:
        views = []
        stale_after = self.cfg.daemon.stale_after_s
        for name, m in self.cfg.models.items():
            insts = []
            for x in self.instances.values():
                if x.model != name:
                    continue
                slot = self.dispatcher.slots.get(x.id)
                st = x.stats
                kv = st.kv_usage if st else 0.0
                insts.append(
                    InstanceView(
                        id=x.id, model=name, pool=x.pool, state=x.state, gpus=x.gpus,
                        launched_at=x.launched_at, ready_at=x.healthy_at, ends_at=x.ends_at,
                        cap=slot.cap if slot else 0, batch_cap=slot.batch_cap if slot else 0,
                        inflight_interactive=len(slot.inter) if slot else 0,
                        inflight_batch=len(slot.batch) if slot else 0,
                        running=int(st.running) if st else 0, waiting=int(st.waiting) if st else 0,
                        kv_usage=kv, kv_free_tokens=int(m.profile.kv_capacity_tokens * (1.0 - kv)),
                        tpot_obs_s=x.obs_tpot / x.obs_n if x.obs_n else None,
                        ttft_obs_s=x.obs_ttft / x.obs_n if x.obs_n else None,
                        tokens_per_s=x.gen_rate, stale=x.stale(now, stale_after),
                    )
                )  # fmt: skip
                x.obs_n, x.obs_ttft, x.obs_tpot = 0, 0.0, 0.0
            n_inter, _ = self.dispatcher.queued(name)
            backlog, n_batch = self.batch.backlog(name, now)
            oldest = self.dispatcher.oldest_interactive(name) if n_inter else None
            fails = [f for f in self.failures[name] if f > now - 600]
            self.failures[name] = fails
            views.append(
                ModelView(
                    name=name, slo=m.slo, gpus_per_instance=m.profile.gpus,
                    max_instances=m.max_instances, min_instances=m.min_instances,
                    lead_time_s=startup_s(m) + self.queue_wait[name],
                    interactive_queue=n_inter, interactive_queue_tokens=self.dispatcher.interactive_tokens(name),
                    oldest_interactive_wait_s=0.0 if oldest is None else now - oldest,
                    batch_queue=n_batch, backlog=backlog,
                    batch_mean_output=self.batch_out_mean[name], load=self.windows[name].stats(now),
                    instances=tuple(sorted(insts, key=lambda v: v.id)), failures_recent=len(fails),
                )
            )  # fmt: skip
        return Snapshot(now=now, models=tuple(views), free_gpus=self.backend.free_gpus())

    # ---------------------------------------------------------------- reconcile

    async def apply(self, act: Action, now: float) -> None:
        if isinstance(act, Launch):
            m = self.cfg.models[act.model]
            have = sum(1 for x in self.instances.values() if x.model == act.model)
            for _ in range(act.room(have, m.max_instances)):
                if not await self._launch(act.model, act.pool):
                    break
            return
        inst = self.instances.get(act.instance)
        if inst is None:
            return
        self.metrics.scaling.labels(inst.model, type(act).__name__.lower()).inc()
        if isinstance(act, SetBatchCap):
            if inst.id in self.dispatcher.slots:
                self.dispatcher.set_cap(inst.id, act.cap, act.batch_cap)
                self.metrics.cap.labels(inst.model, str(inst.id)).set(self.dispatcher.slots[inst.id].cap)
                self.gateway.kick(inst.model)
        elif isinstance(act, SetPool):
            inst.pool = act.pool
            if inst.id in self.dispatcher.slots:
                self.dispatcher.set_pool(inst.id, act.pool)
                self.gateway.kick(inst.model)
        elif isinstance(act, Drain):
            if inst.state is not InstanceState.READY:
                await self._cancel(inst, "not needed before ready")
            elif inst.drain_requested_at is None:
                inst.drain_requested_at = now
                self.dispatcher.set_routable(inst.id, False)
                log.info("instance %d (%s) draining", inst.id, inst.model)
        elif isinstance(act, Cancel):
            await self._cancel(inst, "cancelled by policy")

    async def _launch(self, model: str, pool: Pool) -> bool:
        m = self.cfg.models[model]
        args = self.policy.engine_args(model, m.slo)
        host = self.cfg.slurm.bind_host if self.cfg.daemon.backend == "slurm" and self.cfg.slurm else "127.0.0.1"
        argv = engine_command(m, args.max_num_seqs, args.max_num_batched_tokens, args.priority, host)
        inst = Instance(self._next_id, model, pool, m.profile.gpus, self.clock(), startup_s(m))
        spec = LaunchSpec(inst.id, model, argv, {**m.env, "VLLM_API_KEY": self.engine_key}, gpus=m.profile.gpus)
        try:
            inst.job_id = await self.backend.submit(spec)
        except BackendError as e:
            log.warning("launch of a %s instance refused: %s", model, e)
            return False
        self._next_id += 1
        self.instances[inst.id] = inst
        self.metrics.scaling.labels(model, "launch").inc()
        log.info("instance %d (%s, %s pool) launched as job %s", inst.id, model, pool.value, inst.job_id)
        self._apply_facts(await self.backend.poll(), self.clock())
        if inst.job_state is not JobState.RUNNING:
            self._spawn(self._watch_start(inst))
        return True

    async def _watch_start(self, inst: Instance) -> None:
        """Poll (the backend rate-limits itself) until a new job runs, so that its health check
        starts within a second or two rather than at the next tick."""
        step = self.cfg.slurm.squeue_min_interval_s if self.cfg.slurm is not None else HEALTH_POLL_S
        limit = self.clock() + self.cfg.local.health_timeout_s
        while (inst.id in self.instances and inst.job_state is not JobState.RUNNING
               and inst.cancel_sent_at is None and self.clock() < limit):
            await self.clock.sleep(step * self.clock.speedup)
            self._apply_facts(await self.backend.poll(), self.clock())

    async def _cancel(self, inst: Instance, reason: str) -> None:
        if inst.cancel_sent_at is not None:
            return
        inst.cancel_sent_at = self.clock()
        self.gateway.instance_lost(inst.id)  # whatever still runs there goes back to the queues
        log.info("instance %d (%s) stopping: %s", inst.id, inst.model, reason)
        if inst.job_id is not None:
            await self.backend.cancel(inst.job_id, self.cfg.local.stop_grace_s)

    def _end(self, inst: Instance, now: float, reason: str, failed: bool) -> None:
        self.instances.pop(inst.id, None)
        tunnel = self._tunnels.pop(inst.id, None)
        if tunnel is not None and self.ssh is not None:
            self._spawn(self.ssh.close_forward(tunnel[0], tunnel[1]))
        lost = self.gateway.instance_lost(inst.id)
        self.metrics.drop_instance(inst.model, inst.id)
        if failed:
            self.failures[inst.model].append(now)
            log.warning("instance %d (%s) failed: %s; %d request(s) requeued", inst.id, inst.model, reason, len(lost))
        else:
            log.info("instance %d (%s) ended: %s", inst.id, inst.model, reason)

    # ---------------------------------------------------------------- hooks from the request path

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

    def upstream_priority(self, model: str, cls: ReqClass) -> int | None:
        prio = self._priority.get(model)
        if prio is None:
            prio = self._priority[model] = self.policy.engine_args(model, self.cfg.models[model].slo).priority
        if not prio:
            return None
        return 0 if cls is ReqClass.INTERACTIVE else 1

    def admit(self, user: str, parsed: oa.ParsedRequest, cls: ReqClass) -> None:
        """Per-user quotas, before a request is queued: 429 with the reason."""
        refusal = self.users.check_tokens(user)
        retry = self.users.seconds_to_reset() if refusal else self.cfg.api.retry_after_s
        if refusal is None and cls is ReqClass.INTERACTIVE:
            refusal = self.users.check_interactive(user, self.user_inflight[user])
        if refusal is not None:
            self.metrics.requests.labels(parsed.model, cls.value, "over_quota").inc()
            raise oa.ApiError(429, refusal, code="quota_exceeded", headers={"Retry-After": str(retry)})

    def _check_batch_lines(self, user: str, adding: int) -> str | None:
        return self.users.check_batch_lines(user, self.batch.store.queued_lines(user), adding)

    def on_arrival(self, job: Job) -> None:
        r = job.req
        if r.cls is ReqClass.INTERACTIVE:
            self.windows[r.model].arrival(r.arrival, r.input_tokens)
            self.user_inflight.inc(str(job.extra["user"]))

    def on_first_token(self, job: Job) -> None:
        r = job.req
        if r.first_token is not None:
            self.metrics.ttft.labels(r.model, r.cls.value).observe(r.first_token - r.arrival)

    def on_finished(self, job: Job, outcome: str) -> None:
        r = job.req
        user = str(job.extra["user"])
        if r.cls is ReqClass.INTERACTIVE:
            self.user_inflight.dec(user)
        self.metrics.requests.labels(r.model, r.cls.value, outcome).inc()
        if r.dispatched is not None:  # it reached an instance: its tokens and GPU time count
            slot = self.dispatcher.slots.get(r.instance) if r.instance is not None else None
            gpus = self.cfg.models[r.model].profile.gpus
            spent = gpu_seconds(gpus, self.clock() - r.dispatched, 1 + (slot.inflight if slot else 0))
            self.users.add_usage(user, r.model, r.input_tokens, r.output_tokens if r.finish else 0, spent)
        if outcome != "ok":
            if outcome == "error":
                self.metrics.finished(r.model, r.cls.value, False)
            return
        slo = self.cfg.models[r.model].slo
        tpot, ttft = r.tpot or 0.0, r.ttft or 0.0
        if r.cls is ReqClass.INTERACTIVE:
            self.metrics.tpot.labels(r.model, r.cls.value).observe(tpot)
            met = ttft <= slo.ttft_s and tpot <= slo.tpot_s
            self.windows[r.model].completion(r.output_tokens)
            inst = self.instances.get(r.instance) if r.instance is not None else None
            if inst is not None:
                inst.obs_n += 1
                inst.obs_ttft += ttft
                inst.obs_tpot += tpot
        else:
            met = r.deadline is None or (r.finish is not None and r.finish <= r.deadline)
            n = self._batch_out_n[r.model] = self._batch_out_n[r.model] + 1
            mean = self.batch_out_mean[r.model]
            self.batch_out_mean[r.model] = mean + max(1.0 / n, 0.002) * (r.output_tokens - mean)
        self.metrics.finished(r.model, r.cls.value, met)

    def _on_preempt(self, r: Request) -> None:
        self.metrics.preemptions.labels(r.model, "evicted").inc()

    # ---------------------------------------------------------------- status

    def model_status(self) -> list[dict[str, Any]]:
        now = self.clock()
        out = []
        for name, m in self.cfg.models.items():
            counts = {s.value: 0 for s in InstanceState}
            eta: float | None = None
            for x in self.instances.values():
                if x.model != name:
                    continue
                counts[x.state.value] += 1
                if x.state in (InstanceState.PENDING, InstanceState.STARTING):
                    left = max(0.0, x.launched_at + x.expected_ready_s - now)
                    eta = left if eta is None else min(eta, left)
            if counts["ready"]:
                state, eta = "live", None
            elif counts["starting"]:
                state = "starting"
            elif counts["pending"]:
                state = "queued"
            else:
                state = "scaled_to_zero"
            qi, qb = self.dispatcher.queued(name)
            out.append({
                "id": name, "object": "model", "created": 0, "owned_by": "chirond",
                "state": state, "instances": counts, "eta_s": None if eta is None else round(eta, 1),
                "queue": {"interactive": qi, "batch": qb},
                "slo": {"ttft_s": m.slo.ttft_s, "tpot_s": m.slo.tpot_s},
            })  # fmt: skip
        return out

    def alive(self) -> bool:
        """For the systemd watchdog: the control loop went round lately (within 3 ticks, at least
        30 s), or a shutdown is under way (bounded by the unit's TimeoutStopSec instead)."""
        return not self.api.accepting or self.clock() - self.loop_at < max(3 * self.cfg.daemon.tick_s, 30.0)

    def health(self) -> dict[str, Any]:
        return {"status": "ok" if self.api.accepting else "stopping", "ticks": self.ticks,
                "instances": len(self.instances), "requests_in_flight": len(self.gateway.jobs)}

    def _gauges(self) -> None:
        g = self.metrics
        for name in self.cfg.models:
            qi, qb = self.dispatcher.queued(name)
            g.queue.labels(name, "interactive").set(qi)
            g.queue.labels(name, "batch").set(qb)
            for p in Pool:
                for s in InstanceState:
                    n = sum(1 for x in self.instances.values() if x.model == name and x.pool is p and x.state is s)
                    g.instances.labels(name, p.value, s.value).set(n)
        g.gpus.set(sum(x.gpus for x in self.instances.values()))


def _digest(snap: Snapshot) -> str:
    parts = []
    for m in snap.models:
        by: dict[str, int] = {}
        for i in m.instances:
            by[i.state.value[0]] = by.get(i.state.value[0], 0) + 1
        inst = "".join(f"{n}{k}" for k, n in sorted(by.items())) or "0"
        caps = "/".join(str(i.cap) for i in m.instances if i.state is InstanceState.READY) or "-"
        parts.append(f"{m.name}[q={m.interactive_queue}/{m.batch_queue} inst={inst} cap={caps} "
                     f"rate={m.load.rate_1m:.1f}/s]")
    return " ".join(parts)


def _fmt_action(a: Action) -> str:
    if isinstance(a, Launch):
        return f"launch {a.count} {a.model} ({a.pool.value})"
    if isinstance(a, SetBatchCap):
        return f"cap {a.instance}={a.cap}" + (f"/{a.batch_cap}" if a.batch_cap is not None else "")
    if isinstance(a, SetPool):
        return f"pool {a.instance}={a.pool.value}"
    return f"{type(a).__name__.lower()} {a.instance}"


# ---------------------------------------------------------------- entry point


async def serve(cfg: Config, stop: asyncio.Event | None = None) -> None:
    daemon = Daemon(cfg)
    # Under systemd (Type=notify): read NOTIFY_SOCKET/WATCHDOG_* and take them out of the
    # environment, so the engines the backend starts do not inherit them.
    notifier = daemon.notifier = Notifier(unset_environment=True)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await daemon.start()
    d = cfg.daemon
    notifier.ready(f"serving on http://{d.listen_host}:{daemon.port}/v1, {len(cfg.models)} model(s), "
                   f"policy {daemon.policy.name}")
    watchdog = asyncio.create_task(watchdog_loop(notifier, daemon.alive))
    # Everything allocated so far lives as long as the daemon: keep it out of the collector's
    # scans, and collect young objects less often. Full collections otherwise stall the event
    # loop for tens of milliseconds under load (seen as p99 TTFT in benchmarks/proxy.py).
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
    try:
        await stop.wait()
        log.info("stopping: letting in-flight requests finish (up to %.0f s)", cfg.daemon.shutdown_timeout_s)
    finally:
        notifier.stopping(f"draining, {len(daemon.gateway.jobs)} request(s) in flight")
        try:
            await daemon.stop()
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
            notifier.close()


def main(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=cfg.daemon.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        import uvloop

        run: Any = uvloop.run
    except ImportError:
        run = asyncio.run
    try:
        run(serve(cfg))
    except OSError as e:  # e.g. the port is taken
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BackendError as e:  # e.g. Slurm refuses the partition at start-up
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
