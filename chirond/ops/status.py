"""What the daemon shows of itself: models with their state for GET /v1/models, and the gauges of
/metrics, both derived from the instance records and the dispatcher."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from chirond.config import Config
from chirond.control.instance import Instance
from chirond.dispatch import Dispatcher
from chirond.metrics import Metrics
from chirond.model import InstanceState, Pool


def model_status(
    cfg: Config, instances: Iterable[Instance], dispatcher: Dispatcher, now: float
) -> list[dict[str, Any]]:
    """GET /v1/models: each model with its state (live, starting, queued, scaled_to_zero), its
    instances per state, the ETA of the next instance and its queues."""
    out = []
    insts = list(instances)
    for name, m in cfg.models.items():
        counts = {s.value: 0 for s in InstanceState}
        eta: float | None = None
        for x in insts:
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
        qi, qb = dispatcher.queued(name)
        out.append({
            "id": name, "object": "model", "created": 0, "owned_by": "chirond",
            "state": state, "instances": counts, "eta_s": None if eta is None else round(eta, 1),
            "queue": {"interactive": qi, "batch": qb},
            "slo": {"ttft_s": m.slo.ttft_s, "tpot_s": m.slo.tpot_s},
            "task": m.task,  # vLLM's task name: "generate" (chat, completions) or "embed" (embeddings)
        })  # fmt: skip
    return out


def set_gauges(metrics: Metrics, cfg: Config, instances: Iterable[Instance], dispatcher: Dispatcher) -> None:
    insts = list(instances)
    for name in cfg.models:
        qi, qb = dispatcher.queued(name)
        metrics.queue.labels(name, "interactive").set(qi)
        metrics.queue.labels(name, "batch").set(qb)
        for p in Pool:
            for s in InstanceState:
                n = sum(1 for x in insts if x.model == name and x.pool is p and x.state is s)
                metrics.instances.labels(name, p.value, s.value).set(n)
    metrics.gpus.set(sum(x.gpus for x in insts))
    for slot in dispatcher.slots.values():  # caps move with the policy's SetBatchCap
        metrics.cap.labels(slot.model, str(slot.id)).set(slot.cap)
