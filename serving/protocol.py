"""The request and response fields of the served model, defined once.

The Triton model configuration (``package.py``), the model itself (``triton_model.py``),
the engine's validation (``engine.py``) and the clients (``client.py``) all read them from
here. Standard library only: the file is copied into the Triton model repository as
``lathe_protocol.py`` beside the model, where lathe is not installed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    """One input or output tensor of the served model."""

    name: str
    dtype: str  # Triton's wire type: BYTES, INT32, INT64, FP32, BOOL
    kind: type  # the Python type a request's value must have
    dims: tuple[int, ...] = (1,)  # per request; -1 is variable (a list)
    optional: bool = True


PROMPT = Field("text_input", "BYTES", str, optional=False)  # the code to complete
# Generation parameters a request may send; anything else is refused, not ignored.
# `stream` defaults to false, as in Triton's vLLM backend: HTTP `generate` accepts exactly one response.
PARAMETERS: tuple[Field, ...] = (
    Field("max_tokens", "INT32", int),
    Field("temperature", "FP32", float),
    Field("top_p", "FP32", float),
    Field("seed", "INT64", int),
    Field("stream", "BOOL", bool),
    Field("stop", "BYTES", list, dims=(-1,)),  # stop sequences: ragged across a batch
    Field("suffix", "BYTES", str),  # the code after the cursor: text_input is then the prefix of a FIM prompt
)
INPUTS: tuple[Field, ...] = (PROMPT, *PARAMETERS)
TEXT = Field("text_output", "BYTES", str, optional=False)  # the new text of this response
TOKEN_IDS = Field("token_ids", "INT32", list, dims=(-1,), optional=False)  # the tokens that made it
FINISH = Field("finish_reason", "BYTES", str, optional=False)  # "stop", "eos" or "length" on the last response; else ""
PROMPT_TOKENS = Field("prompt_tokens", "INT32", int, optional=False)  # the prompt as the model saw it (FIM layout, after cuts)
OUTPUTS: tuple[Field, ...] = (TEXT, TOKEN_IDS, FINISH, PROMPT_TOKENS)
PARAMETER_TYPES: dict[str, type] = {f.name: f.kind for f in PARAMETERS}
