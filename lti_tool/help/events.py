"""Recording state changes: one row in ``help_events`` (the audit log and the live stream),
written in the caller's transaction and published by the bus only after it commits."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from ..bus import EVENT_LOCK_TAKEN, PENDING
from .models import HelpEvent, HelpRequest

ADVISORY_LOCK = 7_413_001  # serialises event ids with commit order on PostgreSQL


def _lock_event_order(session: Session) -> None:
    if session.info.get(EVENT_LOCK_TAKEN):
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK})
    session.info[EVENT_LOCK_TAKEN] = True


def record(
    session: Session,
    kind: str,
    actor: str,
    *,
    request: HelpRequest | None = None,
    from_status: str | None = None,
    to_status: str | None = None,
    course_id: int | None = None,
    pool_id: int | None = None,
    tutor_id: int | None = None,
    data: dict[str, Any] | None = None,
) -> HelpEvent:
    """Write one event; the bus publishes it once the transaction commits (never before)."""
    _lock_event_order(session)
    event = HelpEvent(
        request_id=request.id if request is not None else None,
        course_id=request.course_id if request is not None else course_id,
        pool_id=request.pool_id if request is not None else pool_id,
        tutor_id=tutor_id,
        kind=kind,
        actor=actor,
        from_status=from_status,
        to_status=to_status,
        data=data or {},
    )
    session.add(event)
    session.flush()
    session.info.setdefault(PENDING, []).append(as_message(event))
    return event


def record_many(session: Session, specs: list[dict[str, Any]]) -> list[HelpEvent]:
    """``record`` for several events at once (keyword arguments of ``HelpEvent`` each, in
    order): one INSERT for all of them, published in this order after the commit."""
    if not specs:
        return []
    _lock_event_order(session)
    made = [HelpEvent(**{"data": {}, **spec}) for spec in specs]
    session.add_all(made)
    session.flush()
    pending = session.info.setdefault(PENDING, [])
    pending.extend(as_message(event) for event in sorted(made, key=lambda e: e.id))
    return made


def as_message(event: HelpEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "kind": event.kind,
        "request_id": event.request_id,
        "course_id": event.course_id,
        "pool_id": event.pool_id,
        "tutor_id": event.tutor_id,
        "actor": event.actor,
        "from": event.from_status,
        "to": event.to_status,
        "data": event.data,
        "at": event.at.isoformat(),
    }
