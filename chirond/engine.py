"""An iteration-level model of one vLLM (V1) engine, advanced analytically between events.

What it models, as vLLM's scheduler does:
- continuous batching: up to `max_num_seqs` running sequences;
- chunked prefill: each step has a budget of `max_num_batched_tokens`; decoding sequences take one
  token each, then the prompts already running in admission order (a prompt may span several
  steps); only what budget is left admits waiting requests, first come first served, or by
  (priority, arrival) under `--scheduling-policy priority`, while the KV cache has room for their
  prompt (vLLM V1's `schedule()`: running requests first, then waiting ones while budget lasts);
  the step that finishes a prompt also samples its first token;
- KV cache of 16-token blocks (half a block lost per sequence on average); when decoding would
  overflow it, the newest running sequence is preempted by recompute: it goes back to the head of
  the waiting queue and later re-prefills its prompt plus the tokens it had generated;
- step time from the profile: a + b*B + c*C/1000 ms of GPU time (B sequences in the step, C the
  decoders' context tokens), plus each prompt chunk's work: p*c + q*c*(k + c/2) for a chunk of c
  tokens starting at offset k (`s.computed`), the linear layers at p per token and attention to the
  k + 1 ... k + c tokens before each, q per (token, context token) pair. Summed over the chunks of a
  prompt of n tokens that is p*n + q*n^2/2 however it is chunked, as `Profile.prefill_s(n)` says; a
  recompute after preemption re-prefills prompt plus generated tokens at the same cost;
- the engine's CPU time per step (scheduling, input preparation, sampling, output processing) as
  `[cpu]` ms_per_step + ms_per_seq*B, serial with the GPU work (vLLM V1 without async scheduling;
  the shipped profiles charge only the per-sequence part, profiles/README.md says why).

Not modelled: time outside the engine (HTTP, tokenising, detokenising), which client-measured TTFT
includes; weight reads overlapping compute (a step with prompt work pays `a` on top of its chunks).

How it runs fast: time moves in *segments*. A step with prompt work is one segment. Steps with only
decoding form one segment that ends at the next completion (or when the KV cache would overflow);
its length has a closed form because C grows by B every step. When a request arrives or is aborted
mid-segment, the segment is cut after the step in progress, exactly where vLLM would pick it up.
The caller owns the clock: it asks for `segment_end`, calls `finish_segment()` then, and calls
`kick(now)` after submitting or aborting.
"""

from __future__ import annotations

import heapq
import math
from collections import deque

from chirond.model import Request
from chirond.profiles import Profile


class Seq:
    __slots__ = ("admit_no", "alive", "computed", "ctx_join", "generated", "join_step", "prefill_len", "req")

    def __init__(self, req: Request) -> None:
        self.req = req
        self.prefill_len = req.input_tokens  # tokens to (re)compute before decoding
        self.computed = 0
        self.generated = 0  # output tokens so far (kept across recompute)
        self.join_step = 0  # engine step at which it joined the decoders
        self.ctx_join = 0  # its context length then
        self.admit_no = 0
        self.alive = True


class Engine:
    def __init__(
        self,
        profile: Profile,
        max_num_seqs: int | None = None,
        max_num_batched_tokens: int | None = None,
        priority: bool = False,
    ) -> None:
        """`priority` models `--scheduling-policy priority`: waiting requests are admitted by
        (`Request.priority`, arrival), and KV preemption picks the running request with the largest
        (priority, arrival)."""
        p = profile
        self.profile = p
        self.max_num_seqs = max_num_seqs or p.max_num_seqs
        self.priority = priority
        # The CPU overhead is charged with the GPU terms it scales with (see the module docstring).
        self._a = (p.a_ms + p.cpu_ms_per_step) / 1000.0
        self._b = (p.b_ms_per_seq + p.cpu_ms_per_seq) / 1000.0
        self._c = p.c_ms_per_1k_ctx / 1e6  # per context token
        self._p = p.prefill_ms_per_token / 1000.0
        self._q = p.attn_ms_per_1m_pairs / 1e9  # per (prompt token, context token) pair
        self._budget = max_num_batched_tokens or p.max_num_batched_tokens
        self._kv_cap = float(p.kv_capacity_tokens)
        self._half_block = p.block_tokens / 2.0

        self.step = 0  # decode steps executed (every step advances every decoder by one token)
        self._decoders: list[tuple[int, int, Seq]] = []  # heap of (finish step, admit no, seq)
        self._n_dec = 0
        self._ctx_dec = 0  # total context tokens of the decoders
        self._prefilling: list[Seq] = []
        self._kv_pf = 0  # KV tokens reserved by prompts being prefilled
        self._waiting: deque[Seq] = deque()  # FCFS
        self._waiting_heap: list[tuple[int, float, int, Seq]] = []  # under priority scheduling
        self._seqs: dict[int, Seq] = {}  # request id -> seq, for aborts
        self._admitted = 0
        self._pushed = 0
        self._dirty = False  # submits or aborts since the segment was planned

        # The segment in flight.
        self.busy = False
        self.seg_start = 0.0
        self.segment_end = math.inf
        self._seg_k = 0
        self._seg_base = 0.0  # first step's duration (decode segments)
        self._seg_inc = 0.0  # growth per step (decode segments)
        self._seg_chunks: list[tuple[Seq, int]] = []  # prompt work of a prefill step

        # Counters for metrics.
        self.generation_tokens = 0
        self.prompt_tokens = 0
        self.num_preemptions = 0
        self.preempted: dict[int, int] = {}  # request id -> its preemptions (popped by whoever reports it)
        self.busy_time = 0.0

    # ---------------------------------------------------------------- observation

    @property
    def running(self) -> int:
        return self._n_dec + len(self._prefilling)

    @property
    def waiting(self) -> int:
        return len(self._waiting) + len(self._waiting_heap)

    @property
    def kv_used_tokens(self) -> float:
        return self._ctx_dec + self._kv_pf + self._half_block * self.running

    @property
    def kv_usage(self) -> float:
        return min(1.0, self.kv_used_tokens / self._kv_cap)

    def __len__(self) -> int:
        return len(self._seqs)

    # ---------------------------------------------------------------- observation inside a segment
    # For a caller that runs the engine against a live clock (the simulated vLLM server): what has
    # happened by `now` inside the segment in flight. None of these change any state.

    def steps_done(self, now: float) -> int:
        """Decode steps of the segment in flight finished by `now` (0 in a prefill step, or idle)."""
        if not self.busy or self._seg_chunks:
            return 0
        return self._steps_done_by(now - self.seg_start)

    def generated(self, req: Request, now: float, steps_done: int | None = None) -> int:
        """Output tokens `req` has produced by `now`, including the decode steps finished inside the
        segment in flight. `steps_done` is `self.steps_done(now)`, for callers asking about many
        requests at once. A finished request has all its tokens; one not here (aborted) none.
        Assumes prompts of at least one token, as vLLM does."""
        s = self._seqs.get(req.id)
        if s is None:
            return req.output_tokens if req.finish is not None else 0
        if s.computed < s.prefill_len:  # waiting or prefilling: what it kept from before a preemption
            return s.generated
        if steps_done is None:
            steps_done = self.steps_done(now)
        return min(req.output_tokens, s.generated + self.step - s.join_step + steps_done)

    def generation_tokens_by(self, now: float) -> int:
        """`generation_tokens` plus the tokens decoded so far inside the segment in flight."""
        return self.generation_tokens + self._n_dec * self.steps_done(now)

    def step_prompts(self) -> list[Request]:
        """Requests whose prompt work is in the step in flight (none in a decode segment). A request's
        first such step is when it was scheduled; the step that completes its prompt gives it its
        first token at `segment_end`."""
        return [s.req for s, _ in self._seg_chunks if s.alive]

    def step_tokens(self) -> tuple[int, int]:
        """(tokens per step, steps) of the segment in flight: prompt chunks plus one per decoder."""
        if not self.busy:
            return 0, 0
        return self._n_dec + sum(c for _, c in self._seg_chunks), self._seg_k

    # ---------------------------------------------------------------- input

    def submit(self, req: Request) -> None:
        s = Seq(req)
        self._seqs[req.id] = s
        self._wait(s, front=False)
        self._dirty = True

    def _wait(self, s: Seq, front: bool) -> None:
        """Into the waiting queue: by (priority, arrival) under priority scheduling, else at the
        back (a new request) or the front (a preempted one), as vLLM's FCFS queue does."""
        if self.priority:
            self._pushed += 1  # unique tie-break: a request may come back after an abort
            heapq.heappush(self._waiting_heap, (s.req.priority, s.req.arrival, self._pushed, s))
        elif front:
            self._waiting.appendleft(s)
        else:
            self._waiting.append(s)

    def _next_waiting(self) -> Seq | None:
        if self.priority:
            return self._waiting_heap[0][3] if self._waiting_heap else None
        return self._waiting[0] if self._waiting else None

    def _pop_waiting(self) -> None:
        if self.priority:
            heapq.heappop(self._waiting_heap)
        else:
            self._waiting.popleft()

    def abort(self, req: Request) -> bool:
        """Drop a request; its work is lost. Returns False if it is not here."""
        s = self._seqs.pop(req.id, None)
        if s is None:
            return False
        s.alive = False
        self._dirty = True
        return True

    def kick(self, now: float) -> bool:
        """Take pending submits and aborts into account. Returns True if `segment_end` changed."""
        if not self.busy:
            return self._plan(now)
        if not self._dirty or self._seg_chunks or self._seg_k <= 1:
            return False  # the step in flight ends as planned; the change is seen at its end
        # Cut the decode segment after the step in progress at `now`.
        done = self._steps_done_by(now - self.seg_start)
        if done + 1 >= self._seg_k:
            return False
        self._seg_k = done + 1
        self.segment_end = self.seg_start + self._dur(self._seg_k)
        return True

    # ---------------------------------------------------------------- the clock reached segment_end

    def finish_segment(self) -> list[Request]:
        """Apply the segment that ends now; return the requests that finished (times set)."""
        end = self.segment_end
        k = self._seg_k
        self.busy_time += end - self.seg_start
        self.busy = False
        self.segment_end = math.inf
        self.step += k
        self._ctx_dec += self._n_dec * k
        self.generation_tokens += self._n_dec * k
        finished: list[Request] = []

        for s, chunk in self._seg_chunks:
            if not s.alive:
                continue
            s.computed += chunk
            self.prompt_tokens += chunk
            if s.computed < s.prefill_len:
                continue
            self._prefilling.remove(s)
            self._kv_pf -= s.prefill_len
            s.generated += 1  # the step that completes a prompt samples a token
            self.generation_tokens += 1
            if s.req.first_token is None:
                s.req.first_token = end
            if s.generated >= s.req.output_tokens:
                self._done(s, end, finished)
            else:
                s.join_step = self.step
                s.ctx_join = s.prefill_len + 1
                self._ctx_dec += s.ctx_join
                self._n_dec += 1
                heapq.heappush(self._decoders, (self.step + s.req.output_tokens - s.generated, s.admit_no, s))
        self._seg_chunks = []

        heap = self._decoders
        while heap and heap[0][0] <= self.step:
            _, _, s = heapq.heappop(heap)
            self._leave_decoders(s)
            if s.alive:  # an aborted one just leaves
                s.generated = s.req.output_tokens
                self._done(s, end, finished)
        self.seg_start = end
        return finished

    # ---------------------------------------------------------------- internals

    def _done(self, s: Seq, end: float, finished: list[Request]) -> None:
        s.alive = False
        del self._seqs[s.req.id]
        s.req.finish = end
        finished.append(s.req)

    def _leave_decoders(self, s: Seq) -> None:
        self._n_dec -= 1
        self._ctx_dec -= s.ctx_join + (self.step - s.join_step)

    def _drop_aborted(self) -> None:
        if any(not s.alive for s in self._prefilling):
            for s in self._prefilling:
                if not s.alive:
                    self._kv_pf -= s.prefill_len
            self._prefilling = [s for s in self._prefilling if s.alive]
        if any(not s.alive for s in self._waiting):
            self._waiting = deque(s for s in self._waiting if s.alive)
        if any(not e[3].alive for e in self._waiting_heap):
            self._waiting_heap = [e for e in self._waiting_heap if e[3].alive]
            heapq.heapify(self._waiting_heap)
        # Dead decoders leave the counts now; their heap entries are skipped lazily.
        dead = [e for e in self._decoders if not e[2].alive]
        if dead:
            for _, _, s in dead:
                self._leave_decoders(s)
            self._decoders = [e for e in self._decoders if e[2].alive]
            heapq.heapify(self._decoders)

    def _plan(self, now: float) -> bool:
        self.seg_start = max(now, self.seg_start)
        if self._dirty:
            self._drop_aborted()
            self._dirty = False
        n = self._n_dec
        budget = max(1, self._budget - n)
        chunks: list[tuple[Seq, int]] = []
        tokens = 0
        pairs = 0.0  # attention work of the chunks: c * (offset + c / 2) each
        for s in self._prefilling:  # running prompts first, in admission order
            c = min(s.prefill_len - s.computed, budget - tokens)
            if c <= 0:
                break
            chunks.append((s, c))
            tokens += c
            pairs += c * (s.computed + c / 2.0)
        # Then waiting requests, in queue order, into what is left of the budget, while there is
        # a running slot and KV room for the whole prompt.
        while tokens < budget and self.running < self.max_num_seqs:
            w = self._next_waiting()
            if w is None:
                break
            s = w
            if self.kv_used_tokens + s.prefill_len + self._half_block > self._kv_cap and self.running:
                break
            self._pop_waiting()
            self._admitted += 1
            s.admit_no = self._admitted
            s.computed = 0
            self._prefilling.append(s)
            self._kv_pf += s.prefill_len
            c = min(s.prefill_len, budget - tokens)
            chunks.append((s, c))
            tokens += c
            pairs += c * c / 2.0
        if chunks:
            self._seg_chunks = chunks
            self._seg_k = 1
            dur = self._a + self._b * (n + len(chunks)) + self._c * self._ctx_dec + self._p * tokens + self._q * pairs
            self._seg_base, self._seg_inc = dur, 0.0
        elif n:
            k = self._decoders[0][0] - self.step
            free = self._kv_cap - self.kv_used_tokens
            k_kv = int(free // n)
            if k_kv < 1:
                self._preempt_newest()
                return self._plan(now)
            self._seg_k = max(1, min(k, k_kv))
            self._seg_base = self._a + self._b * n + self._c * self._ctx_dec
            self._seg_inc = self._c * n
        else:
            changed = self.segment_end != math.inf
            self.segment_end = math.inf
            return changed
        self.busy = True
        self.segment_end = self.seg_start + self._dur(self._seg_k)
        return True

    def _preempt_newest(self) -> None:
        """vLLM V1 under FCFS preempts the last request it scheduled (under priority, the one with
        the largest (priority, arrival)); it restarts by recompute."""
        if self.priority:
            entry = max(self._decoders, key=lambda e: (e[2].req.priority, e[2].req.arrival, e[1]))
        else:
            entry = max(self._decoders, key=lambda e: e[1])
        s = entry[2]
        self._decoders.remove(entry)
        heapq.heapify(self._decoders)
        self._leave_decoders(s)
        s.generated += self.step - s.join_step  # tokens decoded since it joined are kept
        s.prefill_len = s.req.input_tokens + s.generated
        s.computed = 0
        self._wait(s, front=True)
        self.num_preemptions += 1
        self.preempted[s.req.id] = self.preempted.get(s.req.id, 0) + 1

    def _dur(self, k: int) -> float:
        return k * self._seg_base + self._seg_inc * k * (k - 1) / 2.0

    def _steps_done_by(self, elapsed: float) -> int:
        """Whole steps of the current decode segment finished `elapsed` seconds after its start."""
        if elapsed <= 0:
            return 0
        base, inc = self._seg_base, self._seg_inc
        if inc <= 0:
            j = int(elapsed / base)
        else:
            # inc/2 j^2 + (base - inc/2) j - elapsed = 0
            bb = base - inc / 2.0
            j = int((-bb + math.sqrt(bb * bb + 2.0 * inc * elapsed)) / inc)
        while j > 0 and self._dur(j) > elapsed + 1e-12:
            j -= 1
        return min(j, self._seg_k)


def replay(profile: Profile, requests: list[Request], max_num_seqs: int | None = None) -> float:
    """Run `requests` (sorted by arrival) through one engine with no proxy in front; sets their
    first_token and finish times and returns the time the last one finished."""
    eng = Engine(profile, max_num_seqs)
    i, n, last = 0, len(requests), 0.0
    while i < n or eng.busy:
        if i < n and requests[i].arrival <= eng.segment_end:
            now = requests[i].arrival
            while i < n and requests[i].arrival <= now:
                eng.submit(requests[i])
                i += 1
            eng.kick(now)
        else:
            now = eng.segment_end
            for r in eng.finish_segment():
                last = max(last, r.finish or 0.0)
            eng.kick(now)
    return last
