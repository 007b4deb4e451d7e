"""Tables of activity ingestion: per-course credentials and the instructor's mappings.

A credential belongs to one course (and through it one platform registration): everything it
writes lands in that course. Mappings name people and exercises the way the LMS does (the LTI
``sub`` and ``resource_link_id``), so an instructor can upload them before anyone launches.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
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
