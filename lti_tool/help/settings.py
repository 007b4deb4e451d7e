"""Course settings for the help queue: validated, with defaults that work untouched."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlsplit

from sqlalchemy.orm import Session

from ..db import utcnow
from .models import CourseSettings

DEFAULT_MEETING_TEMPLATE = "https://meet.jit.si/lifeline-{room}"
MAX_SKILLS = 50
_SKILL = re.compile(r"^[\w][\w +#./-]{0,39}$")


class SettingsError(ValueError):
    """An instructor's setting is invalid; the message names the field."""


@dataclass(frozen=True)
class QueueSettings:
    skills: tuple[str, ...] = ()
    exercise_priority: Mapping[str, int] = field(default_factory=dict)
    cooldown_minutes: int = 0
    daily_cap: int = 0  # 0 = no cap
    sla_minutes: int = 5
    step_away_minutes: int = 10
    meeting_template: str = DEFAULT_MEETING_TEMPLATE
    notify_webhook: str | None = None
    notify_emails: tuple[str, ...] = ()

    def priority_for(self, exercise_id: int | None) -> int:
        if exercise_id is None:
            return 0
        return int(self.exercise_priority.get(str(exercise_id), 0))


def load(session: Session, course_id: int) -> QueueSettings:
    row = session.get(CourseSettings, course_id)
    if row is None:
        return QueueSettings()
    return QueueSettings(
        skills=tuple(row.skills or ()),
        exercise_priority=dict(row.exercise_priority or {}),
        cooldown_minutes=row.cooldown_minutes,
        daily_cap=row.daily_cap,
        sla_minutes=row.sla_minutes,
        step_away_minutes=row.step_away_minutes,
        meeting_template=row.meeting_template or DEFAULT_MEETING_TEMPLATE,
        notify_webhook=row.notify_webhook,
        notify_emails=tuple(row.notify_emails or ()),
    )


def _int(form: Mapping[str, str], name: str, label: str, low: int, high: int) -> int:
    raw = (form.get(name) or "").strip()
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{label} must be a whole number (got {raw[:20]!r}).") from None
    if not low <= value <= high:
        raise SettingsError(f"{label} must be between {low} and {high}.")
    return value


def parse_skills(raw: str) -> tuple[str, ...]:
    skills: list[str] = []
    for part in re.split(r"[,\n]", raw):
        skill = part.strip()
        if not skill:
            continue
        if not _SKILL.match(skill):
            raise SettingsError(
                f"Skill {skill[:40]!r} is not valid: use up to 40 letters, digits, spaces or +#./-."
            )
        if skill.lower() not in {s.lower() for s in skills}:
            skills.append(skill)
    if len(skills) > MAX_SKILLS:
        raise SettingsError(f"At most {MAX_SKILLS} skills per course.")
    return tuple(skills)


def _split(value: str) -> SplitResult | None:
    """The URL's parts, or None if it cannot be parsed (``https://[``: a broken IPv6 host)."""
    try:
        return urlsplit(value)
    except ValueError:
        return None


def check_meeting_template(value: str) -> str:
    value = value.strip()
    if not value:
        return DEFAULT_MEETING_TEMPLATE
    if "{room}" not in value:
        raise SettingsError("The meeting link template must contain {room}.")
    if len(value) > 400:  # the room name makes it longer; the column holds 500
        raise SettingsError("The meeting link template is too long (400 characters at most).")
    parts = _split(value.replace("{room}", "room"))
    if parts is None or parts.scheme != "https" or not parts.netloc:
        raise SettingsError("The meeting link template must be an https:// address.")
    return value


def check_webhook(value: str) -> str | None:
    value = value.strip()
    if not value:
        return None
    parts = _split(value)
    loopback = parts is not None and parts.hostname in {"127.0.0.1", "localhost"}
    if (
        parts is None
        or not parts.hostname
        or (parts.scheme != "https" and not (parts.scheme == "http" and loopback))
    ):
        raise SettingsError("The notification webhook must be an https:// address.")
    if len(value) > 1000:
        raise SettingsError("The notification webhook address is too long.")
    return value


def check_emails(raw: str) -> tuple[str, ...]:
    emails: list[str] = []
    for part in re.split(r"[,\s]+", raw):
        if not part:
            continue
        if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", part) or len(part) > 320:
            raise SettingsError(f"Instructor emails: {part[:60]!r} is not an email address.")
        if part.lower() not in {e.lower() for e in emails}:
            emails.append(part)
    if len(emails) > 20:
        raise SettingsError("Instructor emails: at most 20 addresses.")
    return tuple(emails)


def save(
    session: Session,
    course_id: int,
    form: Mapping[str, str],
    exercise_ids: set[int],
) -> QueueSettings:
    """Validate the whole form first; write nothing unless every field is valid."""
    priority: dict[str, int] = {}
    for exercise_id in sorted(exercise_ids):
        key = f"priority_{exercise_id}"
        if form.get(key, "").strip():
            value = _int(form, key, "An exercise priority", 0, 3)
            if value:
                priority[str(exercise_id)] = value
    values = QueueSettings(
        skills=parse_skills(form.get("skills", "")),
        exercise_priority=priority,
        cooldown_minutes=_int(form, "cooldown_minutes", "Cooldown", 0, 24 * 60),
        daily_cap=_int(form, "daily_cap", "Daily cap", 0, 100),
        sla_minutes=_int(form, "sla_minutes", "SLA", 1, 24 * 60),
        step_away_minutes=_int(form, "step_away_minutes", "Step-away time", 1, 120),
        meeting_template=check_meeting_template(form.get("meeting_template", "")),
        notify_webhook=check_webhook(form.get("notify_webhook", "")),
        notify_emails=check_emails(form.get("notify_emails", "")),
    )
    row = session.get(CourseSettings, course_id)
    if row is None:
        row = CourseSettings(course_id=course_id)
        session.add(row)
    row.skills = list(values.skills)
    row.exercise_priority = dict(values.exercise_priority)
    row.cooldown_minutes = values.cooldown_minutes
    row.daily_cap = values.daily_cap
    row.sla_minutes = values.sla_minutes
    row.step_away_minutes = values.step_away_minutes
    row.meeting_template = (
        None if values.meeting_template == DEFAULT_MEETING_TEMPLATE else values.meeting_template
    )
    row.notify_webhook = values.notify_webhook
    row.notify_emails = list(values.notify_emails)
    row.updated_at = utcnow()
    session.flush()
    return values
