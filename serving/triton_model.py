"""The Triton Python-backend model: text in, streamed text out (copied as ``<version>/model.py``).

Decoupled: every request gets one response per chunk of text as it is generated
(``stream`` true) or a single response with the whole completion (the default), each
ending with the FINAL flag, so it serves gRPC streaming, HTTP ``generate_stream`` and
HTTP ``generate`` alike. The requests of one ``execute`` call (what the dynamic batcher
gathered) are generated as one batch. A bad request gets an error response naming the
field and the fix; the others in its batch are served.

It imports only torch, transformers, numpy, ``lathe_engine``, ``lathe_protocol`` and ``lathe_fim``
(serving/engine.py, serving/protocol.py and core/fim.py, copied beside it), so the repository
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
from lathe_engine import Engine, GenRequest, Limits, RequestError  # noqa: E402
from lathe_protocol import FINISH, PARAMETERS, PROMPT, PROMPT_TOKENS, TEXT, TOKEN_IDS  # noqa: E402

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
    return pb_utils.InferenceResponse(output_tensors=[
        pb_utils.Tensor(TEXT.name, np.array([[text.encode("utf-8")]], dtype=np.object_)),
        pb_utils.Tensor(TOKEN_IDS.name, np.array([token_ids], dtype=np.int32)),
        pb_utils.Tensor(FINISH.name, np.array([[(finish or "").encode()]], dtype=np.object_)),
        pb_utils.Tensor(PROMPT_TOKENS.name, np.array([[prompt_tokens]], dtype=np.int32)),
    ])


class TritonPythonModel:
    """Loads the HF checkpoint in ``<version>/hf_model`` and generates for each batch of requests."""

    def initialize(self, args: dict[str, str]) -> None:
        import torch

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        torch.set_num_threads(int(params.get("torch_threads", "0")) or torch.get_num_threads())
        device = "cpu"
        if args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args['model_instance_device_id']}"
        limits = Limits(default_max_tokens=int(params.get("default_max_tokens", 64)),
                        max_tokens_limit=int(params.get("max_tokens_limit", 1024)))
        model_dir = os.path.join(args["model_repository"], args["model_version"], "hf_model")
        self.engine = Engine(model_dir, device=device, limits=limits)

    def execute(self, requests: list[Any]) -> None:
        """Validate each request, generate the valid ones together, stream responses back."""
        batch: list[GenRequest] = []
        senders: list[Any] = []
        for request in requests:
            sender = request.get_response_sender()
            try:
                prompt, params = _request_params(request)
                batch.append(self.engine.parse(prompt, params))
                senders.append(sender)
            except (RequestError, UnicodeDecodeError, ValueError, TypeError) as exc:
                # INVALID_ARG: HTTP 400 / gRPC INVALID_ARGUMENT, the client's fault (not a 500)
                error = pb_utils.TritonError(f"bad request: {exc}", pb_utils.TritonError.INVALID_ARG)
                sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
        if not batch:
            return None
        text: list[list[str]] = [[] for _ in batch]  # not yet sent: all of it for non-streaming requests
        ids: list[list[int]] = [[] for _ in batch]
        done: set[int] = set()
        try:
            for event in self.engine.generate(batch):
                i = event.index
                text[i].append(event.text)
                ids[i] += event.token_ids
                # a stream sends whenever there is text (tokens that made none ride with the next chunk)
                if event.finish or (batch[i].stream and event.text):
                    senders[i].send(_response("".join(text[i]), ids[i], event.finish, len(batch[i].prompt_ids)),
                                    flags=FINAL if event.finish else 0)
                    text[i], ids[i] = [], []
                if event.finish:
                    done.add(i)
        except Exception as exc:  # a failure mid-generation must still close every open stream
            for i, sender in enumerate(senders):
                if i not in done:
                    sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"generation failed: {exc}")), flags=FINAL)
            raise
        return None
