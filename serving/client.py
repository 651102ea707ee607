"""Clients of the served model: gRPC streaming (``lathe complete``) and HTTP ``generate``."""

from __future__ import annotations

import json
import queue
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lathe.core.errors import LatheError
from lathe.core.models import MODEL_NAME
from lathe.serving.protocol import FINISH, PARAMETERS, PROMPT, PROMPT_TOKENS, TEXT, TOKEN_IDS

_DONE = object()


@dataclass
class Chunk:
    """One streamed response: text, its token ids, and the finish reason on the last."""

    text: str
    token_ids: list[int]
    finish: str | None
    at: float  # time.perf_counter() when it arrived
    prompt_tokens: int = 0  # the prompt's length as the model saw it (FIM layout, after cuts)
    model_version: str = ""  # the served version that made it


@dataclass
class Completion:
    """A whole streamed completion and its timings."""

    chunks: list[Chunk] = field(default_factory=list)
    started: float = 0.0

    @property
    def text(self) -> str:
        """The completion text."""
        return "".join(c.text for c in self.chunks)

    @property
    def token_ids(self) -> list[int]:
        """Every generated token id, in order."""
        return [t for c in self.chunks for t in c.token_ids]

    @property
    def prompt_tokens(self) -> int:
        """The prompt's token count as the model saw it."""
        return self.chunks[0].prompt_tokens

    @property
    def first_token_s(self) -> float:
        """Time to first token: request sent to first chunk."""
        return self.chunks[0].at - self.started

    @property
    def latency_s(self) -> float:
        """Request sent to the last chunk."""
        return self.chunks[-1].at - self.started


class RequestFailed(LatheError):
    """The server answered with an error (a bad request, or a failed generation)."""


def infer_inputs(grpc: Any, prompt: str, params: dict[str, Any]) -> list[Any]:
    """Triton input tensors for a prompt and its parameters (batch dimension of 1); ``grpc`` is
    ``tritonclient.grpc`` or its ``aio`` module (they share ``InferInput``)."""
    from tritonclient.utils import triton_to_np_dtype

    fields = {f.name: f for f in PARAMETERS}
    tensors = []

    def add(name: str, array: np.ndarray, dtype: str) -> None:
        t = grpc.InferInput(name, list(array.shape), dtype)
        t.set_data_from_numpy(array)
        tensors.append(t)

    add(PROMPT.name, np.array([[prompt.encode("utf-8")]], dtype=np.object_), PROMPT.dtype)
    for name, value in params.items():
        field = fields.get(name)
        if value is None:
            continue
        if field is not None and field.kind is list:
            add(name, np.array([[s.encode("utf-8") for s in value]], dtype=np.object_), field.dtype)
        elif field is not None and field.kind is str:
            add(name, np.array([[value.encode("utf-8")]], dtype=np.object_), field.dtype)
        elif field is not None:
            add(name, np.array([[value]], dtype=triton_to_np_dtype(field.dtype)), field.dtype)
        else:  # let the server name it in its error: an unknown input is refused there, not dropped here
            add(name, np.array([[str(value).encode()]], dtype=np.object_), "BYTES")
    return tensors


def chunk_of(result: Any) -> Chunk:
    """One streamed gRPC response (``InferResult``) as a ``Chunk``, stamped with its arrival time."""
    at = time.perf_counter()
    finish = result.as_numpy(FINISH.name).reshape(-1)[0].decode() or None
    text = result.as_numpy(TEXT.name).reshape(-1)[0].decode("utf-8")
    return Chunk(
        text,
        result.as_numpy(TOKEN_IDS.name).reshape(-1).tolist(),
        finish,
        at,
        int(result.as_numpy(PROMPT_TOKENS.name).reshape(-1)[0]),
        result.get_response().model_version,
    )


def _speaks_http(url: str) -> bool:
    """Whether ``url`` answers Triton's HTTP health endpoint (a gRPC client pointed at the HTTP port)."""
    try:
        with urllib.request.urlopen(f"http://{url}/v2/health/live", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return False


def stream_completion(url: str, prompt: str, model: str = MODEL_NAME, timeout_s: float = 120.0, **params: Any) -> Iterator[Chunk]:
    """Stream one completion over gRPC; yields chunks as the server makes them.

    Raises ``RequestFailed`` with the server's message for a refused request, and
    ``LatheError`` naming the URL when no server answers there.
    """
    import tritonclient.grpc as grpc
    from tritonclient.utils import InferenceServerException

    arrivals: queue.Queue[Any] = queue.Queue()

    def on_response(result: Any, error: Any) -> None:
        arrivals.put(error if error is not None else result)

    client = grpc.InferenceServerClient(url=url)
    try:
        try:
            client.is_server_live()
        except InferenceServerException as exc:
            if _speaks_http(url):
                raise LatheError(
                    f"{url} is Triton's HTTP port, not its gRPC one; point --url at the gRPC port (8001 by default)"
                ) from None
            raise LatheError(f"no Triton server at {url} ({exc.message()}); start one with `lathe serve`") from None
        try:
            client.start_stream(callback=on_response, stream_timeout=timeout_s)
            client.async_stream_infer(model, infer_inputs(grpc, prompt, {**params, "stream": True}))
        except InferenceServerException as exc:
            raise LatheError(f"no Triton server at {url} ({exc.message()}); start one with `lathe serve`") from None
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                item = arrivals.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise LatheError(f"no response from {url} within {timeout_s:.0f}s") from None
            if isinstance(item, InferenceServerException):
                raise RequestFailed(item.message() or str(item))
            chunk = chunk_of(item)
            yield chunk
            if chunk.finish:
                return
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()


def complete(url: str, prompt: str, model: str = MODEL_NAME, **params: Any) -> Completion:
    """A whole streamed completion with its timings."""
    result = Completion(started=time.perf_counter())
    for chunk in stream_completion(url, prompt, model, **params):
        result.chunks.append(chunk)
    return result


def http_generate(url: str, prompt: str, model: str = MODEL_NAME, timeout_s: float = 120.0, **params: Any) -> dict[str, Any]:
    """POST /v2/models/<model>/generate (one JSON answer); raises ``RequestFailed`` with the server's error."""
    body = json.dumps({PROMPT.name: prompt, **params}).encode()
    request = urllib.request.Request(
        f"http://{url}/v2/models/{model}/generate", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RequestFailed(json.loads(exc.read() or b"{}").get("error", f"HTTP {exc.code}")) from None
    except urllib.error.URLError as exc:
        raise LatheError(f"no Triton server at {url} ({exc.reason}); start one with `lathe serve`") from None
    if "error" in answer:
        raise RequestFailed(answer["error"])
    return answer
