"""fake-vllm's /metrics against vLLM 0.33's own: the families, their types, label names and
histogram buckets that vLLM's v1 PrometheusStatLogger registers for chirond's engine command, and
the labels and values of `vllm:cache_config_info` as vLLM resolves them for that command; the
content type too."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chirond.fakevllm import FakeVllm
from chirond.profiles import load_profile
from tests.support.engine_commands import rendered_commands

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "vllm_models"
MODELS = {"meta-llama/Llama-3.1-8B-Instruct": str(DATA / "llama-3.1-8b")}
PROFILE = load_profile(ROOT / "profiles" / "llama-3.1-8b_a100-80gb_tp1.toml")
VLLM_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # prometheus_client's CONTENT_TYPE_LATEST


def shape(text: str) -> dict[str, dict[str, Any]]:
    """Per family: type, the label names of its series, and the bucket bounds of a histogram."""
    out: dict[str, dict[str, Any]] = {}
    for fam in text_string_to_metric_families(text):
        labels = {tuple(sorted(k for k in s.labels if k != "le")) for s in fam.samples}
        buckets = sorted({float(s.labels["le"]) for s in fam.samples if s.name.endswith("_bucket")})
        out[fam.name] = {"type": fam.type, "labels": sorted(labels), "buckets": buckets}
    return out


def info_labels(text: str) -> dict[str, str]:
    for fam in text_string_to_metric_families(text):
        if fam.name == "vllm:cache_config_info":
            (sample,) = fam.samples
            return dict(sample.labels)
    raise AssertionError("no vllm:cache_config_info")


@pytest.fixture
async def fake_metrics() -> AsyncIterator[tuple[str, str]]:
    s = FakeVllm(PROFILE, "llama-8b", speedup=50)
    await s.start("127.0.0.1", 0, startup_s=0.0)
    try:
        async with aiohttp.ClientSession() as h:
            body = {"prompt": "hi", "max_tokens": 3}
            async with h.post(s.url + "/v1/completions", json=body) as r:
                assert r.status == 200
            async with h.get(s.url + "/metrics") as r:
                yield await r.text(), r.headers["Content-Type"]
    finally:
        await s.stop()


def _vllm_text(probe: Callable[..., Any], tmp_path: Path) -> str:
    (argv,) = [a for label, a in rendered_commands(tmp_path) if label == "chirond.toml:llama-8b:chirond"]
    return str(probe("metrics", {"argv": argv, "models": MODELS, "num_gpu_blocks": PROFILE.kv_blocks})["text"])


async def test_metric_families_labels_and_buckets_match(
        fake_metrics: tuple[str, str], probe: Callable[..., Any], tmp_path: Path) -> None:
    text, content_type = fake_metrics
    assert content_type == VLLM_CONTENT_TYPE
    vllm_text = _vllm_text(probe, tmp_path)
    ours, theirs = shape(text), shape(vllm_text)
    vllm_families = {n for n in theirs if n.startswith("vllm:")}
    assert sorted(vllm_families - set(ours)) == [], "families vLLM emits that fake-vllm lacks"
    assert sorted(n for n in ours if n.startswith("vllm:") and n not in theirs) == [], "families vLLM lacks"
    diffs = {n: (ours[n], theirs[n]) for n in sorted(vllm_families & set(ours)) if ours[n] != theirs[n]}
    assert diffs == {}
    # cache_config_info: the same labels with the values vLLM resolves for chirond's flags.
    assert info_labels(text) == info_labels(vllm_text)
