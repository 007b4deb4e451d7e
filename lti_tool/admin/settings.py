"""Installation-wide settings an admin changes on the admin page, kept in the database so
every web process and worker sees the same value (and a restart keeps it)."""

from __future__ import annotations

import json

from sqlalchemy.orm import Session

from ..db import utcnow
from ..lti.models import PlatformStatus
from .models import ToolSetting

REGISTRATION_STATUS = "registration_status"
# What a new dynamic registration starts as: waiting for approval unless an admin says
# otherwise. Anyone who runs an LMS can open /lti/register, so "active at once" lets any
# platform on the internet launch Lifeline; that is the admin's decision, never the default.
DEFAULT_REGISTRATION_STATUS = PlatformStatus.PENDING
REGISTRATION_CHOICES = (PlatformStatus.PENDING, PlatformStatus.ACTIVE)


class SettingError(ValueError):
    """A setting value is not one of its choices; the message says which are."""


def registration_status(session: Session) -> PlatformStatus:
    row = session.get(ToolSetting, REGISTRATION_STATUS)
    if row is None:
        return DEFAULT_REGISTRATION_STATUS
    try:
        value = PlatformStatus(json.loads(row.value))
    except (ValueError, TypeError):
        return DEFAULT_REGISTRATION_STATUS  # a hand-edited row never opens the door
    return value if value in REGISTRATION_CHOICES else DEFAULT_REGISTRATION_STATUS


def set_registration_status(session: Session, value: str, by: str) -> PlatformStatus:
    try:
        status = PlatformStatus(value)
    except ValueError:
        status = None
    if status not in REGISTRATION_CHOICES:
        choices = " or ".join(repr(c.value) for c in REGISTRATION_CHOICES)
        raise SettingError(f"New registrations can be {choices}, not {value[:40]!r}.")
    assert status is not None
    row = session.get(ToolSetting, REGISTRATION_STATUS)
    if row is None:
        row = ToolSetting(key=REGISTRATION_STATUS, value="")
        session.add(row)
    row.value = json.dumps(status.value)
    row.updated_at = utcnow()
    row.updated_by = by[:320]
    session.flush()
    return status
