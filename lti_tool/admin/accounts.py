"""Admin accounts: argon2 passwords, lockout after repeated failures, server-side sessions.

Plain functions over a ``Session``; the admin views decide which transaction they run in.
A failed login must be counted even though the login page answers 401, so the view runs
``authenticate`` in a transaction of its own (``web.transaction`` rolls back every 4xx).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ..db import utcnow
from .models import AdminAccount, AdminSession

MIN_PASSWORD = 12  # admins hold every platform's registration: longer than tutors' minimum
MAX_PASSWORD = 200
LOCK_AFTER = 5  # consecutive failed passwords ...
LOCK_FOR = dt.timedelta(minutes=15)  # ... lock the account this long
SESSION_LIFETIME = dt.timedelta(hours=8)  # signed in for a working day at most
SESSION_IDLE = dt.timedelta(hours=1)  # and out after an hour without a request
_SEEN_EVERY = dt.timedelta(minutes=1)  # last_seen_at is written at most this often
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("timing-equaliser-for-unknown-admins")


class AdminError(ValueError):
    """An admin account operation was refused; the message says why."""


def check_email(email: str) -> str:
    email = email.strip().lower()
    if not _EMAIL.fullmatch(email) or len(email) > 320:
        raise AdminError(f"{email[:80]!r} is not an email address.")
    return email


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AdminError(f"Choose a password of at least {MIN_PASSWORD} characters.")
    if len(password) > MAX_PASSWORD:
        raise AdminError(f"That password is too long ({MAX_PASSWORD} characters at most).")
    if "\x00" in password:
        raise AdminError("The password must not contain a NUL character.")
    return password


def create_admin(session: Session, email: str, password: str) -> AdminAccount:
    email = check_email(email)
    check_password(password)
    if session.scalars(select(AdminAccount.id).where(AdminAccount.email == email)).first():
        raise AdminError(f"There is already an admin account for {email}.")
    account = AdminAccount(email=email, password_hash=_hasher.hash(password))
    session.add(account)
    session.flush()
    return account


def list_admins(session: Session) -> list[AdminAccount]:
    return list(session.scalars(select(AdminAccount).order_by(AdminAccount.id)))


@dataclass(frozen=True)
class LoginResult:
    """``account`` on success; otherwise ``locked_until`` says whether the account is locked."""

    account: AdminAccount | None
    locked_until: dt.datetime | None = None


def authenticate(
    session: Session, email: str, password: str, now: dt.datetime | None = None
) -> LoginResult:
    """Check a password, counting failures; ``LOCK_AFTER`` in a row lock the account.

    While locked, even the right password is refused: otherwise the lock would only slow a
    guesser down by the time one more correct guess takes.
    """
    now = now or utcnow()
    email = email.strip().lower()[:320]
    account = session.scalars(
        select(AdminAccount).where(AdminAccount.email == email).with_for_update()
    ).first()
    if account is None:
        _verify(_DUMMY_HASH, password)  # the same work whether or not the account exists
        return LoginResult(None)
    if account.locked_until is not None and account.locked_until > now:
        return LoginResult(None, account.locked_until)
    if not _verify(account.password_hash, password):
        account.failed_logins += 1
        if account.failed_logins >= LOCK_AFTER:
            account.failed_logins = 0
            account.locked_until = now + LOCK_FOR
            return LoginResult(None, account.locked_until)
        return LoginResult(None)
    if _hasher.check_needs_rehash(account.password_hash):
        account.password_hash = _hasher.hash(password)
    account.failed_logins = 0
    account.locked_until = None
    account.last_login_at = now
    return LoginResult(account)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return bool(_hasher.verify(password_hash, password))
    except (VerificationError, InvalidHashError):
        return False


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(session: Session, account: AdminAccount, now: dt.datetime | None = None) -> str:
    """A new session for ``account``; returns the token for the cookie (shown only once)."""
    now = now or utcnow()
    session.execute(delete(AdminSession).where(AdminSession.expires_at <= now))
    token = secrets.token_urlsafe(32)
    session.add(
        AdminSession(
            account_id=account.id,
            token_hash=_token_hash(token),
            created_at=now,
            expires_at=now + SESSION_LIFETIME,
            last_seen_at=now,
        )
    )
    session.flush()
    return token


def session_account(
    session: Session, token: str, now: dt.datetime | None = None
) -> AdminAccount | None:
    """The account signed in by ``token``, if the session is neither expired nor idle."""
    if not _TOKEN.fullmatch(token):
        return None
    now = now or utcnow()
    found = session.scalars(
        select(AdminSession).where(AdminSession.token_hash == _token_hash(token))
    ).first()
    if found is None:
        return None
    if found.expires_at <= now or found.last_seen_at + SESSION_IDLE <= now:
        session.delete(found)
        return None
    if now - found.last_seen_at >= _SEEN_EVERY:
        found.last_seen_at = now
    return session.get(AdminAccount, found.account_id)


def end_session(session: Session, token: str) -> None:
    if _TOKEN.fullmatch(token):
        session.execute(delete(AdminSession).where(AdminSession.token_hash == _token_hash(token)))
