"""`chirond fake-vllm`: a simulated vLLM server, for dry runs on CPU-only nodes and for tests.

It speaks vLLM 0.33's HTTP API (OpenAI completions and chat, SSE streaming, /v1/models, /health,
/version, /load, /metrics with vLLM's metric names) and answers with the latency of the project's
engine model (`chirond.engine.Engine`) run in real time, `speedup` times faster than the wall clock.
The text is filler (4-character words, one token each); lengths and timings are what matter.

In-process use (tests, the demo)::

    server = FakeVllm(load_profile("profiles/llama-3.1-8b_a100-80gb_tp1.toml"), "llama-8b", speedup=20)
    await server.start("127.0.0.1", 0)           # port 0: pick a free one; see server.port / server.url
    ...                                          # talk to server.url, e.g. with openai.AsyncOpenAI
    await server.stop(shutdown_timeout=0.0)      # 0: abort in-flight requests; N > 0: drain up to N s

`FakeVllm(profile, model, *, speedup=1.0, max_num_seqs=None, max_num_batched_tokens=None,
scheduling_policy="fcfs", max_model_len=131072, api_keys=(), seed=0, min_emit_interval=0.005)`;
`profile` is a `Profile` or a path. `app()` returns the bare `aiohttp.web.Application` for callers
that run it themselves: pass `handler_cancellation=True` to the runner, or client disconnects will
not abort requests in the engine. Several servers may live in one process (each has its own
Prometheus registry).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from aiohttp import web
from prometheus_client import generate_latest

from chirond.engine import Engine
from chirond.engine_guard import authorized
from chirond.fakevllm import pooling, synthetic, tokenizer
from chirond.fakevllm.driver import Driver, Live
from chirond.fakevllm.lengths import natural_length
from chirond.fakevllm.metrics import ServerMetrics
from chirond.fakevllm.protocol import VLLM_VERSION, ApiError, GenParams, Render, context_error, parse_generate
from chirond.fakevllm.responses import ResponsesRender, parse_responses
from chirond.model import ReqClass, Request
from chirond.profiles import Profile, ProfileError, find_profile, load_profile

log = logging.getLogger("chirond.fakevllm")
uvicorn_log = logging.getLogger("chirond.fakevllm.uvicorn")  # the lines uvicorn prints under vLLM

DESCRIPTION = (
    "Run a simulated vLLM server for dry runs: no GPU, no model weights. It serves vLLM's OpenAI-compatible "
    "API, /health, /metrics (vLLM's metric names) and SIGTERM semantics, and times every request with "
    "chirond's engine model of the given performance profile (continuous batching, chunked prefill, KV "
    "cache, preemption), so a deployment of chirond can be tried on CPU-only nodes. Answers are filler text "
    "of the right length. --speedup K runs the engine K times faster than the wall clock. See docs/fake-vllm.md."
)

DEFAULT_MAX_MODEL_LEN = 131072
DEFAULT_EMBEDDING_SIZE = 4096  # the hidden size of Llama 3.1 8B: its vectors under vLLM's --convert embed
RUNNERS = ("generate", "pooling")
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STOP_GRACE_S = 0.05  # how long stop() lets a handler finish what it is writing before cancelling it
STATS_LOG_INTERVAL_S = 10.0  # vLLM's VLLM_LOG_STATS_INTERVAL

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeVllm:
    def __init__(
        self,
        profile: Profile | str | Path,
        model: str,
        *,
        speedup: float = 1.0,
        max_num_seqs: int | None = None,
        max_num_batched_tokens: int | None = None,
        scheduling_policy: str = "fcfs",
        max_model_len: int = DEFAULT_MAX_MODEL_LEN,
        api_keys: Sequence[str] = (),
        seed: int = 0,
        min_emit_interval: float = 0.005,
        runner: str = "generate",
        embedding_size: int = DEFAULT_EMBEDDING_SIZE,
    ) -> None:
        if not isinstance(profile, Profile):
            profile = load_profile(profile)
        if speedup <= 0:
            raise ValueError(f"speedup must be positive, got {speedup}")
        if scheduling_policy not in ("fcfs", "priority"):
            raise ValueError(f"scheduling_policy must be 'fcfs' or 'priority', got {scheduling_policy!r}")
        if runner not in RUNNERS:
            raise ValueError(f"runner must be one of {', '.join(RUNNERS)}, got {runner!r}")
        self.profile = profile
        self.model = model
        self.runner = runner  # vLLM's --runner: "generate" (chat, completions) or "pooling" (embeddings)
        self.embedding_size = embedding_size
        self.speedup = speedup
        self.max_model_len = max_model_len
        self.seed = seed
        self.priority = scheduling_policy == "priority"
        self.engine = Engine(profile, max_num_seqs, max_num_batched_tokens, priority=self.priority)
        self.metrics = ServerMetrics(model, max_model_len, profile.block_tokens, profile.kv_blocks,
                                     lambda: self.driver.sample())  # the driver is made next
        self.driver = Driver(self.engine, speedup, self.metrics, min_emit_interval)
        self.registry = self.metrics.registry()
        self._keys = tuple(api_keys)
        self.draining = False
        self.host = "127.0.0.1"
        self.port: int | None = None
        self._handlers = 0  # generation handlers running
        self._runner: web.AppRunner | None = None
        self._stats_task: asyncio.Task[None] | None = None
        self._created = int(time.time())

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def in_flight(self) -> int:
        """Generation requests being served (what /load reports)."""
        return self._handlers

    # ---------------------------------------------------------------- the application

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors, self._auth], client_max_size=64 * 1024**2)
        r = app.router
        # As vLLM registers them: generation routes on a generative model, /v1/embeddings on a
        # pooling one (the other kind's routes answer 404 Not Found); tokenizing on both.
        if self.runner == "pooling":
            r.add_post("/v1/embeddings", self._embeddings)
        else:
            r.add_post("/v1/chat/completions", self._chat)
            r.add_post("/v1/completions", self._completions)
            r.add_post("/v1/responses", self._responses)
        r.add_post("/tokenize", self._tokenize)
        r.add_post("/detokenize", self._detokenize)
        r.add_get("/v1/models", self._models)
        r.add_get("/health", self._health)
        r.add_route("*", "/ping", self._health)
        r.add_get("/version", self._version)
        r.add_get("/load", self._load)
        r.add_get("/metrics", self._metrics)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as e:
            return e.response()
        except web.HTTPNotFound:
            return web.json_response({"detail": "Not Found"}, status=404)  # FastAPI's body
        except web.HTTPMethodNotAllowed:
            return web.json_response({"detail": "Method Not Allowed"}, status=405)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # The rule chirond's engine guard adds to vLLM (chirond/engine_guard.py): with a key, every
        # path but /health and /metrics needs it (vLLM alone checks only /v1, /v2, ...).
        if self._keys and not authorized(request.path, request.headers.get("Authorization"), self._keys):
            return web.json_response({"error": "Unauthorized"}, status=401)
        return await handler(request)

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": VLLM_VERSION})

    async def _load(self, request: web.Request) -> web.Response:
        return web.json_response({"server_load": self._handlers})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def _models(self, request: web.Request) -> web.Response:
        perm = {"id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission", "created": self._created,
                "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                "organization": "*", "group": None, "is_blocking": False}
        card = {"id": self.model, "object": "model", "created": self._created, "owned_by": "vllm",
                "root": self.profile.model, "parent": None, "max_model_len": self.max_model_len,
                "permission": [perm]}
        return web.json_response({"object": "list", "data": [card]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    # ---------------------------------------------------------------- generation

    async def _body(self, request: web.Request) -> object:
        if self.draining:
            raise ApiError(503, "The server is shutting down and cannot accept new requests.")
        media = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if media != "application/json":
            raise ApiError(400, "Unsupported Media Type: Only 'application/json' is allowed")
        try:
            return await request.json()
        except ValueError as e:
            raise ApiError(400, f"JSON decode error: {e}") from None

    async def _read(self, request: web.Request, chat: bool) -> GenParams:
        return parse_generate(await self._body(request), chat=chat, served_model=self.model,
                              header_request_id=request.headers.get("X-Request-Id"),
                              default_request_id=uuid.uuid4().hex)

    def _plan(self, p: GenParams) -> tuple[int, str, int]:
        """(output tokens, finish reason, max tokens) for a request, or the context-length error."""
        room = self.max_model_len - p.prompt_tokens
        if room < 1:
            raise context_error(self.max_model_len, p.prompt_tokens)
        # vLLM 0.33: chat without a cap gets whatever the context leaves; a cap beyond it is shortened.
        max_tokens = room if p.max_tokens is None else min(p.max_tokens, room)
        if p.forced is not None:  # a tool call's arguments or schema-bound JSON: its own length
            need = len(synthetic.tokens_of(p.forced))
            if need > max_tokens:
                return max_tokens, "length", max_tokens
            return need, "stop", max_tokens  # the engine's reason; the answer says "tool_calls" (Render)
        if p.ignore_eos:
            return max_tokens, "length", max_tokens
        natural = max(p.min_tokens, natural_length(self.seed, p.prompt_key))
        if natural > max_tokens:
            return max_tokens, "length", max_tokens
        return natural, "stop", max_tokens

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        return web.json_response(tokenizer.tokenize(body, served_model=self.model, max_model_len=self.max_model_len))

    async def _detokenize(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        return web.json_response(tokenizer.detokenize(body, served_model=self.model))

    async def _embeddings(self, request: web.Request) -> web.Response:
        """One engine request for all the inputs: a prefill of their tokens and no decoding."""
        p = pooling.parse_embed(await self._body(request), served_model=self.model, max_model_len=self.max_model_len,
                                embedding_size=self.embedding_size,
                                header_request_id=request.headers.get("X-Request-Id"),
                                default_request_id=uuid.uuid4().hex)
        d = self.driver
        cls = ReqClass.BATCH if self.priority and p.priority > 0 else ReqClass.INTERACTIVE
        # One output token: the engine model finishes a request at its first token, as pooling does.
        r = Request(d.new_id(), self.model, cls, d.now(), max(1, sum(p.tokens)), 1, priority=p.priority)
        live = Live(r, False, "stop")
        self._handlers += 1
        d.submit(live)
        try:
            while not live.done:
                await live.wait()
            if live.reason == "abort":
                raise ApiError(503, "The request was aborted: the server is shutting down.")
            return web.json_response(pooling.embed_response(p, self.model, self.embedding_size))
        finally:
            self._handlers -= 1
            d.abort(live)

    def _submit(self, p: GenParams, observe_n: int | None = 1) -> tuple[Live, int]:
        """Plan a request (one sequence) and hand it to the engine: (its Live, the max_tokens it runs
        with). `observe_n`: the request's n for vLLM's histogram, once per request."""
        output, reason, max_tokens = self._plan(p)
        self.metrics.max_tokens.observe(max_tokens)
        if observe_n is not None:
            self.metrics.params_n.observe(observe_n)
        d = self.driver
        # vLLM has no request classes: the engine orders by the request's priority alone.
        cls = ReqClass.BATCH if self.priority and p.priority > 0 else ReqClass.INTERACTIVE
        r = Request(d.new_id(), self.model, cls, d.now(), p.prompt_tokens, output, priority=p.priority)
        live = Live(r, p.stream, reason)
        self._handlers += 1
        d.submit(live)
        return live, max_tokens

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        p = parse_responses(body, served_model=self.model, header_request_id=request.headers.get("X-Request-Id"),
                            default_request_id=uuid.uuid4().hex)
        assert isinstance(body, dict)
        live, max_tokens = self._submit(p)
        render = ResponsesRender(p, body, self.model, int(time.time()), max_tokens)
        try:
            if p.stream:
                return await self._stream_events(request, live, render)
            while not live.done:
                await live.wait()
            if live.reason == "abort":
                raise ApiError(503, "The request was aborted: the server is shutting down.")
            return web.json_response(render.full(live.req.output_tokens, live.reason))
        finally:
            self._handlers -= 1
            self.driver.abort(live)

    async def _stream_events(self, request: web.Request, live: Live, render: ResponsesRender) -> web.StreamResponse:
        """A Responses stream: vLLM's event sequence, token deltas as the engine makes them."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        total = live.req.output_tokens
        sent = 0
        try:
            await resp.write(render.opening().encode())
            while True:
                n = live.avail
                if n > sent:
                    await resp.write(((render.item_open() if sent == 0 else "") + render.delta(sent, n)).encode())
                    sent = n
                if live.done:
                    break
                await live.wait()
            if live.reason == "abort":  # vLLM cuts the stream; a client sees it end without a terminal event
                return resp
            await resp.write(render.closing(total, live.reason).encode())
            await resp.write_eof()
        except ConnectionError:  # the client left; the caller aborts the request
            pass
        return resp

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        p = await self._read(request, chat)
        # n > 1: n sequences of the same prompt, each its own engine request (vLLM's n sequences take
        # n batch slots; this engine model has no prefix cache, so each prefills the prompt).
        lives = [self._submit(p, observe_n=p.n if i == 0 else None)[0] for i in range(p.n)]
        render = Render(p, self.model, int(time.time()))
        try:
            if p.stream:
                return await self._stream(request, lives, render)
            for live in lives:
                while not live.done:
                    await live.wait()
            if any(live.reason == "abort" for live in lives):
                raise ApiError(503, "The request was aborted: the server is shutting down.")
            return web.json_response(render.full([(live.req.output_tokens, live.reason) for live in lives]))
        finally:
            self._handlers -= len(lives)
            for live in lives:
                self.driver.abort(live)  # no-op once finished; otherwise the client left (or we stop)

    async def _stream(self, request: web.Request, lives: list[Live], render: Render) -> web.StreamResponse:
        """Chunks as the engine makes tokens; with n > 1, each choice's chunks carry its index."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        sent = [0] * len(lives)
        while True:
            out = []
            for i, live in enumerate(lives):
                n = live.avail
                if n > sent[i]:
                    final = live.done and n == live.req.output_tokens
                    chunk = render.chunk(sent[i], n, live.reason if final else None, index=i)
                    if sent[i] == 0 and render.p.chat:
                        chunk = render.role_chunk(index=i) + chunk
                    out.append(chunk)
                    sent[i] = n
            if out:
                try:
                    await resp.write("".join(out).encode())
                except ConnectionError:  # the client left; the caller aborts the request
                    return resp
            waiting = next((live for live in lives if not live.done), None)
            if waiting is None:
                break
            await waiting.wait()
        tail = b""
        if any(live.reason == "abort" for live in lives):  # vLLM reports errors after the 200 in-band
            tail = (b'data: {"error":{"message":"The request was aborted.","type":"ServiceUnavailableError",'
                    b'"param":null,"code":503}}\n\n')
        elif render.p.include_usage:
            tail = render.usage_chunk(sum(sent)).encode()
        with contextlib.suppress(ConnectionError):
            await resp.write(tail + b"data: [DONE]\n\n")
            await resp.write_eof()
        return resp

    # ---------------------------------------------------------------- lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 8000, startup_s: float = 0.0) -> None:
        """Simulate start-up for `startup_s` wall seconds (the port refuses connections meanwhile),
        then listen. Port 0 picks a free port (see `port`)."""
        p = self.profile
        log.info("vLLM API server version %s (simulated by chirond fake-vllm)", VLLM_VERSION)
        log.info("Simulating %s on %dx %s (profile %s), served as %r, speedup %g", p.model, p.tensor_parallel,
                 p.gpu, p.name, self.model, self.speedup)
        log.info("Simulated start-up: %.2f s to go", startup_s)
        if startup_s > 0:
            load_s = p.weights_gb / p.storage_gbps / self.speedup
            await asyncio.sleep(min(load_s, startup_s))
            log.info("Loading weights took %.2f seconds", min(load_s, startup_s))
            await asyncio.sleep(max(0.0, startup_s - load_s))
        kv = p.kv_capacity_tokens
        log.info("GPU KV cache size: %d tokens", kv)
        log.info("Maximum concurrency for %d tokens per request: %.2fx", self.max_model_len, kv / self.max_model_len)
        runner = web.AppRunner(self.app(), handle_signals=False, access_log=None, handler_cancellation=True,
                               shutdown_timeout=STOP_GRACE_S)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or ()
        self.host = host
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("Starting vLLM server on %s", self.url)
        log.info("Available routes are:")
        served = (("/v1/embeddings",) if self.runner == "pooling"
                  else ("/v1/chat/completions", "/v1/completions", "/v1/responses"))
        posts = (*served, "/tokenize", "/detokenize")
        for route in (*posts, "/v1/models", "/health", "/ping", "/version", "/load", "/metrics"):
            log.info("Route: %s, Methods: %s", route, "POST" if route in posts else "GET")
        uvicorn_log.info("Started server process [%d]", os.getpid())
        uvicorn_log.info("Waiting for application startup.")
        uvicorn_log.info("Application startup complete.")
        self._stats_task = asyncio.create_task(self._log_stats())

    async def stop(self, shutdown_timeout: float = 0.0) -> None:
        """vLLM's --shutdown-timeout: 0 aborts in-flight requests at once (their connections are
        dropped); N > 0 answers new requests 503 and lets running ones finish for up to N seconds."""
        self.draining = True
        log.info("[shutdown] API server: shutdown triggered")
        if shutdown_timeout > 0 and self._handlers:
            log.info("stopping engine client mode=drain timeout=%gs", shutdown_timeout)
            log.info("[shutdown] EngineCore: draining in-flight requests count=%d", self._handlers)
            deadline = time.monotonic() + shutdown_timeout
            while self._handlers and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if not self._handlers:
                log.info("request processing complete")
        if self._stats_task is not None:
            self._stats_task.cancel()
            self._stats_task = None
        if self._runner is not None:
            # Cancels the handlers still running; each aborts its request in the engine.
            await self._runner.cleanup()
            self._runner = None
        self.driver.abort_all()
        self.driver.close()
        uvicorn_log.info("Shutting down")

    async def _log_stats(self) -> None:
        """vLLM's periodic engine line, when there is something to say."""
        m, e = self.metrics, self.engine
        last_prompt, last_gen, last_t = m.prompt_tokens, 0, time.monotonic()
        while True:
            await asyncio.sleep(STATS_LOG_INTERVAL_S)
            t = time.monotonic()
            gen = e.generation_tokens_by(self.driver.now())
            dt = max(t - last_t, 1e-9)
            if gen != last_gen or e.running or e.waiting:
                log.info("Engine 000: Avg prompt throughput: %.1f tokens/s, Avg generation throughput: %.1f "
                         "tokens/s, Running: %d reqs, Waiting: %d reqs, GPU KV cache usage: %.1f%%, Prefix cache "
                         "hit rate: 0.0%%", (m.prompt_tokens - last_prompt) / dt, (gen - last_gen) / dt,
                         e.running, e.waiting, 100 * e.kv_usage)
            last_prompt, last_gen, last_t = m.prompt_tokens, gen, t


# ---------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--profile", required=True, metavar="PROFILE",
      help="performance profile: a TOML file or a shipped profile's name")
    a("--model", required=True, metavar="NAME", help="served model name (what clients put in 'model')")
    a("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    a("--port", type=int, default=8000, help="port to listen on (default 8000; 0 picks a free one)")
    a("--speedup", type=float, default=1.0, metavar="K",
      help="run the engine model K times faster than the wall clock (default 1)")
    a("--startup-s", type=float, default=None, metavar="S",
      help="simulated start-up before the port accepts connections, counted from the process's start, "
      "interpreter and imports included, as a real engine's (default: the profile's cold start / K)")
    a("--max-num-seqs", type=int, default=None, metavar="M", help="vLLM --max-num-seqs (default: the profile's)")
    a("--max-num-batched-tokens", type=int, default=None, metavar="T",
      help="vLLM --max-num-batched-tokens (default: the profile's)")
    a("--scheduling-policy", choices=("fcfs", "priority"), default="fcfs",
      help="vLLM --scheduling-policy; with priority, requests with priority <= 0 go first (default fcfs)")
    a("--max-model-len", type=int, default=DEFAULT_MAX_MODEL_LEN,
      help=f"context length in tokens (default {DEFAULT_MAX_MODEL_LEN})")
    a("--shutdown-timeout", type=float, default=0.0, metavar="S",
      help="on SIGTERM: 0 aborts in-flight requests at once (default); S > 0 refuses new ones with 503 and "
      "lets running ones finish for up to S seconds")
    a("--api-key", action="append", default=[], metavar="KEY",
      help="require 'Authorization: Bearer KEY' on every path but /health and /metrics, as chirond's engine "
      "guard makes vLLM do (repeatable; default: $VLLM_API_KEY)")
    a("--seed", type=int, default=0, help="seed of the simulated answer lengths (default 0)")
    a("--runner", choices=RUNNERS, default="generate",
      help="vLLM --runner: generate serves chat and completions (default); pooling serves /v1/embeddings")
    a("--embedding-size", type=int, default=DEFAULT_EMBEDDING_SIZE, metavar="N",
      help=f"length of the vectors of --runner pooling (default {DEFAULT_EMBEDDING_SIZE})")


def setup_logging() -> None:
    """vLLM's log line format on stderr, and uvicorn's for its own lines."""
    for logger, fmt in ((log, "%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s"),
                        (uvicorn_log, "%(levelname)s:     %(message)s")):
        if not logger.handlers:
            h = logging.StreamHandler(sys.stderr)
            h.setFormatter(logging.Formatter(fmt, datefmt="%m-%d %H:%M:%S"))
            logger.addHandler(h)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def main(args: argparse.Namespace) -> int:
    try:
        profile = load_profile(find_profile(args.profile))
    except ProfileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "embedding_size"):
        v = getattr(args, name)
        if v is not None and v < 1:
            print(f"error: --{name.replace('_', '-')} must be at least 1, got {v}", file=sys.stderr)
            return 2
    if args.speedup <= 0 or args.shutdown_timeout < 0 or (args.startup_s is not None and args.startup_s < 0):
        print("error: --speedup must be positive; --startup-s and --shutdown-timeout must not be negative",
              file=sys.stderr)
        return 2
    setup_logging()
    server = FakeVllm(profile, args.model, speedup=args.speedup, max_num_seqs=args.max_num_seqs,
                      max_num_batched_tokens=args.max_num_batched_tokens, scheduling_policy=args.scheduling_policy,
                      max_model_len=args.max_model_len, seed=args.seed, runner=args.runner,
                      embedding_size=args.embedding_size,
                      api_keys=args.api_key or ([os.environ["VLLM_API_KEY"]] if os.environ.get("VLLM_API_KEY") else []))
    startup_s = args.startup_s if args.startup_s is not None else profile.cold_start_s / args.speedup
    age = process_age_s()  # what the interpreter's start and the imports took is part of the start-up
    log.info("Start-up: %.2f s from the process's start, %.2f s of it spent already", startup_s, age)
    startup_s = max(0.0, startup_s - age)
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_serve(server, args.host, args.port, startup_s, args.shutdown_timeout))


def process_age_s() -> float:
    """Wall seconds since this process started (Linux's /proc; 0 where unknown)."""
    try:
        stat = Path("/proc/self/stat").read_text()
        uptime = Path("/proc/uptime").read_text()
    except OSError:
        return 0.0
    return age_from_proc(stat, uptime, os.sysconf("SC_CLK_TCK"))


def age_from_proc(stat: str, uptime: str, ticks_per_s: int) -> float:
    """A process's age from its /proc/PID/stat line (field 22: start time in clock ticks after
    boot) and /proc/uptime; 0 if either does not parse. The command name may hold spaces and
    parentheses: the fields are counted after its last ')'."""
    try:
        start = int(stat.rsplit(")", 1)[1].split()[19]) / ticks_per_s
        return max(0.0, float(uptime.split()[0]) - start)
    except (IndexError, ValueError):
        return 0.0


async def _serve(server: FakeVllm, host: str, port: int, startup_s: float, shutdown_timeout: float) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.create_task(server.start(host, port, startup_s))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # stopped during the simulated start-up
        starting.cancel()
        return 0
    try:
        starting.result()
    except OSError as e:
        stopping.cancel()
        log.error("could not listen on %s:%d: %s", host, port, e)
        return 1
    await stopping
    await server.stop(shutdown_timeout)
    return 0
