"""What ``lifeline demo`` sets up before it serves, and what it prints: an administrator
account for ``/admin`` (a demo user has no server shell with production settings to run
``lifeline admin add`` in), and where everything is.

The password is random per instance directory and kept next to the demo's database (mode
0600), so it stays the same across restarts and is printed each time.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..admin.accounts import MIN_PASSWORD, create_admin
from ..admin.models import AdminAccount
from .platform import DemoPlatforms

DEMO_ADMIN_EMAIL = "admin@example.edu"
PASSWORD_FILE = "demo_admin_password"  # noqa: S105 (a file name)


@dataclass(frozen=True)
class DemoAdmin:
    email: str
    password: str
    password_file: Path


def _password(path: Path) -> str:
    password = path.read_text().strip() if path.exists() else ""
    if len(password) < MIN_PASSWORD:
        password = secrets.token_urlsafe(12)  # 16 characters
        path.write_text(password + "\n")
        path.chmod(0o600)
    return password


def _matches(password_hash: str, password: str) -> bool:
    try:
        return bool(PasswordHasher().verify(password_hash, password))
    except (VerificationError, InvalidHashError):
        return False


def ensure_demo_admin(session: Session, instance: Path) -> DemoAdmin:
    """The demo's administrator exists, unlocked, with the password in ``instance``."""
    path = instance / PASSWORD_FILE
    password = _password(path)
    account = session.scalars(
        select(AdminAccount).where(AdminAccount.email == DEMO_ADMIN_EMAIL)
    ).first()
    if account is not None and not _matches(account.password_hash, password):
        session.delete(account)  # the password file was replaced or removed: start over
        session.flush()
        account = None
    if account is None:
        create_admin(session, DEMO_ADMIN_EMAIL, password)
    else:  # a restart forgives the demo user's earlier typos
        account.failed_logins = 0
        account.locked_until = None
    return DemoAdmin(DEMO_ADMIN_EMAIL, password, path)


def startup_text(base_url: str, platforms: DemoPlatforms, admin: DemoAdmin, data: str) -> str:
    """The lines ``lifeline demo`` prints before serving."""
    lines = [
        "",
        "  Lifeline demo running.",
        "",
        "  Demo LMS (launch as learner, instructor or tutor):",
        f"      {platforms.home.lms_url}/demo/",
    ]
    if platforms.twin is not None:
        lines += [
            "  The same course on another site than Lifeline (a third-party frame, as in a real",
            "  LMS: shows LTI Platform Storage, and the new-window fallback with it turned off):",
            f"      {platforms.twin.lms_url}/demo/",
        ]
    lines += [
        "  Lifeline's admin page (platforms, approvals, keys):",
        f"      {base_url}/admin/",
        f"      email {admin.email}   password {admin.password}",
        f"      (the password is kept in {admin.password_file})",
        "  The course's gradebook (participation grades Lifeline posts by AGS, once an",
        "  instructor turns them on in Lifeline's course settings):",
        f"      {platforms.home.lms_url}/demo/gradebook",
        "  Install Lifeline by LTI Dynamic Registration, as an LMS admin would:",
        f"      {platforms.home.lms_url}/demo/lms-admin/  (Lifeline's registration URL: "
        f"{base_url}/lti/register)",
        "",
        f"  Tool JWKS: {base_url}/lti/jwks",
        f"  Data: {data}",
        "",
    ]
    return "\n".join(lines)
