"""Live detection: the engine run inside ingestion, its state in the database, decisions turned
into offers.

``after_store`` (``activity/ingest.py``) calls ``process_records`` with each stored batch, in the
request's transaction. Per event the work is constant: the (learner, exercise) state row, the
learner row and the two peer rows (the exercise's and the course's) are read once per batch,
locked (``SELECT … FOR UPDATE`` on PostgreSQL, in a fixed order so two requests never deadlock),
updated in memory by the engine, and written back once. Nothing rescans history.

Decisions become offers (``Offer``) and an ``offer.*`` event in ``help_events`` carrying the
course id and ``data.learner_id``: the learner's offer stream (``web/offers.py``) matches that
learner only; the event is published after commit like every other.

The ladder: a decision ``offer`` creates an unobtrusive offer on the learner's page. A decision
``escalate`` (more failures after the offer) only does something if the course allows it
(``"escalate": true`` in its rules JSON, default off): if the learner ticked "open a request for
me if I keep failing" on the offer, a help request is opened for them (severity and context
from the decision and their recent activity); otherwise a second, stronger offer replaces the
first. Nobody gets a request they did not agree to.

Time-based triggers (silence after a failure) wake through ``due_at`` on the state row:
``tick`` (run by the periodic sweep) picks the rows that are due and runs ``Engine.tick``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .. import fastjson
from ..activity.ingest import in_values, pairs_in
from ..activity.model import ActivityKind, ActivityRecord, StoredRecord
from ..bus import PENDING
from ..courses import Course, Exercise, Person
from ..db import Base, utcnow
from ..help import events
from ..help.models import ACTIVE_STATUSES, CoursePool, HelpRequest, HelpStatus
from ..tutors.models import Availability, PoolMember, Tutor
from .engine import ESCALATE, Decision, Engine
from .models import (
    DetectionExerciseState,
    DetectionLearnerState,
    DetectionPeerStats,
    DetectionRules,
    Offer,
    OfferStatus,
)
from .peers import ExerciseStats, PeerStats
from .rules import RuleBook, default_rules
from .state import ExerciseState, LearnerState
from .triggers import RuleError

log = logging.getLogger(__name__)

OFFER_TTL = dt.timedelta(hours=2)  # an offer nobody answered goes away
TICK_BATCH = 500  # due states handled per sweep
OFFER_CREATED = "offer.created"
OFFER_KINDS = (
    OFFER_CREATED,
    "offer.accepted",
    "offer.declined",
    "offer.escalated",
    "offer.expired",
)
RECENT_ATTEMPTS = 5
ATTEMPTS = (
    ActivityKind.SUBMIT.value,
    ActivityKind.RUN.value,
    ActivityKind.COMPILE_ERROR.value,
    ActivityKind.RUNTIME_ERROR.value,
)

Key = tuple[str, str, str]


# -- rules ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def _parse_rules(text: str) -> tuple[RuleBook, bool]:
    raw = json.loads(text)
    escalate = bool(raw.pop("escalate", False))
    return (RuleBook.parse(raw) if raw else default_rules()), escalate


@functools.cache
def _defaults() -> RuleBook:
    return default_rules()


def load_rules(session: Session, course_id: int) -> tuple[RuleBook, bool]:
    """The course's rule book and whether it lets offers escalate (defaults: the default rules,
    no escalation). A stored book that no longer parses falls back to the defaults."""
    row = session.get(DetectionRules, course_id)
    if row is None or not row.rules:
        return _defaults(), False
    try:
        return _parse_rules(json.dumps(row.rules, sort_keys=True))
    except RuleError as exc:
        log.warning("course %s: detection rules ignored: %s", course_id, exc)
        return _defaults(), False


def save_rules(session: Session, course_id: int, raw: dict[str, Any]) -> RuleBook:
    """Validate and store a course's rules (``RuleBook`` JSON plus ``"escalate"``)."""
    if not isinstance(raw, dict):
        raise RuleError("rule book: expected an object")
    escalate = raw.get("escalate", False)
    if not isinstance(escalate, bool):
        raise RuleError("rule book: 'escalate' must be true or false")
    book, _ = _parse_rules(json.dumps(raw, sort_keys=True))
    row = session.get(DetectionRules, course_id)
    if row is None:
        session.add(DetectionRules(course_id=course_id, rules=raw))
    else:
        row.rules, row.updated_at = raw, utcnow()
    return book


# -- storage -----------------------------------------------------------------------------------


def _ensure(session: Session, model: type[Base], rows: list[dict[str, Any]]) -> None:
    """INSERT the rows that do not exist yet (ON CONFLICT DO NOTHING), so they can be locked."""
    if not rows:
        return
    table = Base.metadata.tables[model.__tablename__]
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(insert(table).values(rows).on_conflict_do_nothing())


_FIELDS: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


_NAME_SETS: dict[type, frozenset[str]] = {}


def _name_set(cls: type) -> frozenset[str]:
    names = _NAME_SETS.get(cls)
    if names is None:
        names = _NAME_SETS[cls] = frozenset(_field_names(cls))
    return names


def _state_dict(state: ExerciseState | LearnerState) -> dict[str, Any]:
    """``state.as_dict()`` for the flat state dataclasses, without ``dataclasses.asdict``'s
    deep copy (every field is a scalar): the same dict, a tenth of the time."""
    return {name: getattr(state, name) for name in _field_names(type(state))}


def _exercise_state(data: dict[str, Any] | None) -> ExerciseState:
    names = _name_set(ExerciseState)
    return ExerciseState(**{k: v for k, v in (data or {}).items() if k in names})


def _learner_state(data: dict[str, Any] | None) -> LearnerState:
    names = _name_set(LearnerState)
    return LearnerState(**{k: v for k, v in (data or {}).items() if k in names})


def _bulk_update(
    session: Session,
    model: type[Base],
    keys: tuple[str, ...],
    values: tuple[str, ...],
    rows: list[dict[str, Any]],
    course_id: int,
) -> None:
    """One UPDATE of many rows of ``model`` in course ``course_id``, matched on ``keys``.

    PostgreSQL: ``UPDATE … FROM jsonb_to_recordset(:rows)``, one statement and one parameter
    whatever the number of rows. Elsewhere (SQLite, the demo): an executemany."""
    if not rows:
        return
    table = Base.metadata.tables[model.__tablename__]
    now = utcnow()
    dialect = session.get_bind().dialect
    if dialect.name == "postgresql":
        columns = ", ".join(
            f"{name} {table.c[name].type.compile(dialect=dialect)}" for name in (*keys, *values)
        )
        match = " AND ".join(f"t.{k} = x.{k}" for k in keys)
        assign = ", ".join(f"{v} = x.{v}" for v in values)
        # Names come from our own tables, never from input.
        sql = text(
            f"UPDATE {table.name} AS t SET {assign}, updated_at = :now "  # noqa: S608
            f"FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS x({columns}) "
            f"WHERE t.course_id = :course AND {match}"
        )
        payload = fastjson.dumps(rows)
        session.execute(sql, {"rows": payload, "now": now, "course": course_id})
        return
    stmt = (
        update(table)
        .where(table.c.course_id == course_id, *(table.c[k] == bindparam("k_" + k) for k in keys))
        .values({**{v: bindparam("v_" + v) for v in values}, "updated_at": now})
    )
    params = [
        {**{"k_" + k: row[k] for k in keys}, **{"v_" + v: row[v] for v in values}} for row in rows
    ]
    session.connection().execute(stmt, params)


@dataclasses.dataclass
class _Held:
    """A state row read by this batch: the live state, what the row held, its timer."""

    state: Any
    saved: dict[str, Any]
    due_at: float | None = None
    saved_due: float | None = None


class DbStore:
    """The engine's ``StateStore`` over ``detection_*_states``: rows are read (and locked) once
    per batch, handed to the engine as live objects, and written back by ``flush`` in one
    UPDATE per table."""

    def __init__(self, session: Session, course_id: int) -> None:
        self.session = session
        self.course_id = course_id
        self._exercises: dict[Key, _Held] = {}
        self._learners: dict[tuple[str, str], _Held] = {}
        self._due: list[Key] = []

    def previous_exercises(self, learners: Iterable[int]) -> set[tuple[int, int]]:
        """The (learner, exercise) each of these learners was last on, read without a lock:
        ``Engine._left`` reads that state when they move on, so a batch loads it up front
        (a change meanwhile is still read, one row, by the lazy path)."""
        wanted = sorted(set(learners) - {int(k[1]) for k in self._learners})
        found: set[tuple[int, int]] = set()
        table = DetectionLearnerState
        for start in range(0, len(wanted), 1000):
            for lid, current in self.session.execute(
                select(table.learner_id, table.state["current_exercise"].as_string()).where(
                    table.course_id == self.course_id,
                    in_values(self.session, table.learner_id, wanted[start : start + 1000]),
                )
            ):
                if current and str(current).isdigit():
                    found.add((int(lid), int(current)))
        return found

    def load(self, pairs: Iterable[tuple[int, int]], *, previous: bool = False) -> None:
        """Read and lock the state rows of these (learner, exercise) pairs and then of their
        learners, each in key order (concurrent batches and the sweep's ``tick`` lock in the
        same order, so they never deadlock); the missing ones are created (INSERT … ON
        CONFLICT DO NOTHING) and then read. With ``previous``, also the state of the exercise
        each learner was on before (``Engine._left`` reads it when they move on): on
        PostgreSQL in the same query."""
        course = str(self.course_id)
        pairs = sorted(
            p for p in set(pairs) if (course, str(p[0]), str(p[1])) not in self._exercises
        )
        learners = sorted({lid for lid, _ in pairs} - {int(k[1]) for k in self._learners})
        table = DetectionExerciseState
        postgres = self.session.get_bind().dialect.name == "postgresql"
        known_missing = False  # these pairs were just looked for: they have no row yet
        if previous and not postgres and learners:
            pairs = sorted(set(pairs) | self.previous_exercises(learners))
        elif previous and pairs:
            rows = self._lock_with_previous(pairs, learners)
            found = {(r[0], r[1]) for r in rows}
            for lid, eid, state, due in rows:
                self._add_exercise_row(lid, eid, state, due)
            pairs = [p for p in pairs if p not in found]
            if not pairs:
                if learners:
                    self._load_learners(learners)
                return
            known_missing = True

        def exercise_rows(keys: list[tuple[int, int]]) -> list[Any]:
            found: list[Any] = []
            for start in range(0, len(keys), 1000):
                found += self.session.execute(
                    select(table.learner_id, table.exercise_id, table.state, table.due_at)
                    .where(
                        table.course_id == self.course_id,
                        pairs_in(
                            self.session,
                            table.learner_id,
                            table.exercise_id,
                            keys[start : start + 1000],
                        ),
                    )
                    .order_by(table.learner_id, table.exercise_id)
                    .with_for_update()
                ).all()
            return found

        if pairs:
            rows = [] if known_missing else exercise_rows(pairs)
            missing = sorted(set(pairs) - {(r[0], r[1]) for r in rows})
            if missing:
                now = utcnow()
                _ensure(
                    self.session,
                    table,
                    [
                        {
                            "course_id": self.course_id,
                            "learner_id": lid,
                            "exercise_id": eid,
                            "state": {},
                            "updated_at": now,
                        }
                        for lid, eid in missing
                    ],
                )
                rows += exercise_rows(missing)
            for lid, eid, state, due in rows:
                self._add_exercise_row(lid, eid, state, due)
        if learners:  # after the exercise rows, in the same order as ``tick``
            self._load_learners(learners)

    def _lock_with_previous(self, pairs: list[tuple[int, int]], learners: list[int]) -> list[Any]:
        """PostgreSQL: lock the rows of ``pairs`` and of each learner's current exercise in one
        query, in key order."""
        sql = text(
            "SELECT learner_id, exercise_id, state, due_at FROM detection_exercise_states "
            "WHERE course_id = :course AND (learner_id, exercise_id) IN ("
            "SELECT unnest(CAST(:ls AS integer[])), unnest(CAST(:es AS integer[])) UNION "
            "SELECT learner_id, CASE WHEN (state ->> 'current_exercise') ~ '^[0-9]{1,9}$' "
            "THEN CAST(state ->> 'current_exercise' AS integer) END "
            "FROM detection_learner_states "
            "WHERE course_id = :course AND learner_id = ANY(CAST(:learners AS integer[]))) "
            "ORDER BY learner_id, exercise_id FOR UPDATE"
        )
        return list(
            self.session.execute(
                sql,
                {
                    "course": self.course_id,
                    "ls": [lid for lid, _ in pairs],
                    "es": [eid for _, eid in pairs],
                    "learners": learners,
                },
            ).all()  # one fetch for all rows, not one call per row
        )

    def loaded_exercises(self) -> set[str]:
        return {key[2] for key in self._exercises}

    def _add_exercise_row(
        self, learner_id: int, exercise_id: int, state: dict[str, Any] | None, due: float | None
    ) -> None:
        key = (str(self.course_id), str(learner_id), str(exercise_id))
        if key not in self._exercises:
            self._exercises[key] = _Held(_exercise_state(state), state or {}, due, due)

    # -- StateStore -------------------------------------------------------------------------
    def exercise(self, course: str, learner: str, exercise: str) -> ExerciseState:
        key = (course, learner, exercise)
        if key not in self._exercises:  # not prefetched (moved on meanwhile): one row
            self.load([(int(learner), int(exercise))])
        state: ExerciseState = self._exercises[key].state
        return state

    def learner(self, course: str, learner: str) -> LearnerState:
        key = (course, learner)
        if key not in self._learners:
            self.load_learner(int(learner))
        state: LearnerState = self._learners[key].state
        return state

    def load_learner(self, learner_id: int) -> None:
        self._load_learners([learner_id])

    def _load_learners(self, learners: list[int]) -> None:
        table = DetectionLearnerState

        def rows(ids: list[int]) -> list[Any]:
            found: list[Any] = []
            for start in range(0, len(ids), 1000):
                found += self.session.execute(
                    select(table.learner_id, table.state)
                    .where(
                        table.course_id == self.course_id,
                        in_values(self.session, table.learner_id, ids[start : start + 1000]),
                    )
                    .order_by(table.learner_id)
                    .with_for_update()
                ).all()
            return found

        found = rows(learners)
        missing = sorted(set(learners) - {r[0] for r in found})
        if missing:
            now = utcnow()
            _ensure(
                self.session,
                table,
                [
                    {"course_id": self.course_id, "learner_id": lid, "state": {}, "updated_at": now}
                    for lid in missing
                ],
            )
            found += rows(missing)
        for lid, state in found:
            key = (str(self.course_id), str(lid))
            if key not in self._learners:
                self._learners[key] = _Held(_learner_state(state), state or {})

    def save_exercise(self, course: str, learner: str, exercise: str, state: ExerciseState) -> None:
        self._exercises[(course, learner, exercise)].state = state

    def save_learner(self, course: str, learner: str, state: LearnerState) -> None:
        self._learners[(course, learner)].state = state

    def set_timer(self, key: Key, due: float | None) -> None:
        found = self._exercises.get(key)
        if found is not None:
            found.due_at = due

    def due(self, now: float) -> list[Key]:
        out, self._due = self._due, []
        return out

    # -- tick -------------------------------------------------------------------------------
    def load_due(self, now: float, limit: int) -> int:
        """Lock the rows whose timer is due (skipping rows another sweep holds)."""
        table = DetectionExerciseState
        rows = self.session.execute(
            select(table.learner_id, table.exercise_id, table.state, table.due_at)
            .where(table.course_id == self.course_id, table.due_at <= now)
            .order_by(table.learner_id, table.exercise_id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        for lid, eid, state, due in rows:
            self._add_exercise_row(lid, eid, state, due)
            key = (str(self.course_id), str(lid), str(eid))
            self._exercises[key].due_at = None  # the engine sets the next one, if any
            self._due.append(key)
        return len(rows)

    def flush(self) -> None:
        """Write back the rows the batch changed: one UPDATE per table."""
        exercises: list[dict[str, Any]] = []
        for (_, learner, exercise), held in self._exercises.items():
            data = _state_dict(held.state)
            if data != held.saved or held.due_at != held.saved_due:
                exercises.append(
                    {
                        "learner_id": int(learner),
                        "exercise_id": int(exercise),
                        "state": data,
                        "due_at": held.due_at,
                    }
                )
                held.saved, held.saved_due = data, held.due_at
        learners: list[dict[str, Any]] = []
        for (_, learner), held in self._learners.items():
            data = _state_dict(held.state)
            if data != held.saved:
                learners.append({"learner_id": int(learner), "state": data})
                held.saved = data
        if exercises and learners and self.session.get_bind().dialect.name == "postgresql":
            self._flush_both(exercises, learners)  # one round trip
            return
        _bulk_update(
            self.session,
            DetectionExerciseState,
            ("learner_id", "exercise_id"),
            ("state", "due_at"),
            exercises,
            self.course_id,
        )
        _bulk_update(
            self.session,
            DetectionLearnerState,
            ("learner_id",),
            ("state",),
            learners,
            self.course_id,
        )

    def _flush_both(self, exercises: list[dict[str, Any]], learners: list[dict[str, Any]]) -> None:
        self.session.execute(
            text(
                "WITH e AS (UPDATE detection_exercise_states AS t SET state = x.state, "
                "due_at = x.due_at, updated_at = :now "
                "FROM jsonb_to_recordset(CAST(:exercises AS jsonb)) "
                "AS x(learner_id integer, exercise_id integer, state json, due_at float8) "
                "WHERE t.course_id = :course AND t.learner_id = x.learner_id "
                "AND t.exercise_id = x.exercise_id RETURNING 1), "
                "l AS (UPDATE detection_learner_states AS t SET state = x.state, "
                "updated_at = :now FROM jsonb_to_recordset(CAST(:learners AS jsonb)) "
                "AS x(learner_id integer, state json) "
                "WHERE t.course_id = :course AND t.learner_id = x.learner_id RETURNING 1) "
                "SELECT (SELECT count(*) FROM e), (SELECT count(*) FROM l)"
            ),
            {
                "exercises": fastjson.dumps(exercises),
                "learners": fastjson.dumps(learners),
                "now": utcnow(),
                "course": self.course_id,
            },
        )


def _delta(new: Any, old: Any) -> Any:
    """What a batch added to a peer-stats dict: numbers as differences, dicts per key; any
    other value is simply the new one."""
    if isinstance(new, dict):
        old = old if isinstance(old, dict) else {}
        out = {}
        for key, value in new.items():
            change = _delta(value, old.get(key))
            if change is not None:
                out[key] = change
        return out or None
    if isinstance(new, int | float) and not isinstance(new, bool):
        base = old if isinstance(old, int | float) and not isinstance(old, bool) else 0
        return (new - base) or None
    return None if new == old else new


def _merge(current: Any, delta: Any) -> Any:
    """``current`` with ``delta`` (from ``_delta``) added."""
    if isinstance(delta, dict):
        base = dict(current) if isinstance(current, dict) else {}
        for key, change in delta.items():
            base[key] = _merge(base.get(key), change)
        return base
    if isinstance(delta, int | float) and not isinstance(delta, bool):
        if isinstance(current, int | float) and not isinstance(current, bool):
            return current + delta
        return delta
    return delta


class DbPeers(PeerStats):
    """``PeerStats`` whose rows (per exercise, and course-wide under ``""``) come from
    ``detection_peer_stats``.

    They are read without a lock: every ingesting transaction of a course touches the
    course-wide row, so holding it while the batch runs would serialise the course. What the
    batch added is merged by ``merge`` just before commit, under a lock held only from there to
    the commit (counts are summed, so concurrent batches never lose each other's updates)."""

    def __init__(self, session: Session, course_id: int) -> None:
        super().__init__()
        self.session = session
        self.course_id = course_id
        self._rows: dict[str, tuple[dict[str, Any], ExerciseStats]] = {}
        self._stored: set[str] = set()  # keys that have a row

    def load(self, exercise_keys: Iterable[str]) -> None:
        keys = sorted({"", *exercise_keys} - set(self._rows))
        if not keys:
            return
        table = DetectionPeerStats
        found = {
            key: stats
            for key, stats in self.session.execute(
                select(table.exercise_key, table.stats).where(
                    table.course_id == self.course_id, table.exercise_key.in_(keys)
                )
            )
        }
        self._stored.update(found)
        for key in keys:
            saved = found.get(key) or {}
            stats = ExerciseStats.from_dict(saved) if saved else ExerciseStats()
            self._rows[key] = (saved, stats)

    def exercise(self, course: str, exercise: str) -> ExerciseStats:
        if exercise not in self._rows:
            self.load([exercise])
        return self._rows[exercise][1]

    def course(self, course: str) -> ExerciseStats:
        if "" not in self._rows:
            self.load([])
        return self._rows[""][1]

    def flush(self) -> None:
        """(Kept for callers of the old interface: the work is done by ``merge``.)"""

    def merge(self) -> None:
        """Add what this batch changed to the stored rows. On PostgreSQL one UPDATE adds the
        differences in the database (``lifeline_json_add``, migration 0008), so the rows are
        locked only from that statement to the commit; elsewhere (SQLite, one process) the
        rows are read, summed and written back."""
        deltas: dict[str, Any] = {}
        for key, (saved, stats) in self._rows.items():
            change = _delta(stats.as_dict(), saved)
            if change:
                deltas[key] = change
        if not deltas:
            return
        table = DetectionPeerStats
        keys = sorted(deltas)
        now = utcnow()
        empty = ExerciseStats().as_dict()
        _ensure(
            self.session,
            table,
            [
                {"course_id": self.course_id, "exercise_key": k, "stats": empty, "updated_at": now}
                for k in keys
                if k not in self._stored
            ],
        )
        self._stored.update(keys)
        if self.session.get_bind().dialect.name == "postgresql":
            rows = [{"exercise_key": k, "delta": deltas[k]} for k in keys]
            self.session.execute(
                # The rows are locked in key order first (consumers of several partitions
                # merge into the same rows at once: one order, no deadlock).
                text(
                    "WITH locked AS MATERIALIZED (SELECT exercise_key FROM detection_peer_stats "
                    "WHERE course_id = :course AND exercise_key = ANY(:keys) "
                    "ORDER BY exercise_key FOR UPDATE) "
                    "UPDATE detection_peer_stats AS t SET "
                    "stats = CAST(lifeline_json_add(CAST(t.stats AS jsonb), x.delta) AS json), "
                    "updated_at = :now "
                    "FROM jsonb_to_recordset(CAST(:rows AS jsonb)) "
                    "AS x(exercise_key varchar(32), delta jsonb) "
                    "WHERE t.course_id = :course "
                    "AND t.exercise_key IN (SELECT exercise_key FROM locked) "
                    "AND t.exercise_key = x.exercise_key"
                ),
                {"rows": fastjson.dumps(rows), "now": now, "course": self.course_id, "keys": keys},
            )
            return
        current = {
            key: stats
            for key, stats in self.session.execute(
                select(table.exercise_key, table.stats)
                .where(table.course_id == self.course_id, table.exercise_key.in_(keys))
                .order_by(table.exercise_key)
                .with_for_update()
            )
        }
        merged = [
            {"exercise_key": k, "stats": _merge(current.get(k) or empty, deltas[k])} for k in keys
        ]
        _bulk_update(self.session, table, ("exercise_key",), ("stats",), merged, self.course_id)


# -- capacity ---------------------------------------------------------------------------------


def free_slots(session: Session, course_id: int, now: dt.datetime | None = None) -> int:
    """Free tutor capacity of the course's pools now: the capacity of the tutors available
    (with a recent heartbeat), less the sessions they hold and the requests already queued."""
    from ..tutors.operations import HEARTBEAT_TIMEOUT

    now = now or utcnow()
    pools = select(CoursePool.pool_id).where(CoursePool.course_id == course_id)
    available = (
        select(Tutor.id, Tutor.capacity)
        .where(
            Tutor.id.in_(select(PoolMember.tutor_id).where(PoolMember.pool_id.in_(pools))),
            Tutor.availability == Availability.AVAILABLE.value,
            Tutor.last_seen_at >= now - HEARTBEAT_TIMEOUT,
        )
        .subquery()
    )
    capacity = select(func.coalesce(func.sum(available.c.capacity), 0)).scalar_subquery()
    held = (
        select(func.count())
        .select_from(HelpRequest)
        .where(
            HelpRequest.tutor_id.in_(select(available.c.id)),
            HelpRequest.status == HelpStatus.CLAIMED.value,
        )
        .scalar_subquery()
    )
    queued = (
        select(func.count())
        .select_from(HelpRequest)
        .where(HelpRequest.pool_id.in_(pools), HelpRequest.status == HelpStatus.QUEUED.value)
        .scalar_subquery()
    )
    row = session.execute(select(capacity, held, queued)).one()  # one round trip
    return int(row[0] or 0) - int(row[1] or 0) - int(row[2] or 0)


# -- running the engine --------------------------------------------------------------------------


def _engine(session: Session, course_id: int) -> tuple[Engine, DbStore, DbPeers, bool]:
    book, escalate = load_rules(session, course_id)
    store = DbStore(session, course_id)
    peers = DbPeers(session, course_id)
    return Engine(book, store=store, peers=peers), store, peers, escalate


def process_records(session: Session, records: Sequence[StoredRecord]) -> list[Offer]:
    """Run the engine over a stored batch; returns the offers made.

    The engine's state changes run in a savepoint: if detection fails, it is logged and rolled
    back, and the events stay stored. Offers (and their events) are written after it, outside
    the savepoint (the bus publishes only on the outermost commit). The batch's additions to
    the peer statistics come last (one UPDATE): their rows stay locked only from there to
    the commit that follows, which callers keep close (see ``ingest.store``)."""
    by_course: dict[int, list[StoredRecord]] = {}
    for record in records:
        by_course.setdefault(record.course_id, []).append(record)
    made: list[Offer] = []
    for course_id, batch in sorted(by_course.items()):
        try:
            with session.begin_nested():
                decisions, escalate, peers = _run_batch(session, course_id, batch)
        except Exception:
            log.exception(
                "live detection failed for %d records of course %s", len(batch), course_id
            )
            continue
        made += act_many(session, course_id, decisions, escalate)
        _merge_peers(session, peers)
    return made


def _merge_peers(session: Session, peers: DbPeers) -> None:
    try:
        with session.begin_nested():
            peers.merge()
    except Exception:
        log.exception("peer statistics of course %s not updated", peers.course_id)


def _run_batch(
    session: Session, course_id: int, batch: list[StoredRecord]
) -> tuple[list[Decision], bool, DbPeers]:
    engine, store, peers, escalate = _engine(session, course_id)
    # With where each learner was before: ``Engine._left`` reads that when they move on.
    store.load({(r.learner_id, r.exercise_id) for r in batch}, previous=True)
    peers.load(store.loaded_exercises())
    slots = free_slots(session, course_id)
    course = str(course_id)
    decisions: list[Decision] = []
    for record in batch:
        decisions.extend(engine.process(course, record.as_event(), free_slots=slots))
    store.flush()
    return decisions, escalate, peers


def tick(session: Session, now: dt.datetime | None = None) -> list[Offer]:
    """Time-based triggers for the states whose timer is due (the sweep calls this)."""
    now = now or utcnow()
    ts = now.timestamp()
    course_ids = list(
        session.scalars(
            select(DetectionExerciseState.course_id)
            .where(DetectionExerciseState.due_at <= ts)
            .distinct()
            .order_by(DetectionExerciseState.course_id)
        )
    )
    made: list[Offer] = []
    for course_id in course_ids:
        engine, store, peers, escalate = _engine(session, course_id)
        if not store.load_due(ts, TICK_BATCH):
            continue
        decisions = engine.tick(now, free_slots=free_slots(session, course_id, now))
        store.flush()
        for decision in decisions:
            offer = act(session, course_id, decision, escalate)
            if offer is not None:
                made.append(offer)
        _merge_peers(session, peers)
    return made


# -- decisions → offers ---------------------------------------------------------------------------


def record_offer(session: Session, kind: str, offer: Offer, **extra: Any) -> None:
    events.record(session, **_offer_event(kind, offer, offer.status, **extra))


def open_offers(session: Session, learner_id: int, course_id: int) -> list[Offer]:
    return _open_offers_of(session, [learner_id], course_id).get(learner_id, [])


def _open_offers_of(
    session: Session, learner_ids: Sequence[int], course_id: int
) -> dict[int, list[Offer]]:
    """The offers still standing for these learners, newest first, per learner."""
    found: dict[int, list[Offer]] = {}
    for offer in session.scalars(
        select(Offer)
        .where(
            Offer.learner_id.in_(learner_ids),
            Offer.course_id == course_id,
            Offer.status == OfferStatus.OFFERED.value,
            Offer.created_at >= utcnow() - OFFER_TTL,
        )
        .order_by(Offer.id.desc())
    ).all():
        found.setdefault(offer.learner_id, []).append(offer)
    return found


def _in_line(session: Session, learner_ids: Sequence[int], course_id: int) -> set[int]:
    """Those of these learners with an active request (in line or with a tutor)."""
    return set(
        session.scalars(
            select(HelpRequest.learner_id).where(
                HelpRequest.learner_id.in_(learner_ids),
                HelpRequest.course_id == course_id,
                HelpRequest.status.in_(ACTIVE_STATUSES),
            )
        ).all()
    )


def act(session: Session, course_id: int, decision: Decision, escalate: bool) -> Offer | None:
    """Turn one decision into an offer (or an escalation); None when nothing is to be done."""
    learner_id, exercise_id = int(decision.learner), int(decision.exercise)
    if decision.action == ESCALATE:
        if not escalate:
            return None  # the course keeps to unobtrusive offers
        if _in_line(session, [learner_id], course_id):
            return None  # already in line or with a tutor: no need to offer one
        consented = next(
            (
                o
                for o in open_offers(session, learner_id, course_id)
                if o.exercise_id == exercise_id and o.consent
            ),
            None,
        )
        if consented is not None:
            return _open_for(session, consented, decision)
        latest = session.scalar(
            select(Offer.status)
            .where(Offer.learner_id == learner_id, Offer.exercise_id == exercise_id)
            .order_by(Offer.id.desc())
            .limit(1)
        )
        if latest == OfferStatus.DECLINED.value:
            return None  # they said no: do not insist
    made = _make_offers(session, course_id, [(decision, 2 if decision.action == ESCALATE else 1)])
    return made[0] if made else None


def act_many(
    session: Session, course_id: int, decisions: Sequence[Decision], escalate: bool
) -> list[Offer]:
    """``act`` for a batch's decisions, in order, with the same outcome; plain offers (all but
    escalations, which may open a request) are made together by ``_make_offers``."""
    if any(d.action == ESCALATE for d in decisions):
        made = []
        for decision in decisions:
            offer = act(session, course_id, decision, escalate)
            if offer is not None:
                made.append(offer)
        return made
    return _make_offers(session, course_id, [(d, 1) for d in decisions])


def _make_offers(
    session: Session, course_id: int, wanted: Sequence[tuple[Decision, int]]
) -> list[Offer]:
    """An offer (of the given level) for each decision, in order, unless the learner is in
    line already; an offer standing on the same exercise is expired and replaced. Who is in
    line and which offers stand is read once for all (two queries), the offers are inserted
    together and their events written by one INSERT."""
    if not wanted:
        return []
    learners = sorted({int(d.learner) for d, _ in wanted})
    busy = _in_line(session, learners, course_id)
    open_by_learner = _open_offers_of(session, learners, course_id)
    now = utcnow()
    created: list[Offer] = []
    # The events in the order they happen, with the offer's status at that moment.
    log_: list[tuple[str, Offer, str | None, str]] = []
    for decision, level in wanted:
        learner_id, exercise_id = int(decision.learner), int(decision.exercise)
        if learner_id in busy:
            continue  # already in line or with a tutor: no need to offer one
        standing = open_by_learner.setdefault(learner_id, [])
        for old in [o for o in standing if o.exercise_id == exercise_id]:
            old.status, old.responded_at = OfferStatus.EXPIRED.value, now
            standing.remove(old)
            log_.append(("offer.expired", old, None, old.status))
        offer = Offer(
            course_id=course_id,
            learner_id=learner_id,
            exercise_id=exercise_id,
            rule=decision.rule,
            level=level,
            severity=decision.severity,
            reason=decision.reason,
            status=OfferStatus.OFFERED.value,
            created_at=now,
        )
        session.add(offer)
        standing.insert(0, offer)
        created.append(offer)
        log_.append((OFFER_CREATED, offer, decision.reason, offer.status))
    if not created:
        return []
    session.flush()  # the offers' ids, for their events
    events.record_many(
        session,
        [
            _offer_event(kind, offer, status)
            if reason is None
            else _offer_event(kind, offer, status, reason=reason)
            for kind, offer, reason, status in log_
        ],
    )
    return created


def _offer_event(kind: str, offer: Offer, status: str, **extra: Any) -> dict[str, Any]:
    """The keyword arguments of ``record_offer``'s event, for ``events.record_many``."""
    return {
        "kind": kind,
        "actor": "lifeline",
        "course_id": offer.course_id,
        "data": {
            "learner_id": offer.learner_id,
            "offer_id": offer.id,
            "exercise_id": offer.exercise_id,
            "rule": offer.rule,
            "level": offer.level,
            "severity": offer.severity,
            "status": status,
            **extra,
        },
    }


def _open_for(session: Session, offer: Offer, decision: Decision) -> Offer | None:
    """The learner agreed to a request if they kept failing, and they did: open it."""
    from ..help import operations as ops

    course = session.get(Course, offer.course_id)
    learner = session.get(Person, offer.learner_id)
    if course is None or learner is None:
        return None
    severity = max(offer.severity, decision.severity)
    try:  # (refusals come before any write)
        with _held_events(session):
            created, _ = ops.request_help(
                session,
                learner=learner,
                course=course,
                exercise_id=offer.exercise_id,
                new=ops.NewRequest(
                    question=offer_question(session, offer, decision.reason),
                    context=activity_context(session, course, learner.id, offer.exercise_id),
                ),
                severity=severity,
            )
    except ops.HelpError as exc:  # the course's request limits: leave the offer standing
        log.info("offer %s: no request opened: %s", offer.id, exc.message)
        return None
    offer.status, offer.request_id, offer.responded_at = (
        OfferStatus.ESCALATED.value,
        created.id,
        utcnow(),
    )
    offer.severity = severity
    record_offer(session, "offer.escalated", offer, request_id=created.id)
    return offer


@contextlib.contextmanager
def _held_events(session: Session) -> Iterator[None]:
    """Keep the events already recorded in this transaction away from the bus while the block
    runs: ``request_help`` releases a savepoint, which the bus takes for a commit and would
    publish them then, before they are visible."""
    held = session.info.pop(PENDING, None)
    try:
        yield
    finally:
        if held:
            session.info[PENDING] = held + session.info.get(PENDING, [])


def offer_question(session: Session, offer: Offer, reason: str | None = None) -> str:
    exercise = session.get(Exercise, offer.exercise_id)
    name = (exercise.title or exercise.resource_link_id) if exercise else "this exercise"
    return f"I'm stuck on {name}. Lifeline noticed: {reason or offer.reason}."


# -- context for the tutor ---------------------------------------------------------------------


def recent_activity(
    session: Session, learner_id: int, exercise_id: int | None, limit: int = RECENT_ATTEMPTS
) -> tuple[list[dict[str, Any]], str]:
    """The learner's latest attempts on the exercise (newest first) and the last error."""
    if exercise_id is None:
        return [], ""
    rows = session.scalars(
        select(ActivityRecord)
        .where(
            ActivityRecord.learner_id == learner_id,
            ActivityRecord.exercise_id == exercise_id,
            ActivityRecord.kind.in_(ATTEMPTS),
        )
        .order_by(ActivityRecord.occurred_at.desc(), ActivityRecord.id.desc())
        .limit(limit)
    ).all()
    attempts = [
        {
            "kind": r.kind,
            "correct": r.correct,
            "score": r.score,
            "error": r.error,
            "at": r.occurred_at.isoformat(),
        }
        for r in rows
    ]
    last_error = session.scalar(
        select(ActivityRecord.error)
        .where(
            ActivityRecord.learner_id == learner_id,
            ActivityRecord.exercise_id == exercise_id,
            ActivityRecord.error.is_not(None),
        )
        .order_by(ActivityRecord.occurred_at.desc(), ActivityRecord.id.desc())
        .limit(1)
    )
    return attempts, last_error or ""


def activity_context(
    session: Session, course: Course, learner_id: int, exercise_id: int | None
) -> dict[str, Any]:
    """What a tutor sees about the learner's situation (the help form shows the same)."""
    exercise = session.get(Exercise, exercise_id) if exercise_id else None
    attempts, last_error = recent_activity(session, learner_id, exercise_id)
    return {
        "course": course.title or course.context_id,
        "exercise": (exercise.title or exercise.resource_link_id) if exercise else "",
        "attempts": attempts,
        "last_error": last_error,
        "code_snapshot": "",
    }


# -- housekeeping -------------------------------------------------------------------------------


def expire_offers(session: Session, now: dt.datetime | None = None) -> int:
    now = now or utcnow()
    stale = list(
        session.scalars(
            select(Offer)
            .where(Offer.status == OfferStatus.OFFERED.value, Offer.created_at < now - OFFER_TTL)
            .limit(1000)
            .with_for_update(skip_locked=True)
        )
    )
    for offer in stale:
        offer.status, offer.responded_at = OfferStatus.EXPIRED.value, now
        record_offer(session, "offer.expired", offer)
    return len(stale)
