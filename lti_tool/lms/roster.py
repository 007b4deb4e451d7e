"""A course's roster from the LMS (Names and Role Provisioning) and what it means here.

* **Names.** Each member's person record gets the name and email the LMS gives, so a tutor
  sees who they are helping even when launches carry no names (many LMSs hide them from
  tools by default but share them over NRPS).
* **Tutors.** Active TeachingAssistant and Mentor members become tutors of the course's pool,
  exactly as their own launch would make them; one who leaves the course, or stops being a
  TA, leaves the pools that serve only this course.
* **Who left.** A member the LMS reports ``Inactive`` or ``Deleted``, or who is missing from
  a *complete* sync (every page arrived), is marked as having left, and can no longer open
  help requests. A person the roster never listed (no roster service, or enrolled since the
  last sync) is not refused: the launch itself says they are in the course.

``apply_roster`` only changes the database; ``lms/sync.py`` fetches the roster and calls it
once the whole roster has arrived.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, delete, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ..courses import Course, Person
from ..db import utcnow
from ..help.models import CoursePool
from ..lti.models import Platform
from ..lti.nrps import Member, Roster
from ..lti.roles import Audience, audience_for
from ..tutors.models import PoolMember, TutorLink
from ..tutors.operations import tutor_for_person
from .models import CourseMember, CourseServices, MemberStatus

CHUNK = 500
# A sync that was asked for but has not finished is asked for again only after this long.
REQUEST_AGAIN_AFTER = dt.timedelta(minutes=30)
DUE_PER_SWEEP = 50


@dataclass
class SyncReport:
    course_id: int
    members: int = 0  # active members after the sync
    added: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    tutors: list[str] = field(default_factory=list)
    skipped: int = 0
    pages: int = 0
    differences: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "course_id": self.course_id,
            "members": self.members,
            "added": self.added,
            "left": self.left,
            "tutors": self.tutors,
            "skipped": self.skipped,
            "pages": self.pages,
            "differences": self.differences,
        }


# -- who may ask -------------------------------------------------------------------------------


def has_left(session: Session, course_id: int, person_id: int) -> bool:
    status = session.scalar(
        select(CourseMember.status).where(
            CourseMember.course_id == course_id, CourseMember.person_id == person_id
        )
    )
    return status is not None and status != MemberStatus.ACTIVE.value


def enrolment_problem(session: Session, course: Course, person_id: int) -> str | None:
    """Why this person may not open a help request in ``course``, or None if they may."""
    if not has_left(session, course.id, person_id):
        return None
    lms = (
        session.scalar(select(Platform.name).where(Platform.id == course.platform_id)) or "the LMS"
    )
    return (
        f"You are no longer enrolled in this course according to {lms}, so you cannot ask "
        "for a tutor here. If you are still taking the course, ask your instructor to check "
        "your enrolment."
    )


# -- applying a roster -------------------------------------------------------------------------


def _insert_missing_people(session: Session, platform_id: int, subs: list[str]) -> None:
    """INSERT people who do not exist yet; a concurrent launch inserting one too is fine."""
    table = cast(Table, Person.__table__)
    rows = [
        {"platform_id": platform_id, "sub": sub, "name": "", "email": "", "updated_at": utcnow()}
        for sub in subs
    ]
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(postgresql.insert(table).values(rows).on_conflict_do_nothing())
    elif dialect == "sqlite":
        session.execute(sqlite.insert(table).values(rows).on_conflict_do_nothing())
    else:  # pragma: no cover - PostgreSQL and SQLite are the supported databases
        raise RuntimeError(f"roster sync does not support {dialect}")


def _people(session: Session, platform_id: int, members: Iterable[Member]) -> dict[str, Person]:
    """The person of every member (created if new), names and emails refreshed."""
    by_sub = {m.user_id: m for m in members}
    found: dict[str, Person] = {}
    subs = list(by_sub)
    for start in range(0, len(subs), CHUNK):
        chunk = subs[start : start + CHUNK]
        query = select(Person).where(Person.platform_id == platform_id, Person.sub.in_(chunk))
        present = {p.sub: p for p in session.scalars(query)}
        missing = [s for s in chunk if s not in present]
        if missing:
            _insert_missing_people(session, platform_id, missing)
            present = {p.sub: p for p in session.scalars(query)}
        found.update(present)
    now = utcnow()
    for sub, member in by_sub.items():
        person = found[sub]
        name, email = member.display_name[:500], member.email[:500]
        if (name and person.name != name) or (email and person.email != email):
            person.name = name or person.name
            person.email = email or person.email
            person.updated_at = now
    return found


def _leave_course_pools(session: Session, course: Course, person_id: int) -> None:
    """A tutor who left the course (or is no longer its TA) leaves the pools that serve only
    this course. Pools shared with other courses, and invited tutor accounts, stay as they are."""
    tutor_id = session.scalar(select(TutorLink.tutor_id).where(TutorLink.person_id == person_id))
    if tutor_id is None:
        return
    own_pools = (
        select(CoursePool.pool_id)
        .where(CoursePool.course_id == course.id)
        .where(
            ~CoursePool.pool_id.in_(
                select(CoursePool.pool_id).where(CoursePool.course_id != course.id)
            )
        )
    )
    session.execute(
        delete(PoolMember)
        .where(PoolMember.tutor_id == tutor_id, PoolMember.pool_id.in_(own_pools))
        .execution_options(synchronize_session=False)
    )


def apply_roster(
    session: Session,
    course: Course,
    roster: Roster,
    *,
    complete: bool,
    now: dt.datetime | None = None,
) -> SyncReport:
    """Store the members the LMS reported. ``complete`` (a full sync whose every page arrived)
    also marks active members the roster no longer lists as having left."""
    now = now or utcnow()
    report = SyncReport(
        course.id, skipped=roster.skipped, pages=roster.pages, differences=roster.is_differences
    )
    latest = {m.user_id: m for m in roster.members}  # listed twice: the last entry wins
    people = _people(session, course.platform_id, latest.values())
    existing = {
        row.person_id: row
        for row in session.scalars(select(CourseMember).where(CourseMember.course_id == course.id))
    }
    listed: set[int] = set()
    for sub, member in latest.items():
        person = people[sub]
        listed.add(person.id)
        status = member.status.lower()
        active = status == MemberStatus.ACTIVE.value
        tutor = active and audience_for(member.roles) is Audience.TUTOR
        row = existing.get(person.id)
        if row is None:
            row = CourseMember(course_id=course.id, person_id=person.id, is_tutor=False)
            session.add(row)
            existing[person.id] = row
            if active:
                report.added.append(sub)
        elif active and row.status != MemberStatus.ACTIVE.value:
            report.added.append(sub)  # back in the course
        if not active and (row.status == MemberStatus.ACTIVE.value or row.left_at is None):
            report.left.append(sub)
            row.left_at = now
        if active:
            row.left_at = None
        row.roles = list(member.roles)
        row.status = status
        row.name, row.email = member.name, member.email
        row.given_name, row.family_name = member.given_name, member.family_name
        row.synced_at = now
        if tutor:
            tutor_for_person(session, person, course)
            report.tutors.append(sub)
        elif row.is_tutor:
            _leave_course_pools(session, course, person.id)
        row.is_tutor = tutor
    if complete and not roster.is_differences:
        for person_id, row in existing.items():
            if person_id in listed or row.status != MemberStatus.ACTIVE.value:
                continue
            row.status, row.left_at, row.synced_at = MemberStatus.DELETED.value, now, now
            if row.is_tutor:
                _leave_course_pools(session, course, person_id)
                row.is_tutor = False
            gone = session.scalar(select(Person.sub).where(Person.id == person_id))
            report.left.append(gone or str(person_id))
    session.flush()
    report.members = int(
        session.scalar(
            select(func.count())
            .select_from(CourseMember)
            .where(
                CourseMember.course_id == course.id,
                CourseMember.status == MemberStatus.ACTIVE.value,
            )
        )
        or 0
    )
    return report


# -- when to sync ------------------------------------------------------------------------------


def due_for_sync(
    session: Session, every: dt.timedelta, now: dt.datetime | None = None
) -> list[int]:
    """Courses whose roster is older than ``every`` (or was never synced) and that nobody
    asked to sync in the last REQUEST_AGAIN_AFTER; marked as asked for (the caller commits,
    then enqueues)."""
    now = now or utcnow()
    rows = list(
        session.scalars(
            select(CourseServices)
            .where(
                CourseServices.nrps_url.is_not(None),
                or_(
                    CourseServices.roster_synced_at.is_(None),
                    CourseServices.roster_synced_at < now - every,
                ),
                or_(
                    CourseServices.roster_requested_at.is_(None),
                    CourseServices.roster_requested_at < now - REQUEST_AGAIN_AFTER,
                ),
            )
            .order_by(CourseServices.roster_synced_at.asc().nulls_first())
            .limit(DUE_PER_SWEEP)
            .with_for_update(skip_locked=True)
        )
    )
    for row in rows:
        row.roster_requested_at = now
    return [row.course_id for row in rows]
