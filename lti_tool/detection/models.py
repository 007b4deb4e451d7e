"""Tables of live detection: the engine's state, peer statistics, rule books, and offers.

The engine itself (``engine.py``) is pure; ``live.py`` keeps its state here, one row per
(course, learner, exercise) and per (course, learner), so each event loads, updates and saves a
constant number of rows whatever the history.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, UTCDateTime, utcnow


class DetectionExerciseState(Base):
    """``ExerciseState.as_dict()`` of one learner on one exercise, and its timer (the moment a
    time-based trigger such as silence-after-failure must be checked, as a Unix time)."""

    __tablename__ = "detection_exercise_states"
    __table_args__ = (Index("ix_detection_exercise_states_due", "due_at"),)

    course_id: Mapped[int] = mapped_column(
        ForeignKey("courses.id", ondelete="CASCADE"), primary_key=True
    )
    learner_id: Mapped[int] = mapped_column(
        ForeignKey("people.id", ondelete="CASCADE"), primary_key=True
    )
    exercise_id: Mapped[int] = mapped_column(
        ForeignKey("exercises.id", ondelete="CASCADE"), primary_key=True
    )
    state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    due_at: Mapped[float | None] = mapped_column(Float, default=None)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DetectionLearnerState(Base):
    """``LearnerState.as_dict()`` of one learner in one course (history, daily alert count)."""

    __tablename__ = "detection_learner_states"

    course_id: Mapped[int] = mapped_column(
        ForeignKey("courses.id", ondelete="CASCADE"), primary_key=True
    )
    learner_id: Mapped[int] = mapped_column(
        ForeignKey("people.id", ondelete="CASCADE"), primary_key=True
    )
    state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DetectionPeerStats(Base):
    """``ExerciseStats.as_dict()`` of one exercise of a course (``exercise_key`` is the exercise
    id as text), or of the whole course (``exercise_key`` = ``""``)."""

    __tablename__ = "detection_peer_stats"

    course_id: Mapped[int] = mapped_column(
        ForeignKey("courses.id", ondelete="CASCADE"), primary_key=True
    )
    exercise_key: Mapped[str] = mapped_column(String(32), primary_key=True)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DetectionRules(Base):
    """A course's rule book (``RuleBook`` JSON, with per-exercise rules under ``exercises``)
    plus ``"escalate": true`` to let an offer escalate. No row: ``default_rules()``, no
    escalation."""

    __tablename__ = "detection_rules"

    course_id: Mapped[int] = mapped_column(
        ForeignKey("courses.id", ondelete="CASCADE"), primary_key=True
    )
    rules: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class OfferStatus(enum.StrEnum):
    OFFERED = "offered"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    ESCALATED = "escalated"
    EXPIRED = "expired"


class Offer(Base):
    """A tutor offered to a learner on an exercise, because rule ``rule`` fired."""

    __tablename__ = "offers"
    __table_args__ = (
        Index("ix_offers_learner", "learner_id", "course_id", "status"),
        Index("ix_offers_status_created", "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    course_id: Mapped[int] = mapped_column(ForeignKey("courses.id", ondelete="CASCADE"))
    learner_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"))
    exercise_id: Mapped[int] = mapped_column(ForeignKey("exercises.id", ondelete="CASCADE"))
    rule: Mapped[str] = mapped_column(String(100))
    level: Mapped[int] = mapped_column(Integer, default=1)  # 2: the stronger, escalated offer
    severity: Mapped[float] = mapped_column(Float, default=0.0)
    reason: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(20), default=OfferStatus.OFFERED.value)
    # The learner ticked "open a request for me if I keep failing" on this offer.
    consent: Mapped[bool] = mapped_column(Boolean, default=False)
    request_id: Mapped[int | None] = mapped_column(
        ForeignKey("help_requests.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    responded_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
