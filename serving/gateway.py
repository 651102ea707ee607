"""The OpenAI-compatible gateway in front of Triton: what editors' completion plugins talk to.

``/v1/completions`` takes OpenAI's completion request (``prompt``, ``suffix`` for fill-in-the-middle,
``max_tokens``, ``temperature``, ``top_p``, ``stop``, ``n``, ``seed``, ``stream`` as server-sent
events, ``stream_options.include_usage``) and answers in OpenAI's shape with ``usage``; ``/v1/models``
lists the served model. Each completion is one gRPC stream to Triton (``tritonclient.grpc.aio``),
so the ``n`` choices of a request and the requests of many clients are batched by Triton, and a
client that goes away cancels its streams.

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
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lathe.core.errors import ConfigError
from lathe.serving.client import Chunk, chunk_of, infer_inputs
from lathe.serving.config import GatewayConfig

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
    # OpenAI fields lathe does not implement: accepted at their no-op value, refused otherwise (see `unsupported`).
    echo: bool | None = None
    logprobs: int | None = None
    best_of: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, int] | None = None


def unsupported(request: CompletionRequest) -> ApiError | None:
    """A refusal for an OpenAI option set to something lathe does not do (rather than silently ignoring it)."""
    for name, idle in (("echo", (None, False)), ("logprobs", (None, 0)), ("best_of", (None, request.n)),
                       ("presence_penalty", (None, 0.0)), ("frequency_penalty", (None, 0.0)), ("logit_bias", (None, {}))):
        if getattr(request, name) not in idle:
            return ApiError(400, f"{name} is not supported by this server; leave it unset", name)
    return None


def parse_request(body: bytes, max_n: int) -> CompletionRequest:
    """The request in ``body``, or an ``ApiError`` whose message names the field and the fix."""
    try:
        request = CompletionRequest.model_validate_json(body)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    if not 1 <= request.n <= max_n:
        raise ApiError(400, f"n must be between 1 and {max_n}, got {request.n}", "n")
    refusal = unsupported(request)
    if refusal is not None:
        raise refusal
    return request


def _validation_error(exc: ValidationError) -> ApiError:
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    kind = error["type"]
    if kind == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON ({error.get('ctx', {}).get('error', error['msg'])}); send a JSON object")
    if not loc:
        return ApiError(400, "the request body must be a JSON object such as {\"model\": \"...\", \"prompt\": \"def f(\"}, "
                             f"got {type(error.get('input')).__name__}")
    param = loc[0]
    if kind == "missing":
        return ApiError(400, f"{param} is required; send it in the request body", param)
    if kind == "extra_forbidden":
        accepted = ", ".join(CompletionRequest.model_fields)
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
        raise ConfigError(f"API key digests must be SHA-256 hex (64 characters), got {bad[0][:12]!r}...; "
                          "store digests, not keys (`lathe api-key new` prints both)")
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
        raise ConfigError(f"the gateway would listen on {cfg.host} with no API keys; set serve.gateway.api_keys_file (or "
                          f"${cfg.api_keys_env}), or serve.gateway.allow_unauthenticated=true behind another auth layer")


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

    async def stream(self, prompt: str, params: dict[str, Any], request_id: str) -> AsyncIterator[Chunk]:
        """One completion's chunks as Triton streams them; ``ApiError`` for a refused request or an unreachable server."""
        import grpc
        import tritonclient.grpc.aio as grpcaio
        from tritonclient.utils import InferenceServerException

        async def one_request() -> AsyncIterator[dict[str, Any]]:
            yield {"model_name": self.model, "inputs": infer_inputs(grpcaio, prompt, {**params, "stream": True}), "request_id": request_id}

        responses = self.client.stream_infer(one_request())
        try:
            async for result, error in responses:
                if error is not None:
                    raise _upstream_error(error, self.url)
                chunk = chunk_of(result)
                yield chunk
                if chunk.finish:
                    return
            raise ApiError(502, f"Triton at {self.url} closed the stream before the completion finished; retry", kind="server_error")
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
        return ApiError(503, f"Triton at {url} is unreachable ({message.splitlines()[0][:200]}); start it with `lathe serve` "
                             "or check serve.gateway.triton_url", kind="server_error")
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
    return {"max_tokens": request.max_tokens, "temperature": request.temperature, "top_p": request.top_p, "stop": stop or None,
            "seed": seed, "suffix": request.suffix}


class Completions:
    """Runs one request's ``n`` completions against the upstream, whole or as server-sent events."""

    def __init__(self, upstream: Upstream, request: CompletionRequest, timeout_s: float) -> None:
        self.upstream, self.request, self.timeout_s = upstream, request, timeout_s
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
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion, "total_tokens": self.prompt_tokens + completion}

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.request.model,
                "system_fingerprint": f"{self.upstream.model}:{self.model_version}", "choices": choices}

    async def whole(self) -> dict[str, Any]:
        """All choices generated, as one response body."""
        async def run(index: int) -> None:
            async for chunk in self.upstream.stream(self.request.prompt, _params(self.request, index), f"{self.id}-{index}"):
                self._note(index, chunk)

        await self._bounded(asyncio.gather(*(run(i) for i in range(self.request.n))))
        choices = [{"index": c.index, "text": "".join(c.text), "finish_reason": c.finish, "logprobs": None} for c in self.choices]
        return {**self._envelope(choices), "usage": self.usage()}

    async def _bounded(self, work: Any) -> Any:
        try:
            return await asyncio.wait_for(work, self.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, f"the completion took longer than {self.timeout_s:.0f}s (serve.gateway.request_timeout_s); "
                                "ask for fewer max_tokens", kind="server_error") from None

    async def events(self) -> AsyncIterator[str]:
        """Server-sent events: the choices' chunks as they come, usage last if asked for, then ``[DONE]``.

        The first chunk of every choice is awaited before this returns, so a refused request is an
        HTTP error status, not an error inside a 200 stream.
        """
        streams = [self.upstream.stream(self.request.prompt, _params(self.request, i), f"{self.id}-{i}") for i in range(self.request.n)]
        firsts = await self._bounded(asyncio.gather(*(anext(s) for s in streams), return_exceptions=True))
        failed = next((f for f in firsts if isinstance(f, BaseException)), None)
        if failed is not None:
            await asyncio.gather(*(s.aclose() for s in streams))
            raise failed
        return self._merge(streams, firsts)

    async def _merge(self, streams: list[AsyncIterator[Chunk]], firsts: list[Chunk]) -> AsyncIterator[str]:
        import json

        queue: asyncio.Queue[tuple[int, Chunk | BaseException | None]] = asyncio.Queue()

        async def pump(index: int) -> None:
            try:
                await queue.put((index, firsts[index]))
                if not firsts[index].finish:
                    async for chunk in streams[index]:
                        await queue.put((index, chunk))
                await queue.put((index, None))
            except Exception as exc:  # noqa: BLE001 - reported in the stream, the only place left to say it
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
            if self.request.stream_options and self.request.stream_options.include_usage:
                yield f"data: {json.dumps({**self._envelope([]), 'usage': self.usage()})}\n\n"
            yield "data: [DONE]\n\n"
        finally:  # the client left (or the stream ended): stop every upstream stream
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(s.aclose() for s in streams), return_exceptions=True)


def create_app(cfg: GatewayConfig, triton_url: str, model: str) -> Any:
    """The FastAPI application: ``/v1/completions``, ``/v1/models``, ``/health``, ``/health/ready``."""
    hashes = load_key_hashes(cfg)
    check_exposure(cfg, hashes)
    upstream = Upstream(triton_url, model)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upstream.connect()
        yield
        await upstream.close()

    app = FastAPI(title="lathe", summary="OpenAI-compatible code completion in front of Triton", lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    def authorize(request: Request) -> None:
        if not hashes:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or key_digest(key.strip()) not in hashes:
            raise ApiError(401, "missing or unknown API key; send the header Authorization: Bearer <key>", kind="authentication_error")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health/ready")
    async def ready() -> JSONResponse:
        ok = await upstream.ready()
        return JSONResponse({"status": "ready" if ok else f"Triton at {triton_url} is not ready"}, status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authorize(request)
        return {"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "lathe"}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        authorize(request)
        body = await request.body()
        if len(body) > cfg.max_body_bytes:
            raise ApiError(413, f"the request body is {len(body):,} bytes; the limit is {cfg.max_body_bytes:,} (serve.gateway.max_body_bytes)")
        parsed = parse_request(body, cfg.max_n)
        if parsed.model != model:
            raise ApiError(404, f"model {parsed.model!r} is not served here; use {model!r} (GET /v1/models lists them)", "model",
                           kind="not_found_error")
        run = Completions(upstream, parsed, cfg.request_timeout_s)
        if parsed.stream:
            return StreamingResponse(await run.events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return await run.whole()

    return app


def serve_gateway(cfg: GatewayConfig, triton_url: str, model: str, port: int | None = None) -> Any:
    """A uvicorn server for the gateway (not started): ``.run()`` serves until SIGINT/SIGTERM or ``should_exit``."""
    import uvicorn

    app = create_app(cfg, triton_url, model)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port if port is None else port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=5)
    return uvicorn.Server(config)
