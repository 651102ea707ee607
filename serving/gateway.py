"""The OpenAI-compatible gateway in front of Triton: what editors' completion plugins talk to.

``/v1/completions`` takes OpenAI's completion request (``prompt``, ``suffix`` for fill-in-the-middle,
``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``n``, ``seed``, ``stream`` as server-sent
events, ``stream_options.include_usage``; lathe's ``language``/``filename``) and answers in OpenAI's
shape with ``usage``; ``/v1/models`` lists the served models. Each completion is one gRPC stream to
Triton (``tritonclient.grpc.aio``), so the ``n`` choices of a request and the requests of many
clients are batched by Triton, and a client that goes away cancels its streams.

Each user (the ``x-lathe-user`` header) is routed by a stable hash to a track (``ab.py``): staff,
production or a candidate, each with its own upstream. Every completion is stored with its id,
track, model version, language and latency, and ``/v1/events`` takes Tabby-style ``view`` /
``select`` / ``dismiss`` events about it (``telemetry.py``); ``/metrics`` exports both for Prometheus.

The gateway checks only the shape of a request (types, unknown fields, ``n``, sizes); the model
checks the values (``max_tokens`` over the limit, ``top_p`` range, context) and its message comes
back as a 400, so the rules live in one place (``engine.py``). Errors use OpenAI's error body
``{"error": {"message", "type", "param", "code"}}``: one message naming the field and the fix.

Unlike OpenAI, ``temperature`` defaults to 0 (greedy): the product is code completion.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lathe.core.errors import ConfigError, LatheError
from lathe.core.fim import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX
from lathe.serving.ab import route
from lathe.serving.client import Chunk, chunk_of, infer_inputs
from lathe.serving.config import GatewayConfig
from lathe.serving.telemetry import Served, TelemetryStore, UnknownCompletion, language_of

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}  # the model's reasons in OpenAI's words


class ApiError(Exception):
    """A request the gateway answers with an error status and OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind

    def body(self) -> dict[str, Any]:
        """OpenAI's error object."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


class StreamOptions(BaseModel):
    """OpenAI's ``stream_options``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """OpenAI's ``/v1/completions`` body. Strict: ``"8"`` is not an integer and unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str = Field(description="The served model's name (see /v1/models).")
    prompt: str = Field(description="The code before the cursor (the prefix of a fill-in-the-middle prompt).")
    suffix: str | None = Field(None, description="The code after the cursor; when given, the model fills in the middle.")
    max_tokens: int | None = Field(None, description="Most tokens to generate; the server's default when absent.")
    temperature: float | None = Field(None, description="Sampling temperature; 0 (the default) is greedy.")
    top_p: float | None = Field(None, description="Nucleus sampling mass.")
    stop: str | list[str] | None = Field(None, description="Stop sequence(s); the completion ends before them.")
    n: int = Field(1, description="Completions to generate for the prompt.")
    seed: int | None = Field(None, description="Sampling seed; choice i uses seed + i, so choices differ but replay.")
    stream: bool = Field(False, description="Send server-sent events as text is generated.")
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="The end user's id (routing and telemetry read the header first).")
    # lathe's extensions (the openai client sends them with extra_body): what the acceptance rate is split by
    language: str | None = Field(None, description="The file's language, e.g. python; else guessed from filename.")
    filename: str | None = Field(None, description="The file being edited (its extension names the language).")
    # OpenAI fields lathe does not implement: accepted at their no-op value, refused otherwise (see `unsupported`).
    echo: bool | None = None
    logprobs: int | None = None
    best_of: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, int] | None = None


class EventRequest(BaseModel):
    """A Tabby-style editor event about one choice of a completion."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["view", "select", "dismiss"] = Field(description="view: shown; select: accepted; dismiss: rejected.")
    completion_id: str = Field(description="The `id` of the /v1/completions answer.")
    choice_index: int = Field(0, description="Which of its choices.")
    elapsed: int | None = Field(None, description="Milliseconds the suggestion was on screen.")
    # Tabby's clients send these too: accepted so their events are not refused, not stored
    select_kind: str | None = Field(None, description="How it was accepted (e.g. line).")
    view_id: str | None = None


def unsupported(request: CompletionRequest) -> ApiError | None:
    """A refusal for an OpenAI option set to something lathe does not do (rather than silently ignoring it)."""
    for name, idle in (
        ("echo", (None, False)),
        ("logprobs", (None, 0)),
        ("best_of", (None, request.n)),
        ("presence_penalty", (None, 0.0)),
        ("frequency_penalty", (None, 0.0)),
        ("logit_bias", (None, {})),
    ):
        if getattr(request, name) not in idle:
            return ApiError(400, f"{name} is not supported by this server; leave it unset", name)
    return None


def parse_body(body: bytes, schema: type[BaseModel]) -> Any:
    """``body`` parsed strictly as ``schema``, or an ``ApiError`` whose message names the field and the fix."""
    try:
        return schema.model_validate_json(body)
    except ValidationError as exc:
        raise _validation_error(exc, schema) from None


# A prompt an editor already laid out StarCoder-style (llm-vscode's `fillInTheMiddle` setting).
CLIENT_FIM = re.compile(re.escape(FIM_PREFIX) + "(.*)" + re.escape(FIM_SUFFIX) + "(.*)" + re.escape(FIM_MIDDLE), re.DOTALL)


def server_side_fim(request: CompletionRequest) -> CompletionRequest:
    """A client-side FIM prompt (``<fim_prefix>p<fim_suffix>s<fim_middle>``) as ``prompt=p, suffix=s``.

    The server lays out FIM itself with the model's own token ids and cuts to fit; typed token
    names are otherwise plain text (they cannot inject control tokens), so they are recognised here.
    """
    match = CLIENT_FIM.fullmatch(request.prompt) if request.suffix is None else None
    if match is None:
        return request
    return request.model_copy(update={"prompt": match.group(1), "suffix": match.group(2)})


def parse_request(body: bytes, max_n: int) -> CompletionRequest:
    """The completion request in ``body``, or an ``ApiError`` whose message names the field and the fix."""
    request: CompletionRequest = server_side_fim(parse_body(body, CompletionRequest))
    if not 1 <= request.n <= max_n:
        raise ApiError(400, f"n must be between 1 and {max_n}, got {request.n}", "n")
    refusal = unsupported(request)
    if refusal is not None:
        raise refusal
    return request


def _validation_error(exc: ValidationError, schema: type[BaseModel]) -> ApiError:
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    kind = error["type"]
    if kind == "json_invalid":
        return ApiError(
            400, f"the request body is not valid JSON ({error.get('ctx', {}).get('error', error['msg'])}); send a JSON object"
        )
    if not loc:
        return ApiError(
            400,
            f"the request body must be a JSON object with the fields {', '.join(schema.model_fields)}; "
            f"got {type(error.get('input')).__name__}",
        )
    param = loc[0]
    if kind == "missing":
        return ApiError(400, f"{param} is required; send it in the request body", param)
    if kind == "extra_forbidden":
        accepted = ", ".join(schema.model_fields)
        return ApiError(400, f"unknown field {'.'.join(loc)}; accepted fields: {accepted}", param)
    return ApiError(400, f"{param}: {error['msg'].lower()}, got {error.get('input')!r}", param)


def load_key_hashes(cfg: GatewayConfig) -> set[str]:
    """SHA-256 hex digests of the accepted API keys: the key file's lines and the environment variable's list."""
    hashes: set[str] = set()
    if cfg.api_keys_file:
        path = Path(cfg.api_keys_file)
        if not path.is_file():
            raise ConfigError(f"serve.gateway.api_keys_file {path} not found; create it with `lathe api-key new --file {path}`")
        hashes |= {line.split("#")[0].strip() for line in path.read_text().splitlines()} - {""}
    hashes |= {h.strip() for h in os.environ.get(cfg.api_keys_env, "").split(",")} - {""}
    bad = sorted(h for h in hashes if len(h) != 64 or any(c not in "0123456789abcdef" for c in h))
    if bad:
        raise ConfigError(
            f"API key digests must be SHA-256 hex (64 characters), got {bad[0][:12]!r}...; "
            "store digests, not keys (`lathe api-key new` prints both)"
        )
    return hashes


def key_digest(key: str) -> str:
    """The stored form of an API key."""
    return hashlib.sha256(key.encode()).hexdigest()


def check_exposure(cfg: GatewayConfig, hashes: set[str]) -> None:
    """Refuse to serve an open endpoint beyond loopback unless that is asked for explicitly."""
    try:
        loopback = ipaddress.ip_address(cfg.host).is_loopback
    except ValueError:
        loopback = cfg.host == "localhost"
    if not loopback and not hashes and not cfg.allow_unauthenticated:
        raise ConfigError(
            f"the gateway would listen on {cfg.host} with no API keys; set serve.gateway.api_keys_file (or "
            f"${cfg.api_keys_env}), or serve.gateway.allow_unauthenticated=true behind another auth layer"
        )


@dataclass
class Upstream:
    """The Triton server the gateway forwards to, over one shared gRPC channel."""

    url: str
    model: str
    client: Any = None

    def connect(self) -> None:
        """Open the channel (inside the event loop that will use it)."""
        import tritonclient.grpc.aio as grpcaio

        self.client = grpcaio.InferenceServerClient(self.url)

    async def close(self) -> None:
        """Close the channel."""
        if self.client is not None:
            await self.client.close()

    async def ready(self) -> bool:
        """Whether Triton answers and its model is ready."""
        try:
            return bool(await self.client.is_model_ready(self.model))
        except Exception:  # unreachable, or mid-restart: not ready
            return False

    async def stream(self, prompt: str, params: dict[str, Any], request_id: str) -> AsyncGenerator[Chunk, None]:
        """One completion's chunks as Triton streams them; ``ApiError`` for a refused request or an unreachable server."""
        import grpc
        import tritonclient.grpc.aio as grpcaio
        from tritonclient.utils import InferenceServerException

        async def one_request() -> AsyncIterator[dict[str, Any]]:
            yield {
                "model_name": self.model,
                "inputs": infer_inputs(grpcaio, prompt, {**params, "stream": True}),
                "request_id": request_id,
            }

        responses = self.client.stream_infer(one_request())
        try:
            async for result, error in responses:
                if error is not None:
                    raise _upstream_error(error, self.url)
                chunk = chunk_of(result)
                yield chunk
                if chunk.finish:
                    return
            raise ApiError(
                502, f"Triton at {self.url} closed the stream before the completion finished; retry", kind="server_error"
            )
        except (InferenceServerException, grpc.RpcError) as exc:
            raise _upstream_error(exc, self.url) from None
        finally:
            responses.cancel()  # a client gone mid-stream frees its request upstream


def _upstream_error(error: Any, url: str) -> ApiError:
    """An upstream failure (tritonclient's exception, or gRPC's own from a broken stream) as the client's answer."""
    if hasattr(error, "details"):  # grpc.RpcError
        message, status = error.details() or str(error), str(error.code())
    else:
        message, status = error.message() or str(error), str(error.status() or "")
    if "UNAVAILABLE" in status or "DEADLINE" in status:
        return ApiError(
            503,
            f"Triton at {url} is unreachable ({message.splitlines()[0][:200]}); start it with `lathe serve` "
            "or check serve.gateway.triton_url",
            kind="server_error",
        )
    if message.startswith("bad request: "):  # the model's INVALID_ARG: the client's fault, message as the engine wrote it
        return ApiError(400, message.removeprefix("bad request: "))
    if "INVALID_ARG" in status:
        return ApiError(400, message)
    return ApiError(502, f"Triton at {url} failed the request: {message}", kind="server_error")


@dataclass
class Choice:
    """One finished (or finishing) completion of a request."""

    index: int
    text: list[str] = field(default_factory=list)
    tokens: int = 0
    finish: str | None = None


def _params(request: CompletionRequest, index: int) -> dict[str, Any]:
    """The model's parameters for choice ``index`` (its seed shifted, so choices differ yet replay)."""
    stop = [request.stop] if isinstance(request.stop, str) else request.stop
    seed = None if request.seed is None else request.seed + index
    return {
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "stop": stop or None,
        "seed": seed,
        "suffix": request.suffix,
    }


class Completions:
    """Runs one request's ``n`` completions against the upstream, whole or as server-sent events."""

    def __init__(
        self, upstream: Upstream, request: CompletionRequest, timeout_s: float, on_done: Callable[[Completions], Awaitable[None]]
    ) -> None:
        self.upstream, self.request, self.timeout_s, self.on_done = upstream, request, timeout_s, on_done
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.choices = [Choice(i) for i in range(request.n)]
        self.prompt_tokens = 0
        self.model_version = ""
        self.started = time.perf_counter()
        self.first_token_s: float | None = None

    def _note(self, index: int, chunk: Chunk) -> None:
        choice = self.choices[index]
        choice.text.append(chunk.text)
        choice.tokens += len(chunk.token_ids)
        choice.finish = FINISH_REASONS.get(chunk.finish or "", None)
        self.prompt_tokens, self.model_version = chunk.prompt_tokens, chunk.model_version
        if self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self.started

    def usage(self) -> dict[str, int]:
        """OpenAI's usage object; prompt tokens count the prompt as the model saw it (FIM layout, after cuts)."""
        completion = sum(c.tokens for c in self.choices)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }

    @property
    def latency_s(self) -> float:
        """Seconds from the request to now."""
        return time.perf_counter() - self.started

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.request.model,
            "system_fingerprint": f"{self.upstream.model}:{self.model_version}",
            "choices": choices,
        }

    async def whole(self) -> dict[str, Any]:
        """All choices generated, as one response body."""

        async def run(index: int) -> None:
            async for chunk in self.upstream.stream(self.request.prompt, _params(self.request, index), f"{self.id}-{index}"):
                self._note(index, chunk)

        await self._bounded(asyncio.gather(*(run(i) for i in range(self.request.n))))
        await self.on_done(self)
        choices = [{"index": c.index, "text": "".join(c.text), "finish_reason": c.finish, "logprobs": None} for c in self.choices]
        return {**self._envelope(choices), "usage": self.usage()}

    async def _bounded(self, work: Any) -> Any:
        try:
            return await asyncio.wait_for(work, self.timeout_s)
        except TimeoutError:
            raise ApiError(
                504,
                f"the completion took longer than {self.timeout_s:.0f}s (serve.gateway.request_timeout_s); "
                "ask for fewer max_tokens",
                kind="server_error",
            ) from None

    async def events(self) -> AsyncIterator[str]:
        """Server-sent events: the choices' chunks as they come, usage last if asked for, then ``[DONE]``.

        The first chunk of every choice is awaited before this returns, so a refused request is an
        HTTP error status, not an error inside a 200 stream.
        """
        streams = [
            self.upstream.stream(self.request.prompt, _params(self.request, i), f"{self.id}-{i}") for i in range(self.request.n)
        ]
        firsts = await self._bounded(asyncio.gather(*(anext(s) for s in streams), return_exceptions=True))
        failed = next((f for f in firsts if isinstance(f, BaseException)), None)
        if failed is not None:
            await asyncio.gather(*(s.aclose() for s in streams))
            raise failed
        return self._merge(streams, firsts)

    async def _merge(self, streams: list[AsyncGenerator[Chunk, None]], firsts: list[Chunk]) -> AsyncIterator[str]:
        import json

        queue: asyncio.Queue[tuple[int, Chunk | BaseException | None]] = asyncio.Queue()

        async def pump(index: int) -> None:
            try:
                await queue.put((index, firsts[index]))
                if not firsts[index].finish:
                    async for chunk in streams[index]:
                        await queue.put((index, chunk))
                await queue.put((index, None))
            except Exception as exc:
                await queue.put((index, exc))

        tasks = [asyncio.create_task(pump(i)) for i in range(len(streams))]
        open_streams = len(streams)
        try:
            while open_streams:
                index, item = await queue.get()
                if item is None:
                    open_streams -= 1
                    continue
                if isinstance(item, BaseException):
                    error = item if isinstance(item, ApiError) else ApiError(502, str(item), kind="server_error")
                    yield f"data: {json.dumps(error.body())}\n\n"
                    open_streams -= 1
                    continue
                self._note(index, item)
                choice = {"index": index, "text": item.text, "finish_reason": self.choices[index].finish, "logprobs": None}
                yield f"data: {json.dumps(self._envelope([choice]))}\n\n"
            await self.on_done(self)  # recorded before the client sees the end, so its events find the completion
            if self.request.stream_options and self.request.stream_options.include_usage:
                yield f"data: {json.dumps({**self._envelope([]), 'usage': self.usage()})}\n\n"
            yield "data: [DONE]\n\n"
        finally:  # the client left (or the stream ended): stop every upstream stream
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(s.aclose() for s in streams), return_exceptions=True)


class GatewayMetrics:
    """The gateway's Prometheus metrics (its own registry, so several apps can live in one process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        labels = ("track", "model_version", "language")
        self.completions = Counter("lathe_completions", "Completion requests served.", labels, registry=self.registry)
        self.events = {
            kind: Counter(
                f"lathe_suggestions_{name}", f"Suggestions {name} (editor `{kind}` events).", labels, registry=self.registry
            )
            for kind, name in (("view", "shown"), ("select", "accepted"), ("dismiss", "dismissed"))
        }
        self.rejected_events = Counter(
            "lathe_events_rejected", "Editor events refused, by reason.", ("reason",), registry=self.registry
        )
        self.errors = Counter(
            "lathe_request_errors", "Requests answered with an error, by status.", ("status",), registry=self.registry
        )
        buckets = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
        self.latency = Histogram(
            "lathe_completion_latency_seconds",
            "Request to last token.",
            ("track", "model_version"),
            buckets=buckets,
            registry=self.registry,
        )
        self.first_token = Histogram(
            "lathe_first_token_seconds",
            "Request to first token.",
            ("track", "model_version"),
            buckets=buckets,
            registry=self.registry,
        )


def user_of(request: Request, body_user: str | None, header: str) -> str:
    """The stable user id: the configured header, else the body's ``user``, else ``anonymous``."""
    return request.headers.get(header) or body_user or "anonymous"


def create_app(cfg: GatewayConfig, triton_url: str, model: str, store: TelemetryStore) -> FastAPI:
    """The FastAPI application: ``/v1/completions``, ``/v1/models``, ``/v1/events``, ``/metrics``, ``/health``, ``/health/ready``.

    ``triton_url``/``model`` serve every track that ``cfg.tracks`` does not list.
    """
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    hashes = load_key_hashes(cfg)
    check_exposure(cfg, hashes)
    if cfg.ab.candidate_share > 0 and "candidate" not in cfg.tracks:
        raise ConfigError(
            "serve.gateway.ab.candidate_share is set but no candidate is served; set serve.gateway.tracks.candidate "
            "({triton_url: ..., model: ...}) or the share to 0"
        )
    default = Upstream(triton_url, model)
    upstreams = {track: Upstream(t.triton_url, t.model) for track, t in cfg.tracks.items()}
    models = sorted({default.model, *(u.model for u in upstreams.values())})
    metrics = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for upstream in (default, *upstreams.values()):
            upstream.connect()
        yield
        for upstream in (default, *upstreams.values()):
            await upstream.close()

    app = FastAPI(title="lathe", summary="OpenAI-compatible code completion in front of Triton", lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        metrics.errors.labels(str(exc.status)).inc()
        return JSONResponse(exc.body(), status_code=exc.status)

    def authorize(request: Request) -> None:
        if not hashes:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or key_digest(key.strip()) not in hashes:
            raise ApiError(
                401, "missing or unknown API key; send the header Authorization: Bearer <key>", kind="authentication_error"
            )

    async def body_of(request: Request) -> bytes:
        authorize(request)
        body = await request.body()
        if len(body) > cfg.max_body_bytes:
            raise ApiError(
                413,
                f"the request body is {len(body):,} bytes; the limit is {cfg.max_body_bytes:,} (serve.gateway.max_body_bytes)",
            )
        return body

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health/ready")
    async def ready() -> JSONResponse:
        ok = await default.ready()
        return JSONResponse({"status": "ready" if ok else f"Triton at {triton_url} is not ready"}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        authorize(request)
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "lathe"} for m in models]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        parsed = parse_request(await body_of(request), cfg.max_n)
        if parsed.model not in models:
            raise ApiError(
                404,
                f"model {parsed.model!r} is not served here; use {' or '.join(map(repr, models))} (GET /v1/models lists them)",
                "model",
                kind="not_found_error",
            )
        user = user_of(request, parsed.user, cfg.user_header)
        track = route(user, cfg.ab)
        language = language_of(parsed.language, parsed.filename)

        async def done(run: Completions) -> None:
            version = run.model_version
            metrics.completions.labels(track, version, language).inc()
            metrics.latency.labels(track, version).observe(run.latency_s)
            metrics.first_token.labels(track, version).observe(run.first_token_s or run.latency_s)
            served = Served(
                run.id,
                user,
                track,
                run.upstream.model,
                version,
                language,
                parsed.prompt,
                parsed.suffix,
                ["".join(c.text) for c in run.choices],
                [c.finish for c in run.choices],
                run.prompt_tokens,
                run.usage()["completion_tokens"],
                run.latency_s,
                run.first_token_s or run.latency_s,
                _params(parsed, 0) | {"n": parsed.n},
            )
            await asyncio.to_thread(store.record, served)

        run = Completions(upstreams.get(track, default), parsed, cfg.request_timeout_s, done)
        headers = {"x-lathe-track": track}
        if parsed.stream:
            return StreamingResponse(
                await run.events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", **headers}
            )
        return JSONResponse(await run.whole(), headers=headers)

    @app.post("/v1/events")
    async def events(request: Request) -> dict[str, Any]:
        event: EventRequest = parse_body(await body_of(request), EventRequest)
        try:
            labels = await asyncio.to_thread(store.event, event.completion_id, event.choice_index, event.type, event.elapsed)
        except UnknownCompletion as exc:
            metrics.rejected_events.labels("unknown_completion").inc()
            raise ApiError(404, str(exc), "completion_id", kind="not_found_error") from None
        metrics.events[event.type].labels(labels.track, labels.model_version, labels.language).inc()
        return {"status": "recorded"}

    return app


def serve_gateway(cfg: GatewayConfig, triton_url: str, model: str, telemetry_url: str, port: int | None = None) -> Any:
    """A uvicorn server for the gateway (not started): ``.run()`` serves until SIGINT/SIGTERM or ``should_exit``."""
    import uvicorn

    app = create_app(cfg, triton_url, model, TelemetryStore(telemetry_url, cfg.store_text))
    config = uvicorn.Config(
        app,
        host=cfg.host,
        port=cfg.port if port is None else port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(config)


@contextmanager
def running_gateway(cfg: GatewayConfig, triton_url: str, model: str, telemetry_url: str) -> Iterator[str]:
    """The gateway served from a background thread on a free port while the block runs; yields its ``/v1`` URL."""
    import threading

    from lathe.serving.server import free_port

    port = free_port()
    server = serve_gateway(cfg.model_copy(update={"host": "127.0.0.1"}), triton_url, model, telemetry_url, port)
    thread = threading.Thread(target=server.run, name="lathe-gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise LatheError(f"the gateway did not start on port {port}")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(10)
