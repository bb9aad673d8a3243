"""Talking to the endpoint outside the timed requests: GET /models at start and while the run goes,
the SLO to judge by (advertised, from the options, or the default), and the reader of a streamed
response that takes its token timings from plain JSON chunks."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from chirond.loadgen.options import DEFAULT_SLO, LoadConfig
from chirond.loadgen.summary import _number
from chirond.model import Slo


class EndpointError(Exception):
    """The endpoint could not be used at start: unreachable, key rejected, no model."""


def _auth_headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


async def fetch_models(
    http: aiohttp.ClientSession, base_url: str, api_key: str, timeout_s: float = 5.0
) -> list[dict[str, Any]]:
    """GET {base_url}/models as raw dicts (chirond's extra fields kept)."""
    url = f"{base_url}/models"
    async with http.get(url, headers=_auth_headers(api_key), timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
        if resp.status in (401, 403):
            raise EndpointError(
                f"{url} rejected the API key (HTTP {resp.status}): pass --api-key or set OPENAI_API_KEY"
            )
        if resp.status != 200:
            raise EndpointError(f"GET {url} answered HTTP {resp.status}")
        body = await resp.json(content_type=None)
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise EndpointError(f"GET {url}: not an OpenAI model list")
    return [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]


async def probe(http: aiohttp.ClientSession, base_url: str, api_key: str) -> list[dict[str, Any]]:
    """GET /models at start; any transport failure becomes an EndpointError that says what to check."""
    try:
        return await fetch_models(http, base_url, api_key)
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        raise EndpointError(f"cannot reach {base_url}: is chirond running? ({type(e).__name__}: {e})") from e


def resolve_slo(cfg: LoadConfig, item: dict[str, Any] | None) -> tuple[Slo, str]:
    """The SLO to judge by and where it came from ("endpoint", "options" or "default")."""
    adv = item.get("slo") if item else None
    ttft = _number(adv.get("ttft_s")) if isinstance(adv, dict) else None
    tpot = _number(adv.get("tpot_s")) if isinstance(adv, dict) else None
    source = "endpoint" if ttft is not None or tpot is not None else "default"
    if cfg.ttft_slo_s is not None or cfg.tpot_slo_s is not None:
        source = "options"
    slo = Slo(
        ttft_s=float(cfg.ttft_slo_s or ttft or DEFAULT_SLO.ttft_s),
        tpot_s=float(cfg.tpot_slo_s or tpot or DEFAULT_SLO.tpot_s),
    )
    return slo, source


class StreamError(Exception):
    """The server reported an error inside a stream, or sent something that is not a chunk."""


@dataclass(slots=True)
class StreamTiming:
    first: float | None = None  # perf_counter() at the first content-bearing chunk
    last: float | None = None  # ... and at the last one
    chunks: int = 0  # content-bearing chunks
    usage_tokens: int | None = None  # completion_tokens of the usage chunk
    prompt_tokens: int | None = None

    @property
    def completion_tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else self.chunks


async def read_stream(lines: AsyncIterator[str], *, chat: bool) -> StreamTiming:
    """Read an OpenAI server-sent-event stream of chat or completions chunks up to [DONE]."""
    timing = StreamTiming()
    data: list[str] = []
    async for line in lines:
        if line.startswith("data:"):
            data.append(line[6:] if line.startswith("data: ") else line[5:])
            continue
        if line or not data:  # other fields (event:, id:, comments) and blank lines between events
            continue
        payload = "\n".join(data)
        data.clear()
        if payload.startswith("[DONE]"):
            return timing
        _on_chunk(timing, payload, chat)
    if data and not data[0].startswith("[DONE]"):
        _on_chunk(timing, "\n".join(data), chat)
    return timing


def _on_chunk(timing: StreamTiming, payload: str, chat: bool) -> None:
    try:
        obj = json.loads(payload)
    except ValueError:
        raise StreamError(f"not JSON: {payload[:80]!r}") from None
    if not isinstance(obj, dict):
        raise StreamError(f"not a chunk: {payload[:80]!r}")
    if obj.get("error"):
        err = obj["error"]
        raise StreamError(str(err.get("message") if isinstance(err, dict) else err))
    usage = obj.get("usage")
    if isinstance(usage, dict):
        timing.usage_tokens = usage.get("completion_tokens", timing.usage_tokens)
        timing.prompt_tokens = usage.get("prompt_tokens", timing.prompt_tokens)
    choices = obj.get("choices")
    if not choices:
        return
    c0 = choices[0]
    text = (c0.get("delta") or {}).get("content") if chat else c0.get("text")
    if text:
        now = time.perf_counter()
        timing.last = now
        timing.chunks += 1
        if timing.first is None:
            timing.first = now
