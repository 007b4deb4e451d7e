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
import datetime as dt
import functools
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import func, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ..activity.model import ActivityKind, ActivityRecord
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


class DbStore:
    """The engine's ``StateStore`` over ``detection_*_states``: rows are read (and locked) once,
    handed to the engine as live objects, and written back by ``flush``."""

    def __init__(self, session: Session, course_id: int) -> None:
        self.session = session
        self.course_id = course_id
        self._exercises: dict[Key, tuple[DetectionExerciseState, ExerciseState]] = {}
        self._learners: dict[tuple[str, str], tuple[DetectionLearnerState, LearnerState]] = {}
        self._due: list[Key] = []

    def load(self, pairs: Iterable[tuple[int, int]]) -> None:
        """Read and lock the state rows of these (learner, exercise) pairs and their learners,
        in key order (concurrent batches never deadlock on existing rows); the missing ones
        are created (INSERT … ON CONFLICT DO NOTHING) and then read."""
        course = str(self.course_id)
        pairs = sorted(
            p for p in set(pairs) if (course, str(p[0]), str(p[1])) not in self._exercises
        )
        learners = sorted({lid for lid, _ in pairs} - {int(k[1]) for k in self._learners})
        now = utcnow()

        def exercise_rows(keys: list[tuple[int, int]]) -> list[DetectionExerciseState]:
            return list(
                self.session.scalars(
                    select(DetectionExerciseState)
                    .where(
                        DetectionExerciseState.course_id == self.course_id,
                        tuple_(
                            DetectionExerciseState.learner_id, DetectionExerciseState.exercise_id
                        ).in_(keys),
                    )
                    .order_by(DetectionExerciseState.learner_id, DetectionExerciseState.exercise_id)
                    .with_for_update()
                )
            )

        if pairs:
            erows = exercise_rows(pairs)
            missing_pairs = sorted(set(pairs) - {(r.learner_id, r.exercise_id) for r in erows})
            if missing_pairs:
                _ensure(
                    self.session,
                    DetectionExerciseState,
                    [
                        {
                            "course_id": self.course_id,
                            "learner_id": lid,
                            "exercise_id": eid,
                            "state": {},
                            "updated_at": now,
                        }
                        for lid, eid in missing_pairs
                    ],
                )
                erows += exercise_rows(missing_pairs)
            for erow in erows:
                self._add_exercise_row(erow)
        if learners:  # after the exercise rows, in the same order as ``tick``
            self._load_learners(learners)

    def _add_exercise_row(self, erow: DetectionExerciseState) -> None:
        key = (str(erow.course_id), str(erow.learner_id), str(erow.exercise_id))
        if key not in self._exercises:
            self._exercises[key] = (erow, ExerciseState.from_dict(erow.state))

    # -- StateStore -------------------------------------------------------------------------
    def exercise(self, course: str, learner: str, exercise: str) -> ExerciseState:
        key = (course, learner, exercise)
        if key not in self._exercises:  # not prefetched (an exercise left behind): one row
            self.load([(int(learner), int(exercise))])
        return self._exercises[key][1]

    def learner(self, course: str, learner: str) -> LearnerState:
        key = (course, learner)
        if key not in self._learners:
            self.load_learner(int(learner))
        return self._learners[key][1]

    def load_learner(self, learner_id: int) -> None:
        self._load_learners([learner_id])

    def _load_learners(self, learners: list[int]) -> None:
        def rows(ids: list[int]) -> list[DetectionLearnerState]:
            return list(
                self.session.scalars(
                    select(DetectionLearnerState)
                    .where(
                        DetectionLearnerState.course_id == self.course_id,
                        DetectionLearnerState.learner_id.in_(ids),
                    )
                    .order_by(DetectionLearnerState.learner_id)
                    .with_for_update()
                )
            )

        found = rows(learners)
        missing = sorted(set(learners) - {r.learner_id for r in found})
        if missing:
            now = utcnow()
            _ensure(
                self.session,
                DetectionLearnerState,
                [
                    {"course_id": self.course_id, "learner_id": lid, "state": {}, "updated_at": now}
                    for lid in missing
                ],
            )
            found += rows(missing)
        for lrow in found:
            self._learners[(str(self.course_id), str(lrow.learner_id))] = (
                lrow,
                LearnerState.from_dict(lrow.state),
            )

    def save_exercise(self, course: str, learner: str, exercise: str, state: ExerciseState) -> None:
        row, _ = self._exercises[(course, learner, exercise)]
        self._exercises[(course, learner, exercise)] = (row, state)

    def save_learner(self, course: str, learner: str, state: LearnerState) -> None:
        row, _ = self._learners[(course, learner)]
        self._learners[(course, learner)] = (row, state)

    def set_timer(self, key: Key, due: float | None) -> None:
        found = self._exercises.get(key)
        if found is not None:
            found[0].due_at = due

    def due(self, now: float) -> list[Key]:
        out, self._due = self._due, []
        return out

    # -- tick -------------------------------------------------------------------------------
    def load_due(self, now: float, limit: int) -> int:
        """Lock the rows whose timer is due (skipping rows another sweep holds)."""
        rows = list(
            self.session.scalars(
                select(DetectionExerciseState)
                .where(
                    DetectionExerciseState.course_id == self.course_id,
                    DetectionExerciseState.due_at <= now,
                )
                .order_by(DetectionExerciseState.learner_id, DetectionExerciseState.exercise_id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        for erow in rows:
            erow.due_at = None  # the engine sets the next one, if any
            self._add_exercise_row(erow)
            self._due.append((str(erow.course_id), str(erow.learner_id), str(erow.exercise_id)))
        return len(rows)

    def flush(self) -> None:
        now = utcnow()
        for erow, state in self._exercises.values():
            data = state.as_dict()
            if data != erow.state:
                erow.state, erow.updated_at = data, now
        for lrow, lstate in self._learners.values():
            data = lstate.as_dict()
            if data != lrow.state:
                lrow.state, lrow.updated_at = data, now


class DbPeers(PeerStats):
    """``PeerStats`` whose rows (per exercise, and course-wide under ``""``) come from
    ``detection_peer_stats``, locked while the batch runs and written back by ``flush``."""

    def __init__(self, session: Session, course_id: int) -> None:
        super().__init__()
        self.session = session
        self.course_id = course_id
        self._rows: dict[str, tuple[DetectionPeerStats, ExerciseStats]] = {}

    def load(self, exercise_keys: Iterable[str]) -> None:
        keys = sorted({"", *exercise_keys} - set(self._rows))  # "" (the course) sorts first
        if not keys:
            return

        def rows(wanted: list[str]) -> list[DetectionPeerStats]:
            return list(
                self.session.scalars(
                    select(DetectionPeerStats)
                    .where(
                        DetectionPeerStats.course_id == self.course_id,
                        DetectionPeerStats.exercise_key.in_(wanted),
                    )
                    .order_by(DetectionPeerStats.exercise_key)
                    .with_for_update()
                )
            )

        found = rows(keys)
        missing = sorted(set(keys) - {r.exercise_key for r in found})
        if missing:
            now = utcnow()
            _ensure(
                self.session,
                DetectionPeerStats,
                [
                    {"course_id": self.course_id, "exercise_key": k, "stats": {}, "updated_at": now}
                    for k in missing
                ],
            )
            found += rows(missing)
        for row in found:
            stats = ExerciseStats.from_dict(row.stats) if row.stats else ExerciseStats()
            self._rows[row.exercise_key] = (row, stats)

    def exercise(self, course: str, exercise: str) -> ExerciseStats:
        if exercise not in self._rows:
            self.load([exercise])
        return self._rows[exercise][1]

    def course(self, course: str) -> ExerciseStats:
        if "" not in self._rows:
            self.load([])
        return self._rows[""][1]

    def flush(self) -> None:
        now = utcnow()
        for row, stats in self._rows.values():
            data = stats.as_dict()
            if data != row.stats:
                row.stats, row.updated_at = data, now


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


def process_records(session: Session, records: Sequence[ActivityRecord]) -> list[Offer]:
    """Run the engine over a stored batch; returns the offers made.

    The engine's state changes run in a savepoint: if detection fails, it is logged and rolled
    back, and the events stay stored. Offers (and their events) are written after it, outside
    any savepoint: the bus publishes a session's pending events on the first commit it sees,
    and releasing a savepoint counts as one, before the rows are visible to anyone."""
    by_course: dict[int, list[ActivityRecord]] = {}
    for record in records:
        by_course.setdefault(record.course_id, []).append(record)
    made: list[Offer] = []
    for course_id, batch in sorted(by_course.items()):
        try:
            with session.begin_nested():
                decisions, escalate = _run_batch(session, course_id, batch)
        except Exception:
            log.exception(
                "live detection failed for %d records of course %s", len(batch), course_id
            )
            continue
        for decision in decisions:
            offer = act(session, course_id, decision, escalate)
            if offer is not None:
                made.append(offer)
    return made


def _run_batch(
    session: Session, course_id: int, batch: list[ActivityRecord]
) -> tuple[list[Decision], bool]:
    engine, store, peers, escalate = _engine(session, course_id)
    store.load((r.learner_id, r.exercise_id) for r in batch)
    peers.load(str(r.exercise_id) for r in batch)
    slots = free_slots(session, course_id)
    course = str(course_id)
    decisions: list[Decision] = []
    for record in batch:
        decisions.extend(engine.process(course, record.as_event(), free_slots=slots))
    store.flush()
    peers.flush()
    session.flush()
    return decisions, escalate


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
        peers.flush()
        for decision in decisions:
            offer = act(session, course_id, decision, escalate)
            if offer is not None:
                made.append(offer)
    return made


# -- decisions → offers ---------------------------------------------------------------------------


def record_offer(session: Session, kind: str, offer: Offer, **extra: Any) -> None:
    events.record(
        session,
        kind,
        "lifeline",
        course_id=offer.course_id,
        data={
            "learner_id": offer.learner_id,
            "offer_id": offer.id,
            "exercise_id": offer.exercise_id,
            "rule": offer.rule,
            "level": offer.level,
            "severity": offer.severity,
            "status": offer.status,
            **extra,
        },
    )


def open_offers(session: Session, learner_id: int, course_id: int) -> list[Offer]:
    return list(
        session.scalars(
            select(Offer)
            .where(
                Offer.learner_id == learner_id,
                Offer.course_id == course_id,
                Offer.status == OfferStatus.OFFERED.value,
                Offer.created_at >= utcnow() - OFFER_TTL,
            )
            .order_by(Offer.id.desc())
        )
    )


def _has_active_request(session: Session, learner_id: int, course_id: int) -> bool:
    return (
        session.scalar(
            select(HelpRequest.id)
            .where(
                HelpRequest.learner_id == learner_id,
                HelpRequest.course_id == course_id,
                HelpRequest.status.in_(ACTIVE_STATUSES),
            )
            .limit(1)
        )
        is not None
    )


def act(session: Session, course_id: int, decision: Decision, escalate: bool) -> Offer | None:
    """Turn one decision into an offer (or an escalation); None when nothing is to be done."""
    learner_id, exercise_id = int(decision.learner), int(decision.exercise)
    if decision.action == ESCALATE and not escalate:
        return None  # the course keeps to unobtrusive offers
    if _has_active_request(session, learner_id, course_id):
        return None  # already in line or with a tutor: no need to offer one
    previous = [
        o for o in open_offers(session, learner_id, course_id) if o.exercise_id == exercise_id
    ]
    if decision.action == ESCALATE:
        consented = next((o for o in previous if o.consent), None)
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
    level = 2 if decision.action == ESCALATE else 1
    for old in previous:
        old.status, old.responded_at = OfferStatus.EXPIRED.value, utcnow()
        record_offer(session, "offer.expired", old)
    offer = Offer(
        course_id=course_id,
        learner_id=learner_id,
        exercise_id=exercise_id,
        rule=decision.rule,
        level=level,
        severity=decision.severity,
        reason=decision.reason,
        status=OfferStatus.OFFERED.value,
        created_at=utcnow(),
    )
    session.add(offer)
    session.flush()
    record_offer(session, OFFER_CREATED, offer, reason=decision.reason)
    return offer


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
