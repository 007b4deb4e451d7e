"""Paging people about a waiting request, and alerting learners by email.

Escalation, in waves, while a request stays queued:

1. at once: the tutors of the request's pool who are available and whose skills match the
   request (all available ones when none match), plus the course webhook;
2. after the course's SLA: every tutor of every pool of the course who is available or away
   (not those who signed off);
3. after another SLA: the instructors, that is the course's notify emails, plus the webhook.

The SLA clock runs from when the request last (re)entered the queue: a request a tutor
released starts a fresh clock.

At most once per (request, wave, channel, target): the ``page_log`` row is inserted as
``sending`` and committed *before* anything goes out, then marked ``sent`` (``logged`` for the
console stand-in) or ``failed`` with the error. A ``failed`` row is tried again by the next run;
a row left ``sending`` by a run that died mid-send is never retried, because the page may have
gone out. A run that finishes a wave writes a marker row (channel ``wave``), which is how
``overdue_waves`` tells a wave that was lost (with Redis, say) from one that ran.

Unlike the operations in ``operations.py`` these functions commit (each page is its own small
transaction), so the caller passes a session it owns: a job's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ..courses import Course, Exercise, Person
from ..db import utcnow
from ..notify import EMAIL, WEBHOOK, Message, Notifiers, NotifyError, redact_url
from ..tutors.models import Availability, Tutor, TutorLink
from ..tutors.operations import course_pools, effective_availability, pool_tutors
from . import settings as course_settings
from .models import HelpEvent, HelpRequest, HelpStatus, PageLog
from .queue import queued

WAVE_TUTORS = 1
WAVE_ALL_TUTORS = 2
WAVE_INSTRUCTORS = 3
LAST_WAVE = WAVE_INSTRUCTORS
WAVE_NEARLY = -2  # learner alert: two (or fewer) ahead of you
WAVE_TURN = -1  # learner alert: a tutor claimed your request

MARKER = "wave"  # channel of the row that says a wave ran to its end
SENDING, SENT, LOGGED, FAILED = "sending", "sent", "logged", "failed"
# A wave with no marker whose newest row is older than this was interrupted and is re-derived.
INTERRUPTED_AFTER = dt.timedelta(minutes=5)
# A wave is re-derived by the sweep only this long after it fell due (its own job goes first).
LOST_AFTER = dt.timedelta(seconds=30)
EXCERPT = 200


class PagingFailed(Exception):
    """Some pages failed; the job raises this so RQ retries it (sent ones are not resent)."""


@dataclass(frozen=True)
class Target:
    channel: str
    key: str  # what page_log stores: an email address, or a webhook's host#fingerprint
    address: str  # where the message goes: the email address or the webhook URL


@dataclass
class PageReport:
    request_id: int | None
    wave: int
    sent: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "wave": self.wave,
            "sent": self.sent,
            "failed": self.failed,
            "skipped": self.skipped,
        }


# -- timing ------------------------------------------------------------------------------------


def waiting_since(session: Session, request: HelpRequest) -> dt.datetime:
    """When the request last entered the queue (created, released, no-show, ...)."""
    since = session.scalar(
        select(func.max(HelpEvent.at)).where(
            HelpEvent.request_id == request.id,
            HelpEvent.to_status == HelpStatus.QUEUED.value,
            or_(
                HelpEvent.from_status.is_(None),
                HelpEvent.from_status != HelpStatus.QUEUED.value,
            ),
        )
    )
    return max(since, request.queued_at) if since is not None else request.queued_at


def wave_due_at(session: Session, request: HelpRequest, wave: int) -> dt.datetime:
    sla = course_settings.load(session, request.course_id).sla_minutes
    return waiting_since(session, request) + dt.timedelta(minutes=sla * (wave - 1))


# -- who gets paged ----------------------------------------------------------------------------


def _tutor_email(session: Session, tutor: Tutor) -> str | None:
    if tutor.email:
        return tutor.email.lower()
    # A tutor who came by LTI launch has the email the LMS gave for their person record.
    email = session.scalars(
        select(Person.email)
        .join(TutorLink, TutorLink.person_id == Person.id)
        .where(TutorLink.tutor_id == tutor.id, Person.email != "")
        .order_by(Person.updated_at.desc())
    ).first()
    return email.lower() if email else None


def _email_targets(emails: Iterable[str | None]) -> list[Target]:
    seen: dict[str, Target] = {}
    for email in emails:
        if email and email not in seen:
            seen[email] = Target(EMAIL, email, email)
    return list(seen.values())


def webhook_target(url: str) -> Target:
    return Target(WEBHOOK, redact_url(url), url)


def wave_targets(
    session: Session, request: HelpRequest, wave: int, now: dt.datetime | None = None
) -> list[Target]:
    now = now or utcnow()
    cfg = course_settings.load(session, request.course_id)
    targets: list[Target] = []
    if wave == WAVE_TUTORS:
        available = [
            t
            for t in pool_tutors(session, [request.pool_id])
            if effective_availability(t, now) is Availability.AVAILABLE
        ]
        wanted = {s.lower() for s in request.skills}
        matching = [t for t in available if wanted & {s.lower() for s in t.skills}]
        chosen = matching if (wanted and matching) else available
        targets = _email_targets(_tutor_email(session, t) for t in chosen)
    elif wave == WAVE_ALL_TUTORS:
        pool_ids = [p.id for p in course_pools(session, request.course_id)] or [request.pool_id]
        reachable = [
            t
            for t in pool_tutors(session, pool_ids)
            if effective_availability(t, now) is not Availability.OFFLINE
        ]
        targets = _email_targets(_tutor_email(session, t) for t in reachable)
    elif wave == WAVE_INSTRUCTORS:
        targets = _email_targets(e.lower() for e in cfg.notify_emails)
    else:
        raise ValueError(f"no paging wave {wave}")
    if cfg.notify_webhook and wave in (WAVE_TUTORS, WAVE_INSTRUCTORS):
        targets.append(webhook_target(cfg.notify_webhook))
    return targets


# -- what they read ----------------------------------------------------------------------------


def _excerpt(text: str, limit: int = EXCERPT) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _where(session: Session, request: HelpRequest) -> str:
    course = session.get(Course, request.course_id)
    exercise = session.get(Exercise, request.exercise_id) if request.exercise_id else None
    where = (course.title or course.label or course.context_id) if course else "a course"
    if exercise is not None and exercise.title:
        where += f" · {exercise.title}"
    return where


def tutor_message(
    session: Session, request: HelpRequest, wave: int, base_url: str, now: dt.datetime
) -> Message:
    where = _where(session, request)
    waited = max(0, int((now - waiting_since(session, request)).total_seconds() // 60))
    headline = {
        WAVE_TUTORS: "A learner needs a tutor",
        WAVE_ALL_TUTORS: f"Still waiting after {waited} min: a learner needs a tutor",
        WAVE_INSTRUCTORS: f"No tutor yet after {waited} min: a learner needs help",
    }[wave]
    skills = f"\nSkills: {', '.join(request.skills)}" if request.skills else ""
    text = (
        f"{headline} in {where}.\n"
        f"“{_excerpt(request.question)}”{skills}\n"
        f"Waiting {waited} min. Open the tutor dashboard: {base_url}/tutor/"
    )
    return Message(subject=f"[Lifeline] {headline} ({where})", text=text)


def _nearly_message(where: str, ahead: int) -> Message:
    line = (
        "You are next in line"
        if ahead == 0
        else f"{ahead} learner{'s are' if ahead > 1 else ' is'} ahead of you"
    )
    return Message(
        subject="[Lifeline] Almost your turn with a tutor",
        text=(
            f"{line} for a tutor in {where}.\n"
            "Go back to the page where you asked for help, so you are there when the tutor "
            "picks up your question."
        ),
    )


def _turn_message(where: str, tutor_name: str) -> Message:
    return Message(
        subject="[Lifeline] A tutor is ready for you",
        text=(
            f"{tutor_name} has picked up your question in {where}.\n"
            "Go back to the page where you asked for help to start the session."
        ),
    )


# -- at most once ------------------------------------------------------------------------------


def _row(request_id: int, wave: int, channel: str, key: str) -> Any:
    return and_(
        PageLog.request_id == request_id,
        PageLog.wave == wave,
        PageLog.channel == channel,
        PageLog.target == key,
    )


def _insert_once(session: Session, values: dict[str, Any]) -> bool:
    """INSERT the row unless (request, wave, channel, target) exists; True if inserted."""
    keys = ["request_id", "wave", "channel", "target"]
    table = cast(Table, PageLog.__table__)
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        pg_stmt = (
            postgresql.insert(table).values(**values).on_conflict_do_nothing(index_elements=keys)
        )
        stmt = pg_stmt.returning(table.c.id)
    elif dialect == "sqlite":
        lite_stmt = (
            sqlite.insert(table).values(**values).on_conflict_do_nothing(index_elements=keys)
        )
        stmt = lite_stmt.returning(table.c.id)
    else:  # pragma: no cover - PostgreSQL and SQLite are the supported databases
        raise RuntimeError(f"paging does not support {dialect}")
    # Core, not ORM, execution: the RETURNING row says whether this INSERT made the row.
    return session.connection().execute(stmt).first() is not None


def claim_page(session: Session, request_id: int, wave: int, target: Target) -> bool:
    """Take the right to send this page, committed before sending. False: already sent,
    being sent, or possibly sent by a run that died (never twice)."""
    now = utcnow()
    won = _insert_once(
        session,
        {
            "request_id": request_id,
            "wave": wave,
            "channel": target.channel,
            "target": target.key,
            "status": SENDING,
            "at": now,
        },
    )
    if not won:
        # Only a page that is known to have failed is tried again.
        result = session.execute(
            update(PageLog)
            .where(_row(request_id, wave, target.channel, target.key), PageLog.status == FAILED)
            .values(status=SENDING, error=None, at=now)
            .execution_options(synchronize_session=False)
        )
        won = bool(result.rowcount)  # type: ignore[attr-defined]
    session.commit()
    return won


def _finish(
    session: Session, request_id: int, wave: int, target: Target, status: str, error: str | None
) -> None:
    session.execute(
        update(PageLog)
        .where(_row(request_id, wave, target.channel, target.key))
        .values(status=status, error=error, at=utcnow())
        .execution_options(synchronize_session=False)
    )
    session.commit()


def send_once(
    session: Session,
    request_id: int,
    wave: int,
    target: Target,
    message: Message,
    notifiers: Notifiers,
    report: PageReport,
) -> None:
    """Send one page, at most once. A ``NotifyError`` marks it failed (the next run tries it
    again); anything else (a bug, the job killed) leaves it ``sending``: nobody knows whether it
    went out, so it is never retried, and the exception fails the job visibly."""
    if not claim_page(session, request_id, wave, target):
        return
    notifier = notifiers.for_channel(target.channel)
    try:
        notifier.send(target.address, message)
    except NotifyError as exc:
        _finish(session, request_id, wave, target, FAILED, str(exc)[:2000])
        report.failed.append(f"{target.channel}:{target.key}: {exc}")
        return
    _finish(session, request_id, wave, target, SENT if notifier.delivers else LOGGED, None)
    report.sent.append(f"{target.channel}:{target.key}")


def _status(session: Session, request_id: int) -> str | None:
    # A column query always reads the database (the identity map may hold an old status).
    return session.scalar(select(HelpRequest.status).where(HelpRequest.id == request_id))


def _mark_wave_done(session: Session, request_id: int, wave: int) -> None:
    _insert_once(
        session,
        {
            "request_id": request_id,
            "wave": wave,
            "channel": MARKER,
            "target": "done",
            "status": SENT,
            "at": utcnow(),
        },
    )
    session.commit()


def page_wave(
    session: Session,
    request_id: int,
    wave: int,
    notifiers: Notifiers,
    base_url: str,
    now: dt.datetime | None = None,
) -> PageReport:
    """Send one wave's pages for a request that is still queued; raise PagingFailed if any
    failed (after trying them all), so the job is retried and only those go out again."""
    report = PageReport(request_id, wave)
    request = session.get(HelpRequest, request_id)
    if request is None or _status(session, request_id) != HelpStatus.QUEUED.value:
        report.skipped = "not queued"
        return report
    now = now or utcnow()
    targets = wave_targets(session, request, wave, now)
    message = tutor_message(session, request, wave, base_url, now)
    session.commit()  # end the read transaction before the first (slow) send
    for target in targets:
        if _status(session, request_id) != HelpStatus.QUEUED.value:
            session.commit()
            report.skipped = "claimed or closed during the wave"
            return report
        send_once(session, request_id, wave, target, message, notifiers, report)
    _mark_wave_done(session, request_id, wave)
    if report.failed:
        raise PagingFailed("; ".join(report.failed))
    return report


# -- learner alerts ----------------------------------------------------------------------------


def alert_learners(
    session: Session, pool_id: int, notifiers: Notifiers, now: dt.datetime | None = None
) -> PageReport:
    """Email learners who asked for it: once when two or fewer are ahead of them, and once
    when a tutor claims their request."""
    report = PageReport(None, 0)
    jobs: list[tuple[int, int, Target, Message]] = []
    for ahead, request in enumerate(queued(session, [pool_id])):
        if ahead > 2:
            break
        if request.notify_email:
            message = _nearly_message(_where(session, request), ahead)
            target = Target(EMAIL, request.notify_email.lower(), request.notify_email)
            jobs.append((request.id, WAVE_NEARLY, target, message))
    since = (now or utcnow()) - dt.timedelta(hours=2)
    claimed = session.scalars(
        select(HelpRequest)
        .where(
            HelpRequest.pool_id == pool_id,
            HelpRequest.status == HelpStatus.CLAIMED.value,
            HelpRequest.notify_email.is_not(None),
            HelpRequest.claimed_at >= since,
        )
        .order_by(HelpRequest.id)
    )
    for request in claimed:
        assert request.notify_email is not None
        tutor = session.get(Tutor, request.tutor_id) if request.tutor_id else None
        name = tutor.display_name if tutor else "A tutor"
        message = _turn_message(_where(session, request), name)
        target = Target(EMAIL, request.notify_email.lower(), request.notify_email)
        jobs.append((request.id, WAVE_TURN, target, message))
    session.commit()
    for request_id, wave, target, message in jobs:
        send_once(session, request_id, wave, target, message, notifiers, report)
    if report.failed:
        raise PagingFailed("; ".join(report.failed))
    return report


# -- what was lost -----------------------------------------------------------------------------


def overdue_waves(session: Session, now: dt.datetime | None = None) -> list[tuple[int, int]]:
    """(request id, wave) pairs that are due but never ran: their job was lost (a Redis
    restart, a worker killed mid-wave) or never enqueued (Redis down at commit time)."""
    now = now or utcnow()
    requests = list(
        session.scalars(
            select(HelpRequest)
            .where(
                HelpRequest.status == HelpStatus.QUEUED.value,
                HelpRequest.queued_at <= now - LOST_AFTER,
            )
            .order_by(HelpRequest.id)
        )
    )
    if not requests:
        return []
    rows = session.execute(
        select(
            PageLog.request_id,
            PageLog.wave,
            func.max(PageLog.at),
            func.count().filter(PageLog.channel == MARKER),
        )
        .where(PageLog.request_id.in_([r.id for r in requests]), PageLog.wave > 0)
        .group_by(PageLog.request_id, PageLog.wave)
    ).all()
    state = {(rid, wave): (latest, markers) for rid, wave, latest, markers in rows}
    overdue = []
    for request in requests:
        for wave in range(WAVE_TUTORS, LAST_WAVE + 1):
            if wave_due_at(session, request, wave) + LOST_AFTER > now:
                break
            latest, markers = state.get((request.id, wave), (None, 0))
            if markers:
                continue
            if latest is None or now - latest > INTERRUPTED_AFTER:
                overdue.append((request.id, wave))
    return overdue
