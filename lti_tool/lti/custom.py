"""Custom parameters of a launch (the ``custom`` claim), read defensively.

An LMS fills a custom parameter from a substitution variable it knows (``$Canvas.course.id``
becomes ``"4711"``) and sends the variable's name back literally when it does not know it, or
when the course hides it (``"$Canvas.course.id"``). Either way the value is text the LMS admin
typed or the LMS made up, so Lifeline keeps only what it can use safely:

* string values only (a number or object an LMS sends is dropped, never coerced);
* bounded names and values, and no NUL (PostgreSQL can neither store nor compare it);
* an unresolved substitution variable (the whole value looks like ``$Name.of.var``) is absent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MAX_NAME = 100
MAX_VALUE = 1000
MAX_PARAMETERS = 100
_UNRESOLVED = re.compile(r"\$[A-Za-z][\w.]*")
_CANVAS_ID = re.compile(r"[0-9]{1,20}")


def is_unresolved(value: str) -> bool:
    """Whether ``value`` is a substitution variable the LMS sent back instead of its value."""
    return _UNRESOLVED.fullmatch(value.strip()) is not None


def safe_custom(raw: Any) -> dict[str, str]:
    """The usable custom parameters of a launch: see the module docstring for what is kept."""
    if not isinstance(raw, Mapping):
        return {}
    kept: dict[str, str] = {}
    for name, value in raw.items():
        if len(kept) >= MAX_PARAMETERS:
            break
        if not isinstance(name, str) or not name or len(name) > MAX_NAME or "\x00" in name:
            continue
        if not isinstance(value, str) or len(value) > MAX_VALUE or "\x00" in value:
            continue
        if is_unresolved(value):
            continue
        kept[name] = value
    return kept


def value(custom: Mapping[str, Any], name: str) -> str | None:
    """One custom parameter, or None when it is missing, empty, unusable or unresolved."""
    found = safe_custom({name: custom.get(name)}).get(name) if name in custom else None
    if found is None or not found.strip():
        return None
    return found.strip()


def canvas_id(custom: Mapping[str, Any], name: str) -> str | None:
    """A Canvas numeric id (``canvas_course_id``, ``canvas_user_id``): digits only, or None."""
    found = value(custom, name)
    return found if found is not None and _CANVAS_ID.fullmatch(found) else None


def context_history(custom: Mapping[str, Any]) -> tuple[str, ...]:
    """``$Context.id.history``: the context ids this course was copied from, newest first
    (comma separated). Kept so a copied course can be told apart from its source."""
    found = value(custom, "context_id_history")
    if found is None:
        return ()
    ids = [part.strip() for part in found.split(",")]
    return tuple(i for i in ids if i and len(i) <= 255)
