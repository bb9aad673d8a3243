"""The daemon's operations on the control socket (chirond/ops/socket_server.py serves them): `status` for
everyone, and the admin-only `drain` (an instance) and `limits` (a model's instance bounds, until
the next restart, which reads the config file again)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

from chirond.batch.service import BatchService
from chirond.cluster.backend import Backend
from chirond.config import Config
from chirond.control.instance import Instance
from chirond.dispatch import Dispatcher
from chirond.metrics import Metrics
from chirond.model import InstanceState, ReqClass
from chirond.ops.socket_server import Caller, Operation, OpError
from chirond.policy.base import Policy

log = logging.getLogger("chirond")


class Daemon(Protocol):
    """What the operations read and do (chirond.daemon.Daemon is one)."""

    cfg: Config
    clock: Any
    dispatcher: Dispatcher
    batch: BatchService
    metrics: Metrics
    policy: Policy
    backend: Backend
    ticks: int

    @property
    def instances(self) -> Mapping[int, Instance]: ...

    @property
    def last_reason(self) -> str: ...

    @property
    def floors(self) -> Mapping[str, int]: ...

    def drain(self, inst_id: int) -> None: ...

    def set_limits(self, model: str, min_instances: int, max_instances: int) -> None: ...


def operations(daemon: Daemon) -> dict[str, Operation]:
    async def status(caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        return status_of(daemon)

    async def drain(caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        inst_id = args.get("instance")
        if not isinstance(inst_id, int) or isinstance(inst_id, bool) or inst_id not in daemon.instances:
            known = ", ".join(map(str, sorted(daemon.instances))) or "none"
            raise OpError(f"no instance {inst_id!r} (instances: {known})")
        inst = daemon.instances[inst_id]
        log.info("admin %s drains instance %d (%s)", caller.user, inst_id, inst.model)
        daemon.drain(inst_id)
        return {"instance": inst_id, "model": inst.model, "state": inst.state.value}

    async def limits(caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
        name = args.get("model")
        if name not in daemon.cfg.models:
            raise OpError(f"no model {name!r} (models: {', '.join(daemon.cfg.models)})")
        m = daemon.cfg.models[name]
        lo = _count(args, "min_instances", m.min_instances)
        hi = _count(args, "max_instances", m.max_instances)
        if lo > hi:
            raise OpError(f"min_instances {lo} is above max_instances {hi}")
        daemon.set_limits(name, lo, hi)
        log.info("admin %s sets %s instances to %d..%d (until restart)", caller.user, name, lo, hi)
        return {"model": name, "min_instances": lo, "max_instances": hi}

    return {
        "status": Operation(status, help="models, instances per pool and state, queues, SLO attainment"),
        "drain": Operation(drain, admin=True, help="drain an instance: no new requests, stop when idle"),
        "limits": Operation(limits, admin=True, help="set a model's min/max instances until restart"),
    }


def _count(args: dict[str, Any], key: str, default: int) -> int:
    v = args.get(key)
    if v is None:
        return default
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 10_000:
        raise OpError(f"{key} must be an integer in 0..10000, got {v!r}")
    return v


def status_of(daemon: Daemon) -> dict[str, Any]:
    """What `chiron status` shows: one entry per model."""
    now = daemon.clock()
    models = []
    for name, m in daemon.cfg.models.items():
        pools: dict[str, dict[str, int]] = {}
        for x in daemon.instances.values():
            if x.model == name:
                by_state = pools.setdefault(x.pool.value, {})
                by_state[x.state.value] = by_state.get(x.state.value, 0) + 1
        qi, qb = daemon.dispatcher.queued(name)
        backlog, lines = daemon.batch.backlog(name, now)
        models.append({
            "name": name,
            "instances": pools,
            "ready": sum(1 for x in daemon.instances.values() if x.model == name and x.state is InstanceState.READY),
            "min_instances": m.min_instances, "max_instances": m.max_instances,
            "floor": daemon.floors.get(name) if m.min_instances_by_hour or m.learned_floor_price > 0 else None,
            "queue_interactive": qi, "queue_batch": qb, "backlog_lines": lines,
            "next_deadline_s": round(backlog[0].deadline - now, 1) if backlog else None,
            "slo_attainment": {c.value: daemon.metrics.attainment(name, c.value) for c in ReqClass},
            "slo": {"ttft_s": m.slo.ttft_s, "tpot_s": m.slo.tpot_s},
        })  # fmt: skip
    return {
        "models": models,
        "policy": daemon.policy.name,
        "backend": daemon.backend.name,
        "ticks": daemon.ticks,
        "last_reason": daemon.last_reason,
        "gpus_in_use": sum(x.gpus for x in daemon.instances.values()),
        "time": time.time(),
    }
