"""The one event model every source is normalised to, and the tables that keep it.

``ActivityEvent`` is what the detection engine consumes, live and in replays (``lifeline
evaluate``) alike. ``RawEvent`` keeps every accepted input exactly as it came, so nothing
accepted is ever lost even if normalisation changes later.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, UTCDateTime, utcnow


class ActivityKind(enum.StrEnum):
    SUBMIT = "submit"  # a graded attempt (correct True/False, maybe a score)
    RUN = "run"  # ran the program without grading
    COMPILE_ERROR = "compile_error"  # syntax / compile error (error = its type or message)
    RUNTIME_ERROR = "runtime_error"  # the program crashed (error = exception type)
    HINT = "hint"  # asked the exercise platform for a hint
    STUCK = "stuck"  # the learner's own "I'm stuck"


@dataclass(frozen=True)
class ActivityEvent:
    """One learner event on one exercise, whatever its source.

    ``learner`` and ``exercise`` are keys within one course (database ids as strings for live
    events, SubjectID / ProblemID in a ProgSnap2 replay). ``order`` increases with time within
    the source; ties in ``at`` are broken by it.
    """

    learner: str
    exercise: str
    kind: ActivityKind
    at: dt.datetime
    order: int = 0
    correct: bool | None = None
    score: float | None = None  # 0..1 where the source grades partially
    error: str | None = None  # normalised error type, e.g. "NameError" or "SyntaxError"
    code_length: int | None = None


class RawEvent(Base):
    """Every accepted input, verbatim. (source, course, external id) makes repeats idempotent."""

    __tablename__ = "raw_events"
    __table_args__ = (
        UniqueConstraint("course_id", "source", "external_id", name="uq_raw_events_external"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    # No key to platforms (migration 0009): the course's cascade deletes these rows.
    platform_id: Mapped[int] = mapped_column(Integer)
    course_id: Mapped[int] = mapped_column(ForeignKey("courses.id", ondelete="CASCADE"))
    source: Mapped[str] = mapped_column(String(20))  # xapi, progsnap2, sdk
    external_id: Mapped[str | None] = mapped_column(String(255), default=None)
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20), default="accepted")  # or "unmapped"
    note: Mapped[str | None] = mapped_column(Text, default=None)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ActivityRecord(Base):
    """A normalised event, attached to a known person and exercise of a course."""

    __tablename__ = "activity_events"
    __table_args__ = (
        Index("ix_activity_events_learner_exercise", "learner_id", "exercise_id", "occurred_at"),
        Index("ix_activity_events_course_time", "course_id", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    # Only the keys that delete these rows (migration 0009): the exercise's cascade covers its
    # course and platform; raw events are deleted only with their course. A key is a lookup per
    # row, and the consumer writes thousands of rows a second.
    platform_id: Mapped[int] = mapped_column(Integer)
    course_id: Mapped[int] = mapped_column(Integer)
    exercise_id: Mapped[int] = mapped_column(ForeignKey("exercises.id", ondelete="CASCADE"))
    learner_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"))
    raw_event_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    source: Mapped[str] = mapped_column(String(20))
    kind: Mapped[str] = mapped_column(String(20))
    correct: Mapped[bool | None] = mapped_column(Boolean, default=None)
    score: Mapped[float | None] = mapped_column(Float, default=None)
    error: Mapped[str | None] = mapped_column(String(200), default=None)
    code_length: Mapped[int | None] = mapped_column(Integer, default=None)
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    def as_event(self) -> ActivityEvent:
        return ActivityEvent(
            learner=str(self.learner_id),
            exercise=str(self.exercise_id),
            kind=ActivityKind(self.kind),
            at=self.occurred_at,
            order=self.id,
            correct=self.correct,
            score=self.score,
            error=self.error,
            code_length=self.code_length,
        )


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A normalised record just inserted, as ingestion hands it to detection (``after_store``):
    the row's values, without the cost of an ORM object per event."""

    id: int
    platform_id: int
    course_id: int
    exercise_id: int
    learner_id: int
    raw_event_id: int | None
    source: str
    kind: str
    correct: bool | None
    score: float | None
    error: str | None
    code_length: int | None
    occurred_at: dt.datetime
    received_at: dt.datetime

    def as_event(self) -> ActivityEvent:
        return ActivityEvent(
            learner=str(self.learner_id),
            exercise=str(self.exercise_id),
            kind=ActivityKind(self.kind),
            at=self.occurred_at,
            order=self.id,
            correct=self.correct,
            score=self.score,
            error=self.error,
            code_length=self.code_length,
        )
