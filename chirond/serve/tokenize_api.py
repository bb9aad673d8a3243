"""POST /tokenize and /detokenize (vLLM's routes) through chirond: the caller's key, a served
`model`, then vLLM's answer from a ready instance of that model, as it came.

They skip the queues: tokenizing takes the engine's tokenizer, not a GPU slot, so it neither waits
for one nor counts against quotas, usage or the SLO figures. A model with no ready instance
answers 503 with its state and Retry-After instead of starting one. On engines, the routes need
chirond's engine key (chirond/engine_guard.py), so this is the only way in."""

from __future__ import annotations

from typing import Any, Protocol

import aiohttp
from aiohttp import web

from chirond.config import ApiConfig, Config
from chirond.serve import openai_api as oa
from chirond.serve.gateway import Gateway
from chirond.serve.openai_request import _is_token_ids, _load_object, _media_type_ok, _show
from chirond.serve.unavailable import Unavailable


class _Upstream(Protocol):
    def instance_url(self, inst_id: int) -> str | None: ...

    def unavailable(self, model: str) -> Unavailable | None: ...


class _Status(Protocol):
    def model_status(self) -> list[dict[str, Any]]: ...


class Proxy(Protocol):
    """What the routes use of chirond.serve.api.ProxyApi (which adds them to its app)."""

    @property
    def cfg(self) -> Config: ...
    @property
    def api(self) -> ApiConfig: ...
    @property
    def gateway(self) -> Gateway: ...
    @property
    def upstream(self) -> _Upstream: ...
    @property
    def status(self) -> _Status: ...
    @property
    def session(self) -> aiohttp.ClientSession | None: ...
    @property
    def accepting(self) -> bool: ...

    def authenticate(self, request: web.Request) -> str: ...

_JSON = {"Content-Type": "application/json"}


def check_tokenize(path: str, body: oa.Json) -> str:
    """The request's model, after vLLM's checks of its shape (TokenizeRequest, DetokenizeRequest):
    /tokenize takes `prompt` (a string) or `messages`; /detokenize `tokens` (integers >= 0)."""
    model = body.get("model")
    if model is None:
        raise oa.ApiError.missing("model", "the name of a served model")
    if not isinstance(model, str) or not model:
        raise oa.ApiError.invalid("model", f"'model' must be a non-empty string, got {_show(model)}.")
    if path == "/detokenize":
        tokens = body.get("tokens")
        if tokens is None:
            raise oa.ApiError.missing("tokens", "an array of token ids")
        if tokens != [] and not _is_token_ids(tokens):
            raise oa.ApiError.invalid("tokens", f"'tokens' must be an array of integers >= 0, got {_show(tokens)}.")
    elif body.get("messages") is not None:
        msgs = body["messages"]
        if not isinstance(msgs, list) or not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in msgs):
            raise oa.ApiError.invalid("messages", "'messages' must be an array of messages with a 'role'.")
    elif not isinstance(body.get("prompt"), str):
        if body.get("prompt") is None:
            raise oa.ApiError.missing("prompt", "a string (or 'messages' for a conversation)")
        raise oa.ApiError.invalid("prompt", f"'prompt' must be a string, got {_show(body['prompt'])}.")
    return model


class TokenizeRoutes:
    """The two routes, on the proxy's auth, config, dispatcher view and engine session."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/tokenize", self.relay)
        app.router.add_post("/detokenize", self.relay)

    def _instances(self, model: str) -> list[int]:
        """Ready instances of `model`, least loaded first."""
        slots = [s for s in self.proxy.gateway.dispatcher.slots.values() if s.model == model and s.routable]
        return [s.id for s in sorted(slots, key=lambda s: s.inflight / max(1, s.cap))]

    async def relay(self, request: web.Request) -> web.Response:
        p = self.proxy
        user = p.authenticate(request)
        if not p.accepting:
            raise oa.ApiError.unavailable("chirond is shutting down", p.api.retry_after_s)
        raw = await request.read()
        if len(raw) > p.api.max_body_bytes:
            raise oa.ApiError.too_large(p.api.max_body_bytes, len(raw))
        if not _media_type_ok(request.headers.get("Content-Type")):
            raise oa.ApiError.unsupported_media_type(request.headers.get("Content-Type"))
        model = check_tokenize(request.path, _load_object(raw))
        request.get("access", {}).update({"user": user, "model": model})
        if model not in p.cfg.models:
            raise oa.ApiError.unknown_model(model, sorted(p.cfg.models))
        assert p.session is not None
        for inst_id in self._instances(model)[: p.api.max_retries + 1]:
            url = p.upstream.instance_url(inst_id)
            if url is None:
                continue
            try:
                # a tokenizer answers at once: a hung engine must not hold the client for the
                # session's 600-s read timeout
                timeout = aiohttp.ClientTimeout(total=p.api.body_timeout_s)
                async with p.session.post(url + request.path, data=raw, timeout=timeout) as up:
                    data = await up.read()
                    if up.status < 500 and up.status not in (401, 429):  # vLLM's answer, 4xx included
                        return web.Response(body=data, status=up.status, headers=_JSON)
            except (aiohttp.ClientError, TimeoutError, ConnectionError):
                pass  # the next instance, if any
        raise self._not_ready(model)

    def _not_ready(self, model: str) -> oa.ApiError:
        p = self.proxy
        why = p.upstream.unavailable(model)
        if why is not None:
            return oa.ApiError.unavailable(why.message, why.retry_after_s, code=why.code)
        st = next((m for m in p.status.model_status() if m.get("id") == model), {})
        eta = st.get("eta_s")
        return oa.ApiError.unavailable(
            f"no instance of {model!r} is ready to tokenize (state {st.get('state', '?')}"
            f"{'' if eta is None else f', eta_s {eta}'}); tokenizing does not start one: retry later, or "
            "send a request that does", p.api.retry_after_s if eta is None else max(1.0, float(eta)),
            code="model_not_ready")
