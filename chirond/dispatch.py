"""Queues and the dispatcher: which queued request goes to which instance, and when.

The same object serves the simulator and the daemon's proxy. It holds per-model queues
(interactive, and batch ordered by deadline), knows each instance's pool and in-flight cap (the
local batch size: vLLM cannot change `max_num_seqs` at run time, so the cap lives here), and
returns assignments and evictions; the caller talks to the instances. No I/O, no clock reads.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from chirond.model import BacklogGroup, DispatchRules, Ordering, Pool, PromptBudget, ReqClass, Request, Routing

BATCH_PRIORITY = 1 << 53  # batch work goes after every interactive request inside the engine


def engine_priority(req: Request, ttft_slo_s: float, short_first_tokens: int) -> int:
    """vLLM's per-request priority for `req` (lower runs first; vLLM breaks ties by arrival).
    Interactive requests are ordered by a virtual arrival in ms: their arrival, plus up to one
    TTFT SLO for long prompts (`short_first_tokens` or more), so short prompts overtake long ones
    queued inside the engine, but a long one is never passed by a request arriving more than one
    SLO after it."""
    if req.cls is not ReqClass.INTERACTIVE:
        return BATCH_PRIORITY
    if short_first_tokens <= 0:
        return 0
    delay = ttft_slo_s * min(1.0, req.input_tokens / short_first_tokens)
    return max(0, round((req.arrival + delay) * 1000.0))


class Slot:
    """One instance as the dispatcher sees it."""

    __slots__ = ("batch", "batch_cap", "cap", "id", "inter", "model", "pending", "pool", "prompt_budget", "routable")

    def __init__(self, inst_id: int, model: str, pool: Pool, cap: int, batch_cap: int,
                 prompt_budget: PromptBudget | None = None) -> None:
        self.id = inst_id
        self.model = model
        self.pool = pool
        self.cap = cap
        self.batch_cap = batch_cap
        self.routable = True
        # Long batch prompts wait while these prompt tokens here await their first token (None:
        # no limit), so no wall of them stands before an interactive prompt.
        self.prompt_budget = prompt_budget
        self.inter: dict[int, Request] = {}
        self.batch: dict[int, Request] = {}  # insertion order = dispatch order
        # Requests sent here that have not had their first token, by id (one evicted before it
        # and sent back counts once). Not counted: a request resumed after its first token (its
        # prompt plus text so far is prefilled again), and counted until it ends: one relayed
        # unstreamed (its first token is its last). Both worlds count alike but for the second,
        # which only the daemon has.
        self.pending: dict[int, Request] = {}

    @property
    def inflight(self) -> int:
        return len(self.inter) + len(self.batch)

    def prefill_outstanding(self) -> int:
        """Prompt tokens sent here and not yet answered: a request leaves `pending` when it leaves
        the slot (finished, evicted, withdrawn) and, found here, when it has its first token."""
        for k in [k for k, r in self.pending.items() if r.first_token is not None]:
            del self.pending[k]
        return sum(r.input_tokens for r in self.pending.values())


@dataclass
class ModelQueues:
    # FIFO of interactive requests (FCFS, PRIORITY); under SLO ordering, `inter_heap` holds those
    # that can still meet their TTFT (shortest prompt first) and `inter` the ones that cannot.
    inter: deque[Request] = field(default_factory=deque)
    inter_heap: list[tuple[int, float, int, Request]] = field(default_factory=list)
    inter_tokens: int = 0
    batch: list[tuple[float, float, int, Request]] = field(default_factory=list)  # EDF (FCFS: arrival) heap
    backlog: dict[float, list[int]] = field(default_factory=dict)  # deadline -> [requests, tokens]
    slots: list[Slot] = field(default_factory=list)

    @property
    def n_inter(self) -> int:
        return len(self.inter) + len(self.inter_heap)


class Dispatcher:
    def __init__(self, rules: DispatchRules, ttft_slo_s: dict[str, float]) -> None:
        self.rules = rules
        self.ttft_slo_s = ttft_slo_s
        self.queues: dict[str, ModelQueues] = {m: ModelQueues() for m in ttft_slo_s}
        self.slots: dict[int, Slot] = {}
        self.evictions = 0

    # ---------------------------------------------------------------- queues

    def enqueue(self, req: Request) -> None:
        q = self.queues[req.model]
        req.priority = engine_priority(req, self.ttft_slo_s[req.model], self.rules.short_first_tokens)
        if req.cls is ReqClass.INTERACTIVE:
            q.inter_tokens += req.input_tokens
            if self.rules.ordering is Ordering.SLO:
                heapq.heappush(q.inter_heap, (req.input_tokens, req.arrival, req.id, req))
            else:
                q.inter.append(req)
        else:
            deadline = req.deadline if req.deadline is not None else float("inf")
            # EDF, except under FCFS where one line by arrival is the point.
            key = req.arrival if self.rules.ordering is Ordering.FCFS else deadline
            heapq.heappush(q.batch, (key, req.arrival, req.id, req))
            g = q.backlog.get(deadline)
            if g is None:
                q.backlog[deadline] = [1, req.input_tokens]
            else:
                g[0] += 1
                g[1] += req.input_tokens

    def requeue(self, req: Request) -> None:
        """Put back a request whose work was lost; interactive ones go first in line again."""
        req.instance = None
        if req.cls is ReqClass.INTERACTIVE and self.rules.ordering is not Ordering.SLO:
            self.queues[req.model].inter_tokens += req.input_tokens
            self.queues[req.model].inter.appendleft(req)
        else:
            self.enqueue(req)

    def withdraw(self, req: Request) -> bool:
        """Take back a request that is no longer wanted (its client left or waited too long):
        from its instance if dispatched, else from its queue. Returns False if it was in neither."""
        if req.instance is not None:
            return self.complete(req) is not None
        q = self.queues[req.model]
        if req.cls is ReqClass.INTERACTIVE:
            for i, e in enumerate(q.inter_heap):
                if e[3] is req:
                    q.inter_heap[i] = q.inter_heap[-1]
                    q.inter_heap.pop()
                    heapq.heapify(q.inter_heap)
                    break
            else:
                try:
                    q.inter.remove(req)
                except ValueError:
                    return False
            q.inter_tokens -= req.input_tokens
            return True
        for j, b in enumerate(q.batch):
            if b[3] is req:
                q.batch[j] = q.batch[-1]
                q.batch.pop()
                heapq.heapify(q.batch)
                self._forget_backlog(q, req)
                return True
        return False

    def queued(self, model: str) -> tuple[int, int]:
        q = self.queues[model]
        return q.n_inter, len(q.batch)

    def interactive_tokens(self, model: str) -> int:
        return self.queues[model].inter_tokens

    def oldest_interactive(self, model: str) -> float | None:
        q = self.queues[model]
        times = [r.arrival for r in q.inter] + [e[1] for e in q.inter_heap]
        return min(times) if times else None

    def backlog(self, model: str) -> tuple[BacklogGroup, ...]:
        return tuple(BacklogGroup(d, n, tok) for d, (n, tok) in sorted(self.queues[model].backlog.items()) if n > 0)

    # ---------------------------------------------------------------- instances

    def add_instance(self, inst_id: int, model: str, pool: Pool, cap: int, batch_cap: int | None = None,
                     prompt_budget: PromptBudget | None = None) -> None:
        slot = Slot(inst_id, model, pool, cap, cap if batch_cap is None else batch_cap, prompt_budget)
        self.slots[inst_id] = slot
        self.queues[model].slots.append(slot)

    def remove_instance(self, inst_id: int) -> list[Request]:
        """Forget an instance; its in-flight requests are requeued and returned (to abort)."""
        slot = self.slots.pop(inst_id)
        self.queues[slot.model].slots.remove(slot)
        lost = [*slot.inter.values(), *slot.batch.values()]
        for r in reversed(lost):  # requeue() puts interactive ones first in line: keep their order
            r.preempted += 1
            self.requeue(r)
        return lost

    def set_cap(self, inst_id: int, cap: int, batch_cap: int | None = None) -> None:
        slot = self.slots[inst_id]
        slot.cap = max(1, cap)
        slot.batch_cap = slot.cap if batch_cap is None else max(0, min(batch_cap, slot.cap))

    def set_pool(self, inst_id: int, pool: Pool) -> None:
        self.slots[inst_id].pool = pool

    def set_routable(self, inst_id: int, routable: bool) -> None:
        self.slots[inst_id].routable = routable

    def complete(self, req: Request) -> Slot | None:
        """A request finished (or failed for good) on its instance; frees its slot."""
        slot = self.slots.get(req.instance) if req.instance is not None else None
        if slot is not None:
            if req.cls is ReqClass.INTERACTIVE:
                slot.inter.pop(req.id, None)
            else:
                slot.batch.pop(req.id, None)
            slot.pending.pop(req.id, None)
        return slot

    # ---------------------------------------------------------------- dispatching

    def dispatch(self, model: str, now: float) -> tuple[list[Request], list[tuple[Request, int]]]:
        """Fill free slots of `model`'s instances. Returns (assigned, evicted): each assigned
        request has `.instance` set; evicted ones are (request, instance it was on): batch requests
        thrown off a mixed instance for an interactive one, already requeued (the caller aborts
        them upstream)."""
        q = self.queues[model]
        assigned: list[Request] = []
        evicted: list[tuple[Request, int]] = []
        if not q.slots:
            return assigned, evicted
        if self.rules.ordering is Ordering.FCFS:
            self._dispatch_fcfs(q, now, assigned)
            return assigned, evicted
        shared = self.rules.routing is Routing.SHARED
        while q.n_inter:
            req = self._peek_interactive(q, now - self.ttft_slo_s[model])
            slot = self._slot_for_interactive(q.slots, shared, self.rules.pack_interactive, self.rules.route_by_prefill)
            if slot is None and self.rules.preempt_batch:
                slot = self._evict_for_interactive(q.slots, shared, evicted)
            if slot is None:
                break
            self._pop_interactive(q, req)
            self._assign(slot, req, now, assigned)
        while q.batch:
            slot = self._slot_for_batch(q.slots, shared, q.batch[0][3].input_tokens)
            if slot is None:
                break
            self._assign(slot, self._pop_batch(q), now, assigned)
        return assigned, evicted

    def _dispatch_fcfs(self, q: ModelQueues, now: float, assigned: list[Request]) -> None:
        # One line by arrival time, whatever the class: a plain vLLM deployment.
        while q.inter or q.batch:
            take_inter = bool(q.inter) and (not q.batch or q.inter[0].arrival <= q.batch[0][1])
            slot = self._least_loaded(q.slots, batch=not take_inter)
            if slot is None:
                return
            if take_inter:
                req = q.inter.popleft()
                q.inter_tokens -= req.input_tokens
            else:
                req = self._pop_batch(q)
            self._assign(slot, req, now, assigned)

    def _peek_interactive(self, q: ModelQueues, limit: float) -> Request:
        if self.rules.ordering is Ordering.SLO:
            # Requests that arrived before `limit` can no longer meet their TTFT: they move behind
            # the ones that still can (and are served as soon as nothing feasible waits).
            while q.inter_heap and q.inter_heap[0][1] < limit:
                q.inter.append(heapq.heappop(q.inter_heap)[3])
            if q.inter_heap:
                return q.inter_heap[0][3]
        return q.inter[0]

    def _pop_interactive(self, q: ModelQueues, req: Request) -> None:
        if q.inter_heap and q.inter_heap[0][3] is req:
            heapq.heappop(q.inter_heap)
        else:
            q.inter.popleft()
        q.inter_tokens -= req.input_tokens

    def _pop_batch(self, q: ModelQueues) -> Request:
        req = heapq.heappop(q.batch)[3]
        self._forget_backlog(q, req)
        return req

    @staticmethod
    def _forget_backlog(q: ModelQueues, req: Request) -> None:
        deadline = req.deadline if req.deadline is not None else float("inf")
        g = q.backlog[deadline]
        g[0] -= 1
        g[1] -= req.input_tokens
        if g[0] <= 0:
            del q.backlog[deadline]

    @staticmethod
    def _assign(slot: Slot, req: Request, now: float, assigned: list[Request]) -> None:
        req.instance = slot.id
        req.dispatched = now
        if req.cls is ReqClass.INTERACTIVE:
            slot.inter[req.id] = req
        else:
            slot.batch[req.id] = req
        if req.first_token is None:
            slot.pending[req.id] = req  # at most the requests in flight here
        assigned.append(req)

    @staticmethod
    def _least_loaded(slots: Iterable[Slot], batch: bool) -> Slot | None:
        best: Slot | None = None
        best_load = 2.0
        for s in slots:
            if not s.routable or s.inflight >= s.cap or (batch and len(s.batch) >= s.batch_cap):
                continue
            load = s.inflight / s.cap
            if load < best_load:
                best, best_load = s, load
        return best

    @staticmethod
    def _slot_for_interactive(slots: list[Slot], shared: bool, pack: bool, by_prefill: bool) -> Slot | None:
        # Own pool first (least loaded, or fullest when packing, or least prompt work outstanding),
        # then the mixed pool's headroom.
        best: Slot | None = None
        best_key: tuple[int, float] = (9, math.inf)
        for s in slots:
            if not s.routable or s.inflight >= s.cap:
                continue
            if shared or s.pool is Pool.INTERACTIVE:
                rank = 0
            elif s.pool is Pool.MIXED:
                rank = 1
            else:
                continue
            load = s.inflight / s.cap
            # By prefill: the fraction breaks ties (nothing outstanding) towards the emptiest.
            key = (rank, s.prefill_outstanding() + load if by_prefill else -load if pack else load)
            if key < best_key:
                best, best_key = s, key
        return best

    def _evict_for_interactive(
        self, slots: list[Slot], shared: bool, evicted: list[tuple[Request, int]]
    ) -> Slot | None:
        # The batch request dispatched last on the busiest mixed instance loses the least work.
        best: Slot | None = None
        best_rid = 0
        for s in slots:
            if not s.routable or not s.batch or not (shared or s.pool is Pool.MIXED):
                continue
            rid = next((k for k in reversed(s.batch) if s.batch[k].preemptible), None)
            if rid is not None and (best is None or len(s.batch) > len(best.batch)):
                best, best_rid = s, rid
        if best is None:
            return None
        victim = best.batch.pop(best_rid)
        best.pending.pop(best_rid, None)
        victim.preempted += 1
        self.evictions += 1
        self.requeue(victim)
        evicted.append((victim, best.id))
        return best

    @staticmethod
    def _slot_for_batch(slots: list[Slot], shared: bool, prompt_tokens: int) -> Slot | None:
        # Batch pool first, then mixed headroom (up to each instance's batch cap); fill the
        # fullest one first so spare instances can drain and be released.
        best: Slot | None = None
        best_key = (9, 2.0)
        for s in slots:
            if not s.routable or s.inflight >= s.cap or len(s.batch) >= s.batch_cap:
                continue
            budget = s.prompt_budget
            if budget is not None and prompt_tokens >= budget.long_tokens and s.prefill_outstanding() >= budget.tokens:
                continue
            if shared or s.pool is Pool.BATCH:
                rank = 0
            elif s.pool is Pool.MIXED:
                rank = 1
            else:
                continue
            key = (rank, -s.inflight / s.cap)
            if key < best_key:
                best, best_key = s, key
        return best
