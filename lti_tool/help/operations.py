"""The help queue's state changes. Each is a plain function over a Session: it checks who may
do it, changes state with a conditional UPDATE where two people could race, writes the audit /
event row in the same transaction, and never commits (the caller owns the transaction)."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..courses import Course, Person
from ..db import utcnow
from ..lms.roster import enrolment_problem
from ..tutors.models import Pool, Tutor
from ..tutors.operations import active_sessions, course_pools, ensure_course_pool
from . import events
from . import settings as course_settings
from .models import ACTIVE_STATUSES, ChatMessage, HelpRequest, HelpStatus, Outcome

MIN_QUESTION = 15
MAX_QUESTION = 2000
MAX_TRIED = 2000
MAX_CHAT = 4000
MAX_NOTE = 4000
QUESTION_HINT = (
    "Say what you are trying to do, what you expected, and what happened instead "
    "(the error message helps)."
)


class HelpError(Exception):
    """A refused action: ``status`` is the HTTP status, the message says what to do."""

    def __init__(self, status: int, message: str, **data: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.data = data


def _learner_actor(person_id: int) -> str:
    return f"learner:{person_id}"


def _tutor_actor(tutor: Tutor) -> str:
    return f"tutor:{tutor.id}"


# -- learner -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewRequest:
    question: str
    tried: str = ""
    skills: tuple[str, ...] = ()
    context: dict[str, Any] | None = None
    notify_email: str | None = None


def check_new_request(new: NewRequest, allowed_skills: tuple[str, ...]) -> NewRequest:
    question = new.question.strip()
    if not question:
        raise HelpError(400, "Write your question first. " + QUESTION_HINT, field="question")
    if len(question) < MIN_QUESTION:
        raise HelpError(
            400, "Say a little more so a tutor can prepare. " + QUESTION_HINT, field="question"
        )
    if len(question) > MAX_QUESTION:
        raise HelpError(
            400, f"Keep the question under {MAX_QUESTION} characters.", field="question"
        )
    tried = new.tried.strip()
    if len(tried) > MAX_TRIED:
        raise HelpError(400, f"Keep 'what I tried' under {MAX_TRIED} characters.", field="tried")
    allowed = {s.lower(): s for s in allowed_skills}
    skills = []
    for skill in new.skills:
        canonical = allowed.get(skill.strip().lower())
        if canonical is None:
            raise HelpError(
                400, f"{skill[:40]!r} is not one of this course's skills.", field="skills"
            )
        if canonical not in skills:
            skills.append(canonical)
    email = (new.notify_email or "").strip() or None
    if email is not None and (
        "@" not in email or len(email) > 320 or any(c.isspace() for c in email)
    ):
        raise HelpError(400, f"{email[:80]!r} is not an email address.", field="notify_email")
    return NewRequest(question, tried, tuple(skills), new.context or {}, email)


def active_request(session: Session, learner_id: int, course_id: int) -> HelpRequest | None:
    return session.scalars(
        select(HelpRequest).where(
            HelpRequest.learner_id == learner_id,
            HelpRequest.course_id == course_id,
            HelpRequest.status.in_(ACTIVE_STATUSES),
        )
    ).first()


def _check_limits(
    session: Session, learner_id: int, course_id: int, cfg: course_settings.QueueSettings
) -> None:
    now = utcnow()
    if cfg.cooldown_minutes:
        last_end = session.scalar(
            select(func.max(HelpRequest.resolved_at)).where(
                HelpRequest.learner_id == learner_id, HelpRequest.course_id == course_id
            )
        )
        if last_end is not None:
            ready = last_end + dt.timedelta(minutes=cfg.cooldown_minutes)
            if ready > now:
                minutes = max(1, int((ready - now).total_seconds() // 60) + 1)
                raise HelpError(
                    429,
                    f"You can ask for a tutor again in about {minutes} minute(s): this course "
                    "spaces out requests so everyone gets a turn.",
                    retry_after=int((ready - now).total_seconds()) + 1,
                )
    if cfg.daily_cap:
        since = now - dt.timedelta(hours=24)
        count = session.scalar(
            select(func.count())
            .select_from(HelpRequest)
            .where(
                HelpRequest.learner_id == learner_id,
                HelpRequest.course_id == course_id,
                HelpRequest.created_at >= since,
            )
        )
        if (count or 0) >= cfg.daily_cap:
            raise HelpError(
                429,
                f"You have used today's {cfg.daily_cap} tutor requests for this course. Post "
                "in the course forum, or try again tomorrow.",
            )


def request_help(
    session: Session,
    *,
    learner: Person,
    course: Course,
    exercise_id: int | None,
    new: NewRequest,
    severity: float = 0.0,
) -> tuple[HelpRequest, bool]:
    """Open a request, or return the learner's active one (a double click, a second tab)."""
    existing = active_request(session, learner.id, course.id)
    if existing is not None:
        return existing, False
    # The LMS's roster says they left the course (NRPS, ``lms/roster.py``): no new requests.
    refused = enrolment_problem(session, course, learner.id)
    if refused is not None:
        raise HelpError(403, refused)
    cfg = course_settings.load(session, course.id)
    new = check_new_request(new, cfg.skills)
    _check_limits(session, learner.id, course.id, cfg)
    pool = ensure_course_pool(session, course)
    now = utcnow()
    request = HelpRequest(
        platform_id=course.platform_id,
        course_id=course.id,
        exercise_id=exercise_id,
        learner_id=learner.id,
        pool_id=pool.id,
        status=HelpStatus.QUEUED.value,
        question=new.question,
        tried=new.tried,
        skills=list(new.skills),
        context=new.context or {},
        priority=cfg.priority_for(exercise_id),
        severity=severity,
        queued_at=now,
        created_at=now,
        notify_email=new.notify_email,
    )
    try:
        with session.begin_nested():
            session.add(request)
            session.flush()
    except IntegrityError:
        # Another tab won the race to the unique index: that request is the one.
        existing = active_request(session, learner.id, course.id)
        if existing is None:
            raise
        return existing, False
    events.record(
        session,
        "request.created",
        _learner_actor(learner.id),
        request=request,
        to_status=request.status,
        data={
            "priority": request.priority,
            "skills": request.skills,
            "question": request.question[:140],
        },
    )
    return request, True


def _learner_request(session: Session, request_id: int, learner_id: int) -> HelpRequest:
    request = session.get(HelpRequest, request_id)
    if request is None or request.learner_id != learner_id:
        raise HelpError(404, "No such request of yours.")
    return request


def _stale(request: HelpRequest, expected_version: int | None) -> None:
    if expected_version is not None and expected_version != request.version:
        raise HelpError(
            409,
            f"This request changed since your page loaded (it is now {request.status}). "
            "Reload to see where it stands.",
            request_status=request.status,
            version=request.version,
        )


def _transition(
    session: Session,
    request: HelpRequest,
    from_statuses: tuple[str, ...],
    values: dict[str, Any],
    extra_where: tuple[Any, ...] = (),
    expected_version: int | None = None,
) -> bool:
    """One conditional UPDATE; True if this call made the change."""
    where = [HelpRequest.id == request.id, HelpRequest.status.in_(from_statuses), *extra_where]
    if expected_version is not None:
        where.append(HelpRequest.version == expected_version)
    result = session.execute(
        update(HelpRequest)
        .where(*where)
        .values(**values, version=HelpRequest.version + 1)
        .execution_options(synchronize_session=False)
    )
    session.refresh(request)
    return bool(result.rowcount)  # type: ignore[attr-defined]


def cancel(
    session: Session, request_id: int, learner_id: int, expected_version: int | None = None
) -> HelpRequest:
    request = _learner_request(session, request_id, learner_id)
    before = request.status
    if not _transition(
        session,
        request,
        ACTIVE_STATUSES,
        {"status": HelpStatus.CANCELLED.value, "resolved_at": utcnow(), "away_until": None},
        expected_version=expected_version,
    ):
        _stale(request, expected_version)
        raise HelpError(409, f"This request is already {request.status}.")
    events.record(
        session,
        "request.cancelled",
        _learner_actor(learner_id),
        request=request,
        from_status=before,
        to_status=request.status,
        tutor_id=request.tutor_id,
    )
    return request


def step_away(
    session: Session, request_id: int, learner_id: int, back: bool = False
) -> HelpRequest:
    request = _learner_request(session, request_id, learner_id)
    if request.status != HelpStatus.QUEUED.value:
        raise HelpError(409, "You can only step away while you are waiting in line.")
    cfg = course_settings.load(session, request.course_id)
    until = None if back else utcnow() + dt.timedelta(minutes=cfg.step_away_minutes)
    if not _transition(session, request, (HelpStatus.QUEUED.value,), {"away_until": until}):
        raise HelpError(409, f"This request is {request.status} now; reload to see it.")
    events.record(
        session,
        "request.back" if back else "request.away",
        _learner_actor(learner_id),
        request=request,
        from_status=request.status,
        to_status=request.status,
        data={"away_until": until.isoformat() if until else None},
    )
    return request


def rate(
    session: Session, request_id: int, learner_id: int, rating: int, comment: str
) -> HelpRequest:
    request = _learner_request(session, request_id, learner_id)
    if request.status != HelpStatus.RESOLVED.value:
        raise HelpError(409, "You can rate a session once the tutor has finished it.")
    if not 1 <= rating <= 5:
        raise HelpError(400, "Choose a rating from 1 to 5 stars.", field="rating")
    comment = comment.strip()
    if len(comment) > 2000:
        raise HelpError(400, "Keep the comment under 2000 characters.", field="comment")
    request.rating, request.rating_comment = rating, comment
    events.record(
        session,
        "request.rated",
        _learner_actor(learner_id),
        request=request,
        tutor_id=request.tutor_id,
        data={"rating": rating},
    )
    return request


# -- tutor ---------------------------------------------------------------------------------


def _room_url(template: str) -> str:
    return template.replace("{room}", secrets.token_urlsafe(18).replace("_", "x").replace("-", "y"))


def _tutor_request(session: Session, request_id: int, pool_ids: set[int]) -> HelpRequest:
    request = session.get(HelpRequest, request_id)
    if request is None or request.pool_id not in pool_ids:
        raise HelpError(404, "No such request in your pools.")
    return request


def claim(
    session: Session,
    request_id: int,
    tutor: Tutor,
    pool_ids: set[int],
    expected_version: int | None = None,
) -> HelpRequest:
    request = _tutor_request(session, request_id, pool_ids)
    # Lock the tutor's row until commit: two claims by one tutor at the same moment are taken
    # one after the other, so the capacity check below cannot be raced past.
    session.execute(select(Tutor.id).where(Tutor.id == tutor.id).with_for_update())
    if request.tutor_id != tutor.id and active_sessions(session, tutor.id) >= tutor.capacity:
        raise HelpError(
            409,
            f"You are already helping {tutor.capacity} learner(s), your capacity. Resolve or "
            "release a session first, or raise your capacity.",
        )
    pool = session.get(Pool, request.pool_id)
    template = (pool.meeting_template if pool else None) or course_settings.load(
        session, request.course_id
    ).meeting_template
    now = utcnow()
    won = _transition(
        session,
        request,
        (HelpStatus.QUEUED.value,),
        {
            "status": HelpStatus.CLAIMED.value,
            "tutor_id": tutor.id,
            "claimed_at": now,
            "away_until": None,
            "meeting_url": _room_url(template),
        },
        expected_version=expected_version,
    )
    if not won:
        if request.status == HelpStatus.CLAIMED.value and request.tutor_id is not None:
            holder = session.get(Tutor, request.tutor_id)
            name = holder.display_name if holder else "another tutor"
            raise HelpError(
                409,
                f"{name} already claimed this request."
                if request.tutor_id != tutor.id
                else "You already hold this request.",
                holder=name,
                request_status=request.status,
            )
        _stale(request, expected_version)
        raise HelpError(409, f"This request is {request.status}; it cannot be claimed.")
    events.record(
        session,
        "request.claimed",
        _tutor_actor(tutor),
        request=request,
        from_status=HelpStatus.QUEUED.value,
        to_status=request.status,
        tutor_id=tutor.id,
        data={"tutor_name": tutor.display_name},
    )
    return request


def _held(
    session: Session,
    request_id: int,
    tutor: Tutor,
    pool_ids: set[int],
    expected_version: int | None = None,
) -> HelpRequest:
    request = _tutor_request(session, request_id, pool_ids)
    if request.status != HelpStatus.CLAIMED.value or request.tutor_id != tutor.id:
        holder = session.get(Tutor, request.tutor_id) if request.tutor_id else None
        if request.status == HelpStatus.CLAIMED.value and holder is not None:
            raise HelpError(403, f"Only {holder.display_name}, who holds it, can do that.")
        _stale(request, expected_version)  # a stale tab hears that the request moved on
        raise HelpError(409, f"This request is {request.status}, not held by you.")
    return request


def release(
    session: Session,
    request_id: int,
    tutor: Tutor,
    pool_ids: set[int],
    expected_version: int | None = None,
) -> HelpRequest:
    """Back to the queue, keeping the original place (queued_at is not touched)."""
    request = _held(session, request_id, tutor, pool_ids, expected_version)
    if not _transition(
        session,
        request,
        (HelpStatus.CLAIMED.value,),
        {"status": HelpStatus.QUEUED.value, "tutor_id": None, "claimed_at": None},
        (HelpRequest.tutor_id == tutor.id,),
        expected_version,
    ):
        _stale(request, expected_version)
        raise HelpError(409, "This request moved on before your release.")
    events.record(
        session,
        "request.released",
        _tutor_actor(tutor),
        request=request,
        from_status=HelpStatus.CLAIMED.value,
        to_status=request.status,
        tutor_id=tutor.id,
    )
    return request


def transfer(
    session: Session,
    request_id: int,
    tutor: Tutor,
    pool_ids: set[int],
    to_pool_id: int | None,
    skills: tuple[str, ...] | None,
    expected_version: int | None = None,
) -> HelpRequest:
    """Move a request to another pool of its course and/or other skills; it keeps its place."""
    request = _tutor_request(session, request_id, pool_ids)
    if request.status == HelpStatus.CLAIMED.value and request.tutor_id != tutor.id:
        raise HelpError(403, "Only the tutor who holds this request can transfer it.")
    if request.status not in ACTIVE_STATUSES:
        _stale(request, expected_version)
        raise HelpError(409, f"This request is {request.status}; it cannot be transferred.")
    values: dict[str, Any] = {"status": HelpStatus.QUEUED.value, "tutor_id": None}
    course_pool_ids = {p.id for p in course_pools(session, request.course_id)}
    if to_pool_id is not None:
        if to_pool_id not in course_pool_ids:
            raise HelpError(400, "That pool does not serve this request's course.", field="pool")
        values["pool_id"] = to_pool_id
    if skills is not None:
        allowed = course_settings.load(session, request.course_id).skills
        values["skills"] = list(
            check_new_request(NewRequest("x" * MIN_QUESTION, "", skills), allowed).skills
        )
    before, from_pool_id = request.status, request.pool_id
    if not _transition(
        session, request, ACTIVE_STATUSES, values, expected_version=expected_version
    ):
        _stale(request, expected_version)
        raise HelpError(409, "This request moved on before your transfer.")
    events.record(
        session,
        "request.transferred",
        _tutor_actor(tutor),
        request=request,
        from_status=before,
        to_status=request.status,
        tutor_id=tutor.id,
        data={"pool_id": request.pool_id, "from_pool_id": from_pool_id, "skills": request.skills},
    )
    return request


def resolve(
    session: Session,
    request_id: int,
    tutor: Tutor,
    pool_ids: set[int],
    outcome: str,
    note: str,
    expected_version: int | None = None,
) -> HelpRequest:
    """End a session. A no-show goes back to the queue with its place kept, the learner
    marked as stepped away; if they do not come back in time, ``expire_away`` closes it."""
    try:
        result = Outcome(outcome)
    except ValueError:
        raise HelpError(
            400, "Choose an outcome: solved, partly, not solved or no-show.", field="outcome"
        ) from None
    note = note.strip()
    if len(note) > MAX_NOTE:
        raise HelpError(400, f"Keep the note under {MAX_NOTE} characters.", field="note")
    request = _held(session, request_id, tutor, pool_ids, expected_version)
    now = utcnow()
    if result is Outcome.NO_SHOW:
        cfg = course_settings.load(session, request.course_id)
        values: dict[str, Any] = {
            "status": HelpStatus.QUEUED.value,
            "tutor_id": None,
            "claimed_at": None,
            "away_until": now + dt.timedelta(minutes=cfg.step_away_minutes),
            "tutor_note": note,
        }
    else:
        values = {
            "status": HelpStatus.RESOLVED.value,
            "resolved_at": now,
            "outcome": result.value,
            "tutor_note": note,
        }
    if not _transition(
        session,
        request,
        (HelpStatus.CLAIMED.value,),
        values,
        (HelpRequest.tutor_id == tutor.id,),
        expected_version,
    ):
        _stale(request, expected_version)
        raise HelpError(409, "This request moved on before you resolved it.")
    events.record(
        session,
        "request.no_show" if result is Outcome.NO_SHOW else "request.resolved",
        _tutor_actor(tutor),
        request=request,
        from_status=HelpStatus.CLAIMED.value,
        to_status=request.status,
        tutor_id=tutor.id,
        data={"outcome": result.value},
    )
    return request


def expire_away(session: Session, now: dt.datetime | None = None) -> list[int]:
    """Close requests whose learner stepped away (or did not show) and did not come back."""
    now = now or utcnow()
    expired = list(
        session.scalars(
            select(HelpRequest).where(
                HelpRequest.status == HelpStatus.QUEUED.value,
                HelpRequest.away_until.is_not(None),
                HelpRequest.away_until < now,
            )
        )
    )
    closed = []
    for request in expired:
        if _transition(
            session,
            request,
            (HelpStatus.QUEUED.value,),
            {"status": HelpStatus.CANCELLED.value, "resolved_at": now, "outcome": "no_show"},
            (HelpRequest.away_until < now,),
        ):
            events.record(
                session,
                "request.expired",
                "system",
                request=request,
                from_status=HelpStatus.QUEUED.value,
                to_status=request.status,
            )
            closed.append(request.id)
    return closed


# -- chat ----------------------------------------------------------------------------------


def post_message(
    session: Session, request: HelpRequest, author: str, author_name: str, body: str
) -> ChatMessage:
    body = body.strip()
    if not body:
        raise HelpError(400, "Write a message first.", field="body")
    if len(body) > MAX_CHAT:
        raise HelpError(400, f"Keep messages under {MAX_CHAT} characters.", field="body")
    if request.status != HelpStatus.CLAIMED.value:
        raise HelpError(409, "Chat is open while a tutor is working with you.")
    message = ChatMessage(
        request_id=request.id, author=author, author_name=author_name[:200], body=body
    )
    session.add(message)
    session.flush()
    events.record(
        session,
        "chat.message",
        f"{author}:{request.learner_id if author == 'learner' else request.tutor_id}",
        request=request,
        tutor_id=request.tutor_id,
        data={
            "message_id": message.id,
            "author": author,
            "name": message.author_name,
            "body": body,
        },
    )
    return message


def messages(session: Session, request_id: int) -> list[ChatMessage]:
    return list(
        session.scalars(
            select(ChatMessage).where(ChatMessage.request_id == request_id).order_by(ChatMessage.id)
        )
    )


def set_meeting_url(
    session: Session, request_id: int, tutor: Tutor, pool_ids: set[int], url: str
) -> HelpRequest:
    """Replace a session's meeting link (the generated room failed, or the tutor has their
    own): the learner's page shows the new one at once."""
    from urllib.parse import urlsplit

    url = url.strip()
    try:
        parts = urlsplit(url)
    except ValueError:  # "https://[": a broken IPv6 host
        parts = urlsplit("")
    if parts.scheme != "https" or not parts.netloc or len(url) > 1000:
        raise HelpError(400, "The meeting link must be an https:// address.", field="meeting_url")
    request = _held(session, request_id, tutor, pool_ids)
    if not _transition(
        session,
        request,
        (HelpStatus.CLAIMED.value,),
        {"meeting_url": url},
        (HelpRequest.tutor_id == tutor.id,),
    ):
        raise HelpError(409, f"This request is {request.status} now, not held by you.")
    events.record(
        session,
        "request.meeting",
        _tutor_actor(tutor),
        request=request,
        from_status=request.status,
        to_status=request.status,
        tutor_id=tutor.id,
    )
    return request
