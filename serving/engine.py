"""Batched, streaming generation with the KV cache: the core of the Triton model.

This module depends on torch, transformers, the standard library and ``protocol.py`` only,
because it is copied into the Triton model repository beside ``model.py`` and must run in
any Triton image (where lathe itself is not installed). It is tested without Triton.

A request with a ``suffix`` (an editor's cursor in the middle of a file) is laid out as a
fill-in-the-middle prompt by the function the shards stage trained with, prefix and suffix cut
from their far ends to leave room for ``max_tokens``; its completion ends at ``<|endoftext|>``
or ``<fim_pad>``.

``ContinuousBatcher`` owns a running batch and its KV cache: prompts of different lengths
are left-padded into one batch, each row has its own sampling parameters, generator and
stop sequences, rows leave the batch (and the KV cache) as soon as they finish, so a short
request never pays for a long one, and new requests join the running batch at every decode
step (the Triton model's ``engine: continuous``). ``Engine.generate`` runs one fixed set of
requests through it (``engine: batch``: the requests Triton's dynamic batcher handed to one
``execute``).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

try:
    from lathe.core.fim import FIM_MIDDLE, FIM_PAD, FIM_PREFIX, FIM_SUFFIX, FimIds, fim_prompt, fit_context
    from lathe.core.quant import load_causal_lm

    from .protocol import PARAMETER_TYPES, PROMPT
except ImportError:  # copied into a Triton model repository as lathe_engine.py, beside lathe_protocol.py and lathe_fim.py
    from lathe_fim import FIM_MIDDLE, FIM_PAD, FIM_PREFIX, FIM_SUFFIX, FimIds, fim_prompt, fit_context  # type: ignore[no-redef]
    from lathe_protocol import PARAMETER_TYPES, PROMPT  # type: ignore[no-redef]
    from lathe_quant import load_causal_lm  # type: ignore[no-redef]


_log = logging.getLogger(__name__)


class RequestError(ValueError):
    """A request the engine refuses; the message is sent back to the client as is."""


@dataclass
class Limits:
    """Server-side bounds on what a request may ask for (config.pbtxt parameters)."""

    default_max_tokens: int = 64
    max_tokens_limit: int = 1024  # "absurd max_tokens" is anything above this
    max_stop_sequences: int = 8


@dataclass
class GenRequest:
    """One validated request."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    stream: bool = False  # one response per chunk (gRPC streaming, generate_stream) or one in all
    fim: bool = False  # laid out as prefix/suffix around the cursor


@dataclass
class Event:
    """One step of request ``index``: the new token and the text now safe to send (may be empty); ``finish`` on the last."""

    index: int
    text: str
    token_ids: list[int]
    finish: str | None = None  # "stop" (a stop sequence), "eos", "length", "cancelled" (the client went away)


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters might begin a stop sequence (or a split UTF-8 character)."""
    hold = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                hold = max(hold, n)
                break
    if text.endswith("\ufffd"):  # the tokenizer's replacement char: a multi-byte character is half done
        hold = max(hold, 1)
    return hold


@dataclass
class _Row:
    request: GenRequest
    index: int
    generator: torch.Generator | None
    sink: Sink
    ids: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the decoded text already emitted


class Engine:
    """An HF causal LM (fp32, or an int8 variant: :mod:`lathe.core.quant`) and its tokenizer, generating for batches of requests."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", limits: Limits | None = None) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = load_causal_lm(model_dir, device)  # fp32, or the int8 variant's quantised Linear layers
        self.device = torch.device(device)
        self.limits = limits or Limits()
        self.context = int(self.model.config.max_position_embeddings)
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id
        vocab = self.tokenizer.get_vocab()
        # a FIM completion is over when the model closes the middle: <|endoftext|>, or <fim_pad> where the vocabulary has it
        self.end_ids = {self.eos_id, *([vocab[FIM_PAD]] if FIM_PAD in vocab else [])}
        self.fim_ids = (
            FimIds(vocab[FIM_PREFIX], vocab[FIM_MIDDLE], vocab[FIM_SUFFIX])
            if {FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX} <= vocab.keys()
            else None
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of request text; special-token names in it stay text, so code cannot inject control tokens."""
        return self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)

    def fim_prompt_ids(self, prefix: str, suffix: str, max_tokens: int) -> list[int]:
        """The PSM prompt for the code around a cursor, cut to leave ``max_tokens`` of the context for the middle."""
        if self.fim_ids is None:
            raise RequestError(f"this model's vocabulary has no {FIM_PREFIX}/{FIM_SUFFIX}/{FIM_MIDDLE} tokens; send no suffix")
        try:
            kept_prefix, kept_suffix = fit_context(self.encode(prefix), self.encode(suffix), self.context - max_tokens)
        except ValueError:
            raise RequestError(
                f"max_tokens {max_tokens} leaves no room for the prompt in the model's context of {self.context}; "
                f"ask for at most {self.context - 4}"
            ) from None
        return fim_prompt(kept_prefix, kept_suffix, self.fim_ids, "psm")

    def parse(self, prompt: str, params: dict[str, Any]) -> GenRequest:
        """Validate one request; raises ``RequestError`` naming the field and the fix."""
        unknown = sorted(set(params) - set(PARAMETER_TYPES))
        if unknown:
            raise RequestError(
                f"unknown parameter(s) {', '.join(unknown)}; accepted: {PROMPT.name}, {', '.join(PARAMETER_TYPES)}"
            )
        for name, value in params.items():
            want = PARAMETER_TYPES[name]
            ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            if not ok:
                raise RequestError(f"{name} must be {want.__name__}, got {type(value).__name__} {value!r}")
        suffix = params.get("suffix")
        if not prompt and suffix is None:
            raise RequestError("text_input is empty; send the code to complete")
        max_tokens = params.get("max_tokens", self.limits.default_max_tokens)
        if not 1 <= max_tokens <= self.limits.max_tokens_limit:
            raise RequestError(f"max_tokens must be between 1 and {self.limits.max_tokens_limit}, got {max_tokens}")
        if suffix is not None:  # an editor's cursor: even an empty suffix (the end of a file) asks for a middle
            ids = self.fim_prompt_ids(prompt, suffix, max_tokens)
        else:
            ids = self.encode(prompt)
            if len(ids) >= self.context:
                raise RequestError(
                    f"text_input is {len(ids)} tokens; the model's context is {self.context}: send at most "
                    f"{self.context - 1}, or send a suffix to have prefix and suffix cut to fit"
                )
        temperature = float(params.get("temperature", 0.0))
        if not 0.0 <= temperature <= 10.0:
            raise RequestError(f"temperature must be between 0 and 10, got {temperature}")
        top_p = float(params.get("top_p", 1.0))
        if not 0.0 < top_p <= 1.0:
            raise RequestError(f"top_p must be in (0, 1], got {top_p}")
        stop = params.get("stop", [])
        if len(stop) > self.limits.max_stop_sequences or not all(isinstance(s, str) and s for s in stop):
            raise RequestError(f"stop must be at most {self.limits.max_stop_sequences} non-empty strings")
        return GenRequest(
            ids, max_tokens, temperature, top_p, list(stop), params.get("seed"), params.get("stream", False), suffix is not None
        )

    def _pick(self, logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        """Next token per row: argmax for greedy rows, temperature + nucleus sampling for the rest."""
        picks = logits.argmax(-1).tolist()
        for i, row in enumerate(rows):
            r = row.request
            if r.temperature <= 0:
                continue
            probs = torch.softmax(logits[i].float() / r.temperature, -1)
            if r.top_p < 1.0:
                sorted_p, order = probs.sort(descending=True)
                # keep the smallest prefix whose mass reaches top_p (the top token always stays)
                drop = sorted_p.cumsum(-1) - sorted_p >= r.top_p
                sorted_p[drop] = 0.0
                probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
            picks[i] = int(torch.multinomial(probs, 1, generator=row.generator).item())
        return picks

    def _advance(self, row: _Row, token: int) -> Event:
        """Add one token to a row; the event carries the text that is now safe to send (maybe none)."""
        r = row.request
        finish = None
        if token in self.end_ids:
            finish = "eos"
        else:
            row.ids.append(token)
        text = self.tokenizer.decode(row.ids, skip_special_tokens=True)
        cut = min((at for at in (text.find(s) for s in r.stop) if at != -1), default=-1)
        if cut != -1:
            text, finish = text[:cut], "stop"
        elif finish is None and (len(row.ids) >= r.max_tokens or len(r.prompt_ids) + len(row.ids) >= self.context):
            finish = "length"
        upto = len(text) if finish else len(text) - _held_back(text, r.stop)
        delta, row.sent = text[row.sent : upto], max(row.sent, upto)
        return Event(row.index, delta, [token] if token not in self.end_ids else [], finish)

    def _row(self, request: GenRequest, index: int, sink: Sink) -> _Row:
        """A request's row: sampled rows get their own generator, seeded by the request or at random."""
        gen = None
        if request.temperature > 0:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(request.seed if request.seed is not None else int(torch.randint(0, 2**31, ()).item()))
        return _Row(request, index, gen, sink)

    def _prefill(self, requests: list[GenRequest]) -> _Batch:
        """Run the prompts through the model together, left-padded so that every prompt ends where generation starts."""
        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        return _Batch(out.past_key_values, out.logits[:, -1, :], mask, positions[:, -1:])

    def generate(self, requests: list[GenRequest]) -> Iterator[Event]:
        """Generate for all requests together; yields events as tokens are made, each request ends with ``finish``.

        Event ``index`` is the request's place in ``requests``.
        """
        events: list[Event] = []
        batcher = ContinuousBatcher(self, max_rows=len(requests))
        for r in requests:
            batcher.submit(r, _Collect(events))
        while batcher.busy:
            batcher.step()
            yield from events
            events.clear()


class Sink(Protocol):
    """Where a request's events go, and how the scheduler learns that its client went away."""

    def event(self, event: Event) -> None:
        """One step of the request; the last has ``finish`` set."""

    def cancelled(self) -> bool:
        """Whether the client gave up: its row is dropped at the next step (with a ``cancelled`` finish event)."""

    def failed(self, exc: BaseException) -> None:
        """Generation failed for every open request: close this one with an error."""


@dataclass
class _Collect:
    """A sink that appends events to a list (``Engine.generate``: nothing is cancelled, failures propagate)."""

    events: list[Event]

    def event(self, event: Event) -> None:
        self.events.append(event)

    def cancelled(self) -> bool:
        return False

    def failed(self, exc: BaseException) -> None:
        pass


@dataclass
class _Batch:
    """Rows that share a KV cache: right-aligned, each row's tokens after its left padding (``mask`` 0)."""

    cache: Any  # transformers' DynamicCache: per layer, keys and values of shape (rows, heads, width, head_dim)
    logits: torch.Tensor  # (rows, vocab): the next token's logits of each row
    mask: torch.Tensor  # (rows, width): 1 where the cache holds a real token
    positions: torch.Tensor  # (rows, 1): the position of each row's last token (its own count, padding excluded)

    def select(self, keep: list[int]) -> None:
        """Keep only these rows, then drop the leading columns that are padding in every remaining row."""
        index = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(index)
        self.logits, self.mask, self.positions = self.logits[index], self.mask[index], self.positions[index]
        # without this a long-lived batch would keep the columns of rows long gone, and grow without end
        first = int(self.mask.any(0).to(torch.int8).argmax())
        if first:
            self.mask = self.mask[:, first:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]

    def merge(self, other: _Batch) -> None:
        """Append ``other``'s rows, left-padding whichever cache is shorter so that all rows stay right-aligned."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, width, -2), _left_pad(theirs.keys, width, -2)])
            mine.values = torch.cat([_left_pad(mine.values, width, -2), _left_pad(theirs.values, width, -2)])
        self.mask = torch.cat([_left_pad(self.mask, width, -1), _left_pad(other.mask, width, -1)])
        self.logits = torch.cat([self.logits, other.logits])
        self.positions = torch.cat([self.positions, other.positions])


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """``t`` with zeros before its entries along ``dim`` (a negative dim) up to ``width``."""
    return torch.nn.functional.pad(t, [0, 0] * (-dim - 1) + [width - t.shape[dim], 0])


def _live(rows: list[_Row]) -> list[int]:
    """Indices of the rows whose clients are still there; each of the others gets its ``cancelled`` finish event."""
    live = []
    for i, row in enumerate(rows):
        if row.sink.cancelled():
            row.sink.event(Event(row.index, "", [], "cancelled"))
        else:
            live.append(i)
    return live


class ContinuousBatcher:
    """Continuous batching: one running batch and its KV cache, which requests join at every decode step.

    ``submit`` may be called from any thread; ``step`` (or the loop thread of ``start``) from one.
    Each step drops cancelled rows, prefills the waiting requests that fit under ``max_rows``
    (together) and merges them into the running batch, picks one token per row, sends each
    row's event to its sink, lets finished rows leave, and runs one decode step for the rest.
    A request therefore waits at most one step to start, never for a whole batch to end.
    """

    def __init__(self, engine: Engine, max_rows: int) -> None:
        self.engine = engine
        self.max_rows = max_rows
        self._rows: list[_Row] = []
        self._batch: _Batch | None = None
        self._waiting: deque[_Row] = deque()
        self._submitted = 0
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        """Whether any request is running or waiting."""
        return bool(self._rows or self._waiting)

    @property
    def running(self) -> int:
        """Rows in the running batch."""
        return len(self._rows)

    @property
    def width(self) -> int:
        """Columns of the KV cache (the longest running row, once padding is trimmed)."""
        return 0 if self._batch is None else int(self._batch.mask.shape[1])

    def submit(self, request: GenRequest, sink: Sink) -> int:
        """Queue a request; its events go to ``sink``. Returns its index (the order of submission)."""
        with self._wake:
            row = self.engine._row(request, self._submitted, sink)
            self._submitted += 1
            self._waiting.append(row)
            self._wake.notify()
        return row.index

    @torch.inference_mode()
    def step(self) -> None:
        """One token for every running row, after dropping cancelled rows and admitting waiting ones."""
        engine = self.engine
        self._keep(_live(self._rows))
        self._admit()
        if not self._rows:
            return
        batch = self._batch
        assert batch is not None  # running rows are always in the batch (_admit, _keep)
        picks = engine._pick(batch.logits, self._rows)
        keep: list[int] = []
        for i, (row, token) in enumerate(zip(self._rows, picks)):
            event = engine._advance(row, token)
            row.sink.event(event)
            if event.finish is None:
                keep.append(i)
        self._keep(keep)
        if not self._rows:
            return
        batch.mask = torch.cat([batch.mask, torch.ones_like(batch.mask[:, :1])], dim=-1)
        batch.positions = batch.positions + 1
        step = torch.tensor([picks[i] for i in keep], device=engine.device).unsqueeze(-1)
        out = engine.model(
            input_ids=step, attention_mask=batch.mask, position_ids=batch.positions, past_key_values=batch.cache, use_cache=True
        )
        batch.cache, batch.logits = out.past_key_values, out.logits[:, -1, :]

    def _keep(self, keep: list[int]) -> None:
        """Only these running rows stay (finished and cancelled rows leave the batch and the cache at once)."""
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._batch = None
        else:
            assert self._batch is not None  # rows were running, so they are in the batch
            self._batch.select(keep)

    def _admit(self) -> None:
        """Prefill the waiting requests that fit (in one forward) and merge them into the running batch."""
        new: list[_Row] = []
        with self._wake:
            while self._waiting and len(self._rows) + len(new) < self.max_rows:
                new.append(self._waiting.popleft())
        new = [new[i] for i in _live(new)]
        if not new:
            return
        try:
            batch = self.engine._prefill([r.request for r in new])
        except BaseException:
            with self._wake:  # back in the queue, so that ``abort`` closes them too
                self._waiting.extendleft(reversed(new))
            raise
        if self._batch is None:
            self._batch = batch
        else:
            self._batch.merge(batch)
        self._rows += new

    def abort(self, exc: BaseException) -> None:
        """Close every running and waiting request with ``exc`` and start afresh with an empty batch."""
        with self._wake:
            rows = self._rows + list(self._waiting)
            self._rows, self._batch = [], None
            self._waiting.clear()
        for row in rows:
            row.sink.failed(exc)

    def start(self) -> None:
        """Run ``step`` in a loop thread whenever there is work, until ``stop``."""
        self._thread = threading.Thread(target=self._serve, name="lathe-continuous-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """End the loop thread; requests still open are closed with an error."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.abort(RuntimeError("the model is shutting down"))

    def _serve(self) -> None:
        while True:
            with self._wake:
                while not self.busy and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
            try:
                self.step()
            except Exception as exc:  # a failed step must close its clients' streams, not hang them; later requests still run
                _log.exception("generation step failed")
                self.abort(exc)
