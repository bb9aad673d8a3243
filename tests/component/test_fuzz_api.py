"""Fuzzing chirond's HTTP routes from their OpenAPI description (docs/openapi.json) with
hypothesis, a bounded number of examples: whatever the body, the answer is never a 5xx and every
error is OpenAI-shaped JSON. The description itself must name only routes the app serves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chirond.daemon import Daemon
from chirond.lax_values import lax_int
from tests.support.config import make_config
from tests.support.paths import ROOT

SPEC = json.loads((ROOT / "docs" / "openapi.json").read_text())
MODEL = "llama-8b"
BASE = {
    "/v1/chat/completions": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    "/v1/completions": {"model": MODEL, "prompt": "hi", "max_tokens": 2},
    "/v1/responses": {"model": MODEL, "input": "hi", "max_output_tokens": 2},
    "/v1/embeddings": {"model": MODEL, "input": "hi"},  # parsed, then 400: llama-8b is generative
    "/tokenize": {"model": MODEL, "prompt": "hi"},
    "/detokenize": {"model": MODEL, "tokens": [1, 2]},
    "/v1/batches": {"input_file_id": "file-x", "endpoint": "/v1/chat/completions", "completion_window": "24h"},
}
JSON_ROUTES = sorted(p for p, ops in SPEC["paths"].items() if "requestBody" in ops.get("post", {})
                     and "application/json" in ops["post"]["requestBody"]["content"])

scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                           max_size=4), max_leaves=12)
raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),  # deep nesting
    st.sampled_from([b'{"model": "\\ud800"}', b"{", b"null", b"[]", b'{"a": NaN}', b"\xff\xfe"]),
)


def mutated(route: str) -> st.SearchStrategy[bytes]:
    """The route's valid body with one key set to anything (or removed), as JSON."""
    base = BASE[route]
    keys = st.sampled_from([*base, *SPEC["paths"][route]["post"]["requestBody"]["content"]["application/json"]
                            ["schema"].get("properties", {}), "metadata", "zzz"])

    def build(key: str, value: Any, drop: bool) -> bytes:
        body = dict(base)
        if drop:
            body.pop(key, None)
        else:
            body[key] = value
        # Keep answers short.
        for cap in ("max_tokens", "max_completion_tokens", "max_output_tokens", "n", "best_of", "min_tokens"):
            n = lax_int(body.get(cap))  # "100" counts too: chirond and vLLM read it as 100
            if n is not None and n > 2:
                body[cap] = 2
        return json.dumps(body).encode()

    return st.builds(build, keys, values, st.booleans())


_daemons: dict[int, Daemon] = {}


def assert_shaped(status: int, ctype: str, body: bytes, what: object) -> None:
    assert status < 500, (status, body[:300], what)
    if status >= 400:
        assert ctype == "application/json", (status, ctype, body[:300], what)
        err = json.loads(body)["error"]
        assert isinstance(err["message"], str) and err["message"] and "type" in err and "code" in err, what


def test_the_description_names_only_routes_the_app_serves(tmp_path: Path) -> None:
    d = Daemon(make_config(tmp_path))
    app = d.api.app(d.batch.http.add_routes)
    served = {(r.method.lower(), r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    described = {(m, p) for p, ops in SPEC["paths"].items() for m in ops}
    assert described <= served, described - served
    assert JSON_ROUTES == ["/detokenize", "/tokenize", "/v1/batches", "/v1/chat/completions", "/v1/completions",
                           "/v1/embeddings", "/v1/responses"]


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
async def test_fuzzed_bodies_never_get_a_5xx_or_an_unshaped_error(daemon_factory: Any, data: st.DataObject) -> None:
    d = _daemons.get(id(daemon_factory))  # one daemon for all examples (the fixture is the same object)
    if d is None:
        d = _daemons[id(daemon_factory)] = await daemon_factory(model__sim_speedup=50.0)
    route = data.draw(st.sampled_from(JSON_ROUTES))
    body = data.draw(st.one_of(mutated(route), raw_bodies))
    ctype = data.draw(st.sampled_from(["application/json", "application/json", "text/plain", ""]))
    headers = {"Content-Type": ctype} if ctype else {}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        async with s.post(f"http://127.0.0.1:{d.port}{route}", data=body, headers=headers) as r:
            assert_shaped(r.status, r.content_type, await r.read(), (route, body[:200]))
        form = aiohttp.FormData()
        form.add_field("purpose", data.draw(st.sampled_from(["batch", "fine-tune", ""])))
        form.add_field("file", data.draw(raw_bodies), filename="x.jsonl")
        async with s.post(f"http://127.0.0.1:{d.port}/v1/files", data=form) as r:
            assert_shaped(r.status, r.content_type, await r.read(), "upload")
