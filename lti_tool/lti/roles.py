"""Map LTI role URIs (long and short forms) to the three Lifeline audiences."""

from __future__ import annotations

import enum
from collections.abc import Iterable

LIS = "http://purl.imsglobal.org/vocab/lis/v2/"


class Audience(enum.StrEnum):
    LEARNER = "learner"
    INSTRUCTOR = "instructor"
    TUTOR = "tutor"


def _simple(role: str) -> tuple[str, str]:
    """('context'|'institution'|'system', name) for a role URI; sub-roles keep 'Principal#Sub'."""
    if role.startswith(LIS):
        rest = role[len(LIS) :]
        if rest.startswith("membership/"):  # sub-role: membership/Instructor#TeachingAssistant
            return "context", rest[len("membership/") :]
        if rest.startswith("membership#"):
            return "context", rest[len("membership#") :]
        if rest.startswith("institution/person#"):
            return "institution", rest[len("institution/person#") :]
        if rest.startswith("system/person#"):
            return "system", rest[len("system/person#") :]
        return "other", rest
    # Short form ("Instructor") is a context role, deprecated but still sent by some LMSs.
    return "context", role


TUTOR_ROLES = {"TeachingAssistant", "Mentor"}
INSTRUCTOR_ROLES = {"Instructor", "ContentDeveloper", "Administrator"}


def audience_for(roles: Iterable[str]) -> Audience:
    """Who this person is in this course.

    A teaching assistant is sent as Instructor plus the Instructor#TeachingAssistant sub-role;
    they are a tutor, not an instructor. Institution roles say nothing about this course,
    except that institution and system administrators may configure it.
    """
    context: set[str] = set()
    admin = False
    for role in roles:
        scope, name = _simple(role)
        if scope == "context":
            context.add(name)
        elif scope in {"institution", "system"} and name in {"Administrator", "SysAdmin"}:
            admin = True
    subs = {name.split("#", 1)[1] for name in context if "#" in name}
    principals = {name.split("#", 1)[0] for name in context}
    if admin or "Administrator" in principals or "ContentDeveloper" in principals:
        return Audience.INSTRUCTOR
    if subs & TUTOR_ROLES or principals & TUTOR_ROLES:
        return Audience.TUTOR
    if "Instructor" in principals:
        return Audience.INSTRUCTOR
    return Audience.LEARNER
