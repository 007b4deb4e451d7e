"""Events from the page SDK (``/static/lifeline.js``): already about one learner and exercise.

The token names the learner and exercise, so SDK events never need mapping. Each event
carries the SDK's own id (a retry resends it: a duplicate, not a second event) and the page's
clock time ``at``; the batch carries ``sent_at``, the page's clock when it was sent, so a
page whose clock is off by an hour still lands its events at the right server time.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any

from .ingest import (
    ActivityRef,
    ActorRef,
    IngestError,
    Item,
    Normalised,
    canonical,
    check_not_future,
    clean_text,
    finite_number,
    invalid_item,
    parse_timestamp,
    short,
)
from .model import ActivityKind

SOURCE = "sdk"
_EVENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
FIELDS = {"id", "kind", "at", "correct", "score", "error", "code_length"}
MAX_MESSAGE = 2000
MAX_CODE_LENGTH = 10_000_000


class _Invalid(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field, self.reason = field, reason


def clock_skew(sent_at: Any, now: dt.datetime) -> dt.timedelta:
    """How far the page's clock is behind the server's (from the batch's ``sent_at``)."""
    if sent_at is None:
        return dt.timedelta(0)
    parsed = parse_timestamp(sent_at) if isinstance(sent_at, str) else None
    if parsed is None:
        raise IngestError(400, "sent_at must be an ISO 8601 date and time.", "sent_at")
    return now - parsed


def _error(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, dict):
        raise _Invalid("error", "must be an object {type, message} or a string")
    unknown = sorted(str(k) for k in value if k not in ("type", "message"))
    if unknown:
        raise _Invalid(f"error.{short(unknown[0], 30)}", "is not a field of an SDK error")
    error_type = value.get("type")
    if error_type is not None and clean_text(error_type, 200) is None:
        raise _Invalid("error.type", "must be text of at most 200 characters")
    message = value.get("message")
    if message is not None and clean_text(message, MAX_MESSAGE) is None:
        raise _Invalid("error.message", f"must be text of at most {MAX_MESSAGE} characters")
    return (error_type or "").strip() or None


def parse_event(
    value: Any,
    index: int,
    learner_id: int,
    exercise_id: int,
    now: dt.datetime,
    skew: dt.timedelta = dt.timedelta(0),
) -> Item:
    if not isinstance(value, dict):
        return invalid_item(index, value, "event", "must be a JSON object")
    reply_id: str | None = None
    try:
        unknown = sorted(str(k) for k in value if k not in FIELDS)
        if unknown:
            raise _Invalid(short(unknown[0], 40), "is not a field of an SDK event")
        if "id" in value:
            if not isinstance(value["id"], str) or not _EVENT_ID.match(value["id"]):
                raise _Invalid("id", "must be 1-64 letters, digits or _ . : -")
            reply_id = value["id"]
        kind_name = value.get("kind")
        if not isinstance(kind_name, str) or kind_name not in {k.value for k in ActivityKind}:
            raise _Invalid("kind", f"must be one of {', '.join(k.value for k in ActivityKind)}")
        kind = ActivityKind(kind_name)
        occurred_at = now
        if value.get("at") is not None:
            at = parse_timestamp(value["at"]) if isinstance(value["at"], str) else None
            if at is None:
                raise _Invalid("at", "must be an ISO 8601 date and time")
            try:
                occurred_at = at + skew
            except OverflowError:
                raise _Invalid("at", "is out of range") from None
            future = check_not_future(occurred_at, now)
            if future:
                raise _Invalid("at", future)
        correct = value.get("correct")
        if correct is not None and not isinstance(correct, bool):
            raise _Invalid("correct", "must be true, false or null")
        score = value.get("score")
        if score is not None:
            score = finite_number(score)
            if score is None or not 0 <= score <= 1:
                raise _Invalid("score", "must be a number between 0 and 1")
        error = _error(value.get("error"))
        code_length = value.get("code_length")
        if code_length is not None and (
            type(code_length) is not int or not 0 <= code_length <= MAX_CODE_LENGTH
        ):
            raise _Invalid("code_length", f"must be a whole number 0..{MAX_CODE_LENGTH}")
    except _Invalid as exc:
        return invalid_item(index, value, exc.field, exc.reason, reply_id)
    reply_id = reply_id or str(uuid.uuid4())
    body = canonical({**value, "id": reply_id})
    return Item(
        index=index,
        external_id=f"{learner_id}:{reply_id}",
        body=body,
        compare=body,
        reply_id=reply_id,
        actor=ActorRef(describe=f"learner #{learner_id}", learner_id=learner_id),
        activity=ActivityRef(describe=f"exercise #{exercise_id}", exercise_id=exercise_id),
        event=Normalised(
            kind=kind,
            occurred_at=occurred_at,
            correct=correct if kind is ActivityKind.SUBMIT else None,
            score=score if kind is ActivityKind.SUBMIT else None,
            error=error,
            code_length=code_length,
        ),
    )
