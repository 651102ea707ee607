"""The Triton Python-backend model: text in, streamed text out (copied as ``<version>/model.py``).

Decoupled: every request gets one response per chunk of text as it is generated
(``stream`` true) or a single response with the whole completion (the default), each
ending with the FINAL flag, so it serves gRPC streaming, HTTP ``generate_stream`` and
HTTP ``generate`` alike. With ``engine: batch`` the requests of one ``execute`` call (what
the dynamic batcher gathered) are generated as one batch; with ``engine: continuous`` they
join one running batch at its next decode step. A bad request gets an error response
naming the field and the fix; the others in its batch are served.

It imports only torch, transformers, numpy, ``lathe_engine``, ``lathe_protocol``, ``lathe_fim`` and ``lathe_quant``
(serving/engine.py, serving/protocol.py, core/fim.py and core/quant.py, copied beside it), so the repository
runs in a stock Triton image.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lathe_engine import ContinuousBatcher, Engine, Event, GenRequest, Limits, RequestError
from lathe_protocol import FINISH, PARAMETERS, PROMPT, PROMPT_TOKENS, TEXT, TOKEN_IDS

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _request_params(request: Any) -> tuple[str, dict[str, Any]]:
    """The prompt and the parameters of one request, from input tensors and request parameters."""
    tensor = pb_utils.get_input_tensor_by_name(request, PROMPT.name)
    if tensor is None:
        raise RequestError(f"{PROMPT.name} is missing; send the code to complete as {PROMPT.name}")
    values = tensor.as_numpy().reshape(-1)
    if values.size != 1:
        raise RequestError(f"{PROMPT.name} must hold one string per request, got {values.size}")
    prompt = _text(values[0])
    params: dict[str, Any] = {}
    for field in PARAMETERS:
        t = pb_utils.get_input_tensor_by_name(request, field.name)
        if t is None:
            continue
        values = t.as_numpy().reshape(-1)
        # lists (stop sequences) arrive as ragged string tensors; strings as bytes; other scalars as one value
        if field.kind is list:
            params[field.name] = [_text(v) for v in values]
        else:
            params[field.name] = _text(values[0]) if field.kind is str else field.kind(values[0])
    # HTTP `generate` turns JSON keys that are not inputs into request parameters: they are
    # refused by the engine (a misspelled `max_token` must not silently mean the default).
    extra = json.loads(request.parameters() or "{}")
    params.update(extra)
    return prompt, params


def _text(raw: Any) -> str:
    return raw.decode("utf-8", errors="strict") if isinstance(raw, bytes) else str(raw)


def _response(text: str, token_ids: list[int], finish: str | None, prompt_tokens: int) -> Any:
    return pb_utils.InferenceResponse(
        output_tensors=[
            pb_utils.Tensor(TEXT.name, np.array([[text.encode("utf-8")]], dtype=np.object_)),
            pb_utils.Tensor(TOKEN_IDS.name, np.array([token_ids], dtype=np.int32)),
            pb_utils.Tensor(FINISH.name, np.array([[(finish or "").encode()]], dtype=np.object_)),
            pb_utils.Tensor(PROMPT_TOKENS.name, np.array([[prompt_tokens]], dtype=np.int32)),
        ]
    )


class _Stream:
    """One request's response sender (an engine ``Sink``): sends its chunks, or its whole text at the end, then FINAL once."""

    def __init__(self, request: Any, sender: Any, gen: GenRequest) -> None:
        self.request = request  # held until the last response: the sender belongs to it
        self.sender = sender
        self.gen = gen
        self.text: list[str] = []  # not yet sent: all of it for a non-streaming request
        self.ids: list[int] = []
        self.generated = 0  # tokens made so far (sent or not)
        self.open = True

    def event(self, event: Event) -> None:
        """Send what the event makes sendable; a stream sends whenever there is text (tokens that made none ride with the next chunk)."""
        if event.finish == "cancelled":
            # a line in the server log: what an operator (and the tests) see of a freed row
            pb_utils.Logger.log_info(
                f"lathe: request cancelled by its client after {self.generated} of {self.gen.max_tokens} tokens; row freed"
            )
            error = pb_utils.TritonError("request cancelled", pb_utils.TritonError.CANCELLED)
            self._send(pb_utils.InferenceResponse(error=error), FINAL)
            return
        self.text.append(event.text)
        self.ids += event.token_ids
        self.generated += len(event.token_ids)
        if event.finish or (self.gen.stream and event.text):
            self._send(
                _response("".join(self.text), self.ids, event.finish, len(self.gen.prompt_ids)), FINAL if event.finish else 0
            )
            self.text, self.ids = [], []

    def cancelled(self) -> bool:
        """The client cancelled, or its stream is gone (a send failed)."""
        return not self.open or self.sender.is_cancelled()

    def failed(self, exc: BaseException) -> None:
        """Close the request with a server error, unless it already ended."""
        self._send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"generation failed: {exc}")), FINAL)

    def _send(self, response: Any, flags: int) -> None:
        if not self.open:
            return
        try:
            self.sender.send(response, flags=flags)
        except pb_utils.TritonModelException:
            self.open = False  # the client is gone: the continuous engine drops its row at the next step
        if flags == FINAL:
            self.open = False


class TritonPythonModel:
    """Loads the HF checkpoint in ``<version>/hf_model`` and generates for the requests it is handed.

    Model config parameter ``engine``: ``batch`` generates the requests of one
    ``execute`` together and returns when all are done; ``continuous`` (`serve.engine`'s default) hands them to one
    generation loop thread (``ContinuousBatcher``) and returns at once, so a request joins
    the running batch at its next decode step instead of waiting for it to end.
    """

    def initialize(self, args: dict[str, str]) -> None:
        """Load the model; start the generation loop for ``engine: continuous``."""
        import torch

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        torch.set_num_threads(int(params.get("torch_threads", "0")) or torch.get_num_threads())
        device = "cpu"
        if args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args['model_instance_device_id']}"
        limits = Limits(
            default_max_tokens=int(params.get("default_max_tokens", 64)),
            max_tokens_limit=int(params.get("max_tokens_limit", 1024)),
        )
        model_dir = os.path.join(args["model_repository"], args["model_version"], "hf_model")
        self.engine = Engine(model_dir, device=device, limits=limits)
        self.batcher: ContinuousBatcher | None = None
        if params.get("engine", "batch") == "continuous":
            self.batcher = ContinuousBatcher(self.engine, max_rows=max(1, int(config.get("max_batch_size", 1))))
            self.batcher.start()

    def execute(self, requests: list[Any]) -> None:
        """Validate each request; generate the valid ones (together, or in the running batch), streaming responses back."""
        streams = [s for s in map(self._accept, requests) if s is not None]
        if self.batcher is not None:
            for stream in streams:
                self.batcher.submit(stream.gen, stream)
            return None
        try:
            for event in self.engine.generate([s.gen for s in streams]):
                streams[event.index].event(event)
        except Exception as exc:  # a failure mid-generation must still close every open stream
            for stream in streams:
                stream.failed(exc)
            raise
        return None

    def _accept(self, request: Any) -> _Stream | None:
        """The request's stream, or None after answering a bad request with its error."""
        sender = request.get_response_sender()
        try:
            prompt, params = _request_params(request)
            return _Stream(request, sender, self.engine.parse(prompt, params))
        except (RequestError, UnicodeDecodeError, ValueError, TypeError) as exc:
            # INVALID_ARG: HTTP 400 / gRPC INVALID_ARGUMENT, the client's fault (not a 500)
            error = pb_utils.TritonError(f"bad request: {exc}", pb_utils.TritonError.INVALID_ARG)
            sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
            return None

    def finalize(self) -> None:
        """Stop the generation loop (requests still open get an error)."""
        if self.batcher is not None:
            self.batcher.stop()
