"""The OpenAI-compatible HTTP surface (aiohttp): auth, parsing, admission, and the relay of each
request to the instance the dispatcher gives it.

Upstream, every request is streamed (the proxy sees the first token, and can resume or assemble);
the client gets a stream or one JSON body, as it asked. Semantics (docs/serving.md):
- an instance that fails before the first byte reaches the client: the request is retried on
  another instance (up to `api.max_retries` times);
- a batch-class request evicted for an interactive one: its upstream request is aborted and it is
  queued again; it later resumes from the text it had generated (preemption by recompute), so the
  client sees one answer; the GPU work of the evicted attempt is what is lost;
- a stream whose instance dies mid-way (or is evicted and cannot resume) ends with an error event;
- a client that disconnects aborts its upstream request (aiohttp cancels the handler).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from chirond import __version__
from chirond.config import Config
from chirond.metrics import Metrics
from chirond.model import ReqClass, Request
from chirond.ops import status_page
from chirond.serve import openai_api as oa
from chirond.serve import request_id
from chirond.serve import responses_request as rq
from chirond.serve import responses_stream as rs
from chirond.serve.embeddings import EMBEDDINGS, check_task, parse_embeddings
from chirond.serve.gateway import Gateway, Job
from chirond.serve.http_errors import error_middleware
from chirond.serve.tokenize_api import TokenizeRoutes
from chirond.serve.unavailable import Unavailable

CHAT, COMPLETIONS, RESPONSES = "chat", "completions", rq.RESPONSES
_PATHS = {CHAT: "/v1/chat/completions", COMPLETIONS: "/v1/completions", RESPONSES: "/v1/responses",
          EMBEDDINGS: "/v1/embeddings"}
_JSON = {"Content-Type": "application/json"}
# Response headers of an answered request (docs/serving.md): seconds from arrival at chirond to an
# instance slot, and the part of it spent while no instance of the model was ready (a cold start).
QUEUE_HEADER = "X-Chirond-Queue-Seconds"
START_HEADER = "X-Chirond-Start-Wait-Seconds"


class Upstream(Protocol):
    """Where requests go (the daemon's fleet)."""

    def instance_url(self, inst_id: int) -> str | None: ...

    def instance_failed(self, inst_id: int, reason: str) -> None: ...

    def upstream_priority(self, inst_id: int, req: Request) -> int | None: ...

    def unavailable(self, model: str) -> Unavailable | None: ...


class RequestHooks(Protocol):
    """Quotas before a request queues and accounting as it goes (the daemon's accounting)."""

    def admit(self, user: str, parsed: oa.ParsedRequest, cls: ReqClass) -> None: ...

    def on_arrival(self, job: Job) -> None: ...

    def on_first_token(self, job: Job) -> None: ...

    def on_finished(self, job: Job, outcome: str) -> None: ...


class StatusSource(Protocol):
    def model_status(self) -> list[dict[str, Any]]: ...

    def health(self) -> dict[str, Any]: ...


class _ClientGone(Exception):
    """The client hung up while we wrote to it: not the instance's fault."""


@dataclass
class _Outcome:
    kind: str  # "done" | "whole" (an unstreamed answer, in upstream_body) | "retry" (nothing reached the
    # upstream client yet) | "broken" | "error"
    error: oa.ApiError | None = None
    upstream_status: int = 0
    upstream_body: bytes = b""


class _ClientSide:
    """The client's half of one request: a stream opened at the first byte, or one JSON body."""

    def __init__(self, request: web.Request | None, parsed: oa.ParsedRequest) -> None:
        self.request = request  # None for a batch line: never streamed, the body is the answer
        self.parsed = parsed
        self.resp: web.StreamResponse | None = None
        self.acc = oa.StreamAccumulator()  # what the client has seen, over every attempt
        self.events: rs.EventAccumulator | None = None  # a Responses stream: the current attempt's events
        self.resume: oa.Resume | None = None  # set when an attempt continues a cut one
        self.headers: dict[str, str] = {}  # added to the response (queue time) once known
        self.data_sent = False

    @property
    def started(self) -> bool:
        """The client has seen data (keep-alive comments do not count): a retry would show."""
        return self.data_sent

    async def _open(self) -> web.StreamResponse:
        if self.resp is None:
            assert self.request is not None
            resp = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **self.headers}
            )
            await resp.prepare(self.request)
            self.resp = resp
        return self.resp

    async def send(self, frames: list[bytes], eof: bool = False) -> None:
        try:
            resp = await self._open()
            if frames:
                self.data_sent = True
            if eof:
                await resp.write_eof(b"".join(frames))
            elif frames:
                await resp.write(b"".join(frames))
        except ConnectionError as e:  # aiohttp's ClientConnectionResetError is one too
            raise _ClientGone from e

    async def comment(self, text: str) -> None:
        """An SSE comment (clients skip it): opens the stream, so the headers go out at once."""
        try:
            resp = await self._open()
            await resp.write(b": " + text.replace("\n", " ").encode() + b"\n\n")
        except ConnectionError as e:
            raise _ClientGone from e


class ProxyApi:
    def __init__(
        self,
        config: Config,
        gateway: Gateway,
        upstream: Upstream,
        hooks: RequestHooks,
        status: StatusSource,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        verify_key: Callable[[str], str | None] = lambda key: None,
    ) -> None:
        self.cfg = config
        self.api = config.api
        self.gateway = gateway
        self.upstream = upstream
        self.hooks = hooks
        self.status = status
        self.metrics = metrics
        self.clock = clock
        self.verify_key = verify_key  # bearer key -> user name, or None
        self.accepting = True
        self.session: aiohttp.ClientSession | None = None

    async def start(self, engine_key: str) -> None:
        """The client session to the engines, which demand `engine_key`."""
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=600),
            headers={**_JSON, "Authorization": f"Bearer {engine_key}"},
        )

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()

    def app(self, *more_routes: Callable[[web.Application], None]) -> web.Application:
        """The aiohttp application; `more_routes` add their routes (the Files and Batches API)."""
        limit = self.api.max_body_bytes
        app = web.Application(client_max_size=limit, middlewares=[error_middleware(limit)])
        request_id.install(app, self._answered)  # outermost: ids and the access line for every answer, errors too
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_post("/v1/embeddings", self.embeddings)
        TokenizeRoutes(self).add_routes(app)  # /tokenize, /detokenize
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/v1/models/{model:.+}", self.model)  # names may hold '/' (org/name)
        app.router.add_get("/health", self.health)
        app.router.add_get("/", self.status_page)
        app.router.add_get("/metrics", self.prom)
        for add_routes in more_routes:
            add_routes(app)
        return app

    # ---------------------------------------------------------------- plumbing

    def _answered(self, fields: dict[str, Any]) -> None:
        code = fields.get("error_code")
        if code is not None:
            self.metrics.http_errors.labels(str(code)).inc()

    def authenticate(self, request: web.Request) -> str:
        """The caller's name (the key's name), or raise 401."""
        if self.api.auth == "open":
            return "anonymous"
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() == "bearer" and key:
            user = self.verify_key(key.strip())
            if user is not None:
                return user
        raise oa.ApiError.unauthorized()

    # ---------------------------------------------------------------- read-only routes

    async def models(self, request: web.Request) -> web.Response:
        self.authenticate(request)
        return web.json_response({"object": "list", "data": self.status.model_status()})

    async def model(self, request: web.Request) -> web.Response:
        """One entry of /v1/models (OpenAI's `models.retrieve`); 404 for a name chirond does not serve."""
        self.authenticate(request)
        name = request.match_info["model"]
        entries = self.status.model_status()
        for entry in entries:
            if entry.get("id") == name:
                return web.json_response(entry)
        raise oa.ApiError.unknown_model(name, [str(e.get("id")) for e in entries])

    async def status_page(self, request: web.Request) -> web.Response:
        """For people: no key needed, as /metrics and /health (it shows no user's data)."""
        page = status_page.render(self.status.model_status(), self.metrics.attainment, self.status.health(),
                                  __version__, time.time())
        return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-store"})

    async def health(self, request: web.Request) -> web.Response:
        body = self.status.health()
        return web.json_response(body, status=200 if self.accepting else 503)

    async def prom(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # ---------------------------------------------------------------- generation

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, CHAT)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, COMPLETIONS)

    async def responses(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, RESPONSES)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, EMBEDDINGS)

    async def _generate(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        user = self.authenticate(request)
        if not self.accepting:
            raise oa.ApiError.unavailable("chirond is shutting down", self.api.retry_after_s)
        raw = await request.read()
        ctype, limit = request.headers.get("Content-Type"), self.api.max_body_bytes
        if endpoint == RESPONSES:
            parsed = rq.parse_responses(raw, ctype, limit)
        elif endpoint == EMBEDDINGS:
            parsed = parse_embeddings(raw, ctype, limit)
        else:
            parsed = oa.parse_request(endpoint, raw, ctype, limit)
        request.get("access", {}).update({"user": user, "model": parsed.model})
        if parsed.model not in self.cfg.models:
            raise oa.ApiError.unknown_model(parsed.model, sorted(self.cfg.models))
        check_task(endpoint, parsed.model, self.cfg.models[parsed.model].task)
        cls = oa.request_class(parsed, request.headers.get(self.api.batch_header))
        request.get("access", {})["class"] = cls.value
        why = self.upstream.unavailable(parsed.model)
        if why is not None:  # at once: no point queueing for an instance that cannot come
            self.metrics.requests.labels(parsed.model, cls.value, "unavailable").inc()
            raise oa.ApiError.unavailable(why.message, why.retry_after_s, code=why.code)
        inter, batch = self.gateway.dispatcher.queued(parsed.model)
        limit = self.api.max_queue_interactive if cls is ReqClass.INTERACTIVE else self.api.max_queue_batch
        if (inter if cls is ReqClass.INTERACTIVE else batch) >= limit:
            self.metrics.requests.labels(parsed.model, cls.value, "rejected").inc()
            raise oa.ApiError.queue_full(parsed.model, cls.value, limit, self.api.retry_after_s)
        self.hooks.admit(user, parsed, cls)  # per-user quotas: raises a 429 ApiError
        req = self.gateway.new_request(
            parsed.model, cls, parsed.input_tokens, parsed.output_cap, self.api.batch_deadline_s
        )
        req.preemptible = parsed.preemptible
        client = _ClientSide(request, parsed)
        try:
            return await self._run(self.gateway.admit(req), client, user)
        except _ClientGone:
            return client.resp or web.Response(status=499)

    async def execute(self, parsed: oa.ParsedRequest, user: str, deadline: float) -> tuple[int, bytes]:
        """Run one batch line (not streamed; `deadline` on the daemon's clock) through the same
        queues, preemption, resume and retries as a client's request: (HTTP status, JSON body)."""
        try:
            m = self.cfg.models.get(parsed.model)
            if m is not None:
                check_task(parsed.endpoint, parsed.model, m.task)
            self.hooks.admit(user, parsed, ReqClass.BATCH)  # the same quotas as an HTTP request: 429 line
        except oa.ApiError as e:
            return e.status, json.dumps(e.body()).encode()
        req = self.gateway.new_request(parsed.model, ReqClass.BATCH, parsed.input_tokens, parsed.output_cap, None)
        req.deadline = deadline
        req.preemptible = parsed.preemptible
        try:
            resp = await self._run(self.gateway.admit(req), _ClientSide(None, parsed), user)
        except oa.ApiError as e:
            return e.status, json.dumps(e.body()).encode()
        assert isinstance(resp, web.Response) and isinstance(resp.body, bytes)
        return resp.status, resp.body

    async def _run(self, job: Job, client: _ClientSide, user: str) -> web.StreamResponse:
        """Serve an admitted job to the end, and account for it however it ends."""
        job.extra["user"] = user
        self.hooks.on_arrival(job)
        outcome = "error"
        try:
            resp = await self._serve(job, client)
            if job.req.finish is not None:
                outcome = "ok"
            return resp
        except (asyncio.CancelledError, _ClientGone):
            outcome = "cancelled"
            raise
        finally:
            if job.task is not None and not job.task.done():
                job.task.cancel()  # the client left: abort upstream
            self.gateway.finish(job)
            self.hooks.on_finished(job, outcome)
            if client.request is not None:
                client.request.get("access", {}).update(self._access_fields(job, user, outcome))

    def _access_fields(self, job: Job, user: str, outcome: str) -> dict[str, Any]:
        """What the access line says about a generation request (times in seconds on the daemon's clock)."""
        r, now = job.req, self.clock()
        return {"user": user, "model": r.model, "class": r.cls.value, "outcome": outcome,
                "tokens_in": r.input_tokens, "tokens_out": r.output_tokens if r.finish is not None else 0,
                "queue_s": None if r.dispatched is None else r.dispatched - r.arrival,
                "ttft_s": r.ttft, "e2e_s": (r.finish or now) - r.arrival, "instance": r.instance,
                "attempts": job.attempts}

    async def _serve(self, job: Job, client: _ClientSide) -> web.StreamResponse:
        parsed = client.parsed
        job.extra["cold"] = self._cold(job.req.model)
        while True:
            try:
                inst_id = await self._wait_for_turn(job, client)
            except oa.ApiError as err:
                return await self._fail(client, err)
            if job.attempts == 0:
                self._queue_headers(job, client)
            url = self.upstream.instance_url(inst_id)
            if url is None:  # gone between dispatch and now
                self.gateway.requeue(job)
                continue
            prio = self.upstream.upstream_priority(inst_id, job.req)
            body: bytes | None
            if parsed.endpoint == RESPONSES:  # never resumed: an attempt starts afresh while the client saw nothing
                body = rq.upstream_body(parsed, job.req.model, prio) if not client.started else None
                client.events = rs.EventAccumulator()
            elif client.resume is None:
                body = oa.upstream_body(parsed, job.req.model, prio)
            else:
                body = oa.resume_body(parsed, client.acc, job.req.model, prio)
            if body is None:
                return await self._fail(client, oa.ApiError.upstream("the request was interrupted and cannot resume"))
            job.attempts += 1
            job.interrupted = None
            out = await self._run_attempt(job, url + _PATHS[parsed.endpoint], body, client)
            if out is None:  # interrupted by the gateway: the job is already queued again
                if job.interrupted == "preempted" or not client.started:
                    client.resume = oa.Resume.after(client.acc, parsed, client.resume)
                    continue
                return await self._fail(client, oa.ApiError.upstream(f"instance {inst_id} was lost mid-stream"))
            if out.kind == "done":
                return await self._done(job, client)
            if out.kind == "whole":  # an unstreamed pass-through: vLLM's answer as it came
                job.req.finish = self.clock()
                return web.Response(body=out.upstream_body, status=200,
                                    headers={"Content-Type": "application/json", **client.headers})
            if out.kind == "error":  # the engine refused the request (e.g. too long): that is the answer
                if client.resp is not None:  # a stream opened while it waited: the answer as an error event
                    return await self._fail(client, _upstream_error(out.upstream_status, out.upstream_body))
                return web.Response(body=out.upstream_body, status=out.upstream_status,
                                    headers={"Content-Type": "application/json", **client.headers})
            self.upstream.instance_failed(inst_id, out.error.message if out.error else out.kind)
            if out.kind == "retry" and not client.started and job.attempts <= self.api.max_retries:
                self.metrics.retries.labels(parsed.model).inc()
                client.resume = oa.Resume.after(client.acc, parsed, client.resume)
                self.gateway.requeue(job)
                continue
            return await self._fail(client, out.error or oa.ApiError.upstream(f"instance {inst_id} failed"))

    def _wait_until(self, job: Job) -> float:
        """How long a job may wait for a slot: an interactive one its model's `max_wait_s` from its
        arrival (then afresh after a retry or a lost instance); a batch one until its deadline, at least."""
        now = self.clock()
        wait = self._max_wait(job.req.model)
        if job.req.cls is ReqClass.BATCH and job.req.deadline is not None:
            return max(job.req.deadline, now + wait)
        return job.req.arrival + wait if job.attempts == 0 else now + wait

    def _max_wait(self, model: str) -> float:
        m = self.cfg.models.get(model)
        return m.max_wait_s if m is not None and m.max_wait_s is not None else self.api.max_wait_s

    def _cold(self, model: str) -> bool:
        """No instance of `model` takes requests now: whoever asks waits for a start."""
        return not any(s.model == model and s.routable for s in self.gateway.dispatcher.slots.values())

    async def _wait_for_turn(self, job: Job, client: _ClientSide) -> int:
        """The instance slot the job gets, waited for in steps of `api.keepalive_s`: between steps, a
        model that can no longer start fails the request at once, and a stream still waiting for a
        start gets a comment with the model's state and ETA (the first one before any wait, so its
        headers go out at once). Raises ApiError (503) on either limit."""
        model = job.req.model
        live = client.request is not None  # batch lines wait for their deadline, whatever happens
        stream = live and client.parsed.stream and not client.started
        if stream and self._cold(model):
            await client.comment(self._waiting_line(model))
        while True:
            left = self._wait_until(job) - self.clock()
            if left <= 0:
                raise oa.ApiError.unavailable(
                    f"no capacity for model {model!r} within {self._max_wait(model):.0f} s", self.api.retry_after_s
                )
            try:
                # A stream sees bytes at least this often: proxies' 60-s idle timeouts do not cut it.
                return await self.gateway.wait_turn(job, min(left, self.api.keepalive_s))
            except TimeoutError:
                pass
            why = self.upstream.unavailable(model) if live else None
            if why is not None:
                raise oa.ApiError.unavailable(why.message, why.retry_after_s, code=why.code)
            if stream:
                await client.comment(self._waiting_line(model))

    def _waiting_line(self, model: str) -> str:
        st = next((m for m in self.status.model_status() if m.get("id") == model), {})
        eta = st.get("eta_s")
        q = st.get("queue") or {}
        return (f"chirond: waiting for an instance of {model}; state={st.get('state', '?')} "
                f"eta_s={'-' if eta is None else eta} queued={q.get('interactive', 0)}/{q.get('batch', 0)}")

    def _queue_headers(self, job: Job, client: _ClientSide) -> None:
        """The documented timing headers, once the job has its first slot."""
        r = job.req
        queued = max(0.0, (r.dispatched if r.dispatched is not None else self.clock()) - r.arrival)
        self.metrics.queue_wait.labels(r.model, r.cls.value).observe(queued)
        client.headers[QUEUE_HEADER] = f"{queued:.3f}"
        client.headers[START_HEADER] = f"{queued if job.extra.get('cold') else 0.0:.3f}"

    async def _run_attempt(self, job: Job, url: str, body: bytes, client: _ClientSide) -> _Outcome | None:
        """One attempt as a task of its own, so the gateway can interrupt it (cancel `job.task`:
        a batch request evicted, an instance lost) without cancelling the handler; None then.
        Running interactive attempts inline instead gained nothing measurable in benchmarks/proxy.py."""
        task: asyncio.Task[_Outcome] = asyncio.create_task(self._attempt(job, url, body, client))
        job.task = task
        await asyncio.wait([task])
        return None if task.cancelled() else task.result()

    async def _attempt(self, job: Job, url: str, body: bytes, client: _ClientSide) -> _Outcome:
        """One upstream request; relays its chunks to the client as they come (see openai_api)."""
        assert self.session is not None
        acc, resume, parsed = client.acc, client.resume, client.parsed
        # Fast path: an interactive stream is never preempted and never resumed, so after its first
        # token only the usage and error events need decoding; the rest is forwarded as it came.
        light = resume is None and parsed.stream and job.req.cls is ReqClass.INTERACTIVE
        got_any = False
        try:
            async with self.session.post(url, data=body) as up:
                if up.status != 200:
                    data = await up.read()
                    if up.status >= 500 or up.status in (401, 429):  # 401: it does not take our engine key
                        return _Outcome("retry", oa.ApiError.upstream(f"instance answered {up.status}"))
                    return _Outcome("error", upstream_status=up.status, upstream_body=data)
                if parsed.passthrough:
                    return await self._whole(job, up)
                if client.events is not None:
                    return await self._relay_events(job, up, client, client.events)
                parser = oa.SseParser()
                done = False
                async for data in up.content.iter_any():
                    frames: list[bytes] = []
                    for payload in parser.feed(data):
                        if payload == oa.DONE:
                            done = True
                            continue
                        if light and acc.first_content_seen and b'"usage"' not in payload and b'"error"' not in payload:
                            frames.append(oa.sse_frame(payload))
                            continue
                        chunk = oa.parse_chunk(payload)
                        if "error" in chunk:
                            err = oa.ApiError.from_error_object(chunk["error"])
                            return _Outcome("broken" if client.started else "retry", err)
                        got_any = True
                        out = payload if resume is None else oa.rewrite_chunk_for_client(payload, chunk, resume)
                        if out is None:
                            continue
                        if acc.feed(chunk) and job.req.first_token is None:
                            job.req.first_token = self.clock()
                            self.hooks.on_first_token(job)
                        if parsed.stream and (parsed.include_usage or not oa.is_usage_only(chunk)):
                            frames.append(oa.sse_frame(out))
                    if frames:
                        await client.send(frames)
                if not done:
                    kind = "broken" if client.started else "retry"
                    return _Outcome(kind, oa.ApiError.upstream("the instance closed the stream early"))
                return _Outcome("done")
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as e:
            kind = "broken" if (got_any and client.started) else "retry"
            return _Outcome(kind, oa.ApiError.upstream(f"instance connection failed: {e.__class__.__name__}"))
        except oa.ApiError as e:  # garbage from the instance
            return _Outcome("broken" if client.started else "retry", e)

    async def _whole(self, job: Job, up: aiohttp.ClientResponse) -> _Outcome:
        """An unstreamed answer, read whole; its first token is its last (no TTFT of its own). Its
        usage is the engine's count (an embedding's prompt tokens are all it bills)."""
        data = await up.read()
        try:
            usage = json.loads(data).get("usage") or {}
            job.req.output_tokens = int(usage.get("completion_tokens") or 0)
            if isinstance(usage.get("prompt_tokens"), int):
                job.req.input_tokens = usage["prompt_tokens"]
        except (ValueError, AttributeError, TypeError):
            return _Outcome("retry", oa.ApiError.upstream("the instance's answer is not JSON"))
        if job.req.first_token is None:
            job.req.first_token = self.clock()
            self.hooks.on_first_token(job)
        return _Outcome("whole", upstream_body=data)

    async def _relay_events(self, job: Job, up: aiohttp.ClientResponse, client: _ClientSide,
                            acc: rs.EventAccumulator) -> _Outcome:
        """A Responses stream: each event relayed as vLLM framed it (a streaming client), or kept until
        the terminal event's response object (a non-streaming one)."""
        parser = oa.SseParser()
        async for data in up.content.iter_any():
            frames: list[bytes] = []
            for payload in parser.feed(data):
                if payload == oa.DONE:
                    continue
                event = oa.parse_chunk(payload)
                if acc.feed(event) and job.req.first_token is None:
                    job.req.first_token = self.clock()
                    self.hooks.on_first_token(job)
                if acc.error is not None:
                    return _Outcome("broken" if client.started else "retry", oa.ApiError.from_error_object(acc.error))
                if client.parsed.stream:
                    frames.append(rs.event_frame(event.get("type"), payload))
            if frames:
                await client.send(frames)
        if not acc.finished:
            kind = "broken" if client.started else "retry"
            return _Outcome(kind, oa.ApiError.upstream("the instance closed the stream early"))
        return _Outcome("done")

    async def _done(self, job: Job, client: _ClientSide) -> web.StreamResponse:
        job.req.finish = self.clock()
        if client.events is not None:
            job.req.output_tokens = client.events.tokens
            if client.parsed.stream:
                await client.send([], eof=True)
                assert client.resp is not None
                return client.resp
            return web.json_response(client.events.final, headers=client.headers)
        job.req.output_tokens = client.acc.tokens
        if client.parsed.stream:
            await client.send([oa.SSE_DONE], eof=True)
            assert client.resp is not None
            return client.resp
        return web.json_response(oa.assemble_response(client.parsed, client.acc, job.req.model), headers=client.headers)

    async def _fail(self, client: _ClientSide, err: oa.ApiError) -> web.StreamResponse:
        if client.resp is None:
            raise err
        events = client.events
        await client.send([oa.error_event(err) if events is None else rs.error_event(err, events.sequence)], eof=True)
        return client.resp


def _upstream_error(status: int, body: bytes) -> oa.ApiError:
    """An engine's error answer (vLLM: `{"object": "error", "message", "type", "code"}`, or OpenAI's
    `{"error": {...}}`) as an ApiError, for a client whose stream is already open."""
    try:
        obj = json.loads(body)
    except ValueError:
        return oa.ApiError.upstream(body.decode(errors="replace")[:200] or f"instance answered {status}", status)
    err = obj.get("error", obj) if isinstance(obj, dict) else obj
    if isinstance(err, dict) and not isinstance(err.get("code"), int):
        err = {**err, "code": status}
    return oa.ApiError.from_error_object(err, status)
