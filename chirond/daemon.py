"""The composition root: builds the daemon's parts from the config (no I/O), starts and stops them,
runs the control loop on its period and handles signals. The parts: the fleet (instances on the
backend, the control loop's world), request accounting, the OpenAI API, the Batch API and the
control socket."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import hmac
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from chirond import log_output
from chirond.accounting import Accounting
from chirond.batch.service import BatchService
from chirond.clock import Clock
from chirond.cluster.backend import Backend, BackendError
from chirond.cluster.instances import DaemonInstance
from chirond.cluster.ssh import SshTransport
from chirond.cluster.wiring import build_backend
from chirond.config import Config, ConfigError, load_for_command, load_keys
from chirond.db import Database, SchemaError, db_path
from chirond.dispatch import Dispatcher
from chirond.engines import engine_key
from chirond.fleet import Fleet
from chirond.learned_floors import FloorLearner
from chirond.metrics import Metrics
from chirond.model import BacklogGroup, Drain, Request
from chirond.ops.operations import operations
from chirond.ops.socket_server import ControlServer
from chirond.ops.status import model_status, set_gauges
from chirond.policy import make_policy
from chirond.sdnotify import Notifier, watchdog_loop
from chirond.serve.api import ProxyApi
from chirond.serve.gateway import Gateway
from chirond.serve.http_server import GuardedRunner, HttpLimits
from chirond.startup_checks import check_startup, prepare_state_dir, raise_open_files_limit
from chirond.users import UsageCollector, UserStore

log = logging.getLogger("chirond")


class Daemon:
    def __init__(
        self, cfg: Config, backend: Backend | None = None, clock: Clock | None = None, ssh: SshTransport | None = None
    ) -> None:
        self.cfg = cfg
        self.clock = clock or Clock(cfg.daemon.clock_speedup)
        self.policy = make_policy(cfg.daemon.policy, {n: m.profile for n, m in cfg.models.items()},
                                  cfg.daemon.policy_params)
        self.dispatcher = Dispatcher(self.policy.rules, {n: m.slo.ttft_s for n, m in cfg.models.items()})
        self.metrics = Metrics()
        self.gateway = Gateway(self.dispatcher, self.clock, on_preempt=self._on_preempt)
        if backend is None:
            backend, ssh = build_backend(cfg)
        self.backend = backend
        self.database = Database(db_path(cfg.daemon.state_dir))
        self.users = UserStore(self.database, cfg.users)
        self.metrics.registry.register(UsageCollector(self.users))
        self.engine_env: dict[str, str] = {}  # VLLM_API_KEY, read at start
        self.fleet = Fleet(cfg, backend, ssh, self.policy, self.dispatcher, self.gateway, self.metrics, self.clock,
                           self._backlog, self.engine_env)
        self.learner = FloorLearner(cfg, self.database, self.fleet.control.specs, self.clock.wall)
        self.accounting = Accounting(cfg, self.users, self.metrics, self.fleet.control, self.dispatcher, self.clock,
                                     on_interactive=self.learner.record)
        self._keys: dict[str, str] = {}  # api.keys_file, read at start
        self.api = ProxyApi(cfg, self.gateway, self.fleet, self.accounting, self, self.metrics, self.clock,
                            verify_key=self._verify_key)
        self.batch = BatchService(cfg, self.api, self.dispatcher, self._check_batch_lines, self.database,
                                  lambda user: cfg.users.limit(user, "storage_bytes"))
        self.control_server = ControlServer(cfg.daemon.socket_path, operations(self), cfg.users, self.users,
                                            cfg.daemon.control_idle_timeout_s,
                                            cfg.daemon.control_max_connections_per_uid)
        self._runner: web.AppRunner | None = None
        self._umask: int | None = None  # the process's umask before start() set 077
        self._loop_task: asyncio.Task[None] | None = None
        self.ticks = 0
        self.notifier = Notifier({})  # systemd notifications: disabled here; serve() sets the real one
        self.loop_at = 0.0  # clock() when the control loop last went round (the watchdog reads it)

    # ---------------------------------------------------------------- lifetime

    async def start(self) -> None:
        d = self.cfg.daemon
        self._umask = prepare_state_dir(self.cfg)  # umask 077: prompts, answers and keys are the service's alone
        raise_open_files_limit(self.cfg)
        if self.cfg.api.auth == "keys" and self.cfg.api.keys_file:
            self._keys = load_keys(self.cfg.api.keys_file)
        key = engine_key(d.state_dir)
        self.engine_env["VLLM_API_KEY"] = key
        self.users.open()
        self.learner.start()
        self.batch.open()  # before the HTTP site listens: the Files and Batches routes use the store
        await self.backend.start()
        await self.api.start(key)
        a = self.cfg.api
        limits = HttpLimits(a.idle_timeout_s, a.body_timeout_s, a.max_connections, a.max_connections_per_client,
                            a.header_timeout_s)
        self._runner = GuardedRunner(self.api.app(self.batch.http.add_routes), limits, handler_cancellation=True,
                                     access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, d.listen_host, d.listen_port, backlog=1024).start()
        log.info("chirond listening on http://%s:%d/v1 (policy %s, backend %s, models %s)", d.listen_host,
                 d.listen_port, self.policy.name, self.backend.name, ", ".join(self.cfg.models))
        await self.fleet.start()
        await self.batch.start()
        await self.control_server.start()
        self.loop_at = self.clock()
        self._loop_task = asyncio.create_task(self._control_loop())

    async def stop(self) -> None:
        """Graceful: refuse new requests, let in-flight ones finish (bounded), stop instances."""
        self.api.accepting = False
        end = time.monotonic() + self.cfg.daemon.shutdown_timeout_s
        await self.control_server.stop()
        await self.batch.stop()  # running lines stay queued in the store: they run after a restart
        while self.gateway.jobs and time.monotonic() < end:
            await asyncio.sleep(0.1)
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        await self.fleet.stop()
        await self.learner.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.backend.stop()
        await self.api.stop()
        self.users.close()
        if self._umask is not None:
            os.umask(self._umask)
        log.info("chirond stopped")

    @property
    def port(self) -> int:
        """The port it listens on (useful with listen_port = 0)."""
        assert self._runner is not None and self._runner.addresses
        return int(self._runner.addresses[0][1])

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
            self.metrics.loop_lag.set(max(0.0, self.clock() - nxt) / self.clock.speedup)

    async def tick(self) -> None:
        t0 = time.perf_counter()
        line = await self.fleet.tick()
        self.ticks += 1
        # A quiet tick is noise in the journal: INFO only when an action or an instance state changed.
        log.log(logging.INFO if self.fleet.tick_changed else logging.DEBUG, "tick %d %s", self.ticks, line)
        state = "serving" if self.api.accepting else f"draining, {len(self.gateway.jobs)} request(s) in flight"
        self.notifier.status(f"{state}; tick {self.ticks}: {line.split(' | ')[0]}")
        set_gauges(self.metrics, self.cfg, self.instances.values(), self.dispatcher)
        self._set_ops_gauges()
        self.users.flush()
        self.learner.tick()
        self.metrics.tick.observe(time.perf_counter() - t0)

    def _set_ops_gauges(self) -> None:
        """What the alert rules watch: the loop's heartbeat, batch work against its deadlines, SSH."""
        m, now = self.metrics, self.clock()
        m.last_tick.set(time.time())
        for model in self.cfg.models:
            groups, lines = self._backlog(model, now)
            m.batch_backlog.labels(model).set(lines)
            m.batch_deadline.labels(model).set(
                (groups[0].deadline - now) / self.clock.speedup if groups else float("inf"))
        ssh = self.fleet.ssh
        if ssh is not None:
            m.ssh_up.labels(ssh.target).set(1 if ssh.connected else 0)

    # ---------------------------------------------------------------- what the parts ask of the whole

    @property
    def instances(self) -> Mapping[int, DaemonInstance]:
        return self.fleet.instances

    @property
    def last_reason(self) -> str:
        return self.fleet.last_reason

    @property
    def floors(self) -> Mapping[str, int]:
        """Per model, the fewest instances the last tick allowed (its min_instances or hourly floor)."""
        return self.fleet.floors

    def _backlog(self, model: str, now: float) -> tuple[tuple[BacklogGroup, ...], int]:
        return self.batch.backlog(model, now)

    def _verify_key(self, key: str) -> str | None:
        """The name behind a bearer key: api.keys_file first, then keys minted by `chiron token`."""
        for k, name in self._keys.items():
            if hmac.compare_digest(k.encode(), key.encode()):
                return name
        return self.users.verify(key)

    def _check_batch_lines(self, user: str, adding: int) -> str | None:
        """Quotas at batch creation: today's tokens, and the lines queued (validating batches too)."""
        return self.users.check_tokens(user, self.accounting.reserved.get(user, 0)) or self.users.check_batch_lines(
            user, self.batch.store.queued_lines(user), adding
        )

    def _on_preempt(self, r: Request) -> None:
        self.metrics.preemptions.labels(r.model, "evicted").inc()

    def drain(self, inst_id: int) -> None:
        self.fleet.control.apply(Drain(inst_id), self.clock())

    def set_limits(self, model: str, min_instances: int, max_instances: int) -> None:
        """Until the next restart, which reads the config file again."""
        m = self.cfg.models[model]
        self.cfg.models[model] = dataclasses.replace(m, min_instances=min_instances, max_instances=max_instances)
        spec = self.fleet.control.specs[model]
        self.fleet.control.specs[model] = dataclasses.replace(spec, min_instances=min_instances,
                                                              max_instances=max_instances)

    def model_status(self) -> list[dict[str, Any]]:
        return model_status(self.cfg, self.instances.values(), self.dispatcher, self.clock())

    def alive(self) -> bool:
        """For the systemd watchdog: the control loop went round lately (within 3 ticks, at least
        30 s), or a shutdown is under way (bounded by the unit's TimeoutStopSec instead)."""
        return not self.api.accepting or self.clock() - self.loop_at < max(3 * self.cfg.daemon.tick_s, 30.0)

    def health(self) -> dict[str, Any]:
        return {"status": "ok" if self.api.accepting else "stopping", "ticks": self.ticks,
                "instances": len(self.instances), "requests_in_flight": len(self.gateway.jobs)}


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
    try:
        await daemon.start()
    except BaseException:  # a part that failed to start: stop what did start (jobs submitted, files)
        with contextlib.suppress(Exception):
            await daemon.stop()
        raise
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
    cfg = load_for_command(args.config)
    if cfg is None:
        return 2
    log_output.configure(cfg.daemon.log_level, cfg.daemon.log_format)
    try:
        check_startup(cfg)  # what check-config checks of the machine: state_dir, listen_host, open files
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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
    except (BackendError, SchemaError) as e:  # Slurm refuses the partition; chirond.db is from a newer release
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
