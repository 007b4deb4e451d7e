"""Backtest: what a rule book would have flagged on a course's past activity.

The course's ``ActivityRecord``s are replayed in time order (``occurred_at``, then id) through
the same ``Engine`` live ingestion uses, with a fresh in-memory store and fresh peer statistics:
before each event the clock advances (``tick``), then the event is processed, so every decision
uses only events already seen (no look-ahead). At the end the clock advances to ``until``
(default: now), so silence after a last failure counts as it would have live.

Counted: decisions (offers and escalations), learners and (learner, exercise) attempts flagged,
the flags per day (or per week over long spans), and the flagged attempts whose learner went on
to solve alone: a later correct submission with no help request on that exercise and no offer
on it accepted between the first flag and that submission.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..activity.model import ActivityKind, ActivityRecord
from ..db import utcnow
from ..help.models import HelpRequest
from .engine import ESCALATE, OFFER, Decision, Engine
from .models import Offer, OfferStatus
from .peers import PeerStats
from .rules import RuleBook
from .state import InMemoryStore

MAX_RECORDS = 500_000  # a replay beyond this many events is cut (and says so)
MAX_DAY_BINS = 62  # longer spans are binned per week


@dataclass
class Backtest:
    events: int = 0
    offers: int = 0
    escalations: int = 0
    learners_flagged: int = 0
    attempts_flagged: int = 0  # (learner, exercise) pairs with at least one flag
    solved_alone: int = 0  # flagged attempts later solved with no help in between
    by_rule: dict[str, int] = field(default_factory=dict)  # first flags per rule
    timeline: list[tuple[str, int]] = field(default_factory=list)  # (day or week, flags)
    truncated: bool = False

    @property
    def solved_alone_share(self) -> float | None:
        return self.solved_alone / self.attempts_flagged if self.attempts_flagged else None


def _utc(at: dt.datetime) -> dt.datetime:
    return at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at.astimezone(dt.UTC)


def _timeline(
    flags: list[dt.datetime], first: dt.datetime | None, last: dt.datetime | None
) -> list[tuple[str, int]]:
    if first is None or last is None:
        return []
    start, end = _utc(first).date(), _utc(last).date()
    for at in flags:
        end = max(end, _utc(at).date())
    days = (end - start).days + 1
    step = 1 if days <= MAX_DAY_BINS else 7
    counts = Counter((_utc(at).date() - start).days // step for at in flags)
    return [
        ((start + dt.timedelta(days=i * step)).isoformat(), counts.get(i, 0))
        for i in range((days + step - 1) // step)
    ]


def run(
    session: Session, course_id: int, book: RuleBook, *, until: dt.datetime | None = None
) -> Backtest:
    """Replay course ``course_id``'s activity through ``book`` (nothing is written)."""
    course = str(course_id)
    engine = Engine(book, store=InMemoryStore(), peers=PeerStats())
    result = Backtest()
    first_flag: dict[tuple[int, int], dt.datetime] = {}
    first_rule: dict[tuple[int, int], str] = {}
    solved_after: dict[tuple[int, int], dt.datetime] = {}
    flag_times: list[dt.datetime] = []
    first_at: dt.datetime | None = None
    last_at: dt.datetime | None = None

    def note(decisions: list[Decision]) -> None:
        for d in decisions:
            key = (int(d.learner), int(d.exercise))
            if d.action == ESCALATE:
                result.escalations += 1
            elif d.action == OFFER:
                result.offers += 1
            flag_times.append(d.at)
            if key not in first_flag:
                first_flag[key] = d.at
                first_rule[key] = d.rule

    records = session.scalars(
        select(ActivityRecord)
        .where(ActivityRecord.course_id == course_id)
        .order_by(ActivityRecord.occurred_at, ActivityRecord.id)
        .limit(MAX_RECORDS + 1)
        .execution_options(yield_per=2000)
    )
    for record in records:
        if result.events >= MAX_RECORDS:
            result.truncated = True
            break
        result.events += 1
        at = _utc(record.occurred_at)
        first_at = first_at or at
        last_at = at
        note(engine.tick(at))
        note(engine.process(course, record.as_event()))
        key = (record.learner_id, record.exercise_id)
        if (
            record.kind == ActivityKind.SUBMIT.value
            and record.correct
            and key in first_flag
            and key not in solved_after
            and at >= _utc(first_flag[key])
        ):
            solved_after[key] = at
    if last_at is not None:
        end = _utc(until) if until is not None else utcnow()
        if end > last_at:
            note(engine.tick(end))

    result.attempts_flagged = len(first_flag)
    result.learners_flagged = len({learner for learner, _ in first_flag})
    result.by_rule = dict(Counter(first_rule.values()).most_common())
    result.timeline = _timeline(flag_times, first_at, last_at)
    result.solved_alone = _solved_alone(session, course_id, first_flag, solved_after)
    return result


def _solved_alone(
    session: Session,
    course_id: int,
    first_flag: dict[tuple[int, int], dt.datetime],
    solved_after: dict[tuple[int, int], dt.datetime],
) -> int:
    if not solved_after:
        return 0
    helped: dict[tuple[int, int], list[dt.datetime]] = {}
    for learner, exercise, at in session.execute(
        select(HelpRequest.learner_id, HelpRequest.exercise_id, HelpRequest.created_at).where(
            HelpRequest.course_id == course_id, HelpRequest.exercise_id.is_not(None)
        )
    ):
        if exercise is not None:
            helped.setdefault((learner, exercise), []).append(_utc(at))
    for learner, exercise, responded in session.execute(
        select(Offer.learner_id, Offer.exercise_id, Offer.responded_at).where(
            Offer.course_id == course_id,
            Offer.status == OfferStatus.ACCEPTED.value,
            Offer.responded_at.is_not(None),
        )
    ):
        if responded is not None:
            helped.setdefault((learner, exercise), []).append(_utc(responded))
    alone = 0
    for key, solved in solved_after.items():
        flagged = _utc(first_flag[key])
        if not any(flagged <= at <= solved for at in helped.get(key, ())):
            alone += 1
    return alone
