"""Live updates: Server-Sent Events streams and their JSON polling fallbacks.

Three audiences, each with its own scope, used both for the live stream and for the replay
from the database (Last-Event-ID, ``?last_event_id=``, ``?after=``):

- a tutor: every event of the pools they serve, plus those naming them; chat messages only of
  the sessions they hold;
- a learner: every event of their own request, and a bare ``queue.changed`` (no other
  learner's data) when something moves in their pool, so their position can be refreshed;
- an instructor: every event of their course, chat messages without their text.

A stream holds no database connection while it waits: the request's session is closed before
the first byte is sent, and a replay borrows a connection only for its query.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from flask import Blueprint, Response, abort, jsonify, request
from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ..help.events import as_message
from ..help.models import HelpEvent, HelpRequest
from ..lti.roles import Audience
from ..services import current_services
from ..streams import EventHub, Message, Scope, Signal, Subscription
from .auth import current_tutor, launch_context
from .transaction import db_session

bp = Blueprint("streams", __name__)
log = logging.getLogger(__name__)

RETRY_MS = 3000
PAGE = 500  # events per replay query / per polling answer
MAX_REPLAY = 2000  # beyond this many missed events a stream tells the client to resync
QUEUE_CHANGED = "queue.changed"
RESYNC = "resync"
# Events of another request in the same pool that can move a learner's place in line or their
# wait (a tutor freed); the rest (chat, ratings, meeting links) are none of their business.
QUEUE_MOVES = (
    "request.created",
    "request.claimed",
    "request.released",
    "request.transferred",
    "request.cancelled",
    "request.expired",
    "request.no_show",
    "request.away",
    "request.back",
    "request.resolved",
)


class View(Protocol):
    """What one audience may see."""

    @property
    def scope(self) -> Scope: ...

    def where(self) -> ColumnElement[bool]: ...

    def render(self, event: Message) -> Message | None: ...


@dataclass
class TutorView:
    tutor_id: int
    pool_ids: frozenset[int]

    @property
    def scope(self) -> Scope:
        return Scope(pool_ids=self.pool_ids, tutor_id=self.tutor_id)

    def where(self) -> ColumnElement[bool]:
        return or_(HelpEvent.pool_id.in_(self.pool_ids), HelpEvent.tutor_id == self.tutor_id)

    def render(self, event: Message) -> Message | None:
        if not self.scope.matches(event):
            return None
        if event["kind"] == "chat.message" and event.get("tutor_id") != self.tutor_id:
            return None  # another tutor's conversation with a learner
        return event


@dataclass
class LearnerView:
    request_id: int
    pool_id: int

    @property
    def scope(self) -> Scope:
        return Scope(request_ids=frozenset({self.request_id}), pool_ids=frozenset({self.pool_id}))

    def where(self) -> ColumnElement[bool]:
        return or_(
            HelpEvent.request_id == self.request_id,
            and_(HelpEvent.pool_id == self.pool_id, HelpEvent.kind.in_(QUEUE_MOVES)),
        )

    def render(self, event: Message) -> Message | None:
        if event.get("request_id") == self.request_id:
            if isinstance(event.get("pool_id"), int):
                self.pool_id = event["pool_id"]  # transferred: follow it to its new pool
            return event
        if event.get("pool_id") == self.pool_id and event["kind"] in QUEUE_MOVES:
            return {"id": event["id"], "kind": QUEUE_CHANGED}
        return None


@dataclass
class CourseView:
    course_id: int

    @property
    def scope(self) -> Scope:
        return Scope(course_ids=frozenset({self.course_id}))

    def where(self) -> ColumnElement[bool]:
        return HelpEvent.course_id == self.course_id

    def render(self, event: Message) -> Message | None:
        if event.get("course_id") != self.course_id:
            return None
        if event["kind"] == "chat.message":
            data = {k: v for k, v in (event.get("data") or {}).items() if k != "body"}
            return {**event, "data": data}
        return event


# -- reading the log ----------------------------------------------------------------------


@dataclass
class Batch:
    events: list[Message]  # rendered, in id order
    last_id: int  # the newest id examined (visible or not)
    more: bool  # the page was full: there may be more
    newest: int  # the newest event id of the whole log


def read_events(session: Session, view: View, after: int) -> Batch:
    rows = session.scalars(
        select(HelpEvent)
        .where(HelpEvent.id > after, view.where())
        .order_by(HelpEvent.id)
        .limit(PAGE + 1)
    ).all()
    messages = [as_message(row) for row in rows[:PAGE]]
    newest = int(session.scalar(select(func.max(HelpEvent.id))) or 0)
    events = _coalesce([e for e in (view.render(m) for m in messages) if e is not None])
    last_id = messages[-1]["id"] if messages else after
    return Batch(events, last_id, len(rows) > PAGE, newest)


def _coalesce(events: list[Message]) -> list[Message]:
    """A run of ``queue.changed`` says no more than its last one."""
    out: list[Message] = []
    for event in events:
        if out and out[-1]["kind"] == QUEUE_CHANGED and event["kind"] == QUEUE_CHANGED:
            out[-1] = event
        else:
            out.append(event)
    return out


# -- SSE ------------------------------------------------------------------------------------


def sse(event: Message) -> str:
    data = json.dumps(event, separators=(",", ":"), default=str)
    return f"id: {event['id']}\nevent: {event['kind']}\ndata: {data}\n\n"


def resync(event_id: int, reason: str) -> str:
    return sse({"id": event_id, "kind": RESYNC, "reason": reason})


def _replay(sessions: sessionmaker[Session], view: View, after: int) -> tuple[list[str], int]:
    """What a client that saw ``after`` missed, as SSE text, and the id it then has seen."""
    out: list[str] = []
    read = 0
    while True:
        with sessions() as session:
            batch = read_events(session, view, after)
        if after > batch.newest:
            # An id we never issued (another database, a restore): start from now.
            return [resync(batch.newest, "unknown_last_event_id")], batch.newest
        out.extend(sse(event) for event in batch.events)
        after = batch.last_id
        read += PAGE
        if not batch.more:
            return out, after
        if read >= MAX_REPLAY:
            return [resync(batch.newest, "too_far_behind")], batch.newest


def event_stream(
    hub: EventHub, sessions: sessionmaker[Session], view: View, after: int | None
) -> Iterator[str]:
    """The body of one stream. It subscribes first and then replays from the database what
    came after ``after`` (or, for a client without one, after the hub's position before it
    subscribed), so nothing falls between the replay and the live events; ids at or below
    what was already sent are skipped."""
    hub.start()
    sent = hub.last_event_id if after is None else after
    sub = hub.subscribe(view.scope)
    try:
        yield from _follow(hub, sessions, view, sub, sent)
    except SQLAlchemyError as exc:
        # The database went away mid-stream: end it; the client comes back with its
        # Last-Event-ID (and gets an error page, then polls, while the database is down).
        log.warning("live stream ended: cannot read events: %s", exc)
    finally:
        hub.unsubscribe(sub)


def _follow(
    hub: EventHub, sessions: sessionmaker[Session], view: View, sub: Subscription, sent: int
) -> Iterator[str]:
    """Send the retry hint, replay what came after ``sent``, then follow live."""
    yield f"retry: {RETRY_MS}\n\n"  # the headers go out now, the replay follows
    chunks, sent = _replay(sessions, view, sent)
    if chunks:
        yield "".join(chunks)
    deadline = time.monotonic() + hub.stream_lifetime_now()
    while not sub.closed:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return  # the client reconnects with Last-Event-ID
        item = sub.get(min(hub.heartbeat, remaining))
        if item is None:
            yield ": ping\n\n"
        elif item is Signal.CLOSED:
            return
        elif item is Signal.RESYNC:
            chunks, sent = _replay(sessions, view, sent)
            if chunks:
                yield "".join(chunks)
        elif isinstance(item, dict) and item["id"] > sent:
            sent = item["id"]
            rendered = view.render(item)
            sub.scope = view.scope  # a transfer moves a learner's pool
            if rendered is not None:
                yield sse(rendered)


def _event_id(raw: str | None) -> int | None:
    """An event id a client sent, or None if it is not one (ids are PostgreSQL bigints)."""
    raw = (raw or "").strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        return None
    return int(raw)


def _last_event_id() -> int | None:
    """The browser's Last-Event-ID on a reconnect, else the page's snapshot id."""
    for raw in (request.headers.get("Last-Event-ID"), request.args.get("last_event_id")):
        if (event_id := _event_id(raw)) is not None:
            return event_id
    return None


def _stream_response(view: View) -> Response:
    services = current_services()
    # Who may see what is settled: give the connection back before anything else, so a
    # thousand streams opening at once never hold the pool while waiting for it.
    db_session().close()
    hub: EventHub = services.hub
    hub.start()  # fails here, as a 500 page, if the database cannot be read
    body = event_stream(hub, services.db.sessionmaker, view, _last_event_id())
    response = Response(body, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response


def _poll_response(view: View) -> Response:
    raw = (request.args.get("after") or "").strip()
    after = _event_id(raw)
    session = db_session()
    body: dict[str, Any]
    if not raw:
        newest = int(session.scalar(select(func.max(HelpEvent.id))) or 0)
        body = {"events": [], "last_event_id": newest}
    elif after is None:
        abort(400, description="'after' must be an event id (a whole number).")
    else:
        batch = read_events(session, view, after)
        if after > batch.newest:
            body = {"events": [], "last_event_id": batch.newest, "resync": True}
        else:
            body = {"events": batch.events, "last_event_id": batch.last_id, "more": batch.more}
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response


# -- the three audiences -------------------------------------------------------------------


def _tutor_view() -> TutorView:
    tutor = current_tutor(db_session())
    return TutorView(tutor.tutor.id, frozenset(tutor.pool_ids))


def _learner_view(launch_id: str, request_id: int) -> LearnerView:
    db = db_session()
    ctx = launch_context(db, launch_id)
    help_request = db.get(HelpRequest, request_id)
    if (
        help_request is None
        or help_request.learner_id != ctx.person.id
        or help_request.course_id != ctx.course.id
    ):
        abort(404, description="No such request of yours.")
    return LearnerView(help_request.id, help_request.pool_id)


def _course_view(launch_id: str) -> CourseView:
    ctx = launch_context(db_session(), launch_id, Audience.INSTRUCTOR)
    return CourseView(ctx.course.id)


@bp.get("/tutor/events")
def tutor_events() -> Response:
    return _stream_response(_tutor_view())


@bp.get("/tutor/events.json")
def tutor_events_json() -> Response:
    return _poll_response(_tutor_view())


@bp.get("/l/<launch_id>/help/<int:request_id>/events")
def learner_events(launch_id: str, request_id: int) -> Response:
    return _stream_response(_learner_view(launch_id, request_id))


@bp.get("/l/<launch_id>/help/<int:request_id>/events.json")
def learner_events_json(launch_id: str, request_id: int) -> Response:
    return _poll_response(_learner_view(launch_id, request_id))


@bp.get("/l/<launch_id>/course/events")
def course_events(launch_id: str) -> Response:
    return _stream_response(_course_view(launch_id))


@bp.get("/l/<launch_id>/course/events.json")
def course_events_json(launch_id: str) -> Response:
    return _poll_response(_course_view(launch_id))
