"""Participation grades: completed tutoring sessions reported to the LMS gradebook (AGS).

Off by default; an instructor turns it on in the course settings. When a session is resolved
as completed (solved, partly or not solved: the learner and tutor met; a no-show is not
completed), the job ``lti_tool.tasks.report_participation`` posts the learner's score on the
course's "Tutoring participation" line item, which it finds by its tag or creates.

What the score says: **1 out of 1 once a learner has completed a tutoring session**, with
the number of completed sessions in the score's comment. Participation must never punish a
learner who did not need help, so the grade does not grow with the number of sessions (a
count out of some maximum would read as 40 % to a learner who asked twice); instructors who
want the count see it in the comment. Each report posts the count as of sending, so reports
that arrive out of order still leave the latest count in the gradebook.

At most once per session: the ``grade_reports`` row is inserted as ``sending`` and committed
before the score goes out, then marked ``sent`` or ``failed``. A failed report is retried by
the job's next run (RQ retries it with back-off; after that the sweep enqueues it again every
STALE_SENDING for two days). Unlike a page, a score *replaces* the learner's previous score, so
a report left ``sending`` by a worker that died is safe to send again: it is taken over after
STALE_SENDING.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import time
from typing import Any, cast

import redis
from sqlalchemy import Table, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .. import jobs
from ..courses import Course, Person
from ..db import utcnow
from ..help.models import HelpRequest, HelpStatus
from ..lti import ags
from ..lti.models import Platform, PlatformStatus
from ..lti.service_token import ServiceClient, ServiceError, release_lock
from .client import job_redis, service_client
from .models import CourseServices, GradeReport

log = logging.getLogger(__name__)

TAG = "lifeline-participation"
LINE_ITEM = ags.LineItemSpec(
    label="Tutoring participation", score_maximum=1.0, tag=TAG, resource_id=TAG
)
SENDING, SENT, FAILED = "sending", "sent", "failed"
STALE_SENDING = dt.timedelta(minutes=10)
RETRY_FOR = dt.timedelta(days=2)  # a report still failing after that is left for an admin
LINEITEM_LOCK = "lifeline:ags:lineitem:"


class GradeReportFailed(Exception):
    """The score was not posted; the job raises this so RQ retries it."""


def _skipped(request_id: int, why: str) -> dict[str, Any]:
    return {"request_id": request_id, "skipped": why}


def _claim(session: Session, request: HelpRequest) -> bool:
    """Take the right to report this session, committed before sending."""
    now = utcnow()
    table = cast(Table, GradeReport.__table__)
    values = {
        "request_id": request.id,
        "course_id": request.course_id,
        "person_id": request.learner_id,
        "status": SENDING,
        "at": now,
    }
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(table).values(**values).on_conflict_do_nothing()
    else:
        stmt = sqlite.insert(table).values(**values).on_conflict_do_nothing()
    won = session.connection().execute(stmt.returning(table.c.id)).first() is not None
    if not won:
        result = session.execute(
            update(GradeReport)
            .where(
                GradeReport.request_id == request.id,
                or_(
                    GradeReport.status == FAILED,
                    (GradeReport.status == SENDING) & (GradeReport.at < now - STALE_SENDING),
                ),
            )
            .values(status=SENDING, error=None, at=now)
            .execution_options(synchronize_session=False)
        )
        won = bool(result.rowcount)  # type: ignore[attr-defined]
    session.commit()
    return won


def _finish(session: Session, request_id: int, status: str, **values: Any) -> None:
    session.rollback()
    session.execute(
        update(GradeReport)
        .where(GradeReport.request_id == request_id)
        .values(status=status, at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def _line_item(
    session: Session, client: ServiceClient, redis_client: redis.Redis, course_id: int
) -> str:
    """The course's participation line item: stored, else found by its tag, else created.
    One job per course at a time looks (a Redis lock), so two never create two columns."""
    # Columns, not the ORM row: sessions keep objects across commits, and another job (or
    # ``_forget_line_item``) may have changed the row since it was loaded.
    columns = select(CourseServices.ags_lineitems_url, CourseServices.ags_lineitem_url).where(
        CourseServices.course_id == course_id
    )
    lineitems, stored = session.execute(columns).one()
    if stored:
        return str(stored)
    if not lineitems:
        raise ServiceError("The LMS no longer offers its gradebook to this course.")
    key, owner = LINEITEM_LOCK + str(course_id), secrets.token_hex(8)
    deadline = time.monotonic() + client.policy.worst_case * 2 + 5
    while not redis_client.set(key, owner, nx=True, ex=int(client.policy.worst_case * 2) + 5):
        if time.monotonic() > deadline:
            raise ServiceError(
                "Another job is still setting up the gradebook column.", retryable=True
            )
        time.sleep(0.1)
    try:
        session.commit()  # read the row afresh: the lock holder before us may have stored it
        lineitems, stored = session.execute(columns).one()
        if stored:
            return str(stored)
        if not lineitems:
            raise ServiceError("The LMS no longer offers its gradebook to this course.")
        url = ags.find_line_item(client, lineitems, LINE_ITEM) or ags.create_line_item(
            client, lineitems, LINE_ITEM
        )
        session.execute(
            update(CourseServices)
            .where(CourseServices.course_id == course_id)
            .values(ags_lineitem_url=url)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        return url
    finally:
        release_lock(redis_client, key, owner)


def _forget_line_item(session: Session, course_id: int, url: str) -> None:
    session.execute(
        update(CourseServices)
        .where(CourseServices.course_id == course_id, CourseServices.ags_lineitem_url == url)
        .values(ags_lineitem_url=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def completed_sessions(session: Session, course_id: int, person_id: int) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(HelpRequest)
            .where(
                HelpRequest.course_id == course_id,
                HelpRequest.learner_id == person_id,
                HelpRequest.status == HelpStatus.RESOLVED.value,
            )
        )
        or 0
    )


def due_for_retry(session: Session, now: dt.datetime | None = None) -> list[int]:
    """Sessions whose report failed (RQ's own retries used up) or was left ``sending`` by a
    worker that died, last tried over STALE_SENDING ago, resolved in the last RETRY_FOR: the
    sweep enqueues them again (each try moves ``at``, so at most one try per STALE_SENDING)."""
    now = now or utcnow()
    return list(
        session.scalars(
            select(GradeReport.request_id)
            .join(HelpRequest, HelpRequest.id == GradeReport.request_id)
            .where(
                GradeReport.status.in_((FAILED, SENDING)),
                GradeReport.at < now - STALE_SENDING,
                HelpRequest.resolved_at > now - RETRY_FOR,
            )
            .order_by(GradeReport.at)
            .limit(50)
        )
    )


def report_participation(context: jobs.JobContext, request_id: int) -> dict[str, Any]:
    """Post the learner's participation score for one completed session, at most once."""
    with context.session() as session:
        return _report(context, session, request_id)


def _report(context: jobs.JobContext, session: Session, request_id: int) -> dict[str, Any]:
    request = session.get(HelpRequest, request_id)
    if request is None or request.status != HelpStatus.RESOLVED.value:
        return _skipped(request_id, "not a completed session")
    row = session.get(CourseServices, request.course_id)
    if row is None or not row.report_participation:
        return _skipped(request_id, "grade reporting is off for this course")
    if row.ags_lineitems_url is None:
        return _skipped(request_id, "the LMS has not offered its gradebook to this course")
    if not ags.Endpoint(row.ags_lineitems_url, tuple(row.ags_scopes or ())).can_report:
        return _skipped(request_id, "the LMS did not grant the line item and score scopes")
    course = session.get(Course, request.course_id)
    learner = session.get(Person, request.learner_id)
    platform = session.get(Platform, course.platform_id) if course else None
    if course is None or learner is None or platform is None:
        return _skipped(request_id, "the course or learner is gone")
    if platform.status != PlatformStatus.ACTIVE.value:
        return _skipped(request_id, "the platform registration is not active")
    if not _claim(session, request):
        return _skipped(request_id, "already reported")
    redis_client = job_redis(context)
    client = service_client(session, platform, redis_client, context.settings.http_timeout)
    sub, course_id, person_id = learner.sub, course.id, learner.id
    lineitem = None
    try:
        lineitem = _line_item(session, client, redis_client, course_id)
        count = completed_sessions(session, course_id, person_id)
        plural = "" if count == 1 else "s"
        score = ags.Score(
            user_id=sub,
            score_given=1.0,
            score_maximum=LINE_ITEM.score_maximum,
            timestamp=utcnow(),
            comment=f"{count} completed tutoring session{plural} in Lifeline",
        )
        session.commit()  # no transaction stays open while the LMS answers
        try:
            ags.post_score(client, lineitem, score)
        except ServiceError as exc:
            if exc.status != 404:
                raise
            # The column was deleted in the gradebook: find or make it again, once.
            _forget_line_item(session, course_id, lineitem)
            lineitem = _line_item(session, client, redis_client, course_id)
            ags.post_score(client, lineitem, score)
    except ServiceError as exc:
        _finish(session, request_id, FAILED, error=exc.message[:2000], lineitem_url=lineitem)
        log.warning("participation score for request %s not posted: %s", request_id, exc.message)
        if not exc.retryable:
            jobs.give_up()  # RQ's back-off will not change a refusal (the sweep still may)
        raise GradeReportFailed(exc.message) from None
    _finish(
        session, request_id, SENT, error=None, score_given=score.score_given, lineitem_url=lineitem
    )
    return {"request_id": request_id, "reported": True, "sessions": count}
