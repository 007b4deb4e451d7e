"""Storing activity from every source: raw input verbatim, normalised records, one hook.

Each source (``xapi``, ``progsnap2``, ``sdk``) parses its input into ``Item``s; ``store`` then
does the same for all of them, in a handful of statements per batch whatever its size:

1. repeats are found by the source's own id (statement id, EventID, the SDK's event id) within
   the batch and against what is stored: the same content again is a ``duplicate`` (nothing
   written, the answer is the same as the first time), different content under a stored id is
   a ``conflict`` (kept aside as its own raw row, never replacing the first);
2. actors and activities are resolved to people and exercises of the course (explicit
   mappings first, then the LTI ``sub`` / email / resource link id);
3. every new item is written to ``raw_events`` (one bulk INSERT … ON CONFLICT DO NOTHING), with
   its status: ``accepted`` (a normalised record was stored), ``unmapped`` (the actor or the
   activity is unknown: kept for ``reprocess_unmapped`` after a mapping upload), ``ignored``
   (valid, but nothing detection uses, e.g. a video ``played``), ``invalid`` (with the reason)
   or ``conflict``;
4. normalised ``ActivityRecord``s are bulk inserted in occurrence order and handed to
   ``after_store`` in the same transaction.

Everything is scoped to one course of one platform registration: lookups never leave it.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from json.encoder import c_make_encoder as _c_make_encoder  # type: ignore[attr-defined]
from typing import Any

import redis
from sqlalchemy import ColumnElement, Integer, String, Table, any_, bindparam, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .. import fastjson
from ..courses import Course, Exercise, Person
from ..db import utcnow
from .model import ActivityKind, ActivityRecord, RawEvent, StoredRecord
from .models import ActorMapping, ExerciseMapping

log = logging.getLogger(__name__)

SOURCES = ("xapi", "progsnap2", "sdk")

# Raw event statuses (``RawEvent.status``); an item's result is one of these or "duplicate".
ACCEPTED = "accepted"
UNMAPPED = "unmapped"
IGNORED = "ignored"
INVALID = "invalid"
CONFLICT = "conflict"
DUPLICATE = "duplicate"

# How far in the future an event's own timestamp may be (clock skew) before it is refused.
FUTURE_SLACK = dt.timedelta(days=1)


@dataclass(frozen=True)
class Limits:
    """Every input path's limits; the web layer reads ``LIMITS`` on each request."""

    max_body: int = 1024 * 1024  # bytes per request
    max_batch: int = 500  # statements / rows / events per request
    per_credential_per_minute: int = 600  # requests per Basic credential (setting overrides)
    per_learner_per_minute: int = 120  # SDK requests per learner token


LIMITS = Limits()


class IngestError(Exception):
    """A request refused as a whole (a 4xx): ``field`` names what was wrong, when it is one."""

    def __init__(
        self, status: int, message: str, field: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field
        self.retry_after = retry_after


# -- what parsers produce ---------------------------------------------------------------------


@dataclass(frozen=True)
class Normalised:
    kind: ActivityKind
    occurred_at: dt.datetime
    correct: bool | None = None
    score: float | None = None
    error: str | None = None
    code_length: int | None = None
    order: int = 0


@dataclass(frozen=True)
class ActorRef:
    """Who did it, as the source says: keys for the instructor's mappings, candidates for
    ``Person.sub`` and ``Person.email``, or a learner already known (the SDK's token)."""

    describe: str
    keys: tuple[str, ...] = ()
    subs: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    learner_id: int | None = None


@dataclass(frozen=True)
class ActivityRef:
    """On what: an activity id to map (``iri`` also matches resource link ids inside it), or
    an exercise already known."""

    describe: str
    activity_id: str = ""
    iri: bool = False
    exercise_id: int | None = None


@dataclass
class Item:
    """One statement / row / event of a request, parsed."""

    index: int
    external_id: str  # the source's id (or "invalid:<digest>" for input without a usable id)
    body: str  # canonical JSON of the input as received (what ``raw_events.body`` keeps)
    compare: str  # what must be equal for a repeat to be a duplicate
    reply_id: str | None = None  # what the response names this item by (a statement id)
    actor: ActorRef | None = None
    activity: ActivityRef | None = None
    event: Normalised | None = None
    invalid_field: str | None = None
    note: str | None = None  # why invalid / ignored
    conflict: bool = False  # a different input under an id already stored
    received_at: dt.datetime | None = None  # when it came in, if not the batch's ``now``

    @property
    def invalid(self) -> bool:
        return self.invalid_field is not None


@dataclass(frozen=True)
class ItemResult:
    index: int
    id: str | None
    status: str
    field: str | None = None
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"index": self.index, "id": self.id, "status": self.status}
        if self.field:
            data["field"] = self.field
        if self.reason:
            data["reason"] = self.reason
        return data


@dataclass(frozen=True)
class Scope:
    """The one course (and platform registration) a request may write into."""

    platform_id: int
    course_id: int

    @classmethod
    def of(cls, course: Course) -> Scope:
        return cls(course.platform_id, course.id)


# -- small helpers the parsers share ------------------------------------------------------------


# ``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)``, with the
# encoder built once instead of on every call (it keeps no state between calls).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode
# The same text from the C encoder ``JSONEncoder.encode`` builds on every call, built once. No
# circular-reference markers: JSON input cannot refer to itself (and a shared markers dict
# could keep stale entries after a failed encode).
_C_ENCODER: Callable[[Any, int], Sequence[str]] | None = (
    None
    if _c_make_encoder is None
    else _c_make_encoder(
        None,
        json.JSONEncoder().default,
        json.encoder.encode_basestring_ascii,
        None,
        ":",
        ",",
        True,  # sort_keys
        False,  # skipkeys
        True,  # allow_nan (as json.dumps)
    )
)


def canonical(value: Any) -> str:
    """JSON with sorted keys and ASCII escapes: equal content, equal text; no NUL byte or lone
    surrogate ever reaches the database (both are escaped)."""
    if _C_ENCODER is None:
        return _CANONICAL(value)
    return "".join(_C_ENCODER(value, 0))


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def safe_text(text: str) -> str:
    """``text`` with NUL and lone surrogates escaped, fit for a database column and JSON."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def invalid_item(
    index: int, body: Any, field_name: str, reason: str, reply_id: str | None = None
) -> Item:
    text = canonical(body)
    field_name = safe_text(field_name)
    return Item(
        index=index,
        external_id="invalid:" + digest(text),
        body=text,
        compare=text,
        reply_id=reply_id,
        invalid_field=field_name,
        note=safe_text(f"{field_name}: {reason}"),
    )


def clean_text(value: Any, max_length: int) -> str | None:
    """``value`` if it is a string PostgreSQL can store and compare, at most ``max_length``."""
    if not isinstance(value, str) or len(value) > max_length or "\x00" in value:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON "\ud800" escape
        return None
    return value


def short(value: str, length: int = 80) -> str:
    return value if len(value) <= length else value[: length - 1] + "…"


def finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return number if math.isfinite(number) else None


_ISO_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


def parse_timestamp(value: str, default_tz: dt.tzinfo = dt.UTC) -> dt.datetime | None:
    """An ISO 8601 date and time; without an offset it is in ``default_tz``. None if not one."""
    if not _ISO_TIMESTAMP.match(value) or len(value) > 64:
        return None
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        parsed = dt.datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=default_tz)
        return parsed.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        return None


def check_not_future(at: dt.datetime, now: dt.datetime) -> str | None:
    if at > now + FUTURE_SLACK:
        return f"{at.isoformat()} is more than a day in the future (check the sender's clock)"
    return None


# -- queries over many values -----------------------------------------------------------------


def in_values(session: Session, column: Any, values: Sequence[Any]) -> ColumnElement[bool]:
    """``column IN values``; on PostgreSQL ``column = ANY(:array)``, one parameter whatever
    the number of values (a long IN list costs more to render and parse than to run)."""
    if session.get_bind().dialect.name == "postgresql":
        kind = Integer() if values and isinstance(values[0], int) else String()
        return column == any_(bindparam(None, list(values), type_=postgresql.ARRAY(kind)))  # type: ignore[no-any-return]
    return column.in_(list(values))  # type: ignore[no-any-return]


def pairs_in(
    session: Session, first: Any, second: Any, pairs: Sequence[tuple[int, int]]
) -> ColumnElement[bool]:
    """``(first, second) IN pairs`` of integers; on PostgreSQL against two unnested arrays."""
    if session.get_bind().dialect.name == "postgresql":
        ints = postgresql.ARRAY(Integer())
        firsts = bindparam(None, [a for a, _ in pairs], type_=ints)
        seconds = bindparam(None, [b for _, b in pairs], type_=ints)
        return func.row(first, second).in_(select(func.unnest(firsts), func.unnest(seconds)))
    from sqlalchemy import tuple_

    return tuple_(first, second).in_(list(pairs))


# -- rate limits --------------------------------------------------------------------------------


def rate_limited(client: redis.Redis, bucket: str, limit: int, now: float) -> int | None:
    """Count one request in ``bucket``'s current minute (one Redis round trip). Returns the
    seconds to wait when over ``limit``, else None. A Redis failure lets the request through:
    losing events is worse than a minute without a limit."""
    minute = int(now // 60)
    key = f"lifeline:activity:rate:{bucket}:{minute}"
    try:
        pipe = client.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, 120)
        count = int(pipe.execute()[0])
    except redis.RedisError:
        log.warning("activity rate limit skipped: Redis unavailable", exc_info=True)
        return None
    if count > limit:
        return max(1, (minute + 1) * 60 - int(now))
    return None


# -- resolving actors and activities --------------------------------------------------------------


_BOUNDARY = re.compile(r"[A-Za-z0-9]")
MIN_CONTAINED_LINK = 6  # a resource link id shorter than this must end the IRI to match


def _link_in(activity_id: str, link: str) -> bool:
    """Whether ``link`` (a resource link id) is a whole segment of ``activity_id``: equal, at
    its end, or (when long enough to be unambiguous) inside it, never glued to letters or
    digits around it."""
    if not link:
        return False
    if activity_id == link:
        return True
    start = activity_id.find(link)
    while start != -1:
        end = start + len(link)
        before_ok = start == 0 or not _BOUNDARY.match(activity_id[start - 1])
        after_ok = end == len(activity_id) or not _BOUNDARY.match(activity_id[end])
        at_end = end == len(activity_id)
        if before_ok and after_ok and (at_end or len(link) >= MIN_CONTAINED_LINK):
            return True
        start = activity_id.find(link, start + 1)
    return False


_PREFIX_CUT = re.compile(r"[/#?_@]")


def activity_prefixes(activity_id: str) -> list[str]:
    """The activity id and its prefixes cut before a separator, longest first: a mapping of
    ``…/block@x`` also covers ``…/block@x/hint/1`` and ``…/block@x_2_1``."""
    found = [activity_id]
    for match in reversed(list(_PREFIX_CUT.finditer(activity_id))):
        prefix = activity_id[: match.start()]
        if prefix and prefix.count(":") and not prefix.endswith(("/", ":")):
            found.append(prefix)
    return found[:20]


class Resolver:
    """Maps a batch's actors and activities to people and exercises of one course, with a
    few bulk queries per batch whatever its size."""

    def __init__(self, session: Session, scope: Scope) -> None:
        self.session, self.scope = session, scope
        self._learners: dict[ActorRef, int | None] = {}
        self._exercises: dict[ActivityRef, int | None] = {}
        self._course_exercises: list[tuple[int, str]] | None = None

    def course_exercises(self) -> list[tuple[int, str]]:
        if self._course_exercises is None:
            rows = self.session.execute(
                select(Exercise.id, Exercise.resource_link_id).where(
                    Exercise.course_id == self.scope.course_id
                )
            )
            # Longest link first: the most specific match wins.
            self._course_exercises = sorted(
                ((int(i), str(link)) for i, link in rows), key=lambda r: -len(r[1])
            )
        return self._course_exercises

    def prepare(self, items: Iterable[Item]) -> None:
        items = list(items)
        actors = {i.actor for i in items if i.actor is not None and i.actor.learner_id is None}
        activities = {
            i.activity for i in items if i.activity is not None and i.activity.exercise_id is None
        }
        actors -= self._learners.keys()
        activities -= self._exercises.keys()
        if actors:
            self._resolve_actors(actors)
        if activities:
            self._resolve_activities(activities)

    def _resolve_actors(self, actors: set[ActorRef]) -> None:
        scope, session = self.scope, self.session
        # Mappings keep actors normalised (emails and sha1 sums in lower case).
        keys = {k for a in actors for k in a.keys} | {
            normalise_actor(k) for a in actors for k in a.keys
        }
        mapped: dict[str, str] = {}
        if keys:
            mapped = {
                actor: sub
                for actor, sub in session.execute(
                    select(ActorMapping.actor, ActorMapping.sub).where(
                        ActorMapping.course_id == scope.course_id,
                        in_values(session, ActorMapping.actor, sorted(keys)),
                    )
                )
            }
        subs = {s for a in actors for s in a.subs} | set(mapped.values())
        by_sub: dict[str, int] = {}
        if subs:
            by_sub = {
                sub: pid
                for pid, sub in session.execute(
                    select(Person.id, Person.sub).where(
                        Person.platform_id == scope.platform_id,
                        in_values(session, Person.sub, sorted(subs)),
                    )
                )
            }
        unresolved_emails = {
            e
            for a in actors
            if not any(k in mapped or normalise_actor(k) in mapped for k in a.keys)
            and not any(s in by_sub for s in a.subs)
            for e in a.emails
        }
        by_email: dict[str, list[int]] = {}
        if unresolved_emails:
            for pid, email in session.execute(
                select(Person.id, func.lower(Person.email)).where(
                    Person.platform_id == scope.platform_id,
                    func.lower(Person.email).in_(unresolved_emails),
                )
            ):
                by_email.setdefault(email, []).append(pid)
        for actor in actors:
            self._learners[actor] = self._pick_learner(actor, mapped, by_sub, by_email)

    @staticmethod
    def _pick_learner(
        actor: ActorRef,
        mapped: Mapping[str, str],
        by_sub: Mapping[str, int],
        by_email: Mapping[str, list[int]],
    ) -> int | None:
        for key in actor.keys:  # the instructor's mapping wins
            for candidate in (key, normalise_actor(key)):
                if candidate in mapped:
                    return by_sub.get(mapped[candidate])
        for sub in actor.subs:
            if sub in by_sub:
                return by_sub[sub]
        for email in actor.emails:
            people = by_email.get(email, [])
            if len(people) == 1:  # an email two people share says nothing
                return people[0]
        return None

    def _resolve_activities(self, activities: set[ActivityRef]) -> None:
        scope, session = self.scope, self.session
        candidates = {
            a: activity_prefixes(a.activity_id) if a.iri else [a.activity_id] for a in activities
        }
        wanted = {c for cs in candidates.values() for c in cs if len(c) <= 500}
        mapped: dict[str, str] = {}
        if wanted:
            mapped = {
                activity: link
                for activity, link in session.execute(
                    select(ExerciseMapping.activity_id, ExerciseMapping.resource_link_id).where(
                        ExerciseMapping.course_id == scope.course_id,
                        in_values(session, ExerciseMapping.activity_id, sorted(wanted)),
                    )
                )
            }
        exercises = self.course_exercises()
        by_link = {link: eid for eid, link in exercises}
        for activity, options in candidates.items():
            found: int | None = None
            mapped_link = next((mapped[c] for c in options if c in mapped), None)
            if mapped_link is not None:
                found = by_link.get(mapped_link)
            elif activity.iri:
                found = next(
                    (eid for eid, link in exercises if _link_in(activity.activity_id, link)), None
                )
            else:
                found = by_link.get(activity.activity_id)
            self._exercises[activity] = found

    def learner(self, actor: ActorRef) -> int | None:
        if actor.learner_id is not None:
            return actor.learner_id
        return self._learners.get(actor)

    def exercise(self, activity: ActivityRef) -> int | None:
        if activity.exercise_id is not None:
            return activity.exercise_id
        return self._exercises.get(activity)


# -- storing ---------------------------------------------------------------------------------


@dataclass
class _Planned:
    item: Item
    status: str
    note: str | None = None
    learner_id: int | None = None
    exercise_id: int | None = None


@dataclass
class StoreOutcome:
    results: list[ItemResult]
    records: list[StoredRecord] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.results:
            counts[r.status] = counts.get(r.status, 0) + 1
        return counts


def _plan(item: Item, resolver: Resolver) -> _Planned:
    if item.conflict:
        return _Planned(item, CONFLICT, item.note)
    if item.invalid:
        return _Planned(item, INVALID, item.note)
    if item.event is None:
        return _Planned(item, IGNORED, item.note)
    missing: list[str] = []
    learner = exercise = None
    if item.actor is not None:
        learner = resolver.learner(item.actor)
        if learner is None:
            missing.append(f"unknown actor {item.actor.describe}")
    if item.activity is not None:
        exercise = resolver.exercise(item.activity)
        if exercise is None:
            missing.append(f"unknown activity {item.activity.describe}")
    if missing or learner is None or exercise is None:
        note = "; ".join(missing) or "no actor or activity"
        return _Planned(item, UNMAPPED, note + " (upload a mapping, then re-process)")
    return _Planned(item, ACCEPTED, None, learner, exercise)


def _bulk_insert(
    session: Session,
    table: Table,
    rows: list[dict[str, Any]],
    returning: tuple[str, str],
    conflict: tuple[str, ...] = (),
) -> list[tuple[Any, Any]]:
    """One INSERT for many rows, returning two columns of each row inserted.

    PostgreSQL gets ``INSERT … SELECT … FROM jsonb_to_recordset(:rows)``: one short statement
    and one JSON parameter, whatever the number of rows (a multi-row VALUES list spends more
    time being assembled and parsed than stored). Elsewhere (SQLite, the demo) it is
    SQLAlchemy's executemany. ``conflict`` names a unique key whose repeats are skipped.
    """
    names = list(rows[0])
    dialect = session.get_bind().dialect
    if dialect.name == "postgresql":
        record_type = ", ".join(
            f"{name} {table.c[name].type.compile(dialect=dialect)}" for name in names
        )
        skip = f" ON CONFLICT ({', '.join(conflict)}) DO NOTHING" if conflict else ""
        # Names come from our own tables, never from input: nothing here is user text.
        sql = text(
            f"INSERT INTO {table.name} ({', '.join(names)}) SELECT {', '.join(names)} "  # noqa: S608
            f"FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS x({record_type})"
            f"{skip} RETURNING {returning[0]}, {returning[1]}"
        )
        payload = fastjson.dumps(rows)
        # .all(): one fetch of every row (iterating a result fetches them one call at a time).
        return [(a, b) for a, b in session.execute(sql, {"rows": payload}).all()]
    upsert = postgresql.insert if dialect.name == "postgresql" else sqlite.insert
    stmt = upsert(table)
    if conflict:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(conflict))
    result = session.execute(stmt.returning(table.c[returning[0]], table.c[returning[1]]), rows)
    return [(a, b) for a, b in result.all()]


def _insert_raw(session: Session, rows: list[dict[str, Any]]) -> dict[str, int]:
    """Bulk insert raw rows, skipping ids stored meanwhile; returns external_id → row id."""
    if not rows:
        return {}
    table = RawEvent.metadata.tables[RawEvent.__tablename__]
    inserted = _bulk_insert(
        session, table, rows, ("id", "external_id"), ("course_id", "source", "external_id")
    )
    return {str(ext): int(rid) for rid, ext in inserted}


def _insert_records(session: Session, rows: list[dict[str, Any]]) -> list[StoredRecord]:
    """Bulk insert normalised records; returns them with their ids (no ORM objects)."""
    if not rows:
        return []
    table = ActivityRecord.metadata.tables[ActivityRecord.__tablename__]
    # Each record has its own raw event: that pairs the returned ids with the rows.
    inserted = _bulk_insert(session, table, rows, ("id", "raw_event_id"))
    ids = {int(raw_id): int(rid) for rid, raw_id in inserted}
    return [StoredRecord(id=ids[row["raw_event_id"]], **row) for row in rows]


def _record_row(
    planned: _Planned, scope: Scope, source: str, raw_id: int, now: dt.datetime
) -> dict[str, Any]:
    event = planned.item.event
    assert event is not None
    return {
        "platform_id": scope.platform_id,
        "course_id": scope.course_id,
        "exercise_id": planned.exercise_id,
        "learner_id": planned.learner_id,
        "raw_event_id": raw_id,
        "source": source,
        "kind": event.kind.value,
        "correct": event.correct,
        "score": event.score,
        "error": event.error,
        "code_length": event.code_length,
        "occurred_at": event.occurred_at,
        "received_at": planned.item.received_at or now,
    }


def _raw_row(planned: _Planned, scope: Scope, source: str, now: dt.datetime) -> dict[str, Any]:
    return {
        "platform_id": scope.platform_id,
        "course_id": scope.course_id,
        "source": source,
        "external_id": planned.item.external_id,
        "body": planned.item.body,
        "status": planned.status,
        "note": planned.note,
        "received_at": planned.item.received_at or now,
    }


def _occurrence(planned: _Planned) -> tuple[dt.datetime, int, int]:
    event = planned.item.event
    assert event is not None
    return (event.occurred_at, event.order, planned.item.index)


def store(
    session: Session,
    scope: Scope,
    source: str,
    items: Sequence[Item],
    *,
    compare: Callable[[str], str] | None = None,
    now: dt.datetime | None = None,
    check_stored: bool = True,
) -> StoreOutcome:
    """Store a batch of parsed items of one source into the course ``scope``.

    ``compare(stored_body)`` gives the comparison text of a stored raw body (to tell a
    duplicate from a conflict); by default the body itself. Returns one result per item, in
    order, and the records stored (already handed to ``after_store``). ``check_stored=False``
    skips looking for repeats before inserting (the ingestion stream's items were checked
    when accepted): a repeat is then found by the insert itself, and treated the same.
    Detection ends by adding the batch to the course's peer statistics, whose rows then stay
    locked until the commit: commit soon after.
    """
    now = now or utcnow()
    compare = compare or (lambda body: body)
    results: dict[int, ItemResult] = {}
    fresh: list[Item] = []
    first_by_id: dict[str, Item] = {}
    for item in items:
        seen = first_by_id.get(item.external_id)
        if seen is None:
            first_by_id[item.external_id] = item
            fresh.append(item)
        elif seen.compare == item.compare:
            results[item.index] = _repeat(item, DUPLICATE)
        else:
            fresh.append(_as_conflict(item, "another statement of this batch has the same id"))

    stored = (
        _stored_bodies(session, scope, source, [i.external_id for i in fresh])
        if check_stored
        else {}
    )
    new_items: list[Item] = []
    for item in fresh:
        body = stored.get(item.external_id)
        if body is None:
            new_items.append(item)
        elif item.conflict:  # this very conflicting input was kept before
            results[item.index] = _repeat(item, CONFLICT)
        elif item.invalid or compare(body) == item.compare:
            # (an invalid item is stored under the digest of its body: the very same input)
            results[item.index] = _repeat(item, DUPLICATE)
        else:
            new_items.append(_as_conflict(item, "a different statement is stored under this id"))

    resolver = Resolver(session, scope)
    resolver.prepare(i for i in new_items if not i.invalid and i.event is not None)
    plans = [_plan(item, resolver) for item in new_items]
    raw_ids = _insert_raw(session, [_raw_row(p, scope, source, now) for p in plans])
    raced = [p for p in plans if p.item.external_id not in raw_ids]
    if raced:  # stored by a concurrent request between our look-up and our insert
        again = _stored_bodies(session, scope, source, [p.item.external_id for p in raced])
        kept: list[_Planned] = []
        for p in raced:
            same = p.item.invalid or compare(again.get(p.item.external_id, "")) == p.item.compare
            if p.item.conflict or same:
                results[p.item.index] = _repeat(p.item, CONFLICT if p.item.conflict else DUPLICATE)
                continue
            # A different input under that id: kept aside as its own conflict row.
            item = _as_conflict(p.item, "a different statement is stored under this id")
            kept.append(_Planned(item, CONFLICT, item.note))
        extra = _insert_raw(session, [_raw_row(p, scope, source, now) for p in kept])
        for p in kept:
            if p.item.external_id not in extra:  # this very conflict was kept before
                results[p.item.index] = _repeat(p.item, CONFLICT)
        raw_ids.update(extra)
        plans = [p for p in plans if p.item.external_id in raw_ids]
        plans += [p for p in kept if p.item.external_id in extra]
    accepted = sorted(
        (p for p in plans if p.status == ACCEPTED and p.item.external_id in raw_ids),
        key=_occurrence,
    )
    records = _insert_records(
        session,
        [_record_row(p, scope, source, raw_ids[p.item.external_id], now) for p in accepted],
    )
    for p in plans:
        if p.item.index not in results:
            results[p.item.index] = ItemResult(
                p.item.index,
                p.item.reply_id,
                p.status,
                p.item.invalid_field if p.status in (INVALID, CONFLICT) else None,
                p.note,
            )
    if records:
        after_store(session, records)
    return StoreOutcome([results[i.index] for i in items], records)


def _repeat(item: Item, status: str) -> ItemResult:
    """The result of an item already stored: the same answer as the first time."""
    if status == CONFLICT:
        return ItemResult(item.index, item.reply_id, CONFLICT, "id", item.note)
    if item.invalid:  # the same invalid input again is still invalid
        return ItemResult(item.index, item.reply_id, INVALID, item.invalid_field, item.note)
    return ItemResult(item.index, item.reply_id, DUPLICATE)


def _as_conflict(item: Item, reason: str) -> Item:
    """A conflicting repeat is kept, under its own digest, so nothing sent is lost; the first
    stays as it was."""
    return Item(
        index=item.index,
        external_id="conflict:" + digest(item.body),
        body=item.body,
        compare=item.compare,
        reply_id=item.reply_id,
        invalid_field="id",
        note=f"id {item.external_id}: {reason}",
        conflict=True,
    )


def _stored_bodies(
    session: Session, scope: Scope, source: str, external_ids: list[str]
) -> dict[str, str]:
    found: dict[str, str] = {}
    for start in range(0, len(external_ids), 1000):
        chunk = external_ids[start : start + 1000]
        for ext, body in session.execute(
            select(RawEvent.external_id, RawEvent.body).where(
                RawEvent.course_id == scope.course_id,
                RawEvent.source == source,
                in_values(session, RawEvent.external_id, chunk),
            )
        ):
            if ext is not None:
                found[ext] = body
    return found


def after_store(session: Session, records: Sequence[StoredRecord]) -> None:
    """Called once per batch with the records just stored (ids assigned, not yet committed),
    in the request's transaction. The detection engine hooks in here (``detection.live``; a
    detection failure is logged and never loses the events)."""
    from ..detection import live

    live.process_records(session, records)


# -- re-processing ----------------------------------------------------------------------------


@dataclass
class ReprocessSummary:
    examined: int = 0
    accepted: int = 0
    ignored: int = 0
    still_unmapped: int = 0


Reparser = Callable[[str, dt.datetime], Item | None]


def _reparsers() -> dict[str, Reparser]:
    from . import progsnap2, xapi

    return {"xapi": xapi.reparse, "progsnap2": progsnap2.reparse}


def reprocess_unmapped(session: Session, scope: Scope, batch_size: int = 500) -> ReprocessSummary:
    """Map a course's ``unmapped`` raw events again (after a mapping upload or new launches):
    the ones that now map get their normalised record and become ``accepted``."""
    reparsers = _reparsers()
    summary = ReprocessSummary()
    last_id = 0
    while True:
        raws = list(
            session.scalars(
                select(RawEvent)
                .where(
                    RawEvent.course_id == scope.course_id,
                    RawEvent.status == UNMAPPED,
                    RawEvent.id > last_id,
                )
                .order_by(RawEvent.id)
                .limit(batch_size)
            )
        )
        if not raws:
            return summary
        last_id = raws[-1].id
        now = utcnow()
        pairs: list[tuple[RawEvent, Item]] = []
        for raw in raws:
            reparse = reparsers.get(raw.source)
            item = reparse(raw.body, raw.received_at) if reparse is not None else None
            if item is not None:
                item.index = len(pairs)
                pairs.append((raw, item))
        summary.examined += len(raws)
        resolver = Resolver(session, scope)
        resolver.prepare(i for _, i in pairs if not i.invalid and i.event is not None)
        accepted: list[tuple[_Planned, int, str]] = []
        for raw, item in pairs:
            planned = _plan(item, resolver)
            raw.note = planned.note
            if planned.status == UNMAPPED:
                summary.still_unmapped += 1
                continue
            raw.status = planned.status
            if planned.status == ACCEPTED:
                accepted.append((planned, raw.id, raw.source))
                summary.accepted += 1
            else:
                summary.ignored += 1
        accepted.sort(key=lambda pair: _occurrence(pair[0]))
        records = _insert_records(
            session, [_record_row(p, scope, src, rid, now) for p, rid, src in accepted]
        )
        session.flush()
        if records:
            after_store(session, records)


# -- the instructor's mappings ------------------------------------------------------------------

MAX_MAPPING_ROWS = 20_000
_SHA1_HEX = re.compile(r"^[0-9a-fA-F]{40}$")


@dataclass
class MappingUpload:
    saved: int = 0
    problems: list[str] = field(default_factory=list)


def normalise_actor(value: str) -> str:
    """An actor as the mappings keep it: emails (with or without mailto:) in lower case."""
    value = value.strip()
    if value.lower().startswith("mailto:"):
        value = value[7:]
    if _SHA1_HEX.match(value):  # an mbox_sha1sum
        return value.lower()
    return value.strip().lower() if "@" in value and " " not in value else value


def _csv_pairs(
    text: str, header_words: set[str], limits: tuple[int, int], names: tuple[str, str]
) -> tuple[dict[str, str], list[str]]:
    pairs: dict[str, str] = {}
    problems: list[str] = []
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        return {}, [f"not a readable CSV: {exc}"]
    if len(rows) > MAX_MAPPING_ROWS:
        return {}, [f"more than {MAX_MAPPING_ROWS} lines: split the file"]
    for line, row in enumerate(rows, start=1):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if line == 1 and cells[0].lower() in header_words:
            continue  # a header line
        if len(cells) != 2 or not cells[0] or not cells[1]:
            problems.append(f"line {line}: expected two values, {names[0]},{names[1]}")
            continue
        first, second = clean_text(cells[0], limits[0]), clean_text(cells[1], limits[1])
        if first is None or second is None:
            problems.append(
                f"line {line}: {names[0]} at most {limits[0]} and {names[1]} at most "
                f"{limits[1]} characters, no NUL"
            )
            continue
        pairs[first] = second
    return pairs, problems


def _upsert(session: Session, model: Any, rows: list[dict[str, Any]], key: str, value: str) -> None:
    dialect = session.get_bind().dialect.name
    upsert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    for start in range(0, len(rows), 1000):
        stmt = upsert(model)
        stmt = stmt.on_conflict_do_update(
            index_elements=["course_id", key], set_={value: getattr(stmt.excluded, value)}
        )
        session.execute(stmt, rows[start : start + 1000])


def upload_actor_mappings(session: Session, course_id: int, text: str) -> MappingUpload:
    """CSV lines ``actor,sub``: the actor as a source names it (account name, email,
    mbox_sha1sum, openid, ProgSnap2 SubjectID) → the learner's LTI ``sub``."""
    pairs, problems = _csv_pairs(text, {"actor"}, (500, 255), ("actor", "sub"))
    by_actor = {normalise_actor(a): s for a, s in pairs.items()}
    rows = [{"course_id": course_id, "actor": a, "sub": s} for a, s in by_actor.items() if a]
    _upsert(session, ActorMapping, rows, "actor", "sub")
    return MappingUpload(len(rows), problems)


def upload_exercise_mappings(session: Session, course_id: int, text: str) -> MappingUpload:
    """CSV lines ``activity_id,resource_link_id``: an xAPI object id (ids under it match too)
    or a ProgSnap2 ProblemID → the resource link id of an exercise of the course."""
    pairs, problems = _csv_pairs(
        text,
        {"activity", "activity_id", "problemid"},
        (500, 255),
        ("activity_id", "resource_link_id"),
    )
    rows = [
        {"course_id": course_id, "activity_id": a, "resource_link_id": r} for a, r in pairs.items()
    ]
    _upsert(session, ExerciseMapping, rows, "activity_id", "resource_link_id")
    return MappingUpload(len(rows), problems)


def delete_mapping(session: Session, course_id: int, kind: str, mapping_id: int) -> bool:
    model: Any = ActorMapping if kind == "actor" else ExerciseMapping
    found = session.get(model, mapping_id)
    if found is None or found.course_id != course_id:
        return False
    session.delete(found)
    return True


def actor_mappings(session: Session, course_id: int, limit: int = 500) -> list[ActorMapping]:
    return list(
        session.scalars(
            select(ActorMapping)
            .where(ActorMapping.course_id == course_id)
            .order_by(ActorMapping.actor)
            .limit(limit)
        )
    )


def exercise_mappings(session: Session, course_id: int, limit: int = 500) -> list[ExerciseMapping]:
    return list(
        session.scalars(
            select(ExerciseMapping)
            .where(ExerciseMapping.course_id == course_id)
            .order_by(ExerciseMapping.activity_id)
            .limit(limit)
        )
    )


def status_counts(session: Session, course_id: int) -> dict[str, dict[str, int]]:
    """Raw events per source and status, for the activity page."""
    counts: dict[str, dict[str, int]] = {}
    for source, status, n in session.execute(
        select(RawEvent.source, RawEvent.status, func.count())
        .where(RawEvent.course_id == course_id)
        .group_by(RawEvent.source, RawEvent.status)
    ):
        counts.setdefault(source, {})[status] = int(n)
    return counts


def recent_problems(session: Session, course_id: int, limit: int = 20) -> list[RawEvent]:
    """The latest raw events that did not become records (unmapped, invalid, conflicts)."""
    return list(
        session.scalars(
            select(RawEvent)
            .where(
                RawEvent.course_id == course_id,
                RawEvent.status.in_((UNMAPPED, INVALID, CONFLICT)),
            )
            .order_by(RawEvent.id.desc())
            .limit(limit)
        )
    )
