"""`chirond`: ours. Model-based where Chiron searches, planned where Chiron reacts.

Every instance is in the mixed pool: interactive requests first, batch work in the headroom,
preempted when an interactive request needs the slot. The rules, each named where it lives and
each with a unit test on a canonical snapshot (tests/unit/test_policies.py, test_dispatch.py):

Per request (dispatch rules and engine flags):
- SLO order: in chirond's queue, among interactive requests that can still meet their TTFT, the
  shortest prompt first (`Ordering.SLO`).
- Short first inside the engine: vLLM priority scheduling, with each interactive request's
  priority its arrival plus up to one TTFT SLO for long prompts (`short_first_tokens`,
  `dispatch.engine_priority`); batch work after all of them.
- Routing by prefill work: to the instance with the least prompt work outstanding
  (`route_by_prefill`).
- No wall of long batch prompts (`prompt_budget`): a long batch prompt goes to an instance only
  while the prompts there awaiting their first token prefill within a share of the TTFT SLO.
- The prefill chunk (`engine_args`): sized to the TPOT SLO, or vLLM's own when the mean prompt's
  prefill takes over `long_prompt_share` of the TTFT SLO.

Each tick, per model (`plan`):
1. Caps (`_cap`), computed, not searched: the largest batch whose predicted TPOT (the profile's
   step time, stretched by the prompt work the instance also does, and by fresh batch prompts
   only while batch work waits) stays under `tpot_margin` x SLO; it holds from the first tick.
   With no interactive traffic the cap is the throughput-optimal one (KV-bound). A few slots per
   instance stay reserved for interactive arrivals, so batch work is rarely preempted.
2. Interactive capacity (`_needed`): the work (prefill, and decoding at the cap's batch) of
   the recent arrival rate, at `interactive_util`, and enough to clear the largest prompt burst
   of the last `burst_memory_leads` (2) lead times, at most 30 minutes (`largest_burst`), within
   its window plus half the TTFT. Where the mean prompt's prefill is over `queue_prompt_share`
   of the TTFT SLO, instead the queue replay (`_queue_sized`): the last 30 minutes' arrivals (at
   most the newest `REPLAY_MAX_REQUESTS`) through c instances, the fewest past which one more
   would avoid fewer than `queue_gain_per_gpu_h` TTFT misses per GPU-hour.
3. Batch plan (`_needed`, EDF over the backlog): for each deadline, the work due by then (prompts
   + outputs at the measured mean length, at the mixed instances' throughput), plus the
   interactive work over the same span, must fit in instances x (time left - lead time) x
   `batch_efficiency`. The fewest instances meeting every deadline, in one step.
4. Backpressure (`_backpressure`): interactive requests waiting past half the TTFT SLO add
   instances (as many as the queue fills at current caps, none while one is starting), as the
   estimates lag a ramp; that level holds for `scale_down_hold_s` after the queueing was last seen.
5. Scale to zero by rent or buy (`keep_warm`): a model with `min_instances = 0` and nothing queued
   keeps an idle instance about as long as a cold start costs.
6. Scale (`_scale`): down with hysteresis (the plan must ask for fewer for `scale_down_hold_s`),
   one instance a tick, never on stale data; instances whose job time limit is closer than the
   lead time are replaced ahead of time and then drained.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar

from chirond.model import (
    Action,
    Decision,
    DispatchRules,
    Drain,
    EngineArgs,
    InstanceState,
    Launch,
    ModelView,
    Ordering,
    Pool,
    PromptBudget,
    Routing,
    SetBatchCap,
    Slo,
    Snapshot,
)
from chirond.policy.base import Policy, alive, any_stale, hand_over, pick_to_drain
from chirond.profiles import Profile


@dataclass(frozen=True)
class ChirondState:
    low_since: dict[str, float]  # model -> since when the plan asks for fewer instances
    # model -> (when, instances): the last time queueing asked for more instances than the estimates
    pressure: dict[str, tuple[float, int]] = field(default_factory=dict)


class ChirondPolicy(Policy):
    name = "chirond"
    rules = DispatchRules(routing=Routing.POOLS, ordering=Ordering.SLO, preempt_batch=True)
    initial_pool = Pool.MIXED
    defaults: ClassVar[dict[str, float]] = {
        "tpot_margin": 0.8,
        "interactive_util": 0.7,
        "burst_ttft_share": 0.5,
        "burst_memory_leads": 2.0,
        "batch_efficiency": 0.85,
        "deadline_margin_s": 300.0,
        "scale_down_hold_s": 60.0,
        "reserve_slots": 4.0,
        "idle_rate_per_s": 0.01,
        "queue_wait_share": 0.5,
        "short_first_tokens": 4096.0,
        "route_by_prefill": 1.0,
        "long_prompt_share": 0.25,
        "batch_prefill_share": 0.25,
        "long_batch_prompt_share": 0.1,
        "queue_gain_per_gpu_h": 15.0,
        "queue_prompt_share": 0.15,
    }

    def __init__(self, profiles: Mapping[str, Profile], params: Mapping[str, object] | None = None) -> None:
        super().__init__(profiles, params)
        self.rules = replace(self.rules, short_first_tokens=int(self.params["short_first_tokens"]),
                             route_by_prefill=self.params["route_by_prefill"] > 0)

    def engine_args(self, model: str, slo: Slo, mean_input: float = 0.0) -> EngineArgs:
        """Priority scheduling (short interactive prompts first inside the engine), and a prefill
        chunk (--max-num-batched-tokens) small enough that a step carrying a full chunk beside a
        typical batch still meets the TPOT SLO: short answers otherwise eat whole 2048-token
        chunks of others' prompts between their tokens (decoding shares each step's fixed cost,
        so little throughput is lost). Except with long prompts, when prefilling the observed
        mean prompt takes over `long_prompt_share` of the TTFT SLO: then TTFT binds, and a small
        chunk would add a step overhead per chunk to every prompt, so the chunk stays vLLM's."""
        prof = self.profiles[model]
        typical = prof.step_s(64, 64 * 1024)
        chunk = int((slo.tpot_s - typical) / prof.prefill_s(1)) // 256 * 256
        if mean_input > 0 and prof.prefill_s(mean_input) > self.params["long_prompt_share"] * slo.ttft_s:
            chunk = prof.max_num_batched_tokens
        return EngineArgs(prof.max_num_seqs, max(256, min(prof.max_num_batched_tokens, chunk)), priority=True)

    def prompt_budget(self, model: str, slo: Slo) -> PromptBudget:
        """Long batch prompts (prefill over `long_batch_prompt_share` of the TTFT SLO) are sent to
        an instance only while the prompt tokens there awaiting their first token are fewer than
        one prompt that prefills in `batch_prefill_share` of it (several shorter prompts prefill
        somewhat faster: the limit errs on the safe side). vLLM finishes a running prompt before
        it starts a waiting one, whatever the priorities, so a wall of long batch prompts admitted
        at once (a backlog at start, a new instance) would hold every interactive prompt behind
        it. Short ones are not limited themselves (measured, limiting them costs the interactive
        class: docs/policies.md), but EDF order is kept: a short one due after a held long one
        waits with it."""
        prof = self.profiles[model]
        return PromptBudget(_tokens_within(prof, self.params["long_batch_prompt_share"] * slo.ttft_s),
                            _tokens_within(prof, self.params["batch_prefill_share"] * slo.ttft_s))

    def plan(self, snap: Snapshot, state: object) -> Decision:
        st = state if isinstance(state, ChirondState) else ChirondState({})
        low_since = dict(st.low_since)
        pressure = dict(st.pressure)
        actions: list[Action] = []
        reasons: list[str] = []
        for m in snap.models:
            prof = self.profiles[m.name]
            # Size first at the throughput of the current caps' estimate, then set caps for the
            # instance count the plan wants (the interactive prompt load spreads over all of them).
            n_now = max(1, len(alive(m)))
            cap_now, tps = self._cap(m, prof, n_now)
            need, why = self._needed(m, prof, cap_now, tps, snap.now)
            need, why = self._backpressure(m, need, why, snap.now, pressure)
            cap, _ = self._cap(m, prof, max(n_now, need))
            batch_cap = max(0, cap - int(self.params["reserve_slots"]))
            for i in m.instances:
                if i.state is InstanceState.READY and (cap, batch_cap) != (i.cap, i.batch_cap):
                    actions.append(SetBatchCap(i.id, cap, batch_cap))
            acts, note = self._scale(m, need, snap.now, low_since)
            actions.extend(acts)
            if acts or note:
                reasons.append(f"{m.name}: need {need} ({why}){note}")
        return Decision(tuple(actions), "; ".join(reasons) or "hold", ChirondState(low_since, pressure))

    def _backpressure(
        self, m: ModelView, need: int, why: str, now: float, pressure: dict[str, tuple[float, int]]
    ) -> tuple[int, str]:
        """Interactive requests waiting in chirond's queue past a share of the TTFT SLO mean the
        estimates lag the load (a ramp, a new mix): as many instances more as the queue fills at
        the current caps (at least one), unless one is on its way. The level holds for
        `scale_down_hold_s` after the queueing was last seen, so an instance is not drained as
        soon as it has emptied the queue."""
        serving = alive(m)
        if (
            m.interactive_queue
            and m.oldest_interactive_wait_s > self.params["queue_wait_share"] * m.slo.ttft_s
            and all(i.state is InstanceState.READY for i in serving)
        ):
            caps = [i.cap for i in serving if i.cap > 0]
            extra = max(1, math.ceil(m.interactive_queue / (sum(caps) / len(caps)))) if caps else 1
            pressure[m.name] = (now, min(m.max_instances, max(need, len(serving) + extra)))
            why += f", queue {m.interactive_queue} waiting {m.oldest_interactive_wait_s:.1f} s"
        held = pressure.get(m.name)
        if held is not None and now - held[0] > self.params["scale_down_hold_s"]:
            del pressure[m.name]
        elif held is not None and held[1] > need:
            return held[1], why + f", held at {held[1]} after queueing"
        return need, why

    # ---------------------------------------------------------------- local: batch caps

    def _ctx(self, m: ModelView) -> float:
        inp = m.load.mean_input or 512.0
        out = m.load.mean_output or m.batch_mean_output or 256.0
        return inp + out / 2

    def _cap(self, m: ModelView, prof: Profile, n: int) -> tuple[int, float]:
        """(cap, output tokens/s of one instance at that cap) for a mixed instance when `n`
        instances share the interactive load."""
        lam = max(m.load.rate_1m, m.load.rate_10m)
        ctx = self._ctx(m)
        kv_max = prof.max_batch_for_kv(ctx)
        # Batch requests finishing make room for fresh batch prompts, but only while batch work
        # waits: with none queued, slots free up for interactive requests, already counted.
        churn = bool(m.backlog) or any(i.inflight_batch for i in m.instances)
        b_in = _mean_batch_input(m) if churn else 0.0
        b_out = m.batch_mean_output or 256.0
        if lam < self.params["idle_rate_per_s"]:
            tps = prof.decode_tokens_per_s(kv_max, ctx)
            return kv_max, tps / (1 + prof.prefill_s(b_in) * tps / b_out)
        target = m.slo.tpot_s * self.params["tpot_margin"]
        # Beyond half an instance of prompt work the instance is overloaded: scaling fixes that,
        # a tiny cap would only throw away throughput.
        inter_prompt = min(m.load.prompt_tokens_1m / n, 0.5 / prof.prefill_s(1))
        best = 8
        for b in range(8, kv_max + 1, 8):
            # batch prompts arrive as batch requests finish: b / (out * tpot) per second
            tpot = prof.tpot_s(b, ctx, inter_prompt)
            for _ in range(3):
                prompt_rate = inter_prompt + b / (b_out * tpot) * b_in
                tpot = prof.tpot_s(b, ctx, prompt_rate)
            if tpot > target:
                break
            best = b
        tps = best / max(prof.tpot_s(best, ctx, inter_prompt), 1e-9)
        return best, tps

    # ---------------------------------------------------------------- global: instance count

    def _needed(self, m: ModelView, prof: Profile, cap: int, mixed_tps: float, now: float) -> tuple[int, str]:
        p = self.params
        ld = m.load
        lam = max(ld.rate_1m, ld.rate_10m)
        out_i = ld.mean_output or 128.0
        # Interactive work in instance-seconds per second: the prompt, and each output token at its
        # share of a decode step at the cap (an instance decodes a whole batch per step: counted at
        # batch 32, an 8B token cost 2.4 times as much at a cap of 256, and on `day` the 8B ran
        # 2-5 instances where the fixed deployment as good has 2).
        ctx = self._ctx(m)
        work = lam * (prof.prefill_s(ld.mean_input) + out_i * prof.step_s(cap, cap * ctx) / cap)
        n_load = work / p["interactive_util"]
        # A burst is remembered for `burst_memory_leads` lead times: instances launched for it serve
        # one lead time later, then stay about as long as buying them again would take (rent or buy,
        # as `keep_warm`). At least one burst window, so a tick sees every burst whatever the lead.
        memory_s = max(p["burst_memory_leads"] * m.lead_time_s, BURST_WINDOW_S)
        b_tokens, b_requests = largest_burst(ld.recent, memory_s)
        burst_work = prof.prefill_s(b_tokens, b_tokens / max(b_requests, 1))
        n_burst = burst_work / (BURST_WINDOW_S + p["burst_ttft_share"] * m.slo.ttft_s)
        n_inter = max(n_load, n_burst)
        why = f"interactive {n_load:.1f} load, {n_burst:.1f} burst"
        if p["queue_gain_per_gpu_h"] > 0 and prof.prefill_s(ld.mean_input) > p["queue_prompt_share"] * m.slo.ttft_s:
            # The replay's servers hold each request for its decode share at batch 32 (at the cap's
            # rate, long-prompt's frontier ratio goes 0.99 / 0.98 -> 1.01 / 1.03: measured).
            per_tok = prof.step_s(32, 32 * ctx) / 32
            n_queue = self._queue_sized(m, prof, out_i * per_tok)
            n_inter = n_queue
            why = f"interactive {n_queue} queue ({n_load:.1f} load)"

        # EDF over the batch backlog.
        n_batch = 0.0
        if m.backlog:
            out_b = m.batch_mean_output or 256.0
            per_req = out_b / max(mixed_tps, 1e-9)  # instance-seconds per batch request
            # in-flight batch requests are about half done
            cum = sum(i.inflight_batch for i in m.instances) * per_req * 0.5
            for g in m.backlog:
                cum += g.requests * per_req + prof.prefill_s(g.input_tokens, g.input_tokens / max(g.requests, 1))
                span = g.deadline - now - m.lead_time_s - p["deadline_margin_s"]
                if span <= 0:
                    n_batch = max(n_batch, float(m.max_instances))
                    continue
                total = (cum + work * span) / (span * p["batch_efficiency"])
                n_batch = max(n_batch, total)
            why += f", batch plan {n_batch:.1f}"
        need = math.ceil(max(n_inter, n_batch) - 1e-6)
        if m.min_instances == 0 and not m.backlog and not m.interactive_queue:
            if keep_warm(m):
                need = max(need, 1)
            else:
                need, why = 0, why + f", idle {m.load.idle_s:.0f} s"
        return max(m.min_instances, min(m.max_instances, need)), why

    def _queue_sized(self, m: ModelView, prof: Profile, decode_s: float) -> int:
        """Where one prompt's prefill is a large share of the TTFT SLO, the wait behind one or two
        prompts breaks it, and a utilisation target or the largest burst says little: replay the
        recent arrivals (by second, `LoadStats.recent`) through c first-come-first-served
        instances, each request holding one for its prefill (stretched by the decode steps it
        shares) and its decode share, and count the requests whose wait plus prefill exceeds the
        TTFT SLO. The fewest instances past which one more would avoid fewer than
        `queue_gain_per_gpu_h` misses per GPU-hour."""
        ld = m.load
        if not ld.recent:
            return 0
        chunk = self.engine_args(m.name, m.slo, ld.mean_input).max_num_batched_tokens
        ready = [i for i in m.instances if i.state is InstanceState.READY]
        batch = max(1.0, sum(i.running for i in ready) / max(1, len(ready)))
        stretch = 1.0 + prof.step_s(batch, batch * self._ctx(m)) / prof.prefill_s(chunk)
        arrivals, span = _replayed(ld.recent, ld.recent_span_s, lambda k, tok: prof.prefill_s(tok / k) * stretch)
        per_gpu_h = 3600.0 / span / m.gpus_per_instance
        # Below the instances that keep up with the replayed work the queue only grows, c and c + 1
        # both miss nearly everything, and one more instance looks worthless: start at that count
        # once the replay covers QUEUE_FLOOR_SPAN_S or REPLAY_MAX_REQUESTS (less is a burst, which the
        # replay judges itself).
        c = 1
        if span >= QUEUE_FLOOR_SPAN_S or span < ld.recent_span_s:
            work = sum(prefill for _, prefill in arrivals) + len(arrivals) * decode_s
            c = max(1, min(m.max_instances, math.ceil(work / span - 1e-9)))
        misses = _replay_misses(arrivals, c, m.slo.ttft_s, decode_s)
        while c < m.max_instances and misses > 0:
            more = _replay_misses(arrivals, c + 1, m.slo.ttft_s, decode_s)
            if (misses - more) * per_gpu_h < self.params["queue_gain_per_gpu_h"]:
                break
            c, misses = c + 1, more
        return c

    def _scale(self, m: ModelView, need: int, now: float, low_since: dict[str, float]) -> tuple[list[Action], str]:
        drains, kept, expiring = hand_over(m, need, now)
        have = len(kept)
        out: list[Action] = list(drains)
        if have < need:
            low_since.pop(m.name, None)
            args = self.engine_args(m.name, m.slo, m.load.mean_input)
            out.append(Launch(m.name, Pool.MIXED, need - have, replaces=expiring, args=args))
            return out, ""
        if have > need and not any_stale(m):
            since = low_since.setdefault(m.name, now)
            if now - since >= self.params["scale_down_hold_s"]:
                victim = pick_to_drain(kept)
                if victim is not None:
                    out.append(Drain(victim.id))
                    low_since[m.name] = now
                    return out, f", drain {victim.id}"
            return out, ""
        low_since.pop(m.name, None)
        return out, ""


def keep_warm(m: ModelView) -> bool:
    """Scale to zero by rent or buy: an idle instance is kept for the model's `idle_timeout_s`,
    by default about as long as a cold start would cost (the model's lead time, queue wait
    included: the break-even of ski rental), or longer only while the arrival rate says the next
    request comes sooner than a cold start."""
    timeout = m.lead_time_s if m.idle_timeout_s is None else m.idle_timeout_s
    if m.load.idle_s <= timeout:
        return True
    rate = m.load.rate_10m
    return rate > 0 and 1.0 / rate < m.lead_time_s


BURST_WINDOW_S = 10.0  # a burst: the prompt tokens arriving within this many seconds


def largest_burst(recent: tuple[tuple[float, float, float], ...], within_s: float,
                  window_s: float = BURST_WINDOW_S) -> tuple[float, float]:
    """(prompt tokens, requests) of the `window_s` seconds with the most prompt tokens among the
    arrivals of the last `within_s` seconds (`LoadStats.recent`: (age, requests, tokens), oldest
    first, at most the arrival window's 30-minute history); (0, 0) if none."""
    secs = [r for r in recent if r[0] < within_s]
    best = (0.0, 0.0)
    tokens = requests = 0.0
    j = 0
    for age, k, tok in secs:  # the window's oldest second, then every younger one within window_s
        while j < len(secs) and secs[j][0] > age - window_s:
            requests += secs[j][1]
            tokens += secs[j][2]
            j += 1
        if tokens > best[0]:
            best = (tokens, requests)
        requests, tokens = requests - k, tokens - tok
    return best


# The most requests one replay takes (the newest whole seconds): a replay is a Python loop, run up
# to `max_instances` times a tick; 10,000 is 30 minutes at 5.5 requests a second, and keeps a tick
# of a busier model that crosses `queue_prompt_share` near 100 ms, not seconds.
REPLAY_MAX_REQUESTS = 10_000
QUEUE_FLOOR_SPAN_S = 600.0


def _replayed(
    recent: tuple[tuple[float, float, float], ...], span_s: float, prefill: Callable[[float, float], float]
) -> tuple[list[tuple[float, float]], float]:
    """The replay's requests (arrival relative to now, prefill seconds), oldest first, from the
    newest seconds of `recent` holding at most `REPLAY_MAX_REQUESTS` (at least the newest second),
    and the seconds they span: `span_s`, or back to the newest second left out."""
    kept, first = 0, len(recent)
    while first > 0 and (first == len(recent) or kept + round(recent[first - 1][1]) <= REPLAY_MAX_REQUESTS):
        first -= 1
        kept += round(recent[first][1])
    if first > 0:
        span_s = max(1.0, min(span_s, recent[first - 1][0]))
    arrivals: list[tuple[float, float]] = []
    for age, k, tok in recent[first:]:
        arrivals += [(-age, prefill(k, tok))] * round(k)
    return arrivals, span_s


def _replay_misses(arrivals: list[tuple[float, float]], c: int, ttft_s: float, decode_s: float) -> int:
    """Requests (arrival, prefill seconds), in order, through `c` first-come-first-served
    servers, each held for the prefill and `decode_s`: how many wait + prefill past `ttft_s`."""
    free = [-math.inf] * c
    missed = 0
    for t, prefill in arrivals:
        start = max(t, free[0])
        missed += start - t + prefill > ttft_s
        heapq.heapreplace(free, start + prefill + decode_s)
    return missed


def _tokens_within(prof: Profile, seconds: float) -> int:
    """The longest prompt that prefills within `seconds` (prefill time grows with length)."""
    lo, hi = 1, 1 << 20
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if prof.prefill_s(mid) <= seconds else (lo, mid - 1)
    return lo


def _mean_batch_input(m: ModelView) -> float:
    n = sum(g.requests for g in m.backlog)
    if n == 0:
        return m.load.mean_input or 512.0
    return sum(g.input_tokens for g in m.backlog) / n
