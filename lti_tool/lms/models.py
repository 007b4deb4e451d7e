"""The LMS services of a course: its endpoints, its roster, and the grades reported to it."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base, UTCDateTime, utcnow


class CourseServices(Base):
    """One row per course that a launch offered LTI Advantage services for: where they are
    (recorded at launch), the instructor's grade reporting choice, and the last roster sync."""

    __tablename__ = "course_services"

    course_id: Mapped[int] = mapped_column(
        ForeignKey("courses.id", ondelete="CASCADE"), primary_key=True
    )
    nrps_url: Mapped[str | None] = mapped_column(String(2000), default=None)
    ags_lineitems_url: Mapped[str | None] = mapped_column(String(2000), default=None)
    ags_scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    # The participation line item, once found or created (found again by its tag if lost).
    ags_lineitem_url: Mapped[str | None] = mapped_column(String(2000), default=None)
    # Off by default: an instructor turns it on in the course settings.
    report_participation: Mapped[bool] = mapped_column(Boolean, default=False)
    # Custom parameters ($Canvas.course.id, $Context.id.history) when the LMS resolved them.
    canvas_course_id: Mapped[str | None] = mapped_column(String(32), default=None)
    context_history: Mapped[list[str]] = mapped_column(JSON, default=list)
    roster_differences_url: Mapped[str | None] = mapped_column(String(2000), default=None)
    roster_requested_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    roster_synced_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    roster_member_count: Mapped[int | None] = mapped_column(Integer, default=None)
    roster_error: Mapped[str | None] = mapped_column(Text, default=None)
    roster_error_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class MemberStatus(enum.StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"  # the LMS says Inactive: the enrolment ended or is suspended
    DELETED = "deleted"  # the LMS says Deleted, or a complete sync no longer lists them


class CourseMember(Base):
    """A person on the course's roster as the LMS last reported it. A person with no row (no
    roster service, or enrolled since the last sync) is treated as enrolled."""

    __tablename__ = "course_members"
    __table_args__ = (
        UniqueConstraint("course_id", "person_id", name="uq_course_members_course_person"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    course_id: Mapped[int] = mapped_column(ForeignKey("courses.id", ondelete="CASCADE"))
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"))
    roles: Mapped[list[str]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(20), default=MemberStatus.ACTIVE.value)
    is_tutor: Mapped[bool] = mapped_column(Boolean, default=False)
    name: Mapped[str] = mapped_column(String(500), default="")
    given_name: Mapped[str] = mapped_column(String(500), default="")
    family_name: Mapped[str] = mapped_column(String(500), default="")
    email: Mapped[str] = mapped_column(String(320), default="")
    synced_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    left_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)


class GradeReport(Base):
    """One participation score per completed session: inserted as ``sending`` and committed
    before the score goes out, so a job delivered twice reports once (like ``page_log``)."""

    __tablename__ = "grade_reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(
        ForeignKey("help_requests.id", ondelete="CASCADE"), unique=True
    )
    course_id: Mapped[int] = mapped_column(ForeignKey("courses.id", ondelete="CASCADE"))
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(20), default="sending")
    score_given: Mapped[float | None] = mapped_column(Float, default=None)
    lineitem_url: Mapped[str | None] = mapped_column(String(2000), default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
