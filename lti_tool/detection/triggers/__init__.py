"""Trigger kinds, one module each, and the registry that builds them from JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Context, Fired, Gate, Params, RuleError, Threshold, Trigger
from .consecutive_failures import ConsecutiveFailures
from .hints import Hints
from .no_progress import NoProgress
from .rapid_guessing import RapidGuessing
from .repeated_error import RepeatedError
from .silent_after_failure import SilentAfterFailure
from .stuck import SelfReport
from .time_on_exercise import TimeOnExercise

KINDS: dict[str, type[Trigger]] = {
    cls.kind: cls
    for cls in (
        ConsecutiveFailures,
        RepeatedError,
        NoProgress,
        TimeOnExercise,
        SilentAfterFailure,
        RapidGuessing,
        Hints,
        SelfReport,
    )
}


def build_trigger(raw: Mapping[str, Any]) -> Trigger:
    """A trigger from its JSON form ``{"trigger": KIND, ...parameters}``."""
    kind = raw.get("trigger")
    if kind not in KINDS:
        raise RuleError(f"unknown trigger kind {kind!r} (known: {', '.join(sorted(KINDS))})")
    return KINDS[str(kind)](raw)


__all__ = [
    "KINDS",
    "Context",
    "Fired",
    "Gate",
    "Params",
    "RuleError",
    "Threshold",
    "Trigger",
    "build_trigger",
]
