"""Who may write activity into a course: per-course Basic credentials and SDK tokens.

Basic credentials (for an LRS forwarder such as Open edX's event-routing-backends, or a
ProgSnap2 exporter) are created by an instructor on the course's activity page. The key is
public; the secret is 256 random bits, shown once, stored as its SHA-256 (a slow password hash
adds nothing for a secret nobody can guess, and would cost every request). Revoked credentials
stop working at once.

SDK tokens are what an exercise page uses: signed (itsdangerous, with the app's secret) for
one person, course and exercise, and valid for two hours. They carry no other power.

Ingestion checks credentials on every request, so each process keeps the credentials it saw
for ``CACHE_SECONDS`` (``authenticate_cached``): a request then needs no database at all. A
revocation takes effect at once in the process that made it and within ``CACHE_SECONDS`` in
the others. ``last_used_at`` is written by whoever stores the events (``touch``), at most once
a minute per credential.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from ..courses import Course, Exercise, Person
from ..db import utcnow
from .models import ActivityCredential

KEY_PREFIX = "ll_"
_KEY = re.compile(r"^ll_[A-Za-z0-9_-]{8,60}$")
MAX_LABEL = 200
MAX_CREDENTIALS = 50  # live credentials per course
LAST_USED_EVERY = dt.timedelta(minutes=1)
CACHE_SECONDS = 5.0  # a credential seen is trusted this long per process without the database
CACHE_SIZE = 10_000

SDK_SALT = "lifeline.activity.sdk"
SDK_TOKEN_SECONDS = 2 * 3600
MAX_TOKEN = 500


class CredentialError(Exception):
    pass


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class NewCredential:
    credential: ActivityCredential
    secret: str  # shown once, never stored


def create(
    session: Session, course: Course, label: str, created_by: int | None = None
) -> NewCredential:
    label = " ".join(label.split())
    if len(label) > MAX_LABEL:
        raise CredentialError(f"The label is longer than {MAX_LABEL} characters.")
    live = len(active(session, course.id))
    if live >= MAX_CREDENTIALS:
        raise CredentialError(
            f"This course already has {live} live credentials: revoke unused ones first."
        )
    secret = secrets.token_urlsafe(32)
    credential = ActivityCredential(
        platform_id=course.platform_id,
        course_id=course.id,
        key=KEY_PREFIX + secrets.token_urlsafe(12),
        secret_hash=_hash(secret),
        label=label,
        created_by=created_by,
    )
    session.add(credential)
    session.flush()
    return NewCredential(credential, secret)


def active(session: Session, course_id: int) -> list[ActivityCredential]:
    return list(
        session.scalars(
            select(ActivityCredential)
            .where(
                ActivityCredential.course_id == course_id, ActivityCredential.revoked_at.is_(None)
            )
            .order_by(ActivityCredential.id)
        )
    )


def listing(session: Session, course_id: int) -> list[ActivityCredential]:
    return list(
        session.scalars(
            select(ActivityCredential)
            .where(ActivityCredential.course_id == course_id)
            .order_by(ActivityCredential.revoked_at.is_not(None), ActivityCredential.id.desc())
        )
    )


def revoke(session: Session, course_id: int, credential_id: int) -> bool:
    """Revoke a credential of this course; False when it is not one (or already revoked)."""
    result = session.execute(
        update(ActivityCredential)
        .where(
            ActivityCredential.id == credential_id,
            ActivityCredential.course_id == course_id,
            ActivityCredential.revoked_at.is_(None),
        )
        .values(revoked_at=utcnow())
    )
    _forget(credential_id)
    return bool(getattr(result, "rowcount", 0))


def authenticate(session: Session, key: str, secret: str) -> ActivityCredential | None:
    """The live credential with this key and secret, or None (the same for every failure)."""
    if not _KEY.match(key) or len(secret) > 200:
        return None
    credential = session.scalars(
        select(ActivityCredential).where(
            ActivityCredential.key == key, ActivityCredential.revoked_at.is_(None)
        )
    ).first()
    if credential is None or not hmac.compare_digest(credential.secret_hash, _hash(secret)):
        return None
    now = utcnow()
    if credential.last_used_at is None or now - credential.last_used_at > LAST_USED_EVERY:
        credential.last_used_at = now
    return credential


@dataclass(frozen=True)
class CredentialInfo:
    """What a request needs of its credential: who it is and the course it writes into."""

    id: int
    platform_id: int
    course_id: int


_cache: dict[str, tuple[float, str, CredentialInfo]] = {}  # key -> (until, secret hash, info)
_cache_lock = threading.Lock()


def _forget(credential_id: int) -> None:
    with _cache_lock:
        for key in [k for k, (_, _, info) in _cache.items() if info.id == credential_id]:
            del _cache[key]


def authenticate_cached(
    session: Session | Callable[[], Session], key: str, secret: str
) -> CredentialInfo | None:
    """``authenticate`` with a per-process cache of the live credentials seen in the last
    ``CACHE_SECONDS`` (the secret is checked against the cached hash every time). Unknown keys
    and wrong secrets are never cached. ``session`` (or a function giving one) is used only on
    a miss."""
    if not _KEY.match(key) or len(secret) > 200:
        return None
    now = time.monotonic()
    cached = _cache.get(key)
    if cached is not None and cached[0] > now:
        _, secret_hash, info = cached
        return info if hmac.compare_digest(secret_hash, _hash(secret)) else None
    if not isinstance(session, Session):
        session = session()
    credential = session.scalars(
        select(ActivityCredential).where(
            ActivityCredential.key == key, ActivityCredential.revoked_at.is_(None)
        )
    ).first()
    if credential is None or not hmac.compare_digest(credential.secret_hash, _hash(secret)):
        return None
    info = CredentialInfo(credential.id, credential.platform_id, credential.course_id)
    with _cache_lock:
        if len(_cache) >= CACHE_SIZE:
            _cache.clear()
        _cache[key] = (now + CACHE_SECONDS, credential.secret_hash, info)
    return info


def touch(session: Session, credential_ids: Iterable[int], now: dt.datetime | None = None) -> None:
    """Note that these credentials were used (``last_used_at``, at most once a minute each):
    one UPDATE, by whoever stores the events. Rows another transaction is touching are
    skipped (it is noting the same use), so concurrent consumers never wait on each other
    here, nor lock these rows in different orders."""
    ids = sorted(set(credential_ids))
    if not ids:
        return
    now = now or utcnow()
    due = (
        select(ActivityCredential.id)
        .where(
            ActivityCredential.id.in_(ids),
            or_(
                ActivityCredential.last_used_at.is_(None),
                ActivityCredential.last_used_at < now - LAST_USED_EVERY,
            ),
        )
        .order_by(ActivityCredential.id)
        .with_for_update(skip_locked=True)
    )
    session.execute(
        update(ActivityCredential)
        .where(ActivityCredential.id.in_(due.scalar_subquery()))
        .values(last_used_at=now)
    )


# -- SDK tokens ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SdkIdentity:
    """What an SDK token lets its holder do: add events of one learner on one exercise."""

    platform_id: int
    course_id: int
    learner_id: int
    exercise_id: int


class SdkTokenError(Exception):
    def __init__(self, message: str, expired: bool = False) -> None:
        super().__init__(message)
        self.message, self.expired = message, expired


@functools.lru_cache(maxsize=8)  # stateless once built; one per secret key, not per launch
def _serializer(secret_key: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key, salt=SDK_SALT)


def issue_sdk_token(secret_key: str, identity: SdkIdentity) -> str:
    return _serializer(secret_key).dumps(
        [1, identity.platform_id, identity.course_id, identity.learner_id, identity.exercise_id]
    )


def read_sdk_token(secret_key: str, token: str, max_age: int = SDK_TOKEN_SECONDS) -> SdkIdentity:
    if not token or len(token) > MAX_TOKEN or not token.isascii():
        raise SdkTokenError("The SDK token is missing or malformed.")
    try:
        payload = _serializer(secret_key).loads(token, max_age=max_age)
    except SignatureExpired:
        raise SdkTokenError(
            "The SDK token has expired: reload the exercise page to get a new one.", expired=True
        ) from None
    except (BadSignature, ValueError, TypeError):
        raise SdkTokenError("The SDK token is not valid (not issued by this Lifeline).") from None
    if (
        not isinstance(payload, list)
        or len(payload) != 5
        or payload[0] != 1
        or not all(type(v) is int for v in payload)
    ):
        raise SdkTokenError("The SDK token is not valid (not issued by this Lifeline).")
    return SdkIdentity(*payload[1:])


def check_sdk_identity(session: Session, identity: SdkIdentity) -> bool:
    """Whether the token's learner, course and exercise still exist and belong together."""
    found = session.execute(
        select(Exercise.id)
        .join(Course, Course.id == Exercise.course_id)
        .join(Person, Person.platform_id == Course.platform_id)
        .where(
            Exercise.id == identity.exercise_id,
            Course.id == identity.course_id,
            Course.platform_id == identity.platform_id,
            Person.id == identity.learner_id,
        )
    ).first()
    return found is not None
