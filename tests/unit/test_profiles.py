"""Profiles: loading and validation, and the engine model against end-to-end vLLM measurements.

The anchor test reproduces each measured A100-80GB SXM workload in tests/data/vllm_a100_e2e_anchors.csv
with `chirond.engine.replay` and compares the metric with the measurement. Tolerances, per metric
(relative to the measured value); they are stated here and nowhere else:

    metric             tolerance   why this wide
    median_tpot        +-15 %      decode fits carry up to ~12 % error
    output_throughput  +-15 %      saturation throughput also depends on scheduling details
    mean_ttft          +-20 %      TTFT of a burst is one prefill step: small absolute numbers, and
    median_ttft        +-20 %      the client-measured figure adds API-server time the model leaves out

Rows on other hardware (A100 PCIe, A100-40GB) are skipped: the profiles are for A100-80GB SXM.
The one anchor the model misses is in KNOWN_MISSES with its numbers (a strict xfail: it fails the
moment the model starts meeting it, so the entry cannot go stale).
"""

from __future__ import annotations

import csv
import re
import statistics
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from chirond.engine import replay
from chirond.model import ReqClass, Request
from chirond.profiles import Profile, ProfileError, load_profile

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "profiles"
ANCHORS = ROOT / "tests" / "data" / "vllm_a100_e2e_anchors.csv"
SAMPLE = ROOT / "chirond" / "data" / "sharegpt_vllm_bench_sample320_llama3.csv"
# The same prompts produced fewer tokens on 70B TP4 (55,641 against 65,378): that run's own lengths.
SAMPLE_OUT_70B_TP4 = ROOT / "tests" / "data" / "vllm_bench_sample320_outputs_llama3_70b_tp4.csv"

TOLERANCE: dict[str, float] = {
    "median_tpot": 0.15,
    "output_throughput": 0.15,
    "mean_ttft": 0.20,
    "median_ttft": 0.20,
}
# Anchors the model misses, by test id, with why (measured against the model, in numbers).
KNOWN_MISSES: dict[str, str] = {
    "A100-80GB-SXM-Meta-Llama-3-8B-Instruct-tp1-ShareGPT-10-prompts-burst-1369-prompt-tokens-"
    "all-prompts-at-t-0-mean-ttft": (
        "model 108.6 ms vs measured 139.2 ms (-22 %): the model's one 1369-token prefill step is "
        "11.4 ms of weights + 96 ms of prompt work, which derived_prefill_a100.csv confirms (about "
        "100 ms for 1369 tokens); the other 31 ms are outside the engine (HTTP, tokenising, "
        "vLLM 0.6's multi-step output path). The 70B rows show the same gap (-18 %, -19 %), inside +-20 %"
    ),
}
UNITS = {"median_tpot": "ms", "output_throughput": "tok/s", "mean_ttft": "ms", "median_ttft": "ms"}
POISSON_SEED = 0
OFFLINE_SEED = 0
SAMPLE_SEED = 1

PROFILE_FILES = sorted(PROFILES.glob("*.toml"))
P8_FILE = PROFILES / "llama-3.1-8b_a100-80gb_tp1.toml"

# ---------------------------------------------------------------- loading


def test_three_profiles_present() -> None:
    assert [p.name for p in PROFILE_FILES] == [
        "llama-3.1-70b_a100-80gb_tp4.toml",
        "llama-3.1-70b_a100-80gb_tp8.toml",
        "llama-3.1-8b_a100-80gb_tp1.toml",
    ]


@pytest.mark.parametrize("path", PROFILE_FILES, ids=[p.stem for p in PROFILE_FILES])
def test_profile_loads_and_every_section_has_provenance(path: Path) -> None:
    prof = load_profile(path)
    assert prof.name == path.stem
    assert prof.gpu == "A100-80GB-SXM"
    assert prof.gpus == prof.tensor_parallel
    assert prof.block_tokens == 16
    assert prof.kv_blocks == prof.kv_capacity_tokens // 16
    for v in (prof.a_ms, prof.b_ms_per_seq, prof.c_ms_per_1k_ctx, prof.prefill_ms_per_token):
        assert v > 0
    doc = tomllib.loads(path.read_text())
    for section, table in doc.items():
        if section == "profile":
            continue
        assert isinstance(table.get("provenance"), str), section
        assert len(table["provenance"].strip()) > 20, section


def test_8b_profile_values() -> None:
    p = load_profile(P8_FILE)
    assert (p.model, p.tensor_parallel, p.gpus) == ("meta-llama/Llama-3.1-8B-Instruct", 1, 1)
    assert (p.a_ms, p.b_ms_per_seq, p.c_ms_per_1k_ctx, p.prefill_ms_per_token) == (11.4, 0.041, 0.086, 0.070)
    assert (p.attn_ms_per_1m_pairs, p.cpu_ms_per_step, p.cpu_ms_per_seq) == (2.62, 0.0, 0.0425)
    assert (p.kv_capacity_tokens, p.max_num_seqs, p.max_num_batched_tokens) == (437000, 256, 2048)
    assert p.cold_start_s == pytest.approx(16.1 / 2.0 + 40.0)
    # step_s: a + (b + cpu per seq)*B + c*C/1000 ms
    assert p.step_s(10, 5000) == pytest.approx((11.4 + 0.835 + 0.43) / 1000)
    # prefill_s: p*n + q*n^2/2 for one prompt; p + q*len/2 per token for many prompts of len
    assert p.prefill_s(1000) == pytest.approx((70.0 + 2.62 * 0.5) / 1000)
    assert p.prefill_s(32768) == pytest.approx((0.070 * 32768 + 2.62e-6 * 32768**2 / 2) / 1000)
    assert p.prefill_s(10_000, prompt_len=1000) == pytest.approx(10 * p.prefill_s(1000))
    assert p.prefill_s(10_000, prompt_len=0) == pytest.approx(0.7)
    assert p.max_batch_for_kv(10_000) == int(437000 / 10_008)
    assert p.max_batch_for_kv(10) == 256  # capped by max_num_seqs
    assert p.tpot_s(8, 100, prompt_tokens_per_s=1 / 0.000070) == float("inf")
    assert p.tpot_s(8, 100, 1000, prompt_len=4000) > p.tpot_s(8, 100, 1000)


def test_profile_without_the_newer_keys_loads_with_them_zero(tmp_path: Path) -> None:
    """Profiles written before the attention and CPU terms keep loading, with the old model."""
    old = re.sub(r"\[cpu\][^\[]*", "", BASE_TEXT)
    old = re.sub(r"attn_ms_per_1m_pairs = [^\n]*\n", "", old)
    path = tmp_path / "old.toml"
    path.write_text(old)
    p = load_profile(path)
    assert (p.attn_ms_per_1m_pairs, p.cpu_ms_per_step, p.cpu_ms_per_seq) == (0.0, 0.0, 0.0)
    assert p.prefill_s(1000) == pytest.approx(0.070)
    assert p.step_s(10, 5000) == pytest.approx((11.4 + 0.41 + 0.43) / 1000)


def test_tp_profiles_get_faster_with_more_gpus() -> None:
    tp4 = load_profile(PROFILES / "llama-3.1-70b_a100-80gb_tp4.toml")
    tp8 = load_profile(PROFILES / "llama-3.1-70b_a100-80gb_tp8.toml")
    assert (tp4.gpus, tp8.gpus) == (4, 8)
    assert tp8.step_s(64, 64 * 1000) < tp4.step_s(64, 64 * 1000)
    assert tp8.kv_capacity_tokens > tp4.kv_capacity_tokens


BASE_TEXT = P8_FILE.read_text()


def _edit(old: str, new: str) -> str:
    assert BASE_TEXT.count(old) == 1, old
    return BASE_TEXT.replace(old, new)


BAD_PROFILES: list[tuple[str, str, str]] = [
    # (id, text, what the message must name)
    ("missing-key", _edit("a_ms = 11.4\n", ""), "decode.a_ms"),
    ("negative", _edit("a_ms = 11.4", "a_ms = -11.4"), "decode.a_ms"),
    ("zero", _edit("capacity_tokens = 437000", "capacity_tokens = 0"), "kv.capacity_tokens"),
    ("string-number", _edit("max_num_seqs = 256", 'max_num_seqs = "256"'), "engine.max_num_seqs"),
    ("bool-number", _edit("size_gb = 16.1", "size_gb = true"), "weights.size_gb"),
    ("unknown-key", _edit("a_ms = 11.4\n", "a_ms = 11.4\nd_ms = 1.0\n"), "decode.d_ms"),
    ("unknown-section", BASE_TEXT + "\n[extra]\nx = 1\n", "[extra]"),
    ("missing-section", _edit("[weights]\nsize_gb = 16.1\n", "[weightz]\nsize_gb = 16.1\n"), "weightz"),
    ("no-provenance", re.sub(r"(\[kv\][^\[]*?)provenance = [^\n]*\n", r"\1", BASE_TEXT), "kv.provenance"),
    ("empty-model", _edit('model = "meta-llama/Llama-3.1-8B-Instruct"', 'model = ""'), "profile.model"),
    ("bad-toml", _edit("a_ms = 11.4", "a_ms = "), "TOML"),
    ("negative-attention", _edit("attn_ms_per_1m_pairs = 2.62", "attn_ms_per_1m_pairs = -1"),
     "prefill.attn_ms_per_1m_pairs"),
    ("cpu-unknown-key", _edit("ms_per_seq = 0.0425\n", "ms_per_seq = 0.0425\nms_per_token = 1\n"), "cpu.ms_per_token"),
    ("cpu-string", _edit("ms_per_step = 0.0", 'ms_per_step = "0"'), "cpu.ms_per_step"),
    ("cpu-no-provenance", re.sub(r"(\[cpu\][^\[]*?)provenance = [^\n]*\n", r"\1", BASE_TEXT), "cpu.provenance"),
]


@pytest.mark.parametrize(("text", "names"), [b[1:] for b in BAD_PROFILES], ids=[b[0] for b in BAD_PROFILES])
def test_bad_profile_raises_naming_file_and_key(tmp_path: Path, text: str, names: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ProfileError) as exc:
        load_profile(path)
    msg = str(exc.value)
    assert str(path) in msg
    assert names in msg


def test_missing_profile_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="not found"):
        load_profile(tmp_path / "nope.toml")


def test_profile_error_is_a_value_error() -> None:
    assert issubclass(ProfileError, ValueError)


# ---------------------------------------------------------------- anchors


def _sample() -> tuple[list[int], list[int]]:
    ins: list[int] = []
    outs: list[int] = []
    with SAMPLE.open() as f:
        for row in csv.DictReader(f):
            ins.append(int(row["input_len"]))
            outs.append(max(1, int(row["output_len_generated"])))  # 0 generated: still one step
    return ins, outs


SAMPLE_IN, SAMPLE_OUT = _sample()


def _outputs_70b_tp4() -> list[int]:
    with SAMPLE_OUT_70B_TP4.open() as f:
        rows = csv.DictReader(line for line in f if not line.startswith("#"))
        return [max(1, int(row["output_len_generated"])) for row in rows]


def test_70b_outputs_are_the_runs_total() -> None:
    raw = [int(line.split(",")[1]) for line in SAMPLE_OUT_70B_TP4.read_text().splitlines()[4:]]
    assert (len(raw), sum(raw)) == (320, 55641)  # total_output_tokens of that run


@dataclass(frozen=True)
class Anchor:
    source: str
    engine: str
    gpu: str
    model: str
    tp: int
    workload: str
    load: str
    metric: str
    value: float
    unit: str


def _profile_for(a: Anchor) -> Path | None:
    if "8B" in a.model and a.tp == 1:
        return PROFILES / "llama-3.1-8b_a100-80gb_tp1.toml"
    if "70B" in a.model and a.tp in (4, 8):
        return PROFILES / f"llama-3.1-70b_a100-80gb_tp{a.tp}.toml"
    return None


def _hardware_skip(a: Anchor) -> str | None:
    if "PCIe" in a.gpu:
        return f"{a.gpu}: PCIe interconnect, not the SXM/NVLink hardware the profiles model"
    if "40GB" in a.gpu:
        return f"{a.gpu}: 40 GB variant has 1.56 TB/s (vs 2.04) and less KV memory; no profile"
    if "A100-80GB" not in a.gpu:
        return f"{a.gpu}: no profile for this hardware"
    return None


def _skip_reason(a: Anchor) -> str | None:
    if hw := _hardware_skip(a):
        return hw
    if _profile_for(a) is None:
        return f"{a.model} TP{a.tp}: no profile"
    if a.metric.endswith("_ttft") and re.search(r"multi-step|num-scheduler-steps", a.engine):
        # Multi-step scheduling (vLLM 0.6.0 --num-scheduler-steps 10) runs 10 decode steps per
        # scheduler pass, so a new prompt waits for the pass in flight and its first token is
        # streamed with the chunk: TTFT measures the batching, not the prefill the engine model
        # (single-step vLLM V1) predicts.
        return f"TTFT under multi-step scheduling ({a.engine}) is not comparable"
    return None


def _anchors() -> list[object]:
    params: list[object] = []
    with ANCHORS.open() as f:
        for row in csv.DictReader(f):
            a = Anchor(
                source=row["source"],
                engine=row["engine"],
                gpu=row["gpu"],
                model=row["model"],
                tp=int(row["tp"]),
                workload=row["workload"],
                load=row["load"],
                metric=row["metric"],
                value=float(row["value"]),
                unit=row["unit"],
            )
            reason = _skip_reason(a)
            if a.metric not in TOLERANCE and _hardware_skip(a) is None:
                continue  # a metric this test does not reproduce (per-step ITL chunks)
            ident = re.sub(r"[^A-Za-z0-9.]+", "-", f"{a.model}-tp{a.tp}-{a.workload}-{a.load}-{a.metric}")
            ident = f"{a.gpu}-{ident.strip('-')}"
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            if ident in KNOWN_MISSES:
                marks.append(pytest.mark.xfail(reason=KNOWN_MISSES[ident], strict=True))
            params.append(pytest.param(a, id=ident, marks=marks))
    return params


ANCHOR_PARAMS = _anchors()


def _requests(a: Anchor) -> list[Request]:
    """The anchor's workload: lengths from the 320-prompt ShareGPT sample vLLM's benchmark used."""

    outs = _outputs_70b_tp4() if ("70B" in a.model and a.tp == 4 and "320" in a.workload) else SAMPLE_OUT

    def make(arrivals: list[float], idx: list[int]) -> list[Request]:
        return [
            Request(i, "m", ReqClass.INTERACTIVE, t, SAMPLE_IN[j], outs[j])
            for i, (t, j) in enumerate(zip(arrivals, idx, strict=True))
        ]

    if m := re.match(r"ShareGPT (\d+) prompts burst", a.workload):
        n = int(m.group(1))
        assert n <= len(SAMPLE_IN)
        return make([0.0] * n, list(range(n)))
    if a.workload == "ShareGPT Poisson":
        lm = re.fullmatch(r"([\d.]+) req/s \((\d+) prompts\)", a.load)
        assert lm, a.load
        rate, n = float(lm.group(1)), int(lm.group(2))
        rng = np.random.default_rng(POISSON_SEED)
        # vLLM's benchmark sends the first request at once, then waits exponential gaps.
        gaps = rng.exponential(1.0 / rate, n)
        arrivals = np.concatenate([[0.0], np.cumsum(gaps[:-1])]).tolist()
        idx = np.random.default_rng(SAMPLE_SEED).integers(0, len(SAMPLE_IN), n).tolist()
        return make(arrivals, idx)
    if m := re.match(r"ShareGPT offline (\d+) prompts", a.workload):
        n = int(m.group(1))
        idx = np.random.default_rng(OFFLINE_SEED).integers(0, len(SAMPLE_IN), n).tolist()
        return make([0.0] * n, idx)
    pytest.fail(f"no reproduction for workload {a.workload!r} ({a.load})")


def _metric(metric: str, reqs: list[Request], duration: float) -> float:
    if metric == "median_tpot":  # vLLM's benchmark: requests with more than one output token
        return 1000 * statistics.median(r.tpot for r in reqs if r.output_tokens > 1 and r.tpot is not None)
    if metric == "mean_ttft":
        return 1000 * statistics.mean(r.ttft for r in reqs if r.ttft is not None)
    if metric == "median_ttft":
        return 1000 * statistics.median(r.ttft for r in reqs if r.ttft is not None)
    if metric == "output_throughput":
        return sum(r.output_tokens for r in reqs) / duration
    raise AssertionError(metric)


def test_sample_matches_the_anchor_prompt_count() -> None:
    # The 10-prompt rows say "(1369 prompt tokens)": the first ten rows of the sample.
    assert len(SAMPLE_IN) == 320
    assert sum(SAMPLE_IN[:10]) == 1369


def test_anchor_selection() -> None:
    """The rows this file reproduces (not skipped), so a silently dropped anchor fails here."""
    def skipped(p: object) -> bool:
        return any(m.name == "skip" for m in p.marks)  # type: ignore[attr-defined]

    ran = [p for p in ANCHOR_PARAMS if not skipped(p)]
    assert len(ran) == 11
    assert len(ANCHOR_PARAMS) - len(ran) == 3  # two PCIe rows, one A100-40GB row
    assert sorted(KNOWN_MISSES) == sorted(p.id for p in ran if p.marks)  # type: ignore[attr-defined]


@pytest.mark.parametrize("anchor", ANCHOR_PARAMS)
def test_engine_reproduces_vllm_anchor(anchor: Anchor) -> None:
    assert anchor.unit == UNITS[anchor.metric]
    path = _profile_for(anchor)
    assert path is not None
    prof: Profile = load_profile(path)
    reqs = _requests(anchor)
    duration = replay(prof, reqs)
    assert all(r.finish is not None for r in reqs)
    got = _metric(anchor.metric, reqs, duration)
    tol = TOLERANCE[anchor.metric]
    err = got / anchor.value - 1
    assert abs(err) <= tol, (
        f"{anchor.metric}: model {got:.2f} vs measured {anchor.value:.2f} {anchor.unit} "
        f"({err:+.1%}, tolerance +-{tol:.0%})"
    )
