"""Reading the queue: order, positions, wait estimates, what a tutor sees."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from ..courses import Course, Exercise, Person
from ..db import utcnow
from ..tutors.models import Availability
from ..tutors.operations import active_sessions, effective_availability, pool_tutors
from .models import HelpRequest, HelpStatus

DEFAULT_SERVICE_MINUTES = (6.0, 15.0)  # used until a pool has history
HISTORY = 50


def queue_order() -> tuple[Any, ...]:
    """Priority class, then stuck severity, then time queued (kept across requeues)."""
    return (
        HelpRequest.priority.desc(),
        HelpRequest.severity.desc(),
        HelpRequest.queued_at,
        HelpRequest.id,
    )


def queued(session: Session, pool_ids: Iterable[int]) -> list[HelpRequest]:
    ids = list(pool_ids)
    if not ids:
        return []
    return list(
        session.scalars(
            select(HelpRequest)
            .where(HelpRequest.pool_id.in_(ids), HelpRequest.status == HelpStatus.QUEUED.value)
            .order_by(*queue_order())
        )
    )


def ahead_of(session: Session, request: HelpRequest) -> int:
    """How many queued requests in the same pool come before this one."""
    before = or_(
        HelpRequest.priority > request.priority,
        and_(HelpRequest.priority == request.priority, HelpRequest.severity > request.severity),
        and_(
            HelpRequest.priority == request.priority,
            HelpRequest.severity == request.severity,
            or_(
                HelpRequest.queued_at < request.queued_at,
                and_(HelpRequest.queued_at == request.queued_at, HelpRequest.id < request.id),
            ),
        ),
    )
    return int(
        session.scalar(
            select(func.count())
            .select_from(HelpRequest)
            .where(
                HelpRequest.pool_id == request.pool_id,
                HelpRequest.status == HelpStatus.QUEUED.value,
                HelpRequest.id != request.id,
                before,
            )
        )
        or 0
    )


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


@dataclass(frozen=True)
class WaitEstimate:
    ahead: int
    tutors_available: int
    low_minutes: int | None
    high_minutes: int | None

    @property
    def text(self) -> str:
        if self.tutors_available == 0:
            return "No tutor is online right now. We have paged the tutors; you keep your place."
        if self.low_minutes is None or self.high_minutes is None:
            return "Any moment now."
        if self.high_minutes <= 1:
            return "About a minute."
        return f"About {self.low_minutes} to {self.high_minutes} minutes."

    def as_dict(self) -> dict[str, Any]:
        return {
            "ahead": self.ahead,
            "tutors_available": self.tutors_available,
            "low_minutes": self.low_minutes,
            "high_minutes": self.high_minutes,
            "text": self.text,
        }


def service_minutes(session: Session, pool_id: int) -> tuple[float, float]:
    """The 25th and 75th percentile of recent session lengths in this pool."""
    since = utcnow() - dt.timedelta(days=14)
    rows = session.execute(
        select(HelpRequest.claimed_at, HelpRequest.resolved_at)
        .where(
            HelpRequest.pool_id == pool_id,
            HelpRequest.status == HelpStatus.RESOLVED.value,
            HelpRequest.claimed_at.is_not(None),
            HelpRequest.resolved_at >= since,
        )
        .order_by(HelpRequest.resolved_at.desc())
        .limit(HISTORY)
    ).all()
    durations = [
        (resolved - claimed).total_seconds() / 60
        for claimed, resolved in rows
        if claimed is not None and resolved is not None and resolved > claimed
    ]
    if len(durations) < 3:
        return DEFAULT_SERVICE_MINUTES
    return max(0.5, _quantile(durations, 0.25)), max(1.0, _quantile(durations, 0.75))


def estimate(session: Session, request: HelpRequest) -> WaitEstimate:
    """A range, from the tutors available now and how long sessions recently took."""
    ahead = ahead_of(session, request)
    now = utcnow()
    tutors = [
        t
        for t in pool_tutors(session, [request.pool_id])
        if effective_availability(t, now) is Availability.AVAILABLE
    ]
    if not tutors:
        return WaitEstimate(ahead, 0, None, None)
    capacity = sum(max(1, t.capacity) for t in tutors)
    free = sum(max(0, t.capacity - active_sessions(session, t.id)) for t in tutors)
    if ahead < free:
        return WaitEstimate(ahead, len(tutors), None, None)
    low, high = service_minutes(session, request.pool_id)
    # Requests ahead that cannot start now wait for a slot to free: each slot frees after a
    # session length; ``rounds`` is how many of those the learner waits through.
    rounds = (ahead - free + 1) / capacity
    return WaitEstimate(
        ahead,
        len(tutors),
        max(1, math.floor(rounds * low)),
        max(1, math.ceil(rounds * high + 0.5)),
    )


@dataclass(frozen=True)
class QueueItem:
    request: HelpRequest
    learner_name: str
    course_title: str
    exercise_title: str
    waited_minutes: int
    matches_skills: bool
    similar: int  # other queued requests with the same exercise and last error


def _error_key(request: HelpRequest) -> tuple[Any, ...] | None:
    error = (request.context or {}).get("last_error")
    if request.exercise_id is None and not error:
        return None
    return (request.course_id, request.exercise_id, error)


def tutor_view(
    session: Session, pool_ids: Iterable[int], tutor_skills: Iterable[str]
) -> list[QueueItem]:
    """The queue as a tutor sees it: requests matching their skills first, then the rest,
    each group in queue order; learners stuck on the same thing are counted together."""
    requests = queued(session, pool_ids)
    if not requests:
        return []
    people = {
        p.id: p
        for p in session.scalars(
            select(Person).where(Person.id.in_({r.learner_id for r in requests}))
        )
    }
    courses = {
        c.id: c
        for c in session.scalars(
            select(Course).where(Course.id.in_({r.course_id for r in requests}))
        )
    }
    exercise_ids = {r.exercise_id for r in requests if r.exercise_id is not None}
    exercises = {
        e.id: e for e in session.scalars(select(Exercise).where(Exercise.id.in_(exercise_ids)))
    }
    groups: dict[tuple[Any, ...], int] = {}
    for request in requests:
        key = _error_key(request)
        if key is not None:
            groups[key] = groups.get(key, 0) + 1
    skills = {s.lower() for s in tutor_skills}
    now = utcnow()
    items = []
    for request in requests:
        wanted = {s.lower() for s in request.skills}
        key = _error_key(request)
        exercise = exercises.get(request.exercise_id) if request.exercise_id else None
        course = courses.get(request.course_id)
        person = people.get(request.learner_id)
        items.append(
            QueueItem(
                request=request,
                learner_name=(person.name if person else "") or "A learner",
                course_title=(course.title if course else "") or "",
                exercise_title=(exercise.title if exercise else "") or "",
                waited_minutes=int((now - request.queued_at).total_seconds() // 60),
                # A tutor who listed no skills takes anything: plain queue order for them.
                matches_skills=not wanted or not skills or bool(wanted & skills),
                similar=(groups.get(key, 1) - 1) if key is not None else 0,
            )
        )
    # Stable sort keeps queue order inside each group.
    items.sort(key=lambda item: not item.matches_skills)
    return items
