"""Shared value types: requests, what policies see (the snapshot), and what they decide (actions).

Everything here is plain data. The simulator and the daemon both build `Snapshot`s and apply
`Action`s; policies only ever read the former and return the latter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ReqClass(StrEnum):
    INTERACTIVE = "interactive"
    BATCH = "batch"


class Pool(StrEnum):
    INTERACTIVE = "interactive"  # interactive requests only
    MIXED = "mixed"  # interactive first; batch work fills the headroom and is preempted
    BATCH = "batch"  # batch requests only


class InstanceState(StrEnum):
    PENDING = "pending"  # job submitted, waiting in the scheduler's queue
    STARTING = "starting"  # job running, engine loading weights
    READY = "ready"  # serving
    DRAINING = "draining"  # no new requests; stopped when idle


class Routing(StrEnum):
    POOLS = "pools"  # interactive -> interactive, then mixed; batch -> batch, then mixed
    SHARED = "shared"  # every instance serves every class


class Ordering(StrEnum):
    FCFS = "fcfs"  # one queue by arrival time, whatever the class
    PRIORITY = "priority"  # interactive before batch; FIFO inside interactive, EDF inside batch
    SLO = "slo"  # priority, and inside interactive: requests that can still meet TTFT first,
    # shortest prompt first among them (SSJF on the known prompt length)


@dataclass(slots=True, eq=False)
class Request:
    """One inference request. Times are seconds on the run's clock (virtual or real)."""

    id: int
    model: str
    cls: ReqClass
    arrival: float
    input_tokens: int
    output_tokens: int  # the length it will generate; policies never see it for queued requests
    deadline: float | None = None  # absolute; batch requests only
    # vLLM's per-request priority under `--scheduling-policy priority` (lower first, ties by
    # arrival); the dispatcher sets it at enqueue (see `dispatch.engine_priority`).
    priority: int = 0
    # Filled in as the request moves; first_token keeps the first value across preemptions.
    dispatched: float | None = None
    first_token: float | None = None
    finish: float | None = None
    preempted: int = 0  # times its work was thrown away (proxy preemption or instance loss)
    preemptible: bool = True  # False: never evicted for interactive work (an unstreamed pass-through)
    instance: int | None = None

    @property
    def tpot(self) -> float | None:
        if self.finish is None or self.first_token is None:
            return None
        if self.output_tokens <= 1:
            return 0.0
        return (self.finish - self.first_token) / (self.output_tokens - 1)

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.arrival


# ---------------------------------------------------------------- the snapshot a policy reads


@dataclass(frozen=True, slots=True)
class Slo:
    ttft_s: float
    tpot_s: float


def within_slo(ttft: Any, tpot: Any, ttft_slo: Any, tpot_slo: Any) -> Any:
    """The one definition of an interactive request meeting its SLO: TTFT and TPOT both within.
    Takes floats or numpy arrays alike (the daemon's accounting, `chiron load`, the report)."""
    return (ttft <= ttft_slo) & (tpot <= tpot_slo)


@dataclass(frozen=True, slots=True)
class InstanceView:
    id: int
    model: str
    pool: Pool
    state: InstanceState
    gpus: int
    launched_at: float  # when the job was submitted
    ready_at: float | None  # when it first served
    ends_at: float | None  # job time limit, absolute; None when unknown or unlimited
    cap: int  # in-flight cap the dispatcher applies (the local batch size)
    batch_cap: int  # of which at most this many batch-class requests
    inflight_interactive: int
    inflight_batch: int
    running: int  # engine: sequences in the running batch
    waiting: int  # engine: sequences queued inside the engine
    kv_usage: float  # 0..1
    kv_free_tokens: int
    tpot_obs_s: float | None  # mean TPOT of requests finished here since the last tick
    ttft_obs_s: float | None
    tokens_per_s: float  # generation throughput since the last tick
    stale: bool = False  # the observation could not be refreshed: never scale down on it

    @property
    def inflight(self) -> int:
        return self.inflight_interactive + self.inflight_batch

    @property
    def live(self) -> bool:
        return self.state in (InstanceState.READY, InstanceState.DRAINING)


@dataclass(frozen=True, slots=True)
class BacklogGroup:
    """Queued batch work that shares one deadline."""

    deadline: float
    requests: int
    input_tokens: int


@dataclass(frozen=True, slots=True)
class LoadStats:
    """Interactive arrivals seen by the proxy, per model (see `stats.ArrivalWindow`)."""

    rate_1m: float  # requests/s over the last minute
    rate_10m: float
    prompt_tokens_1m: float  # prompt tokens/s over the last minute
    prompt_tokens_10m: float
    mean_input: float  # observed, all time (exponentially weighted)
    mean_output: float  # observed on completions
    idle_s: float = math.inf  # since the last interactive arrival (inf: none seen)
    # The arrivals of the last `history_s` by second, for the chirond policy's bursts and queue replay:
    # (age in s, requests, prompt tokens) of each second that had any, oldest first; `recent_span_s`:
    # the seconds it covers (since the first arrival, at most the history).
    recent: tuple[tuple[float, float, float], ...] = ()
    recent_span_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ModelView:
    name: str
    slo: Slo
    gpus_per_instance: int
    max_instances: int  # what config allows (max GPUs // gpus per instance)
    min_instances: int
    lead_time_s: float  # expected queue wait + cold start for a new instance
    interactive_queue: int
    interactive_queue_tokens: int  # prompt tokens waiting
    oldest_interactive_wait_s: float
    batch_queue: int
    backlog: tuple[BacklogGroup, ...]  # queued batch work by deadline, earliest first
    batch_mean_output: float  # observed mean output length of finished batch requests
    load: LoadStats
    instances: tuple[InstanceView, ...]
    failures_recent: int = 0  # job failures in the last 10 minutes
    idle_timeout_s: float | None = None  # min_instances = 0: drain after this long idle (None: lead time)


@dataclass(frozen=True, slots=True)
class Snapshot:
    now: float
    models: tuple[ModelView, ...]
    free_gpus: int  # GPUs the scheduler could give right now (unknown -> large)

    def model(self, name: str) -> ModelView:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)


# ---------------------------------------------------------------- actions a policy returns


@dataclass(frozen=True, slots=True)
class Launch:
    model: str
    pool: Pool
    count: int = 1
    # Successors of this many instances near their time limit: they may go past max_instances
    # for the overlap (a model at max_instances = 1 must still hand over before its limit).
    replaces: int = 0
    # The engine flags the new instances run with, decided with the launch (not compared: a
    # decision is the same whatever the flags' object identity).
    args: EngineArgs | None = field(default=None, compare=False)

    def room(self, have: int, max_instances: int) -> int:
        """How many to start when the model has `have` instances."""
        return max(0, min(self.count, max_instances + self.replaces - have))


@dataclass(frozen=True, slots=True)
class Drain:
    instance: int


@dataclass(frozen=True, slots=True)
class Cancel:
    instance: int


@dataclass(frozen=True, slots=True)
class SetBatchCap:
    instance: int
    cap: int
    batch_cap: int | None = None  # None: same as cap


@dataclass(frozen=True, slots=True)
class SetPool:
    instance: int
    pool: Pool


Action = Launch | Drain | Cancel | SetBatchCap | SetPool


@dataclass(frozen=True, slots=True)
class Decision:
    actions: tuple[Action, ...]
    reason: str  # one line, logged per tick
    state: object = None  # the policy's own state, handed back on the next tick


@dataclass(frozen=True, slots=True)
class PromptBudget:
    """A long batch prompt (at least `long_tokens`) is sent to an instance only while the prompt
    tokens there still awaiting their first token number under `tokens`."""

    long_tokens: int
    tokens: int


@dataclass(frozen=True, slots=True)
class EngineArgs:
    """The engine flags a policy asks for when it launches an instance (vLLM: --max-num-seqs,
    --max-num-batched-tokens, --scheduling-policy priority with interactive requests first)."""

    max_num_seqs: int
    max_num_batched_tokens: int
    priority: bool = False


@dataclass(frozen=True, slots=True)
class DispatchRules:
    """How the dispatcher serves queues for a policy (fixed per policy)."""

    routing: Routing = Routing.POOLS
    ordering: Ordering = Ordering.PRIORITY
    preempt_batch: bool = True  # an interactive request may evict batch work on a mixed instance
    pack_interactive: bool = False  # fill the fullest instance with room instead of the emptiest
    # Engine-side order of interactive requests (vLLM priority): a prompt of this many tokens or
    # more yields to others arriving up to one TTFT SLO after it, shorter ones proportionally less
    # (shortest first, aged so a long prompt waits at most one TTFT SLO). 0: by arrival.
    short_first_tokens: int = 0
    # Interactive requests go to the instance with the least prompt work outstanding (prompts not
    # yet answered with a first token) rather than the fewest requests in flight: one 32k-token
    # prompt ahead delays a new request more than ten short chats do.
    route_by_prefill: bool = False
