"""Tables of activity ingestion: per-course credentials and the instructor's mappings.

A credential belongs to one course (and through it one platform registration): everything it
writes lands in that course. Mappings name people and exercises the way the LMS does (the LTI
``sub`` and ``resource_link_id``), so an instructor can upload them before anyone launches.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, UTCDateTime, utcnow
from .model import RawEvent


class ActivityCredential(Base):
    """HTTP Basic credentials (key + secret) an LRS or a ProgSnap2 exporter uses for one course.

    The secret is 256 random bits shown once; only its SHA-256 is kept. A slow password hash
    (argon2) buys nothing against a secret nobody could guess, and would cost every request.
    """

    __tablename__ = "activity_credentials"
    __table_args__ = (Index("ix_activity_credentials_course", "course_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    platform_id: Mapped[int] = mapped_column(ForeignKey("platforms.id", ondelete="CASCADE"))
    course_id: Mapped[int] = mapped_column(ForeignKey("courses.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(200), default="")
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("people.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)


class ActorMapping(Base):
    """An actor as an outside source names it (an account name, an email, an anonymous id)
    mapped to the LTI ``sub`` of a person of the course's platform."""

    __tablename__ = "activity_actor_mappings"
    __table_args__ = (
        UniqueConstraint("course_id", "actor", name="uq_activity_actor_mappings_course_actor"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    course_id: Mapped[int] = mapped_column(ForeignKey("courses.id", ondelete="CASCADE"))
    actor: Mapped[str] = mapped_column(String(500))
    sub: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ExerciseMapping(Base):
    """An activity id (an xAPI object IRI, a ProgSnap2 ProblemID) mapped to the resource link
    of an exercise of the course. Object ids under the mapped one (``…/hint/1``) match too."""

    __tablename__ = "activity_exercise_mappings"
    __table_args__ = (
        UniqueConstraint(
            "course_id", "activity_id", name="uq_activity_exercise_mappings_course_activity"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    course_id: Mapped[int] = mapped_column(ForeignKey("courses.id", ondelete="CASCADE"))
    activity_id: Mapped[str] = mapped_column(String(500))
    resource_link_id: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


# Re-processing reads a course's unmapped raw events; without this it would scan them all.
Index("ix_raw_events_course_status", RawEvent.course_id, RawEvent.status)


class IngestDeadLetter(Base):
    """An entry of the ingestion stream that the worker could not store after its retries
    (``activity.pipeline``): kept whole, with the last error, for an admin to see
    (``lifeline activity dead-letters``) and put back once the cause is fixed. No foreign key:
    it must be keepable whatever it names."""

    __tablename__ = "ingest_dead_letters"

    id: Mapped[int] = mapped_column(primary_key=True)
    stream_id: Mapped[str] = mapped_column(String(64))
    course_id: Mapped[int | None] = mapped_column(Integer, default=None)
    source: Mapped[str] = mapped_column(String(20), default="")
    items: Mapped[int] = mapped_column(Integer, default=0)
    payload: Mapped[str] = mapped_column(Text)  # the entry's fields, as JSON
    reason: Mapped[str] = mapped_column(Text)
    tries: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
