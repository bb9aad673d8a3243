"""Read one vLLM engine's load from its Prometheus `/metrics` text.

The parser is hand-written: a 64-instance tick reads ~30-50k lines, almost all histogram buckets
and Python/process metrics we do not need, so one regex pass picks the few wanted lines by name and
only those are split further (about 0.1-0.2 ms per text; prometheus_client's own parser takes
~13 ms per text). It tolerates every vLLM generation the daemon may meet (notes/vllm.md §1.4):

* 0.11+ (V1): labels `model_name` and `engine`; `kv_cache_usage_perc`, `inter_token_latency_seconds`.
* 0.10.2: old and new names side by side with the same values; the new name wins, never both.
* V0 (0.8.5 and earlier): `model_name` only; `gpu_cache_usage_perc`, `time_per_output_token_seconds`,
  `num_requests_swapped`.

Values are summed over series (data-parallel engines, several models), except KV usage, which is a
fraction and is averaged. Non-finite samples (NaN, ±Inf) are skipped: a NaN gauge carries no
information and one Inf would make a whole sum useless.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import aiohttp


class ProbeError(ValueError):
    """The engine's metrics could not be read: HTTP error, timeout, or a page that is not vLLM's."""


@dataclass(frozen=True, slots=True)
class EngineStats:
    running: float = 0.0
    waiting: float = 0.0  # V0: plus swapped requests, which are also out of the batch, waiting to resume
    kv_usage: float = 0.0  # 0..1, mean over engines
    preemptions: float = 0.0  # counters from here on: cumulative since engine start
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    requests_finished: float = 0.0  # request_success over every finished_reason (abort included)
    ttft_sum: float = 0.0
    ttft_count: float = 0.0
    itl_sum: float = 0.0  # inter_token_latency, or the old time_per_output_token (same thing)
    itl_count: float = 0.0
    req_tpot_sum: float = 0.0  # request_time_per_output_token (per-request mean; 0.11+ only)
    req_tpot_count: float = 0.0
    e2e_sum: float = 0.0
    e2e_count: float = 0.0
    queue_sum: float = 0.0
    queue_count: float = 0.0
    num_gpu_blocks: int | None = None  # from vllm:cache_config_info, summed over engines
    block_size: int | None = None
    model_names: tuple[str, ...] = ()


# Sample names we read; _LINE_RE matches only these, so buckets, _created and the rest cost nothing in Python.
_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"
_SWAPPED = "vllm:num_requests_swapped"
_KV_NEW = "vllm:kv_cache_usage_perc"
_KV_OLD = "vllm:gpu_cache_usage_perc"
_PREEMPT = "vllm:num_preemptions_total"
_PROMPT = "vllm:prompt_tokens_total"
_GEN = "vllm:generation_tokens_total"
_SUCCESS = "vllm:request_success_total"
_CACHE_INFO = "vllm:cache_config_info"
_TTFT = "vllm:time_to_first_token_seconds"
_ITL_NEW = "vllm:inter_token_latency_seconds"
_ITL_OLD = "vllm:time_per_output_token_seconds"
_REQ_TPOT = "vllm:request_time_per_output_token_seconds"
_E2E = "vllm:e2e_request_latency_seconds"
_QUEUE = "vllm:request_queue_time_seconds"
_HISTOGRAMS = (_TTFT, _ITL_NEW, _ITL_OLD, _REQ_TPOT, _E2E, _QUEUE)

_WANTED: frozenset[str] = frozenset(
    [_RUNNING, _WAITING, _SWAPPED, _KV_NEW, _KV_OLD, _PREEMPT, _PROMPT, _GEN, _SUCCESS, _CACHE_INFO]
    + [h + suffix for h in _HISTOGRAMS for suffix in ("_sum", "_count")]
)

# Lines whose labels we read: model names come from the load gauges, which every version labels
# with model_name; block counts from the info gauge. Other lines only need their value.
_LABELLED = frozenset([_RUNNING, _WAITING, _SWAPPED, _KV_NEW, _KV_OLD, _CACHE_INFO])
_LINE_RE = re.compile(r"\nvllm:(" + "|".join(re.escape(n[5:]) for n in sorted(_WANTED)) + r")([{ \t][^\n]*)")
# Any vLLM sample, or a declared family without children yet (only its HELP/TYPE comments show).
_ANY_VLLM_RE = re.compile(r"\n(?:# (?:HELP|TYPE) )?vllm:")

_UNESCAPE = {"\\": "\\", '"': '"', "n": "\n"}


def _parse_labels(body: str) -> tuple[dict[str, str], str]:
    """Labels from `a="x",b="y"} rest` (the text after `{`); returns them and `rest`.
    Without a backslash every `"` delimits a value, so a split is exact; values may hold `}`, `,` and
    blanks either way. With escapes, walk the text."""
    if "\\" in body:
        return _parse_labels_escaped(body)
    parts = body.split('"')
    if len(parts) % 2 == 0:
        raise ValueError("unbalanced quotes")
    labels: dict[str, str] = {}
    tail = parts[-1]
    for i in range(0, len(parts) - 1, 2):
        if "}" in parts[i]:  # the set ended; more quotes follow (an OpenMetrics exemplar)
            tail = parts[i]
            break
        key = parts[i].strip(" ,")
        if not key.endswith("="):
            raise ValueError("bad label")
        labels[key[:-1].rstrip()] = parts[i + 1]
    tail = tail.lstrip(" ,")
    if not tail.startswith("}"):
        raise ValueError("unterminated label set")
    return labels, tail[1:]


def _parse_labels_escaped(body: str) -> tuple[dict[str, str], str]:
    labels: dict[str, str] = {}
    i = 0
    n = len(body)
    while i < n:
        while i < n and body[i] in " ,":
            i += 1
        if i < n and body[i] == "}":
            return labels, body[i + 1 :]
        eq = body.find("=", i)
        if eq < 0 or eq + 1 >= n or body[eq + 1] != '"':
            raise ValueError("bad label")
        key = body[i:eq].strip()
        j = seg = eq + 2
        parts: list[str] = []
        while True:
            q = body.find('"', j)
            b = body.find("\\", j, q if q >= 0 else n)
            if b >= 0:
                if b + 1 >= n:
                    raise ValueError("bad escape")
                parts.append(body[seg:b])
                esc = body[b + 1]
                parts.append(_UNESCAPE.get(esc, "\\" + esc))
                j = seg = b + 2
                continue
            if q < 0:
                raise ValueError("unterminated label value")
            parts.append(body[seg:q])
            labels[key] = "".join(parts)
            i = q + 1
            break
    raise ValueError("unterminated label set")


def _to_int(s: str | None) -> int | None:
    if s is None:
        return None
    try:
        return int(float(s))
    except ValueError:  # "None" before the engine knows its block count
        return None


def parse_vllm_metrics(text: str) -> EngineStats:
    """Parse one `/metrics` text. Missing metrics read as 0; raises ProbeError only when the text
    holds no vLLM metric at all (a wrong port, a proxy's HTML page, `--disable-log-stats`)."""
    sums: dict[str, float] = {}
    kv_n: dict[str, int] = {}
    models: dict[str, None] = {}  # ordered set
    blocks: int | None = None
    block_size: int | None = None
    seen_vllm = False

    # One C-level regex pass finds the ~20 wanted lines per engine among hundreds of bucket lines;
    # the "\n" literal prefix lets `re` skip ahead between line starts.
    for short, body in _LINE_RE.findall("\n" + text):
        name = "vllm:" + short
        labels: dict[str, str] = {}
        if body[0] == "{":
            if name in _LABELLED or "\\" in body or "#" in body:
                try:
                    labels, rest = _parse_labels(body[1:])
                except ValueError:
                    continue
            else:  # labels not needed: the value follows the last `}` (values may hold `}`, not `"`)
                rest = body[body.rfind("}") + 1 :]
        else:
            rest = body
        fields = rest.split()
        if not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        seen_vllm = True
        model = labels.get("model_name") if name in _LABELLED else None
        if model is not None:
            models[model] = None
        if name == _CACHE_INFO:
            nb = _to_int(labels.get("num_gpu_blocks"))
            if nb is not None:
                blocks = nb if blocks is None else blocks + nb
            bs = _to_int(labels.get("block_size"))
            if bs is not None:
                block_size = bs if block_size is None else max(block_size, bs)
            continue
        if not math.isfinite(value):
            continue
        sums[name] = sums.get(name, 0.0) + value
        if name in (_KV_NEW, _KV_OLD):
            kv_n[name] = kv_n.get(name, 0) + 1

    if not seen_vllm and _ANY_VLLM_RE.search("\n" + text) is None:
        raise ProbeError("no vLLM metric in the response (not a vLLM /metrics page?)")

    def get(name: str) -> float:
        return sums.get(name, 0.0)

    def hist(new: str, old: str | None = None) -> tuple[float, float]:
        # 0.10.2 emits both names with the same observations: take the new one whenever it is there.
        base = new
        if old is not None and new + "_sum" not in sums and new + "_count" not in sums:
            base = old
        return get(base + "_sum"), get(base + "_count")

    kv_name = _KV_NEW if _KV_NEW in sums else _KV_OLD
    kv = sums[kv_name] / kv_n[kv_name] if kv_name in sums else 0.0
    ttft = hist(_TTFT)
    itl = hist(_ITL_NEW, _ITL_OLD)
    tpot = hist(_REQ_TPOT)
    e2e = hist(_E2E)
    queue = hist(_QUEUE)
    return EngineStats(
        running=get(_RUNNING),
        waiting=get(_WAITING) + get(_SWAPPED),
        kv_usage=kv,
        preemptions=get(_PREEMPT),
        prompt_tokens=get(_PROMPT),
        generation_tokens=get(_GEN),
        requests_finished=get(_SUCCESS),
        ttft_sum=ttft[0],
        ttft_count=ttft[1],
        itl_sum=itl[0],
        itl_count=itl[1],
        req_tpot_sum=tpot[0],
        req_tpot_count=tpot[1],
        e2e_sum=e2e[0],
        e2e_count=e2e[1],
        queue_sum=queue[0],
        queue_count=queue[1],
        num_gpu_blocks=blocks,
        block_size=block_size,
        model_names=tuple(models),
    )


async def scrape(session: aiohttp.ClientSession, base_url: str, timeout_s: float) -> EngineStats:
    """GET `base_url/metrics` and parse it. Every failure is a ProbeError whose message says which:
    HTTP status, timeout, connection error, or not a vLLM page."""
    url = base_url.rstrip("/") + "/metrics"
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            if resp.status != 200:
                raise ProbeError(f"{url}: HTTP {resp.status}")
            body = await resp.read()
    except TimeoutError as e:  # aiohttp raises asyncio.TimeoutError, an alias of TimeoutError in 3.11
        raise ProbeError(f"{url}: timeout after {timeout_s:g}s") from e
    except aiohttp.ClientError as e:
        raise ProbeError(f"{url}: connection error: {e}") from e
    try:
        return parse_vllm_metrics(body.decode("utf-8", errors="replace"))
    except ProbeError as e:
        raise ProbeError(f"{url}: {e}") from e
