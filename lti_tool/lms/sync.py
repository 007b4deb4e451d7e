"""The roster sync job: fetch the whole roster from the LMS, then apply it in one transaction.

Safe to run twice (RQ delivers at least once): a Redis lock per course keeps two runs from
fetching at the same time, and applying the same roster again changes nothing. No database
transaction is open while the LMS is being asked. A sync that fails on any page records the
error on the course (shown on the instructor's settings page), changes no membership, and
raises, so RQ retries it later with back-off.

Which roster: a scheduled or first sync uses the ``differences`` link the last sync received
(only the members who changed), and falls back to the full roster when the platform no
longer honours that link; "Sync roster now" always reads the full roster, which is also the
only kind that can notice members who vanished without a ``Deleted`` status.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import jobs
from ..courses import Course
from ..db import utcnow
from ..lti import nrps
from ..lti.models import Platform, PlatformStatus
from ..lti.service_token import ServiceClient, ServiceError, release_lock
from .client import job_redis, service_client
from .models import CourseServices
from .roster import apply_roster

log = logging.getLogger(__name__)

LOCK_PREFIX = "lifeline:roster:sync:"
EXPIRED_LINK = (400, 404, 410)  # a differences link the platform no longer honours


class RosterSyncFailed(Exception):
    """The sync did not complete; the message (also stored on the course) says why."""


def _skipped(course_id: int, why: str) -> dict[str, Any]:
    return {"course_id": course_id, "skipped": why}


def _lock(client: redis.Redis, course_id: int, owner: str) -> bool:
    try:
        return bool(client.set(LOCK_PREFIX + str(course_id), owner, nx=True, ex=jobs.JOB_TIMEOUT))
    except redis.RedisError as exc:
        log.warning("roster sync lock unavailable, syncing without it: %s", exc)
        return True


def _unlock(client: redis.Redis, course_id: int, owner: str) -> None:
    release_lock(client, LOCK_PREFIX + str(course_id), owner)


def _record_failure(session: Session, course_id: int, message: str) -> None:
    session.rollback()
    row = session.get(CourseServices, course_id)
    if row is not None:
        row.roster_error, row.roster_error_at = message[:2000], utcnow()
    session.commit()


def sync_roster(context: jobs.JobContext, course_id: int, full: bool = False) -> dict[str, Any]:
    """Sync one course's roster (the job ``lti_tool.tasks.sync_roster``)."""
    redis_client = job_redis(context)
    owner = secrets.token_hex(8)
    if not _lock(redis_client, course_id, owner):
        return _skipped(course_id, "another sync of this course is running")
    try:
        with context.session() as session:
            return _sync(context, session, redis_client, course_id, full)
    finally:
        _unlock(redis_client, course_id, owner)


def _fetch(
    client: ServiceClient, row_urls: tuple[str, str | None], limit: int, full: bool
) -> nrps.Roster:
    members_url, differences_url = row_urls
    if differences_url is None or full:
        return nrps.fetch_roster(client, members_url, limit=limit)
    try:
        return nrps.fetch_roster(client, differences_url, limit=limit, differences=True)
    except ServiceError as exc:
        if exc.status not in EXPIRED_LINK:
            raise
        log.info("differences link refused (%s); reading the full roster", exc.status)
        return nrps.fetch_roster(client, members_url, limit=limit)


def _sync(
    context: jobs.JobContext,
    session: Session,
    redis_client: redis.Redis,
    course_id: int,
    full: bool,
) -> dict[str, Any]:
    row = session.get(CourseServices, course_id)
    course = session.get(Course, course_id)
    if row is None or row.nrps_url is None or course is None:
        return _skipped(course_id, "the LMS offers no roster service for this course")
    platform = session.get(Platform, course.platform_id)
    if platform is None or platform.status != PlatformStatus.ACTIVE.value:
        return _skipped(course_id, "the platform registration is not active")
    urls = (row.nrps_url, row.roster_differences_url)
    client = service_client(session, platform, redis_client, context.settings.http_timeout)
    session.commit()  # no transaction stays open while the LMS answers
    try:
        roster = _fetch(client, urls, context.settings.roster_page_size, full)
    except ServiceError as exc:
        _record_failure(session, course_id, exc.message)
        log.warning("roster sync of course %s failed: %s", course_id, exc.message)
        if not exc.retryable:
            jobs.give_up()  # a refusal or a malformed answer: retrying later will not help
        raise RosterSyncFailed(exc.message) from None
    except Exception as exc:
        _record_failure(
            session,
            course_id,
            f"Lifeline could not finish the roster sync ({type(exc).__name__}); the worker's "
            "log has the details.",
        )
        raise
    # Serialise with any other sync of this course (and with launches noting endpoints).
    row = session.scalars(
        select(CourseServices).where(CourseServices.course_id == course_id).with_for_update()
    ).one()
    course = session.get(Course, course_id)
    assert course is not None
    report = apply_roster(session, course, roster, complete=not roster.is_differences)
    row.roster_synced_at = utcnow()
    row.roster_member_count = report.members
    row.roster_error = row.roster_error_at = None
    if roster.differences_url or not roster.is_differences:
        row.roster_differences_url = roster.differences_url
    log.info(
        "roster of course %s synced: %d members, %d added, %d left, %d tutors, %d pages%s",
        course_id,
        report.members,
        len(report.added),
        len(report.left),
        len(report.tutors),
        report.pages,
        " (differences)" if roster.is_differences else "",
    )
    return report.as_dict()
