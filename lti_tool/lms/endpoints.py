"""Where a course's LMS services are, as launches report them, and the course's choices.

Every launch into a course may carry the roster (NRPS) and gradebook (AGS) endpoints and the
custom parameters Lifeline asks for. ``note_launch`` stores them on the course's
``course_services`` row, writing only when something changed, and at most once a minute per
course and process for identical facts (launches repeat the same facts all day). It also
says when a course's first roster sync is due, so the launch can enqueue it after commit.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ..db import utcnow
from ..lti import ags, custom, nrps
from ..lti.launch import Launch
from .models import CourseMember, CourseServices, MemberStatus
from .roster import REQUEST_AGAIN_AFTER


@dataclass(frozen=True)
class ServiceFacts:
    """What one launch says about its course's services."""

    nrps_url: str | None
    ags_lineitems_url: str | None
    ags_scopes: tuple[str, ...]
    canvas_course_id: str | None
    context_history: tuple[str, ...]

    @classmethod
    def of(cls, launch: Launch) -> ServiceFacts:
        endpoint = ags.endpoint(launch.claims)
        return cls(
            nrps_url=nrps.service_url(launch.claims),
            ags_lineitems_url=endpoint.lineitems if endpoint else None,
            ags_scopes=endpoint.scopes if endpoint else (),
            canvas_course_id=custom.canvas_id(launch.custom, "canvas_course_id"),
            context_history=custom.context_history(launch.custom)[:20],
        )

    @property
    def empty(self) -> bool:
        return not (self.nrps_url or self.ags_lineitems_url or self.canvas_course_id)


class _Recent:
    """(course, facts) this process stored in the last minute: a repeat launch reads nothing."""

    def __init__(self, ttl: float = 60.0, size: int = 20_000) -> None:
        self.ttl, self.size = ttl, size
        self._seen: dict[tuple[int, ServiceFacts], float] = {}
        self._lock = threading.Lock()

    def fresh(self, course_id: int, facts: ServiceFacts) -> bool:
        return self._seen.get((course_id, facts), 0.0) > time.monotonic()

    def put(self, course_id: int, facts: ServiceFacts) -> None:
        with self._lock:
            if len(self._seen) >= self.size:
                self._seen.clear()
            self._seen[(course_id, facts)] = time.monotonic() + self.ttl

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()


recent = _Recent()


def _ensure_row(session: Session, course_id: int) -> CourseServices:
    """The course's row, inserted if missing (two first launches at once both succeed)."""
    row = session.get(CourseServices, course_id)
    if row is not None:
        return row
    table = cast(Table, CourseServices.__table__)
    values = {
        "course_id": course_id,
        "ags_scopes": [],
        "context_history": [],
        "report_participation": False,
        "updated_at": utcnow(),
    }
    if session.get_bind().dialect.name == "postgresql":
        session.execute(postgresql.insert(table).values(values).on_conflict_do_nothing())
    else:
        session.execute(sqlite.insert(table).values(values).on_conflict_do_nothing())
    found = session.get(CourseServices, course_id)
    assert found is not None
    return found


def note_launch(
    session: Session, course_id: int, launch: Launch, now: dt.datetime | None = None
) -> bool:
    """Store what ``launch`` says about the course's services. True when the course's first
    roster sync should be enqueued (after the caller commits)."""
    facts = ServiceFacts.of(launch)
    if recent.fresh(course_id, facts):
        return False
    recent.put(course_id, facts)
    row = session.get(CourseServices, course_id)
    if row is None and facts.empty:
        return False  # no services, no custom ids: nothing to keep
    row = row or _ensure_row(session, course_id)
    now = now or utcnow()
    changed = False
    if facts.nrps_url and row.nrps_url != facts.nrps_url:
        row.nrps_url = facts.nrps_url
        row.roster_differences_url = None  # a differences link belongs to the old URL
        changed = True
    if facts.ags_lineitems_url and (
        row.ags_lineitems_url != facts.ags_lineitems_url
        or tuple(row.ags_scopes or ()) != facts.ags_scopes
    ):
        if row.ags_lineitems_url != facts.ags_lineitems_url:
            row.ags_lineitem_url = None  # found again, by its tag, at the new URL
        row.ags_lineitems_url, row.ags_scopes = facts.ags_lineitems_url, list(facts.ags_scopes)
        changed = True
    if facts.canvas_course_id and row.canvas_course_id != facts.canvas_course_id:
        row.canvas_course_id, changed = facts.canvas_course_id, True
    if facts.context_history and tuple(row.context_history or ()) != facts.context_history:
        row.context_history, changed = list(facts.context_history), True
    if changed:
        row.updated_at = now
    first_sync = (
        row.nrps_url is not None
        and row.roster_synced_at is None
        and (row.roster_requested_at is None or row.roster_requested_at < now - REQUEST_AGAIN_AFTER)
    )
    if first_sync:
        row.roster_requested_at = now
    return first_sync


# -- the instructor's view and choices -----------------------------------------------------------


@dataclass(frozen=True)
class ServicesStatus:
    """What the course settings page shows about the LMS services."""

    roster_available: bool
    roster_synced_at: dt.datetime | None
    roster_member_count: int | None
    roster_error: str | None
    roster_error_at: dt.datetime | None
    grades_available: bool
    grades_scopes_ok: bool
    report_participation: bool


def status(session: Session, course_id: int) -> ServicesStatus:
    row = session.get(CourseServices, course_id)
    if row is None:
        return ServicesStatus(False, None, None, None, None, False, False, False)
    endpoint = ags.Endpoint(row.ags_lineitems_url or "", tuple(row.ags_scopes or ()))
    return ServicesStatus(
        roster_available=row.nrps_url is not None,
        roster_synced_at=row.roster_synced_at,
        roster_member_count=row.roster_member_count,
        roster_error=row.roster_error,
        roster_error_at=row.roster_error_at,
        grades_available=row.ags_lineitems_url is not None,
        grades_scopes_ok=endpoint.can_report,
        report_participation=row.report_participation,
    )


def set_report_participation(session: Session, course_id: int, on: bool) -> None:
    """The instructor's choice; off by default. Stored even before a launch brought the
    gradebook endpoint (scores start once one does)."""
    row = session.get(CourseServices, course_id)
    if row is None and not on:
        return
    row = row or _ensure_row(session, course_id)
    if row.report_participation != on:
        row.report_participation = on
        row.updated_at = utcnow()


def readmit(
    session: Session, course_id: int, person_id: int, now: dt.datetime | None = None
) -> bool:
    """A launch into the course is the LMS vouching, right now, that the person is enrolled:
    a roster row saying they left (an older sync, or an enrolment that ended and came back)
    is set active again, so a re-enrolled learner is not refused help until the next sync.
    One indexed conditional UPDATE; True when a row changed."""
    result = session.execute(
        update(CourseMember)
        .where(
            CourseMember.course_id == course_id,
            CourseMember.person_id == person_id,
            CourseMember.status != MemberStatus.ACTIVE.value,
        )
        .values(status=MemberStatus.ACTIVE.value, left_at=None, synced_at=now or utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))
