"""The iteration-level vLLM engine model (chirond.engine), checked against times worked out by hand
from the profile's step-time formula: a + (b + cpu)*B + c*C/1000 ms per step (B sequences in the
step, C context tokens of the decoders, cpu the per-sequence CPU time), plus for each prompt chunk of
c tokens at offset k: p*c + q*c*(k + c/2) (linear layers, attention to the earlier tokens)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from chirond.dispatch import BATCH_PRIORITY
from chirond.engine import Engine, replay
from chirond.model import ReqClass, Request
from chirond.profiles import Profile, load_profile

ROOT = Path(__file__).resolve().parents[2]
P8 = load_profile(ROOT / "profiles" / "llama-3.1-8b_a100-80gb_tp1.toml")

# The profile's constants in seconds (c: per context token, p: per prompt token, q: per pair).
A = (P8.a_ms + P8.cpu_ms_per_step) / 1000.0
B = (P8.b_ms_per_seq + P8.cpu_ms_per_seq) / 1000.0  # GPU and CPU time per sequence
C = P8.c_ms_per_1k_ctx / 1e6
PF = P8.prefill_ms_per_token / 1000.0
Q = P8.attn_ms_per_1m_pairs / 1e9


def req(i: int, input_tokens: int, output_tokens: int, arrival: float = 0.0) -> Request:
    return Request(i, "m", ReqClass.INTERACTIVE, arrival, input_tokens, output_tokens)


def work(chunk: int, offset: int = 0) -> float:
    """Prompt work of a chunk of `chunk` tokens whose first one sits at `offset`."""
    return PF * chunk + Q * chunk * (offset + chunk / 2)


def step(batch: int, ctx: int, prompt: int = 0, offset: int = 0, more: float = 0.0) -> float:
    """One engine step in seconds, by the profile's formula: one prompt chunk (plus `more` work of
    other chunks)."""
    return A + B * batch + C * ctx + work(prompt, offset) + more


def run_idle(eng: Engine) -> tuple[list[Request], int]:
    """Run segments until the engine is idle; returns the finished requests and the segment count."""
    done: list[Request] = []
    segments = 0
    while eng.busy:
        t = eng.segment_end
        done.extend(eng.finish_segment())
        segments += 1
        eng.kick(t)
    return done, segments


def one_segment(eng: Engine) -> float:
    """Finish the segment in flight and plan the next; returns the time it ended."""
    t = eng.segment_end
    eng.finish_segment()
    eng.kick(t)
    return t


# ---------------------------------------------------------------- a single request


def test_single_request_times_by_hand() -> None:
    r = req(0, 100, 10)
    last = replay(P8, [r])
    # Prefill step: one sequence, no decoders (context term 0), 100 prompt tokens from offset 0.
    first = step(1, 0, 100)
    assert r.first_token == pytest.approx(first, rel=1e-12)
    # 11.4 + (0.041 + 0.0425 CPU) + 0.070 * 100 + 2.62e-6 * 100 * 50 ms
    assert first == pytest.approx(0.0184966, rel=1e-12)
    # Then 9 decode steps, one sequence whose context grows 101, 102, ..., 109.
    decode = sum(step(1, 101 + j) for j in range(9))
    assert r.finish == pytest.approx(first + decode, rel=1e-12)
    assert r.finish == pytest.approx(0.0184966 + (9 * 11.4835 + 0.086 * 945 / 1000) / 1000, rel=1e-12)
    assert last == r.finish
    assert r.tpot == pytest.approx(decode / 9, rel=1e-12)


def test_single_token_output_finishes_on_its_prefill_step() -> None:
    r = req(0, 300, 1)
    last = replay(P8, [r])
    assert r.first_token == r.finish == last == pytest.approx(step(1, 0, 300), rel=1e-12)


def test_request_after_idle_gap_starts_at_its_arrival() -> None:
    a, b = req(0, 10, 2), req(1, 10, 2, arrival=100.0)
    replay(P8, [a, b])
    assert a.finish is not None and a.finish < 1.0
    assert b.first_token == pytest.approx(100.0 + step(1, 0, 10), rel=1e-12)
    assert b.first_token is not None
    assert b.finish == pytest.approx(b.first_token + step(1, 11), rel=1e-12)


# ---------------------------------------------------------------- chunked prefill


@pytest.mark.parametrize(("prompt", "steps"), [(2048, 1), (2049, 2), (4096, 2), (5000, 3)])
def test_chunked_prefill_takes_ceil_prompt_over_budget_steps(prompt: int, steps: int) -> None:
    assert P8.max_num_batched_tokens == 2048
    assert steps == math.ceil(prompt / P8.max_num_batched_tokens)
    r = req(0, prompt, 1)
    eng = Engine(P8)
    eng.submit(r)
    eng.kick(0.0)
    _, segments = run_idle(eng)
    assert segments == steps
    # Each chunk is its own step: `steps` times (a + b*1), plus every prompt token once, and the
    # chunks' attention adds up to the whole prompt's, q*n^2/2, however it is chunked.
    assert r.first_token == pytest.approx(steps * (A + B) + PF * prompt + Q * prompt**2 / 2, rel=1e-12)
    assert r.first_token == pytest.approx(steps * (A + B) + P8.prefill_s(prompt), rel=1e-12)
    assert eng.prompt_tokens == prompt


def first_token_s(prof: Profile, prompt: int) -> float:
    r = req(0, prompt, 1)
    replay(prof, [r])
    assert r.first_token is not None
    return r.first_token


def test_prompt_cost_grows_faster_than_its_length() -> None:
    """Attention: each prompt token attends to all the ones before it, so a 32k prompt costs more
    than four 8k prompts (linear work alone would make it exactly four: 16 chunks against 4)."""
    t8k, t32k = first_token_s(P8, 8192), first_token_s(P8, 32768)
    assert t32k > 4.5 * t8k
    assert t32k == pytest.approx(16 * (A + B) + P8.prefill_s(32768), rel=1e-12)
    assert Q * 32768**2 / 2 > 1.0  # over a second of the 32k prompt is attention


def test_a_chunk_costs_more_the_later_it_sits_in_its_prompt() -> None:
    # Two 2048-token chunks of one prompt: alike but for the offset, so the second costs q*2048*2048
    # more (each of its tokens attends to the 2048 tokens of the first chunk besides its own).
    eng = Engine(P8)
    eng.submit(req(0, 4096, 1))
    eng.kick(0.0)
    t1 = one_segment(eng)
    t2 = eng.segment_end
    assert t1 == pytest.approx(step(1, 0, 2048), rel=1e-12)
    assert (t2 - t1) - t1 == pytest.approx(Q * 2048 * 2048, rel=1e-9)
    assert Q * 2048 * 2048 > 0.01


def test_cpu_time_per_sequence_stretches_every_step() -> None:
    """The engine's CPU work (scheduling, inputs, sampling, outputs) grows with the batch and runs
    between GPU steps: 100 sequences decoding take (b + cpu) per sequence per step, not b alone."""
    assert P8.cpu_ms_per_seq > 0
    gpu_only = dataclasses.replace(P8, cpu_ms_per_seq=0.0, cpu_ms_per_step=0.0)
    ends = []
    for prof in (P8, gpu_only):
        eng = Engine(prof)
        for i in range(100):
            eng.submit(req(i, 10, 3))
        eng.kick(0.0)
        t1 = one_segment(eng)  # all 100 prompts in one step
        ends.append(eng.segment_end - t1)  # two decode steps of 100 sequences
    # context 11 then 12 tokens per sequence
    assert ends[0] == pytest.approx(2 * P8.step_s(100, 1150), rel=1e-12)
    assert ends[0] - ends[1] == pytest.approx(2 * 100 * P8.cpu_ms_per_seq / 1000, rel=1e-9)


def test_decoders_take_one_token_each_from_the_step_budget() -> None:
    eng = Engine(P8)
    a = req(0, 10, 100)
    eng.submit(a)
    eng.kick(0.0)
    t1 = eng.segment_end
    eng.finish_segment()  # a is now decoding with context 11
    b = req(1, 2048, 1, arrival=t1)
    eng.submit(b)
    eng.kick(t1)
    # Budget 2048 - 1 decoder: b's 2048-token prompt needs two steps (2047 + 1 tokens).
    s1 = step(2, 11, 2047)
    s2 = step(2, 12, 1, offset=2047)
    one_segment(eng)
    one_segment(eng)
    assert b.finish == pytest.approx(t1 + s1 + s2, rel=1e-12)
    assert b.first_token == b.finish


# ---------------------------------------------------------------- batch size and KV cache


def test_running_batch_never_exceeds_max_num_seqs() -> None:
    reqs = [req(i, 16, 40) for i in range(300)]
    eng = Engine(P8)
    for r in reqs:
        eng.submit(r)
    eng.kick(0.0)
    # vLLM V1 admits waiting requests only into the step's token budget: 2048 / 16 = 128 at first.
    assert eng.running == P8.max_num_batched_tokens // 16 == 128
    assert eng.waiting == 300 - 128
    seen_max = 0
    while eng.busy:
        seen_max = max(seen_max, eng.running)
        assert eng.running <= P8.max_num_seqs
        one_segment(eng)
    assert seen_max == 256
    assert all(r.finish is not None for r in reqs)
    assert len(eng) == 0


def test_max_num_seqs_override() -> None:
    reqs = [req(i, 16, 40) for i in range(20)]
    eng = Engine(P8, max_num_seqs=8)
    for r in reqs:
        eng.submit(r)
    eng.kick(0.0)
    assert (eng.running, eng.waiting) == (8, 12)
    while eng.busy:
        assert eng.running <= 8
        one_segment(eng)
    assert all(r.finish is not None for r in reqs)
    # With 8 slots, request 8 cannot start before one of the first 8 finishes.
    first_done = min(r.finish for r in reqs[:8] if r.finish is not None)
    assert reqs[8].first_token is not None and reqs[8].first_token > first_done


def tiny_kv(tokens: int) -> Profile:
    return dataclasses.replace(P8, kv_capacity_tokens=tokens)


def test_kv_exhaustion_preempts_by_recompute_and_everything_finishes() -> None:
    prof = tiny_kv(3000)
    rng = np.random.default_rng(3)
    reqs = [req(i, int(rng.integers(200, 400)), int(rng.integers(250, 400))) for i in range(6)]
    last = replay(prof, reqs)
    eng = Engine(prof)
    reqs2 = [req(r.id, r.input_tokens, r.output_tokens) for r in reqs]
    for r in reqs2:
        eng.submit(r)
    eng.kick(0.0)
    run_idle(eng)
    assert eng.num_preemptions > 0
    assert all(r.finish is not None and r.first_token is not None for r in reqs2)
    assert all(r.first_token <= r.finish for r in reqs2)  # type: ignore[operator]
    assert max(r.finish for r in reqs2) == last  # type: ignore[type-var]
    # Recompute keeps what was generated: every output token is produced exactly once.
    assert eng.generation_tokens == sum(r.output_tokens for r in reqs2)
    assert (eng.running, eng.waiting, len(eng)) == (0, 0, 0)
    assert eng.kv_used_tokens == 0


def test_preemption_trace_by_hand() -> None:
    """KV cache of 318 tokens (16-token blocks: 8 tokens lost per sequence). A (100 in, 60 out) and
    B (100 in, 100 out) prefill together, then decode 50 steps until the cache is full (2 x 151 +
    16 = 318). B, the newest, is preempted having generated 51 tokens: it re-prefills 151 tokens
    (A decoding beside it), which overflows the cache again (2 x 152 + 16 = 320): B is preempted a
    second time with 52 tokens, waits for A's last 8 steps, re-prefills 152 tokens and decodes its
    remaining 47 tokens alone."""
    prof = tiny_kv(318)
    a, b = req(0, 100, 60), req(1, 100, 100)
    eng = Engine(prof)
    eng.submit(a)
    eng.submit(b)
    eng.kick(0.0)
    run_idle(eng)

    t1 = step(2, 0, 100, more=work(100))  # two 100-token prompts, each from offset 0
    t = t1 + sum(step(2, 202 + 2 * j) for j in range(50))
    t += step(2, 151, 151)  # B's first re-prefill, A decoding (context 151)
    a_finish = t + sum(step(1, 152 + j) for j in range(8))
    b_finish = a_finish + step(1, 0, 152) + sum(step(1, 153 + j) for j in range(47))

    assert eng.num_preemptions == 2
    assert eng.prompt_tokens == 100 + 100 + 151 + 152
    assert eng.generation_tokens == 60 + 100
    assert a.first_token == b.first_token == pytest.approx(t1, rel=1e-12)  # first value kept
    assert a.finish == pytest.approx(a_finish, rel=1e-12)
    assert b.finish == pytest.approx(b_finish, rel=1e-12)


# ---------------------------------------------------------------- abort


def test_abort_while_decoding() -> None:
    a, b = req(0, 100, 1000), req(1, 100, 1000)
    eng = Engine(P8)
    eng.submit(a)
    eng.submit(b)
    eng.kick(0.0)
    t1 = eng.segment_end
    eng.finish_segment()  # both prefilled together, both decoding now
    assert eng.running == 2
    assert eng.abort(b) is True
    assert eng.abort(b) is False  # already gone
    eng.kick(t1)
    done, _ = run_idle(eng)
    assert done == [a]
    assert b.finish is None
    assert b.first_token == pytest.approx(step(2, 0, 100, more=work(100)), rel=1e-12)
    # The abort came before the next step was planned: A decodes alone from there.
    assert a.finish == pytest.approx(t1 + sum(step(1, 101 + j) for j in range(999)), rel=1e-9)
    assert (len(eng), eng.running, eng.kv_used_tokens) == (0, 0, 0)


def test_abort_while_waiting_never_starts() -> None:
    eng = Engine(P8, max_num_seqs=1)
    a, b = req(0, 50, 20), req(1, 50, 20)
    eng.submit(a)
    eng.submit(b)
    eng.kick(0.0)
    assert (eng.running, eng.waiting) == (1, 1)
    assert eng.abort(b)
    eng.kick(0.0)
    done, _ = run_idle(eng)
    assert done == [a]
    assert b.first_token is None and b.finish is None
    assert eng.prompt_tokens == 50


def test_abort_mid_segment_cuts_it_and_speeds_up_the_rest() -> None:
    a, b = req(0, 100, 1000), req(1, 100, 1000)
    solo = req(2, 100, 1000)
    replay(P8, [solo])
    eng = Engine(P8)
    eng.submit(a)
    eng.submit(b)
    eng.kick(0.0)
    t1 = one_segment(eng)
    old_end = eng.segment_end
    t_mid = (t1 + old_end) / 2
    eng.abort(b)
    assert eng.kick(t_mid) is True
    assert t_mid < eng.segment_end < old_end
    run_idle(eng)
    assert b.finish is None
    assert a.finish is not None and solo.finish is not None
    # Half of A's decoding was done beside B (slower steps), the rest alone.
    assert solo.finish < a.finish < old_end


# ---------------------------------------------------------------- kick


def test_kick_cuts_a_decode_segment_at_the_step_in_progress() -> None:
    a = req(0, 100, 1000)
    eng = Engine(P8)
    eng.submit(a)
    eng.kick(0.0)
    t1 = one_segment(eng)  # prefill done; one decode segment to a's finish is planned
    seg_end = eng.segment_end
    assert seg_end == pytest.approx(t1 + sum(step(1, 101 + j) for j in range(999)), rel=1e-9)
    assert eng.kick(t1 + 0.001) is False  # nothing new: the plan stands

    t_mid = t1 + (seg_end - t1) / 2
    # By hand: the first step boundary after t_mid.
    k, t = 0, t1
    while t <= t_mid:
        t += step(1, 101 + k)
        k += 1
    b = req(1, 50, 5, arrival=t_mid)
    eng.submit(b)
    assert eng.kick(t_mid) is True
    assert eng.segment_end == pytest.approx(t, rel=1e-9)
    assert t_mid < eng.segment_end <= t_mid + step(1, 101 + k)
    run_idle(eng)
    # B prefills at the cut, beside A (context 101 + k).
    assert b.first_token == pytest.approx(t + step(2, 101 + k, 50), rel=1e-9)
    assert b.first_token is not None and b.first_token < seg_end
    assert a.finish is not None and a.finish > seg_end  # B's steps slowed A down


def test_kick_does_not_cut_a_prefill_step() -> None:
    eng = Engine(P8)
    eng.submit(req(0, 1000, 5))
    eng.kick(0.0)
    end = eng.segment_end
    eng.submit(req(1, 10, 5, arrival=end / 2))
    assert eng.kick(end / 2) is False
    assert eng.segment_end == end


# ---------------------------------------------------------------- replay


def poisson_requests(seed: int, n: int = 300, rate: float = 10.0) -> list[Request]:
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate, n))
    ins = rng.integers(10, 2000, n)
    outs = rng.integers(1, 500, n)
    return [req(i, int(ins[i]), int(outs[i]), float(arrivals[i])) for i in range(n)]


def test_replay_is_deterministic() -> None:
    r1, r2 = poisson_requests(5), poisson_requests(5)
    l1, l2 = replay(P8, r1), replay(P8, r2)
    assert l1 == l2
    assert [(r.first_token, r.finish) for r in r1] == [(r.first_token, r.finish) for r in r2]


def test_replay_returns_last_finish_and_finishes_everything() -> None:
    reqs = poisson_requests(9)
    last = replay(P8, reqs)
    finishes = [r.finish for r in reqs]
    assert all(f is not None for f in finishes)
    assert last == max(f for f in finishes if f is not None)
    for r in reqs:
        assert r.first_token is not None and r.finish is not None
        assert r.arrival < r.first_token <= r.finish
        if r.output_tokens == 1:
            assert r.first_token == r.finish


# ---------------------------------------------------------------- engine flags


def test_max_num_batched_tokens_override() -> None:
    r = req(0, 2048, 1)
    eng = Engine(P8, max_num_batched_tokens=512)
    eng.submit(r)
    eng.kick(0.0)
    _, segments = run_idle(eng)
    assert segments == 4
    assert r.first_token == pytest.approx(4 * (A + B) + P8.prefill_s(2048), rel=1e-12)


def _batch(i: int, input_tokens: int, output_tokens: int) -> Request:
    return Request(i, "m", ReqClass.BATCH, 0.0, input_tokens, output_tokens, deadline=1e9, priority=BATCH_PRIORITY)


@pytest.mark.parametrize("priority", [False, True])
def test_priority_admits_interactive_first(priority: bool) -> None:
    eng = Engine(P8, max_num_seqs=1, priority=priority)
    b1, b2, i = _batch(0, 50, 5), _batch(1, 50, 5), req(2, 50, 5)
    for r in (b1, b2, i):
        eng.submit(r)
    eng.kick(0.0)
    run_idle(eng)
    order = sorted((b1, b2, i), key=lambda r: r.first_token or math.inf)
    assert order == ([i, b1, b2] if priority else [b1, b2, i])


@pytest.mark.parametrize("priority", [False, True])
def test_priority_preempts_batch_before_interactive(priority: bool) -> None:
    # A batch request decodes; an interactive one joins later; the KV cache (400 tokens) cannot hold
    # both. FCFS preempts the newest (the interactive one); priority preempts the batch one.
    prof = tiny_kv(400)
    a, b = _batch(0, 100, 200), req(1, 100, 200)
    eng = Engine(prof, priority=priority)
    eng.submit(a)
    eng.kick(0.0)
    t = eng.segment_end
    eng.finish_segment()
    eng.submit(b)
    eng.kick(t)
    run_idle(eng)
    assert eng.num_preemptions > 0
    assert a.finish is not None and b.finish is not None
    assert (b.finish < a.finish) is priority


def test_priority_admits_by_priority_then_arrival() -> None:
    # One running slot; three waiting. Under priority scheduling the lowest priority goes first,
    # ties by arrival; FCFS ignores the values.
    eng = Engine(P8, max_num_seqs=1, priority=True)
    first = req(0, 50, 5)
    late_low, early_high, late_high = req(1, 50, 5, 0.2), req(2, 50, 5, 0.1), req(3, 50, 5, 0.3)
    late_low.priority, early_high.priority, late_high.priority = 10, 20, 20
    eng.submit(first)
    eng.kick(0.0)
    for r in (late_high, early_high, late_low):
        eng.submit(r)
    run_idle(eng)
    order = sorted((late_low, early_high, late_high), key=lambda r: r.first_token or math.inf)
    assert order == [late_low, early_high, late_high]


def test_waiting_requests_get_only_the_budget_left_by_running_prompts() -> None:
    # vLLM V1: a long prompt already running takes the step's budget first; a short one that
    # arrives later waits for it, whatever its priority, because running requests come first.
    eng = Engine(P8, max_num_batched_tokens=512, priority=True)
    long, short = req(0, 2048, 5), req(1, 16, 5, 0.001)
    short.priority = -1
    eng.submit(long)
    eng.kick(0.0)
    eng.submit(short)
    run_idle(eng)
    assert long.first_token is not None and short.first_token is not None
    assert short.first_token >= long.first_token
