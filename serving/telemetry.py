"""Acceptance telemetry: every completion the gateway serves and every event an editor reports about it.

Stored durably through SQLAlchemy (SQLite by default, PostgreSQL by URL), so a gateway restart loses
nothing, and read back by ``lathe ab report`` (acceptance per arm and language) and ``lathe feedback
export`` (preference data for post-training). Events follow Tabby's: ``view`` (a suggestion was
shown), ``select`` (accepted), ``dismiss``; each names the completion and the choice it is about.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    select,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from lathe.core.errors import InputError

EVENT_KINDS = ("view", "select", "dismiss")
LANGUAGES = {  # file extension -> language, for requests that name a file but no language
    ".py": "python",
    ".js": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".tsx": "typescript",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".hpp": "cpp",
    ".rb": "ruby",
    ".sh": "shell",
    ".php": "php",
    ".cs": "csharp",
    ".kt": "kotlin",
    ".swift": "swift",
    ".scala": "scala",
    ".sql": "sql",
}


def language_of(language: str | None, filename: str | None) -> str:
    """The request's language: as given, else from the file's extension, else ``unknown``."""
    if language:
        return language.strip().lower()
    if filename:
        return LANGUAGES.get(Path(filename).suffix.lower(), "unknown")
    return "unknown"


def digest(text: str) -> str:
    """A short stable digest (prompts and user ids are compared by it, not stored by it)."""
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class Base(DeclarativeBase):
    """The telemetry schema."""


class CompletionRow(Base):
    """One served completion request (its ``n`` choices are ``ChoiceRow``s)."""

    __tablename__ = "completions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    user_hash: Mapped[str] = mapped_column(String(32), index=True)
    track: Mapped[str] = mapped_column(String(32), index=True)
    model: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(32), index=True)
    language: Mapped[str] = mapped_column(String(32), index=True)
    prompt_hash: Mapped[str] = mapped_column(String(32), index=True)
    prompt: Mapped[str | None] = mapped_column(Text, nullable=True)  # kept only with serve.gateway.store_text
    suffix: Mapped[str | None] = mapped_column(Text, nullable=True)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    latency_s: Mapped[float] = mapped_column(Float)
    first_token_s: Mapped[float] = mapped_column(Float)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    choices: Mapped[list[ChoiceRow]] = relationship(back_populates="completion", cascade="all, delete-orphan")


class ChoiceRow(Base):
    """One generated choice of a completion."""

    __tablename__ = "choices"
    completion_id: Mapped[str] = mapped_column(ForeignKey("completions.id"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    finish_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)
    completion: Mapped[CompletionRow] = relationship(back_populates="choices")


class EventRow(Base):
    """One editor event about a choice."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    completion_id: Mapped[str] = mapped_column(ForeignKey("completions.id"), index=True)
    choice_index: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    elapsed_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)


@dataclass(frozen=True)
class Served:
    """What the gateway knows about a completion once it is done."""

    id: str
    user: str
    track: str
    model: str
    model_version: str
    language: str
    prompt: str
    suffix: str | None
    texts: list[str]
    finish_reasons: list[str | None]
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    first_token_s: float
    params: dict[str, Any]


@dataclass(frozen=True)
class Labels:
    """The labels a completion's metrics carry."""

    model_version: str
    track: str
    language: str


class UnknownCompletion(LookupError):
    """An event names a completion (or choice) the store has never seen."""


class TelemetryStore:
    """The completions and events tables behind one SQLAlchemy URL."""

    def __init__(self, url: str, store_text: bool = True) -> None:
        self.url, self.store_text = url, store_text
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(url, pool_pre_ping=True)
        try:
            Base.metadata.create_all(self.engine)
        except OperationalError as exc:
            raise InputError(
                f"telemetry store {self.engine.url.render_as_string(hide_password=True)} cannot be opened "
                f"({str(exc.orig).strip().splitlines()[0]}); check serve.gateway.telemetry_url"
            ) from None

    def record(self, served: Served) -> None:
        """Store a served completion and its choices."""
        keep = self.store_text
        row = CompletionRow(
            id=served.id,
            created_at=datetime.now(UTC),
            user_hash=digest(served.user),
            track=served.track,
            model=served.model,
            model_version=served.model_version,
            language=served.language,
            prompt_hash=digest(served.prompt + "\0" + (served.suffix or "")),
            prompt=served.prompt if keep else None,
            suffix=served.suffix if keep else None,
            prompt_tokens=served.prompt_tokens,
            completion_tokens=served.completion_tokens,
            latency_s=served.latency_s,
            first_token_s=served.first_token_s,
            params=served.params,
            choices=[
                ChoiceRow(index=i, text=text if keep else None, finish_reason=reason)
                for i, (text, reason) in enumerate(zip(served.texts, served.finish_reasons))
            ],
        )
        with Session(self.engine) as session, session.begin():
            session.add(row)

    def event(self, completion_id: str, choice_index: int, kind: str, elapsed_ms: int | None) -> Labels:
        """Store an event; raises ``UnknownCompletion`` when its completion or choice does not exist."""
        with Session(self.engine) as session, session.begin():
            completion = session.get(CompletionRow, completion_id)
            if completion is None:
                raise UnknownCompletion(f"completion_id {completion_id!r} is unknown; send the id a /v1/completions answer gave")
            if not 0 <= choice_index < len(completion.choices):
                raise UnknownCompletion(
                    f"choice_index {choice_index} is out of range; completion {completion_id} has "
                    f"{len(completion.choices)} choice(s)"
                )
            session.add(
                EventRow(
                    created_at=datetime.now(UTC),
                    completion_id=completion_id,
                    choice_index=choice_index,
                    kind=kind,
                    elapsed_ms=elapsed_ms,
                )
            )
            return Labels(completion.model_version, completion.track, completion.language)

    def outcomes(self) -> Iterator[dict[str, Any]]:
        """One row per shown choice: its completion's labels and whether it was accepted or dismissed.

        A choice counts as shown when it has a ``view`` event, or a ``select``/``dismiss`` without one
        (a client that reports only the outcome); accepted when it has a ``select``.
        """
        with Session(self.engine) as session:
            rows = session.execute(
                select(
                    EventRow.completion_id,
                    EventRow.choice_index,
                    EventRow.kind,
                    CompletionRow.track,
                    CompletionRow.model_version,
                    CompletionRow.language,
                ).join(CompletionRow, CompletionRow.id == EventRow.completion_id)
            ).all()
        choices: dict[tuple[str, int], dict[str, Any]] = {}
        for completion_id, index, kind, track, version, language in rows:
            entry = choices.setdefault(
                (completion_id, index),
                {
                    "completion_id": completion_id,
                    "choice_index": index,
                    "track": track,
                    "model_version": version,
                    "language": language,
                    "kinds": set(),
                },
            )
            entry["kinds"].add(kind)
        for entry in choices.values():
            kinds = entry.pop("kinds")
            yield {**entry, "accepted": "select" in kinds, "dismissed": "dismiss" in kinds and "select" not in kinds}

    def labelled_choices(self) -> Iterator[dict[str, Any]]:
        """Every choice with stored text and an outcome: prompt, suffix, text, accepted (True/False)."""
        outcomes = {(o["completion_id"], o["choice_index"]): o for o in self.outcomes() if o["accepted"] or o["dismissed"]}
        if not outcomes:
            return
        with Session(self.engine) as session:
            rows = session.execute(
                select(
                    ChoiceRow.completion_id,
                    ChoiceRow.index,
                    ChoiceRow.text,
                    CompletionRow.prompt,
                    CompletionRow.suffix,
                    CompletionRow.prompt_hash,
                    CompletionRow.language,
                    CompletionRow.model_version,
                )
                .join(CompletionRow, CompletionRow.id == ChoiceRow.completion_id)
                .where(ChoiceRow.completion_id.in_({c for c, _ in outcomes}))
                .order_by(ChoiceRow.completion_id, ChoiceRow.index)
            ).all()
        for completion_id, index, text, prompt, suffix, prompt_hash, language, version in rows:
            outcome = outcomes.get((completion_id, index))
            if outcome is None or text is None or prompt is None:
                continue
            yield {
                "completion_id": completion_id,
                "choice_index": index,
                "prompt": prompt,
                "suffix": suffix,
                "text": text,
                "prompt_hash": prompt_hash,
                "language": language,
                "model_version": version,
                "accepted": outcome["accepted"],
            }


def export_preferences(store: TelemetryStore, out_dir: Path) -> dict[str, int]:
    """Write ``pairs.jsonl`` (``prompt``, ``suffix``, ``chosen``, ``rejected``: an accepted and a dismissed
    completion of the same prompt) and ``labelled.jsonl`` (every labelled completion, ``label`` true when
    accepted), for preference optimisation and KTO-style training. Returns the row counts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    by_prompt: dict[str, dict[str, list[dict[str, Any]]]] = {}
    labelled = 0
    with open(out_dir / "labelled.jsonl", "w") as out:
        for row in store.labelled_choices():
            labelled += 1
            out.write(
                json.dumps(
                    {
                        "prompt": row["prompt"],
                        "suffix": row["suffix"],
                        "completion": row["text"],
                        "label": row["accepted"],
                        "language": row["language"],
                        "model_version": row["model_version"],
                        "completion_id": row["completion_id"],
                        "choice_index": row["choice_index"],
                    }
                )
                + "\n"
            )
            side = "chosen" if row["accepted"] else "rejected"
            by_prompt.setdefault(row["prompt_hash"], {"chosen": [], "rejected": []})[side].append(row)
    pairs = 0
    with open(out_dir / "pairs.jsonl", "w") as out:
        for sides in by_prompt.values():
            for chosen, rejected in zip(sides["chosen"], sides["rejected"]):  # each completion is used in one pair at most
                if chosen["text"] == rejected["text"]:
                    continue
                pairs += 1
                out.write(
                    json.dumps(
                        {
                            "prompt": chosen["prompt"],
                            "suffix": chosen["suffix"],
                            "chosen": chosen["text"],
                            "rejected": rejected["text"],
                            "language": chosen["language"],
                        }
                    )
                    + "\n"
                )
    return {"pairs": pairs, "labelled": labelled}
