"""The background jobs. Each takes ids only, finds its handles with ``jobs.current()``, and is
safe to run twice: pages go out at most once (``help.paging``), and the rest reads the
database afresh. Enqueued by dotted path (``lti_tool.tasks.page_request``); nothing imports
this module but the worker.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.orm import Session

from . import jobs
from .db import utcnow
from .detection import live
from .help import paging
from .help.models import HelpRequest, HelpStatus
from .help.operations import expire_away
from .lms import grades as lms_grades
from .lms import roster as lms_roster
from .lms import sync as lms_sync


def _sla_job_id(request_id: int, wave: int, due_timestamp: float) -> str:
    # One scheduled check per (request, wave, due time): enqueued twice, it is stored once.
    return f"lifeline-sla-{request_id}-{wave}-{int(due_timestamp)}"


def _schedule_check(
    context: jobs.JobContext, session: Session, request: HelpRequest, wave: int
) -> None:
    if wave > paging.LAST_WAVE:
        return
    due = paging.wave_due_at(session, request, wave)
    context.enqueue_at(
        due,
        jobs.CHECK_SLA,
        request.id,
        wave,
        job_id=_sla_job_id(request.id, wave, due.timestamp()),
    )


def page_request(request_id: int, wave: int = paging.WAVE_TUTORS) -> dict[str, Any]:
    """Page a queued request's wave now, and schedule the SLA check for the next wave."""
    context = jobs.current()
    with context.session() as session:
        request = session.get(HelpRequest, request_id)
        if request is None or request.status != HelpStatus.QUEUED.value:
            return {"request_id": request_id, "wave": wave, "skipped": "not queued"}
        # Schedule first: if this wave keeps failing, escalation still happens on time.
        _schedule_check(context, session, request, wave + 1)
        report = paging.page_wave(
            session, request_id, wave, context.notifiers, context.settings.base_url
        )
    return report.as_dict()


def check_sla(request_id: int, wave: int) -> dict[str, Any]:
    """The SLA ran out for ``wave``: page it if the request is still unclaimed. If the clock
    was reset meanwhile (a tutor released the request), check again when it runs out."""
    context = jobs.current()
    with context.session() as session:
        request = session.get(HelpRequest, request_id)
        if request is None or request.status != HelpStatus.QUEUED.value:
            return {"request_id": request_id, "wave": wave, "skipped": "not queued"}
        due = paging.wave_due_at(session, request, wave)
        if due > utcnow():
            context.enqueue_at(
                due,
                jobs.CHECK_SLA,
                request_id,
                wave,
                job_id=_sla_job_id(request_id, wave, due.timestamp()),
            )
            return {"request_id": request_id, "wave": wave, "skipped": "not due yet"}
        _schedule_check(context, session, request, wave + 1)
        report = paging.page_wave(
            session, request_id, wave, context.notifiers, context.settings.base_url
        )
    return report.as_dict()


def alert_learners(pool_id: int) -> dict[str, Any]:
    """Email the learners of a pool who asked to hear when their turn is near or has come."""
    context = jobs.current()
    with context.session() as session:
        report = paging.alert_learners(session, pool_id, context.notifiers)
    return report.as_dict()


def sync_roster(course_id: int, full: bool = False) -> dict[str, Any]:
    """Sync a course's roster from the LMS (NRPS): on its first launch, on a schedule (the
    sweep), and when an instructor asks. ``full`` ignores the differences link."""
    return lms_sync.sync_roster(jobs.current(), course_id, full)


def report_participation(request_id: int) -> dict[str, Any]:
    """Report a completed session to the LMS gradebook (AGS), if the course opted in."""
    return lms_grades.report_participation(jobs.current(), request_id)


def sweep() -> dict[str, Any]:
    """Close requests whose learner stepped away and did not come back, and redo paging that
    was lost: a wave that fell due but never ran (its job vanished with Redis, or Redis was
    down when the request was made) is enqueued again. Run every half minute by the worker."""
    context = jobs.current()
    with context.session() as session:
        expired = expire_away(session)
        # This commit publishes the expiries and enqueues the learner alerts they call for.
        session.commit()
        overdue = paging.overdue_waves(session)
    for request_id, wave in overdue:
        if wave == paging.WAVE_TUTORS:
            context.enqueue(jobs.PAGE_REQUEST, request_id, wave)
        else:
            context.enqueue(jobs.CHECK_SLA, request_id, wave)
    # Live detection's time-based triggers (silence after a failure) and stale offers: last,
    # so nothing above waits on them.
    with context.session() as session:
        offer_ids = [o.id for o in live.tick(session)]
        live.expire_offers(session)
        session.commit()
    # Rosters older than the sync interval (marked as asked for, committed, then enqueued).
    with context.session() as session:
        hours = dt.timedelta(hours=context.settings.roster_sync_hours)
        rosters = lms_roster.due_for_sync(session, hours)
        grades = lms_grades.due_for_retry(session)
    for course_id in rosters:
        context.enqueue(jobs.SYNC_ROSTER, course_id)
    for request_id in grades:  # participation scores whose job gave up or died
        context.enqueue(jobs.REPORT_PARTICIPATION, request_id)
    return {
        "expired": expired,
        "repaged": [list(pair) for pair in overdue],
        **({"offers": offer_ids} if offer_ids else {}),  # offers live detection made
        **({"rosters": rosters} if rosters else {}),  # roster syncs that fell due
        **({"grades": grades} if grades else {}),  # grade reports tried again
    }
