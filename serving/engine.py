"""Batched, streaming generation with the KV cache: the core of the Triton model.

This module depends on torch, transformers, the standard library and ``protocol.py`` only,
because it is copied into the Triton model repository beside ``model.py`` and must run in
any Triton image (where lathe itself is not installed). It is tested without Triton.

A request with a ``suffix`` (an editor's cursor in the middle of a file) is laid out as a
fill-in-the-middle prompt by the function the shards stage trained with, prefix and suffix cut
from their far ends to leave room for ``max_tokens``; its completion ends at ``<|endoftext|>``
or ``<fim_pad>``.

One ``Engine.generate`` call serves the requests Triton's dynamic batcher handed to one
``execute``: prompts of different lengths are left-padded into one batch, each row has
its own sampling parameters, generator and stop sequences, and rows leave the batch (and
the KV cache) as soon as they finish, so a short request never pays for a long one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

try:
    from lathe.core.fim import FIM_MIDDLE, FIM_PAD, FIM_PREFIX, FIM_SUFFIX, FimIds, fim_prompt, fit_context

    from .protocol import PARAMETER_TYPES, PROMPT
except ImportError:  # copied into a Triton model repository as lathe_engine.py, beside lathe_protocol.py and lathe_fim.py
    from lathe_fim import FIM_MIDDLE, FIM_PAD, FIM_PREFIX, FIM_SUFFIX, FimIds, fim_prompt, fit_context  # type: ignore[no-redef]
    from lathe_protocol import PARAMETER_TYPES, PROMPT  # type: ignore[no-redef]


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
    finish: str | None = None  # "stop" (a stop sequence), "eos", "length"


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
    ids: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the decoded text already emitted


class Engine:
    """An HF causal LM and its tokenizer, generating for batches of requests."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", limits: Limits | None = None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir)).to(device).eval()
        self.device = torch.device(device)
        self.limits = limits or Limits()
        self.context = int(self.model.config.max_position_embeddings)
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id
        vocab = self.tokenizer.get_vocab()
        # a FIM completion is over when the model closes the middle: <|endoftext|>, or <fim_pad> where the vocabulary has it
        self.end_ids = {self.eos_id, *([vocab[FIM_PAD]] if FIM_PAD in vocab else [])}
        self.fim_ids = FimIds(vocab[FIM_PREFIX], vocab[FIM_MIDDLE], vocab[FIM_SUFFIX]) if {FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX} <= vocab.keys() else None

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
            raise RequestError(f"max_tokens {max_tokens} leaves no room for the prompt in the model's context of {self.context}; "
                               f"ask for at most {self.context - 4}") from None
        return fim_prompt(kept_prefix, kept_suffix, self.fim_ids, "psm")

    def parse(self, prompt: str, params: dict[str, Any]) -> GenRequest:
        """Validate one request; raises ``RequestError`` naming the field and the fix."""
        unknown = sorted(set(params) - set(PARAMETER_TYPES))
        if unknown:
            raise RequestError(f"unknown parameter(s) {', '.join(unknown)}; accepted: {PROMPT.name}, {', '.join(PARAMETER_TYPES)}")
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
                raise RequestError(f"text_input is {len(ids)} tokens; the model's context is {self.context}: send at most "
                                   f"{self.context - 1}, or send a suffix to have prefix and suffix cut to fit")
        temperature = float(params.get("temperature", 0.0))
        if not 0.0 <= temperature <= 10.0:
            raise RequestError(f"temperature must be between 0 and 10, got {temperature}")
        top_p = float(params.get("top_p", 1.0))
        if not 0.0 < top_p <= 1.0:
            raise RequestError(f"top_p must be in (0, 1], got {top_p}")
        stop = params.get("stop", [])
        if len(stop) > self.limits.max_stop_sequences or not all(isinstance(s, str) and s for s in stop):
            raise RequestError(f"stop must be at most {self.limits.max_stop_sequences} non-empty strings")
        return GenRequest(ids, max_tokens, temperature, top_p, list(stop), params.get("seed"), params.get("stream", False), suffix is not None)

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

    @torch.inference_mode()
    def generate(self, requests: list[GenRequest]) -> Iterator[Event]:
        """Generate for all requests together; yields events as tokens are made, each request ends with ``finish``."""
        rows = []
        for i, r in enumerate(requests):
            gen = None
            if r.temperature > 0:
                gen = torch.Generator(device=self.device)
                gen.manual_seed(r.seed if r.seed is not None else int(torch.randint(0, 2**31, ()).item()))
            rows.append(_Row(r, i, gen))
        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(requests):  # left padding: every prompt ends where generation starts
            ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1, :]
        while rows:
            picks = self._pick(logits, rows)
            keep: list[int] = []
            for i, (row, token) in enumerate(zip(rows, picks)):
                event = self._advance(row, token)
                yield event
                if event.finish is None:
                    keep.append(i)
            if not keep:
                return
            if len(keep) < len(rows):  # finished rows leave the batch and the cache
                cache.batch_select_indices(torch.tensor(keep, device=self.device))
                mask, positions = mask[keep], positions[keep]
                rows = [rows[i] for i in keep]
                picks = [picks[i] for i in keep]
            step = torch.tensor(picks, device=self.device).unsqueeze(-1)
            mask = torch.cat([mask, torch.ones_like(step)], dim=-1)
            positions = positions[:, -1:] + 1
            out = self.model(input_ids=step, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
            cache, logits = out.past_key_values, out.logits[:, -1, :]
