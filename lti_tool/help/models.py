"""Help requests, their audit/event log, chat, course settings, and the page log."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, UTCDateTime, utcnow


class HelpStatus(enum.StrEnum):
    QUEUED = "queued"
    CLAIMED = "claimed"
    RESOLVED = "resolved"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (HelpStatus.QUEUED.value, HelpStatus.CLAIMED.value)


class Outcome(enum.StrEnum):
    SOLVED = "solved"
    PARTLY = "partly"
    NOT_SOLVED = "not_solved"
    NO_SHOW = "no_show"


class CourseSettings(Base):
    """An instructor's settings for a course; a course with no row uses the defaults."""

    __tablename__ = "course_settings"

    course_id: Mapped[int] = mapped_column(
        ForeignKey("courses.id", ondelete="CASCADE"), primary_key=True
    )
    skills: Mapped[list[str]] = mapped_column(JSON, default=list)
    exercise_priority: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    cooldown_minutes: Mapped[int] = mapped_column(Integer, default=0)
    daily_cap: Mapped[int] = mapped_column(Integer, default=0)
    sla_minutes: Mapped[int] = mapped_column(Integer, default=5)
    step_away_minutes: Mapped[int] = mapped_column(Integer, default=10)
    meeting_template: Mapped[str | None] = mapped_column(String(500), default=None)
    notify_webhook: Mapped[str | None] = mapped_column(String(1000), default=None)
    notify_emails: Mapped[list[str]] = mapped_column(JSON, default=list)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class CoursePool(Base):
    __tablename__ = "course_pools"
    __table_args__ = (UniqueConstraint("course_id", "pool_id", name="uq_course_pools_pair"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    course_id: Mapped[int] = mapped_column(ForeignKey("courses.id", ondelete="CASCADE"))
    pool_id: Mapped[int] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE"))


class HelpRequest(Base):
    __tablename__ = "help_requests"
    __table_args__ = (
        # One active request per learner per course: a double click or a second tab finds it.
        Index(
            "uq_help_requests_one_active",
            "learner_id",
            "course_id",
            unique=True,
            postgresql_where=text("status IN ('queued', 'claimed')"),
            sqlite_where=text("status IN ('queued', 'claimed')"),
        ),
        Index("ix_help_requests_queue", "pool_id", "status", "priority", "queued_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    platform_id: Mapped[int] = mapped_column(ForeignKey("platforms.id", ondelete="CASCADE"))
    course_id: Mapped[int] = mapped_column(ForeignKey("courses.id", ondelete="CASCADE"))
    exercise_id: Mapped[int | None] = mapped_column(ForeignKey("exercises.id"), default=None)
    learner_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"))
    pool_id: Mapped[int] = mapped_column(ForeignKey("pools.id"))
    status: Mapped[str] = mapped_column(String(20), default=HelpStatus.QUEUED.value)
    question: Mapped[str] = mapped_column(Text)
    tried: Mapped[str] = mapped_column(Text, default="")
    skills: Mapped[list[str]] = mapped_column(JSON, default=list)
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    severity: Mapped[float] = mapped_column(Float, default=0.0)
    queued_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    away_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    tutor_id: Mapped[int | None] = mapped_column(ForeignKey("tutors.id"), default=None)
    claimed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    outcome: Mapped[str | None] = mapped_column(String(20), default=None)
    tutor_note: Mapped[str] = mapped_column(Text, default="")
    meeting_url: Mapped[str | None] = mapped_column(String(1000), default=None)
    rating: Mapped[int | None] = mapped_column(Integer, default=None)
    rating_comment: Mapped[str] = mapped_column(Text, default="")
    notify_email: Mapped[str | None] = mapped_column(String(320), default=None)
    version: Mapped[int] = mapped_column(Integer, default=1)


class HelpEvent(Base):
    """The audit log and the live event stream in one: every state change, in commit order.

    Ids are allocated under a transaction-scoped advisory lock (PostgreSQL), so they become
    visible in increasing order: an SSE client resuming from Last-Event-ID misses nothing.
    """

    __tablename__ = "help_events"
    __table_args__ = (
        Index("ix_help_events_pool", "pool_id", "id"),
        Index("ix_help_events_course", "course_id", "id"),
        Index("ix_help_events_request", "request_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    request_id: Mapped[int | None] = mapped_column(
        ForeignKey("help_requests.id", ondelete="CASCADE"), default=None
    )
    course_id: Mapped[int | None] = mapped_column(default=None)
    pool_id: Mapped[int | None] = mapped_column(default=None)
    tutor_id: Mapped[int | None] = mapped_column(default=None)
    kind: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(100))
    from_status: Mapped[str | None] = mapped_column(String(20), default=None)
    to_status: Mapped[str | None] = mapped_column(String(20), default=None)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ChatMessage(Base):
    __tablename__ = "chat_messages"
    __table_args__ = (Index("ix_chat_messages_request", "request_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("help_requests.id", ondelete="CASCADE"))
    author: Mapped[str] = mapped_column(String(20))  # "learner" or "tutor"
    author_name: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class PageLog(Base):
    """One row per page sent: a retried job finds its row and does not page again."""

    __tablename__ = "page_log"
    __table_args__ = (
        UniqueConstraint("request_id", "wave", "channel", "target", name="uq_page_log_once"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("help_requests.id", ondelete="CASCADE"))
    wave: Mapped[int] = mapped_column(Integer)
    channel: Mapped[str] = mapped_column(String(20))
    target: Mapped[str] = mapped_column(String(1000))
    status: Mapped[str] = mapped_column(String(20), default="sending")
    error: Mapped[str | None] = mapped_column(Text, default=None)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
