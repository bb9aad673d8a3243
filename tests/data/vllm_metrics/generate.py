"""Regenerate the recorded `/metrics` texts in this folder: `python tests/data/vllm_metrics/generate.py`.

Each text is rendered by prometheus_client from metrics declared the way that vLLM version declares
them (names, types, labels, buckets; see /work/shared/notes/vllm.md §1 and README.md here), filled
with fixed values that tests/unit/test_probe.py checks. `_created` timestamps are pinned so that the
vllm:* part regenerates byte for byte; the python_*/process_* part depends on the machine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from unittest import mock

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

HERE = Path(__file__).resolve().parent
CREATED = 1_760_000_000.0

# notes §1.3 (vllm==0.33.0: v1/metrics/buckets.py; the same lists inline in 0.8.5–0.26)
TTFT_BUCKETS = [
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
]
ITL_BUCKETS = [
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
]
LATENCY_BUCKETS = [
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
]
ITER_BUCKETS_V1 = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
ITER_BUCKETS_085 = [1, 2, 4, *range(8, 513, 8)]  # 0.8.5: the CUDA-graph capture sizes
N_BUCKETS = [1, 2, 5, 10, 20]
PREEMPT_BUCKETS = [1, 2, 3, 4, 5, 10, 20]


def buckets_1_2_5(max_value: int) -> list[int]:
    out: list[int] = []
    exp = 0
    while True:
        for m in (1, 2, 5):
            v = m * 10**exp
            if v > max_value:
                return out
            out.append(v)
        exp += 1


def cache_info_labels(num_gpu_blocks: int, version: str) -> dict[str, str]:
    """A plausible `CacheConfig.metrics_info()` (every field str()-ed); the exact field set varies by
    version and only block_size / num_gpu_blocks matter to chirond."""
    info = {
        "block_size": "16",
        "cache_dtype": "auto",
        "calculate_kv_scales": "False",
        "cpu_offload_gb": "0",
        "enable_prefix_caching": "True",
        "gpu_memory_utilization": "0.9",
        "is_attention_free": "False",
        "num_cpu_blocks": "None" if version == "v1" else "2048",
        "num_gpu_blocks": str(num_gpu_blocks),
        "num_gpu_blocks_override": "None",
        "prefix_caching_hash_algo": "builtin" if version == "v0" else "sha256",
        "sliding_window": "None",
        "swap_space": "4",
    }
    if version == "v1":
        info["kv_sharing_fast_prefill"] = "False"
        info["mamba_cache_dtype"] = "auto"
    return info


class Decl:
    """Declares metrics into one registry, as vLLM does, with `_created` pinned."""

    def __init__(self, labelnames: Sequence[str]) -> None:
        self.reg = CollectorRegistry()
        self.labelnames = list(labelnames)

    def gauge(self, name: str, doc: str, extra: Sequence[str] = ()) -> Gauge:
        return Gauge(name, doc, labelnames=[*self.labelnames, *extra], registry=self.reg)

    def counter(self, name: str, doc: str, extra: Sequence[str] = ()) -> Counter:
        return Counter(name, doc, labelnames=[*self.labelnames, *extra], registry=self.reg)

    def hist(self, name: str, doc: str, buckets: Sequence[float]) -> Histogram:
        return Histogram(name, doc, labelnames=self.labelnames, buckets=buckets, registry=self.reg)

    def render(self) -> str:
        for collector in (GCCollector, PlatformCollector, ProcessCollector):
            collector(registry=self.reg)  # vLLM serves the default registry, which has these three
        return generate_latest(self.reg).decode()


def observe(h: Histogram, labels: Sequence[str], values: Sequence[float]) -> None:
    child = h.labels(*labels)
    for v in values:
        child.observe(v)


def pinned(fn: Callable[[], str]) -> str:
    with mock.patch("time.time", return_value=CREATED):
        return fn()


def v0_33() -> str:
    """vLLM 0.33 V1, data-parallel size 2: `engine` "0" and "1" (v1/metrics/loggers.py)."""
    model = "meta-llama/Llama-3.1-8B-Instruct"
    max_len = 131072
    d = Decl(["model_name", "engine"])
    running = d.gauge("vllm:num_requests_running", "Number of requests in model execution batches.")
    waiting = d.gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
    by_reason = d.gauge("vllm:num_requests_waiting_by_reason", "Number of requests waiting, by reason.", ["reason"])
    sleep = d.gauge("vllm:engine_sleep_state", "Engine sleep state.", ["sleep_state"])
    kv = d.gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
    pq = d.counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.")
    ph = d.counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.")
    preempt = d.counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.")
    prompt = d.counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
    gen = d.counter("vllm:generation_tokens", "Number of generation tokens processed.")
    success = d.counter("vllm:request_success", "Count of successfully processed requests.", ["finished_reason"])
    rejections = Counter(
        "vllm:admission_rejections",
        "Requests rejected at admission.",
        labelnames=["model_name", "reason"],
        registry=d.reg,
    )
    h_prompt = d.hist("vllm:request_prompt_tokens", "Number of prefill tokens processed.", buckets_1_2_5(max_len))
    h_gen = d.hist("vllm:request_generation_tokens", "Number of generation tokens processed.", buckets_1_2_5(max_len))
    h_iter = d.hist("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", ITER_BUCKETS_V1)
    h_maxgen = d.hist(
        "vllm:request_max_num_generation_tokens",
        "Histogram of maximum number of requested generation tokens.",
        buckets_1_2_5(max_len),
    )
    h_n = d.hist("vllm:request_params_n", "Histogram of the n request parameter.", N_BUCKETS)
    h_maxtok = d.hist(
        "vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.", buckets_1_2_5(max_len)
    )
    h_npre = d.hist("vllm:request_num_preemptions", "Number of preemptions per finished request.", PREEMPT_BUCKETS)
    ttft = d.hist("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS)
    itl = d.hist("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", ITL_BUCKETS)
    tpot = d.hist(
        "vllm:request_time_per_output_token_seconds",
        "Histogram of time_per_output_token_seconds per request.",
        ITL_BUCKETS,
    )
    e2e = d.hist("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", LATENCY_BUCKETS)
    queue = d.hist(
        "vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", LATENCY_BUCKETS
    )
    phases = [
        d.hist(
            f"vllm:request_{p}_time_seconds",
            f"Histogram of time spent in {p.upper()} phase for request.",
            LATENCY_BUCKETS,
        )
        for p in ("inference", "prefill", "decode")
    ]
    http = Counter(
        "http_requests_total",
        "Total number of requests by method, status and handler.",
        labelnames=["method", "status", "handler"],
        registry=d.reg,
    )

    per_engine = {
        "0": dict(
            running=3,
            waiting=1,
            kv=0.25,
            preempt=2,
            prompt=12000,
            gen=3400,
            success={"stop": 40, "length": 5, "abort": 1, "error": 0, "repetition": 0},
            ttft=[0.05, 0.2, 1.5],
            itl=[0.02, 0.03, 0.04, 0.05],
            tpot=[0.03, 0.04],
            e2e=[2.0, 3.5],
            queue=[0.01, 0.5],
        ),
        "1": dict(
            running=2,
            waiting=0,
            kv=0.5,
            preempt=0,
            prompt=8000,
            gen=2600,
            success={"stop": 30, "length": 2, "abort": 0, "error": 0, "repetition": 0},
            ttft=[0.1, 0.3],
            itl=[0.025, 0.035],
            tpot=[0.03],
            e2e=[1.0],
            queue=[0.0],
        ),
    }
    for eng, v in per_engine.items():
        lv = [model, eng]
        running.labels(*lv).set(v["running"])
        waiting.labels(*lv).set(v["waiting"])
        by_reason.labels(*lv, "capacity").set(v["waiting"])
        by_reason.labels(*lv, "deferred").set(0)
        for state in ("awake", "weights_offloaded", "discard_all"):
            sleep.labels(*lv, state).set(1 if state == "awake" else 0)
        kv.labels(*lv).set(v["kv"])
        pq.labels(*lv).inc(v["prompt"])
        ph.labels(*lv).inc(v["prompt"] // 4)
        preempt.labels(*lv).inc(v["preempt"])
        prompt.labels(*lv).inc(v["prompt"])
        gen.labels(*lv).inc(v["gen"])
        for reason, n in v["success"].items():
            success.labels(*lv, reason).inc(n)
        finished = sum(v["success"].values())
        observe(h_prompt, lv, [v["prompt"] / finished] * 3)
        observe(h_gen, lv, [v["gen"] / finished] * 3)
        observe(h_iter, lv, [512, 2048, 37])
        observe(h_maxgen, lv, [1024])
        observe(h_n, lv, [1])
        observe(h_maxtok, lv, [1024])
        observe(h_npre, lv, [])
        observe(ttft, lv, v["ttft"])
        observe(itl, lv, v["itl"])
        observe(tpot, lv, v["tpot"])
        observe(e2e, lv, v["e2e"])
        observe(queue, lv, v["queue"])
        for h in phases:
            observe(h, lv, v["e2e"])
    rejections.labels(model, "max_num_queued_reqs").inc(0)
    rejections.labels(model, "max_num_queued_tokens").inc(0)
    http.labels("POST", "2xx", "/v1/chat/completions").inc(79)
    # Since 0.11 the info gauge carries `engine` (one series per data-parallel engine).
    labels = cache_info_labels(20000, "v1")
    info = Gauge(
        "vllm:cache_config_info",
        "Information of the LLMEngine CacheConfig",
        labelnames=[*labels, "engine"],
        registry=d.reg,
    )
    for eng in per_engine:
        info.labels(**labels, engine=eng).set(1)
    return d.render()


def v0_10_2() -> str:
    """vLLM 0.10.2 V1, one engine: deprecated names still emitted next to their replacements with the
    same values (`gpu_cache_usage_perc`, `gpu_prefix_cache_*`, `time_per_output_token_seconds`); no
    `request_time_per_output_token_seconds` yet (0.11), no `num_requests_waiting_by_reason` (0.20)."""
    model = "Qwen/Qwen2.5-7B-Instruct"
    max_len = 32768
    lv = [model, "0"]
    d = Decl(["model_name", "engine"])
    d.gauge("vllm:num_requests_running", "Number of requests in model execution batches.").labels(*lv).set(7)
    d.gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.").labels(*lv).set(4)
    d.gauge(
        "vllm:gpu_cache_usage_perc",
        "GPU KV-cache usage. 1 means 100 percent usage. (Should be the same as `vllm:kv_cache_usage_perc`).",
    ).labels(*lv).set(0.8125)
    d.gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.").labels(*lv).set(0.8125)
    for prefix in ("gpu_", ""):
        d.counter(f"vllm:{prefix}prefix_cache_queries", "Prefix cache queries.").labels(*lv).inc(60000)
        d.counter(f"vllm:{prefix}prefix_cache_hits", "Prefix cache hits.").labels(*lv).inc(21000)
    d.counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.").labels(*lv).inc(3)
    d.counter("vllm:prompt_tokens", "Number of prefill tokens processed.").labels(*lv).inc(51234)
    d.counter("vllm:generation_tokens", "Number of generation tokens processed.").labels(*lv).inc(17890)
    success = d.counter("vllm:request_success", "Count of successfully processed requests.", ["finished_reason"])
    for reason, n in {"stop": 100, "length": 20, "abort": 3}.items():
        success.labels(*lv, reason).inc(n)
    observe(
        d.hist("vllm:request_prompt_tokens", "Number of prefill tokens processed.", buckets_1_2_5(max_len)),
        lv,
        [400, 427],
    )
    observe(
        d.hist("vllm:request_generation_tokens", "Number of generation tokens processed.", buckets_1_2_5(max_len)),
        lv,
        [140, 150],
    )
    observe(
        d.hist(
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            [1, 8, 16, 32, 64, 128, 256, 512],
        ),
        lv,
        [8, 300],
    )
    observe(d.hist("vllm:request_params_n", "Histogram of the n request parameter.", N_BUCKETS), lv, [1])
    observe(
        d.hist("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS),
        lv,
        [0.2, 0.4, 0.9, 3.0],
    )
    itl_obs = [0.03, 0.05, 0.07]
    observe(
        d.hist(
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds. DEPRECATED: Use vllm:inter_token_latency_seconds instead.",
            ITL_BUCKETS,
        ),
        lv,
        itl_obs,
    )
    observe(
        d.hist("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", ITL_BUCKETS),
        lv,
        itl_obs,
    )
    observe(
        d.hist("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", LATENCY_BUCKETS),
        lv,
        [5.0, 12.0],
    )
    observe(
        d.hist(
            "vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", LATENCY_BUCKETS
        ),
        lv,
        [0.1, 2.0],
    )
    labels = cache_info_labels(30000, "v1")
    Gauge(
        "vllm:cache_config_info",
        "Information of the LLMEngine CacheConfig",
        labelnames=[*labels, "engine"],
        registry=d.reg,
    ).labels(**labels, engine="0").set(1)
    return d.render()


def v0_8_5_v0() -> str:
    """vLLM 0.8.5 with the V0 engine (VLLM_USE_V1=0; engine/metrics.py `Metrics`): label `model_name`
    only; counters declared with `_total`; V0-only gauges (swapped, cpu cache, throughput)."""
    model = "mistralai/Mistral-7B-Instruct-v0.3"
    max_len = 32768
    lv = [model]
    d = Decl(["model_name"])
    d.gauge("vllm:num_requests_running", "Number of requests currently running on GPU.").labels(*lv).set(6)
    d.gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.").labels(*lv).set(2)
    d.gauge("vllm:num_requests_swapped", "Number of requests swapped to CPU.").labels(*lv).set(1)
    d.gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.").labels(*lv).set(0.9)
    d.gauge("vllm:cpu_cache_usage_perc", "CPU KV-cache usage. 1 means 100 percent usage.").labels(*lv).set(0.0)
    d.gauge("vllm:cpu_prefix_cache_hit_rate", "CPU prefix cache block hit rate.").labels(*lv).set(-1)
    d.gauge("vllm:gpu_prefix_cache_hit_rate", "GPU prefix cache block hit rate.").labels(*lv).set(0.31)
    d.gauge("vllm:avg_prompt_throughput_toks_per_s", "Average prefill throughput in tokens/s.").labels(*lv).set(812.5)
    d.gauge("vllm:avg_generation_throughput_toks_per_s", "Average generation throughput in tokens/s.").labels(*lv).set(
        402.1
    )
    d.counter("vllm:num_preemptions_total", "Cumulative number of preemption from the engine.").labels(*lv).inc(5)
    d.counter("vllm:prompt_tokens_total", "Number of prefill tokens processed.").labels(*lv).inc(9000)
    d.counter("vllm:generation_tokens_total", "Number of generation tokens processed.").labels(*lv).inc(4000)
    success = d.counter("vllm:request_success_total", "Count of successfully processed requests.", ["finished_reason"])
    for reason, n in {"stop": 50, "length": 7}.items():
        success.labels(*lv, reason).inc(n)
    observe(
        d.hist("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", ITER_BUCKETS_085),
        lv,
        [8, 256],
    )
    observe(
        d.hist("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS),
        lv,
        [0.3, 0.6],
    )
    observe(
        d.hist("vllm:time_per_output_token_seconds", "Histogram of time per output token in seconds.", ITL_BUCKETS),
        lv,
        [0.04, 0.06, 0.08],
    )
    for name, doc, obs in [
        ("e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.", [4.0]),
        ("request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", [1.0]),
        ("request_inference_time_seconds", "Histogram of time spent in RUNNING phase for request.", [3.0]),
        ("request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.", [0.5]),
        ("request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.", [2.5]),
    ]:
        observe(d.hist(f"vllm:{name}", doc, LATENCY_BUCKETS), lv, obs)
    observe(
        d.hist("vllm:request_prompt_tokens", "Number of prefill tokens processed.", buckets_1_2_5(max_len)), lv, [150]
    )
    observe(
        d.hist("vllm:request_generation_tokens", "Number of generation tokens processed.", buckets_1_2_5(max_len)),
        lv,
        [70],
    )
    observe(d.hist("vllm:request_params_n", "Histogram of the n request parameter.", N_BUCKETS), lv, [1])
    # V0's info gauge has the CacheConfig fields only: no model_name, no engine.
    labels = cache_info_labels(25000, "v0")
    Gauge(
        "vllm:cache_config_info", "Information of the LLMEngine CacheConfig", labelnames=list(labels), registry=d.reg
    ).labels(**labels).set(1)
    return d.render()


FIXTURES: dict[str, Callable[[], str]] = {
    "vllm-0.33.0-dp2.txt": v0_33,
    "vllm-0.10.2.txt": v0_10_2,
    "vllm-0.8.5-v0.txt": v0_8_5_v0,
}

if __name__ == "__main__":
    for fname, make in FIXTURES.items():
        (HERE / fname).write_text(pinned(make))
        print("wrote", HERE / fname)
