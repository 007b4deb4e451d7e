"""Tutor accounts, pools and availability, as plain functions over a Session."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..courses import Course, Person
from ..db import utcnow
from ..help.models import CoursePool, HelpRequest, HelpStatus
from .models import Availability, Invitation, Pool, PoolMember, Tutor, TutorLink

HEARTBEAT_TIMEOUT = dt.timedelta(seconds=60)
INVITATION_LIFETIME = dt.timedelta(days=7)
MIN_PASSWORD = 10
_hasher = PasswordHasher()
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


class TutorError(ValueError):
    """A tutor action is invalid; the message says why."""


# -- pools ---------------------------------------------------------------------------------


def course_pools(session: Session, course_id: int) -> list[Pool]:
    return list(
        session.scalars(
            select(Pool)
            .join(CoursePool, CoursePool.pool_id == Pool.id)
            .where(CoursePool.course_id == course_id)
            .order_by(Pool.id)
        )
    )


def ensure_course_pool(session: Session, course: Course) -> Pool:
    """Every course has at least one pool: its own, made on first use."""
    pools = course_pools(session, course.id)
    if pools:
        return pools[0]
    # Two first requests of a new course must not make two pools (tutors join the first, a
    # request in the second would wait unseen): whoever locks the course row first makes it.
    session.execute(select(Course.id).where(Course.id == course.id).with_for_update())
    pools = course_pools(session, course.id)
    if pools:
        return pools[0]
    pool = Pool(name=f"{course.title or course.context_id} tutors"[:200])
    session.add(pool)
    session.flush()
    session.add(CoursePool(course_id=course.id, pool_id=pool.id))
    session.flush()
    return pool


def tutor_pool_ids(session: Session, tutor_id: int) -> set[int]:
    return set(session.scalars(select(PoolMember.pool_id).where(PoolMember.tutor_id == tutor_id)))


def add_to_pool(session: Session, tutor_id: int, pool_id: int) -> None:
    exists = session.scalars(
        select(PoolMember).where(PoolMember.tutor_id == tutor_id, PoolMember.pool_id == pool_id)
    ).first()
    if exists is None:
        session.add(PoolMember(tutor_id=tutor_id, pool_id=pool_id))
        session.flush()


def pool_course_ids(session: Session, pool_ids: Iterable[int]) -> set[int]:
    ids = list(pool_ids)
    if not ids:
        return set()
    return set(session.scalars(select(CoursePool.course_id).where(CoursePool.pool_id.in_(ids))))


# -- accounts ------------------------------------------------------------------------------


def tutor_for_person(session: Session, person: Person, course: Course) -> Tutor:
    """A TeachingAssistant / Mentor launch makes that person a tutor of the course's pool."""
    link = session.scalars(select(TutorLink).where(TutorLink.person_id == person.id)).first()
    if link is None:
        tutor = Tutor(display_name=person.name or "Tutor", email=None)
        session.add(tutor)
        session.flush()
        session.add(TutorLink(tutor_id=tutor.id, person_id=person.id))
        session.flush()
    else:
        found = session.get(Tutor, link.tutor_id)
        assert found is not None
        tutor = found
        if person.name and tutor.display_name != person.name:
            tutor.display_name = person.name
    add_to_pool(session, tutor.id, ensure_course_pool(session, course).id)
    return tutor


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_email(email: str) -> str:
    email = email.strip().lower()
    if not _EMAIL.fullmatch(email) or len(email) > 320:
        raise TutorError(f"{email[:80]!r} is not an email address.")
    return email


@dataclass(frozen=True)
class NewInvitation:
    invitation: Invitation
    token: str


def invite(session: Session, email: str, pool_id: int, invited_by: str) -> NewInvitation:
    email = check_email(email)
    if session.get(Pool, pool_id) is None:
        raise TutorError("That pool does not exist.")
    token = secrets.token_urlsafe(32)
    invitation = Invitation(
        token_hash=_token_hash(token),
        email=email,
        pool_id=pool_id,
        invited_by=invited_by[:200],
        expires_at=utcnow() + INVITATION_LIFETIME,
    )
    session.add(invitation)
    session.flush()
    return NewInvitation(invitation, token)


def find_invitation(session: Session, token: str) -> Invitation:
    invitation = session.scalars(
        select(Invitation).where(Invitation.token_hash == _token_hash(token))
    ).first()
    if invitation is None:
        raise TutorError("This invitation link is not valid. Ask for a new one.")
    if invitation.accepted_at is not None:
        raise TutorError("This invitation was already used. Log in with your password.")
    if invitation.expires_at < utcnow():
        raise TutorError("This invitation has expired. Ask for a new one.")
    return invitation


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise TutorError(f"Choose a password of at least {MIN_PASSWORD} characters.")
    if len(password) > 200:
        raise TutorError("That password is too long (200 characters at most).")
    return password


def accept_invitation(session: Session, token: str, display_name: str, password: str) -> Tutor:
    invitation = find_invitation(session, token)
    display_name = display_name.strip()
    if not display_name or len(display_name) > 200:
        raise TutorError("Give the name learners will see (1 to 200 characters).")
    tutor = session.scalars(select(Tutor).where(Tutor.email == invitation.email)).first()
    if tutor is not None and tutor.password_hash:
        # An existing account joins one more pool. The link must not reset its password:
        # whoever holds the link (the inviting instructor sees it) would take the account,
        # and every pool of every course and platform it serves, over.
        if authenticate(session, invitation.email, password) is None:
            raise TutorError(
                "You already have a Lifeline tutor account: enter its current password to "
                "add this course to it."
            )
    else:
        check_password(password)
        if tutor is None:
            tutor = Tutor(display_name=display_name, email=invitation.email)
            session.add(tutor)
        tutor.display_name = display_name
        tutor.password_hash = _hasher.hash(password)
        session.flush()
    add_to_pool(session, tutor.id, invitation.pool_id)
    invitation.accepted_at = utcnow()
    invitation.tutor_id = tutor.id
    return tutor


def has_account(session: Session, email: str) -> bool:
    """Whether ``email`` already logs in (an invitation then adds a pool to that account)."""
    found = session.scalars(
        select(Tutor.id).where(Tutor.email == email, Tutor.password_hash.is_not(None))
    ).first()
    return found is not None


def authenticate(session: Session, email: str, password: str) -> Tutor | None:
    tutor = session.scalars(select(Tutor).where(Tutor.email == email.strip().lower())).first()
    if tutor is None or not tutor.password_hash:
        _hasher.hash("timing-equaliser")  # do the same work whether or not the account exists
        return None
    try:
        _hasher.verify(tutor.password_hash, password)
    except (VerificationError, InvalidHashError):
        return None
    if _hasher.check_needs_rehash(tutor.password_hash):
        tutor.password_hash = _hasher.hash(password)
    return tutor


# -- availability ---------------------------------------------------------------------------


def set_availability(
    session: Session,
    tutor: Tutor,
    availability: str,
    skills: Iterable[str] | None = None,
    capacity: int | None = None,
) -> Tutor:
    try:
        tutor.availability = Availability(availability).value
    except ValueError:
        raise TutorError("Availability must be available, away or offline.") from None
    if skills is not None:
        cleaned: list[str] = []
        for skill in skills:
            skill = skill.strip()
            if len(skill) > 40:
                raise TutorError(f"Skill {skill[:40]!r}… is too long (40 characters at most).")
            if skill and skill not in cleaned:
                cleaned.append(skill)
        if len(cleaned) > 50:
            raise TutorError("List at most 50 skills.")
        tutor.skills = cleaned
    if capacity is not None:
        if not 1 <= capacity <= 10:
            raise TutorError("Capacity must be between 1 and 10 concurrent sessions.")
        tutor.capacity = capacity
    tutor.last_seen_at = utcnow()
    return tutor


def heartbeat(session: Session, tutor: Tutor) -> None:
    tutor.last_seen_at = utcnow()


def effective_availability(tutor: Tutor, now: dt.datetime | None = None) -> Availability:
    """A tutor whose dashboard stopped sending heartbeats is away, whatever they last chose."""
    now = now or utcnow()
    status = Availability(tutor.availability)
    if status is Availability.AVAILABLE and (
        tutor.last_seen_at is None or now - tutor.last_seen_at > HEARTBEAT_TIMEOUT
    ):
        return Availability.AWAY
    return status


def pool_tutors(session: Session, pool_ids: Iterable[int]) -> list[Tutor]:
    ids = list(pool_ids)
    if not ids:
        return []
    return list(
        session.scalars(
            select(Tutor)
            .where(Tutor.id.in_(select(PoolMember.tutor_id).where(PoolMember.pool_id.in_(ids))))
            .order_by(Tutor.id)
        )
    )


def active_sessions(session: Session, tutor_id: int) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(HelpRequest)
            .where(HelpRequest.tutor_id == tutor_id, HelpRequest.status == HelpStatus.CLAIMED.value)
        )
        or 0
    )
