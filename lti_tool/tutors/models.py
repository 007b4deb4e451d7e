"""Tutor accounts, the pools they serve in, and invitations for experts outside the LMS."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, UTCDateTime, utcnow


class Availability(enum.StrEnum):
    AVAILABLE = "available"
    AWAY = "away"
    OFFLINE = "offline"


class Pool(Base):
    """A group of tutors. Courses (of any platform) use one or more pools."""

    __tablename__ = "pools"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # Meeting link template; {room} is replaced by an unguessable room name.
    meeting_template: Mapped[str | None] = mapped_column(String(500), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Tutor(Base):
    __tablename__ = "tutors"

    id: Mapped[int] = mapped_column(primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320), unique=True, default=None)
    password_hash: Mapped[str | None] = mapped_column(String(300), default=None)
    availability: Mapped[str] = mapped_column(String(20), default=Availability.OFFLINE.value)
    capacity: Mapped[int] = mapped_column(Integer, default=1)
    skills: Mapped[list[str]] = mapped_column(JSON, default=list)
    last_seen_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class TutorLink(Base):
    """An LMS person (TeachingAssistant / Mentor launch) who is this tutor."""

    __tablename__ = "tutor_links"
    __table_args__ = (UniqueConstraint("person_id", name="uq_tutor_links_person"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tutor_id: Mapped[int] = mapped_column(ForeignKey("tutors.id", ondelete="CASCADE"))
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"))


class PoolMember(Base):
    __tablename__ = "pool_members"
    __table_args__ = (UniqueConstraint("pool_id", "tutor_id", name="uq_pool_members_pool_tutor"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE"))
    tutor_id: Mapped[int] = mapped_column(ForeignKey("tutors.id", ondelete="CASCADE"))


class Invitation(Base):
    __tablename__ = "invitations"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str] = mapped_column(String(320))
    pool_id: Mapped[int] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE"))
    invited_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    accepted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    tutor_id: Mapped[int | None] = mapped_column(ForeignKey("tutors.id"), default=None)

    def as_dict(self) -> dict[str, Any]:
        return {"email": self.email, "pool_id": self.pool_id, "expires_at": self.expires_at}
