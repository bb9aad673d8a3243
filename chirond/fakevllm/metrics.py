"""vLLM's Prometheus metrics for the simulated server: the exposed names, labels (`model_name` and
`engine="0"`), help texts and default buckets of vLLM 0.33 (`v1/metrics/loggers.py`, `buckets.py`).

Everything is rendered at scrape time by one collector on a per-server `CollectorRegistry`, so
several servers can live in one process. Gauges and engine counters are read from the engine then;
histograms are plain bucket arrays whose `observe` takes a count, because with token coalescing one
observation stands for several tokens and 512 streams must not pay a lock per token.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
               80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                           240.0, 480.0, 960.0, 1920.0, 7680.0)
ITERATION_TOKENS_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
PARAMS_N_BUCKETS = (1, 2, 5, 10, 20)
PREEMPTIONS_BUCKETS = (1, 2, 3, 4, 5, 10, 20)
BLOCK_SIZE = 16  # vLLM's default KV block size, and the profiles' block_tokens
# vllm:cache_config_info as vLLM 0.33 resolves CacheConfig for chirond's engine flags (which set
# none of these): every field a label, its value str()'d. The KV-dependent ones are filled in
# `cache_config_info`. tests/conformance/test_fakevllm_metrics.py compares the whole set with vLLM's.
CACHE_CONFIG_DEFAULTS = {
    "_block_size_resolved": "True", "block_size": str(BLOCK_SIZE), "cache_dtype": "auto",
    "cache_hit_alignment_tokens": "None", "effective_attention_block_size": "None",
    "enable_mamba_shared_prefix_checkpoint": "False", "enable_prefix_caching": "True",
    "gpu_memory_utilization": "0.92", "hash_block_size": "None", "is_attention_free": "False",
    "kv_cache_dtype_skip_layers": "[]", "kv_cache_layout": "None", "kv_cache_max_concurrency": "None",
    "kv_cache_memory_bytes": "None", "kv_cache_size_tokens": "None", "kv_offloading_backend": "native",
    "kv_offloading_size": "None", "kv_sharing_fast_prefill": "False", "mamba_block_size": "None",
    "mamba_cache_dtype": "auto", "mamba_cache_mode": "none", "mamba_page_size_padded": "None",
    "mamba_ssm_cache_dtype": "float32", "num_cpu_blocks": "None", "num_gpu_blocks": "None",
    "num_gpu_blocks_override": "None", "prefix_cache_retention_interval": "0", "prefix_caching_hash_algo": "sha256",
    "prefix_match_unit": "None", "replayssm_buffer_len": "16", "simple_cpu_offload_num_blocks": "None",
    "skip_page_size_padded": "None", "sliding_window": "None", "swa_bounded_replay": "True",
    "use_kda_recoverssm": "False", "use_replayssm": "False", "user_specified_block_size": "False",
}
PROMPT_SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")
CACHED_SOURCES = ("device", "host", "p2p", "disk", "external_unspecified")
# Counters vLLM always registers that the simulation never moves (no MFU estimate, KV connector,
# multi-modal cache or prefix-cache hit).
ZERO_COUNTERS = (
    ("vllm:estimated_flops_per_gpu", "Estimated number of floating point operations per GPU (for Model Flops "
     "Utilization calculations)."),
    ("vllm:estimated_read_bytes_per_gpu", "Estimated number of bytes read from memory per GPU (for Model Flops "
     "Utilization calculations)."),
    ("vllm:estimated_write_bytes_per_gpu", "Estimated number of bytes written to memory per GPU (for Model Flops "
     "Utilization calculations)."),
    ("vllm:external_prefix_cache_queries", "External prefix cache queries from KV connector cross-instance cache "
     "sharing, in terms of number of queried tokens."),
    ("vllm:external_prefix_cache_hits", "External prefix cache hits from KV connector cross-instance cache "
     "sharing, in terms of number of cached tokens."),
    ("vllm:mm_cache_queries", "Multi-modal cache queries, in terms of number of queried items."),
    ("vllm:mm_cache_hits", "Multi-modal cache hits, in terms of number of cached items."),
    ("vllm:prompt_tokens_cached", "Number of cached prompt tokens (local + external)."),
)


def cache_config_info(num_gpu_blocks: int, max_model_len: int) -> dict[str, str]:
    """The labels of vllm:cache_config_info once the engine has sized its KV cache (a full-attention
    model: capacity is blocks x block size, concurrency that over the context length)."""
    per_request = -(-max_model_len // BLOCK_SIZE)
    concurrency = num_gpu_blocks / per_request
    return {**CACHE_CONFIG_DEFAULTS, "num_gpu_blocks": str(num_gpu_blocks),
            "kv_cache_size_tokens": str(int(concurrency * max_model_len)),
            "kv_cache_max_concurrency": str(concurrency), "effective_attention_block_size": str(BLOCK_SIZE)}
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")


def build_1_2_5_buckets(max_value: int) -> tuple[int, ...]:
    """vLLM's token-count buckets: 1, 2, 5, 10, 20, 50, ... up to `max_value`."""
    out: list[int] = []
    scale = 1
    while True:
        for m in (1, 2, 5):
            if m * scale > max_value:
                return tuple(out)
            out.append(m * scale)
        scale *= 10


class Hist:
    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, n: int = 1) -> None:
        """`n` observations of `value`."""
        self.counts[bisect_left(self.bounds, value)] += n  # bucket i holds value <= bounds[i]
        self.sum += value * n
        self.count += n

    def family(self, name: str, doc: str, labels: list[str], values: list[str], created: float
               ) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(name, doc, labels=labels)
        cum, buckets = 0, []
        for b, c in zip(self.bounds, self.counts, strict=False):
            cum += c
            buckets.append((floatToGoString(b), float(cum)))
        buckets.append(("+Inf", float(self.count)))
        fam.add_metric(values, buckets, self.sum)
        fam.add_sample(name + "_created", dict(zip(labels, values, strict=True)), created)  # as Histogram has
        return fam


@dataclass(frozen=True, slots=True)
class EngineSample:
    """What the engine says at scrape time."""

    running: int
    waiting: int
    kv_usage: float
    preemptions: int
    generation_tokens: int


class ServerMetrics(Collector):
    """The `vllm:*` series of one server. The driver feeds the per-request histograms and counters;
    `sample` reads the engine's state when Prometheus scrapes."""

    def __init__(self, model: str, max_model_len: int, block_size: int, num_gpu_blocks: int,
                 sample: Callable[[], EngineSample]) -> None:
        self._labels = ["model_name", "engine"]
        self._values = [model, "0"]
        self._sample = sample
        if block_size != BLOCK_SIZE:
            raise ValueError(f"block size {block_size}: vLLM's is {BLOCK_SIZE}")
        self._cache_info = {**cache_config_info(num_gpu_blocks, max_model_len), "engine": "0"}
        self.created = time.time()
        self.prompt_tokens = 0
        self.success = dict.fromkeys(FINISHED_REASONS, 0)
        tokens = build_1_2_5_buckets(max_model_len)
        self.ttft = Hist(TTFT_BUCKETS)
        self.itl = Hist(ITL_BUCKETS)
        self.tpot = Hist(ITL_BUCKETS)
        self.e2e = Hist(REQUEST_LATENCY_BUCKETS)
        self.queue = Hist(REQUEST_LATENCY_BUCKETS)
        self.inference = Hist(REQUEST_LATENCY_BUCKETS)
        self.prefill = Hist(REQUEST_LATENCY_BUCKETS)
        self.decode = Hist(REQUEST_LATENCY_BUCKETS)
        self.req_prompt = Hist(tokens)
        self.req_generation = Hist(tokens)
        self.max_tokens = Hist(tokens)  # also vllm:request_max_num_generation_tokens (n = 1: the same)
        self.params_n = Hist(PARAMS_N_BUCKETS)
        self.prefill_kv_computed = Hist(tokens)
        self.req_preemptions = Hist(PREEMPTIONS_BUCKETS)
        self.iteration = Hist(ITERATION_TOKENS_BUCKETS)
        self._hists: tuple[tuple[str, str, Hist], ...] = (
            ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", self.ttft),
            ("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", self.itl),
            ("vllm:request_time_per_output_token_seconds",
             "Histogram of time_per_output_token_seconds per request.", self.tpot),
            ("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", self.e2e),
            ("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", self.queue),
            ("vllm:request_inference_time_seconds", "Histogram of time spent in RUNNING phase for request.",
             self.inference),
            ("vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.",
             self.prefill),
            ("vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.", self.decode),
            ("vllm:request_prompt_tokens", "Number of prefill tokens processed.", self.req_prompt),
            ("vllm:request_generation_tokens", "Number of generation tokens processed.", self.req_generation),
            ("vllm:request_params_max_tokens", "Histogram of the max_tokens request parameter.", self.max_tokens),
            ("vllm:request_max_num_generation_tokens", "Histogram of maximum number of requested generation tokens.",
             self.max_tokens),
            ("vllm:request_params_n", "Histogram of the n request parameter.", self.params_n),
            ("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", self.iteration),
            ("vllm:request_num_preemptions", "Histogram of the number of times a request was preempted.",
             self.req_preemptions),
            ("vllm:request_prefill_kv_computed_tokens",
             "Histogram of new KV tokens computed during prefill (excluding cached tokens).", self.prefill_kv_computed),
        )

    def registry(self) -> CollectorRegistry:
        """A fresh registry with these series and, as vLLM has, the process and Python ones."""
        reg = CollectorRegistry()
        reg.register(self)
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)
        return reg

    def collect(self) -> Iterator[Metric]:
        s = self._sample()
        labels, values = self._labels, self._values

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(values, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric(values, value, created=self.created)
            return c

        yield gauge("vllm:num_requests_running", "Number of requests in model execution batches.", s.running)
        yield gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", s.waiting)
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", s.kv_usage)
        by_reason = GaugeMetricFamily("vllm:num_requests_waiting_by_reason", "Number of requests waiting, by reason.",
                                      labels=[*labels, "reason"])
        by_reason.add_metric([*values, "capacity"], s.waiting)
        by_reason.add_metric([*values, "deferred"], 0)
        yield by_reason
        sleep = GaugeMetricFamily("vllm:engine_sleep_state", "Engine sleep state.", labels=[*labels, "sleep_state"])
        for state in ("awake", "weights_offloaded", "discard_all"):
            sleep.add_metric([*values, state], 1.0 if state == "awake" else 0.0)
        yield sleep
        yield counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.", s.preemptions)
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.", self.prompt_tokens)
        yield counter("vllm:generation_tokens", "Number of generation tokens processed.", s.generation_tokens)
        # No prefix caching is simulated: every prompt token is a query and none is a hit.
        yield counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.",
                      self.prompt_tokens)
        yield counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", 0)
        for name, doc in ZERO_COUNTERS:
            yield counter(name, doc, 0)
        by_source = CounterMetricFamily("vllm:prompt_tokens_by_source", "Number of prompt tokens by source.",
                                        labels=[*labels, "source"])
        for source in PROMPT_SOURCES:
            by_source.add_metric([*values, source], self.prompt_tokens if source == "local_compute" else 0,
                                 created=self.created)
        yield by_source
        cached = CounterMetricFamily(
            "vllm:prompt_tokens_cached_by_source",
            "Prefix-cache hit tokens by the cache tier that supplied them: device (local HBM), host (offloaded to "
            "DRAM), disk, p2p (transferred from another vLLM instance) or external_unspecified. Counted at "
            "admission; sums to vllm:prefix_cache_hits + vllm:external_prefix_cache_hits.", labels=[*labels, "source"])
        for source in CACHED_SOURCES:
            cached.add_metric([*values, source], 0, created=self.created)
        yield cached
        rejected = CounterMetricFamily("vllm:admission_rejections", "Requests rejected at admission.",
                                       labels=["model_name", "reason"])  # no engine label, as in vLLM
        for reason in ("max_num_queued_reqs", "max_num_queued_tokens"):
            rejected.add_metric([values[0], reason], 0, created=self.created)
        yield rejected
        ok = CounterMetricFamily("vllm:request_success", "Count of successfully processed requests.",
                                 labels=[*labels, "finished_reason"])
        for reason, n in self.success.items():
            ok.add_metric([*values, reason], n, created=self.created)
        yield ok
        for name, doc, h in self._hists:
            yield h.family(name, doc, labels, values, self.created)
        info = GaugeMetricFamily("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
                                 labels=list(self._cache_info))
        info.add_metric(list(self._cache_info.values()), 1.0)
        yield info
