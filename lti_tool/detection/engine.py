"""The detection engine: events in, decisions out. Live ingestion and ``lifeline evaluate``
call it the same way::

    engine = Engine(default_rules(), store=InMemoryStore(), peers=PeerStats())
    for decision in engine.process(course_key, event, free_slots=3):
        ...  # offer a tutor, or escalate an earlier offer
    engine.tick(now)  # time-based triggers (silence after a failure)

Each ``process`` does constant work: it updates the counters of one (learner, exercise) and of
the learner, updates the exercise's peer statistics when the learner solves it, evaluates that
exercise's rules and applies the policy (cooldown, daily limit, tutor capacity, the ladder).
"""

from __future__ import annotations

import datetime as dt
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass

from ..activity.model import ActivityEvent, ActivityKind
from .peers import PeerStats
from .rules import Rule, RuleBook
from .score import LogisticModel, features
from .state import (
    ATTEMPT_KINDS,
    SESSION_GAP,
    ExerciseState,
    InMemoryStore,
    LearnerState,
    StateSettings,
    StateStore,
)
from .triggers import Context, Trigger

OFFER = "offer"
ESCALATE = "escalate"


@dataclass(frozen=True)
class Decision:
    """Offer a tutor to a learner on an exercise (or escalate the offer made earlier)."""

    course: str
    learner: str
    exercise: str
    rule: str
    action: str  # "offer" or "escalate"
    severity: float  # 0..1, feeds queue order
    reason: str  # for the learner and the tutor
    order: int  # the ``order`` of the last event of this learner on this exercise
    at: dt.datetime
    score: float | None = None  # the learned score at this point, when a model is loaded


class _Selector:
    """The rules of a plan that may fire for a state, found without evaluating the others.

    Each rule's gates (``Rule.gates``: "unsolved and ``field >= bound``", any one of which must
    hold for it to fire) are indexed by field, sorted by bound: one ``getattr`` and one bisect
    per field find every rule whose gate holds. Rules without gates are always candidates.
    Candidates come back in the rules' order, so ties are broken as by evaluating them all.
    """

    __slots__ = ("always", "fields", "rules")

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self.rules = rules
        always: list[int] = []
        by_field: dict[str, list[tuple[float, int]]] = {}
        for i, rule in enumerate(rules):
            gates = rule.gates()
            if gates is None:
                always.append(i)
                continue
            for name, bound in gates:
                by_field.setdefault(name, []).append((bound, i))
        self.always: tuple[Rule, ...] = tuple(rules[i] for i in always)
        self.fields: tuple[tuple[str, list[float], tuple[int, ...], frozenset[int]], ...] = tuple(
            (
                name,
                [bound for bound, _ in sorted(entries)],
                tuple(i for _, i in sorted(entries)),
                frozenset(always),
            )
            for name, entries in by_field.items()
        )

    def select(self, state: ExerciseState) -> tuple[Rule, ...] | list[Rule]:
        if state.solved or not self.fields:
            return self.always
        picked: set[int] | None = None
        for name, bounds, index, always in self.fields:
            n = bisect_right(bounds, getattr(state, name))
            if n:
                if picked is None:
                    picked = set(always)
                picked.update(index[:n])
        if picked is None:
            return self.always
        rules = self.rules
        return [rules[i] for i in sorted(picked)]


@dataclass(frozen=True)
class _Plan:
    rules: tuple[Rule, ...]
    by_name: dict[str, Rule]
    time_rules: tuple[Rule, ...]
    time_triggers: tuple[Trigger, ...]
    select: _Selector
    time_select: _Selector


RuleSource = RuleBook | Callable[[str], RuleBook]


def _ts(at: dt.datetime) -> float:
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    return at.timestamp()


class Engine:
    def __init__(
        self,
        rules: RuleSource,
        store: StateStore | None = None,
        peers: PeerStats | None = None,
        *,
        settings: StateSettings | None = None,
        model: LogisticModel | None = None,
    ) -> None:
        self._rules = rules
        self.store: StateStore = store if store is not None else InMemoryStore()
        self.peers = peers if peers is not None else PeerStats()
        self.settings = settings or StateSettings()
        self.model = model

    # -- rules -----------------------------------------------------------------------------
    def book(self, course: str) -> RuleBook:
        return self._rules if isinstance(self._rules, RuleBook) else self._rules(course)

    def _plan(self, book: RuleBook, exercise: str) -> _Plan:
        # Compiled once per rule book and exercise, kept on the book (books are cached per
        # stored version by ``live.load_rules``, so every batch of a course shares them).
        plans: dict[str, _Plan] | None = book.__dict__.get("_plans")
        if plans is None:
            plans = {}
            object.__setattr__(book, "_plans", plans)
        plan = plans.get(exercise)
        if plan is None:
            rules = book.for_exercise(exercise)
            time_rules = tuple(r for r in rules if r.time_based)
            plan = _Plan(
                rules,
                {r.name: r for r in rules},
                time_rules,
                tuple(t for r in time_rules for t in r.when.triggers() if t.time_based),
                _Selector(rules),
                _Selector(time_rules),
            )
            if len(plans) > 100_000:
                plans.clear()
            plans[exercise] = plan
        return plan

    # -- events ----------------------------------------------------------------------------
    def process(
        self, course: str, event: ActivityEvent, *, free_slots: int | None = None
    ) -> list[Decision]:
        """Fold one event in and return what to do now (usually nothing)."""
        at = _ts(event.at)
        store = self.store
        learner = store.learner(course, event.learner)
        state = store.exercise(course, event.learner, event.exercise)

        previous = learner.current_exercise
        if previous is not None and previous != event.exercise:
            self._left(course, event.learner, previous, learner)
        if learner.last_event_at is None or at - learner.last_event_at > SESSION_GAP:
            learner.session_start = at
            learner.session_exercises = 0
        if state.first_at is None:
            learner.started += 1
            learner.session_exercises += 1
            self.peers.started(course, event.exercise)
        was_solved = state.solved
        submits_before = state.submits
        hints_before = state.hints
        failures_before = state.failures
        state.update(event, at, self.settings, learner)

        if event.kind in ATTEMPT_KINDS:
            failed = state.failures > failures_before
            learner.submits += 1
            learner.failures += int(failed)
            if failed and failures_before == 0:
                learner.failed += 1
                self.peers.first_failure(course, event.exercise)
            self.peers.attempted(course, event.exercise, failed)
            if submits_before == 0 and state.submits == 1:
                learner.first_tries += 1
                learner.first_try_correct += int(state.solved)
                self.peers.first_try(course, event.exercise, state.solved)
        if state.hints > hints_before:
            if hints_before == 0:
                learner.hinted += 1
                self.peers.hinted(course, event.exercise)
            if not state.struggle_counted:
                self._struggle(course, event.exercise, state, learner, leaving=False)
            state.struggle_from_leaving = False  # a hint makes it a struggle for good
        if state.solved and not was_solved:
            learner.solved += 1
            learner.note_outcome(False)
            if state.struggle_from_leaving:  # came back and solved it after all
                state.struggle_counted = state.struggle_from_leaving = False
                learner.struggled -= 1
                learner.failed_struggled -= 1
                self.peers.struggled(course, event.exercise, -1, failed=True)
            self.peers.solved(
                course,
                event.exercise,
                {
                    "failures_before_solve": state.failures,
                    "streak_before_solve": state.max_consecutive_failures,
                    "attempts_before_solve": state.attempts,
                    "seconds_to_solve": state.active_seconds,
                    "hints_before_solve": state.hints,
                    **(
                        {"solution_length": state.last_code_length}
                        if state.last_code_length is not None
                        else {}
                    ),
                },
            )
        learner.last_event_at = at
        learner.current_exercise = event.exercise

        book = self.book(course)
        plan = self._plan(book, event.exercise)
        decisions = self._decide(
            course,
            event.learner,
            event.exercise,
            state,
            learner,
            book,
            plan,
            at,
            event,
            free_slots,
        )
        store.set_timer((course, event.learner, event.exercise), self._due(plan, state, at))
        store.save_exercise(course, event.learner, event.exercise, state)
        store.save_learner(course, event.learner, learner)
        return decisions

    def tick(self, now: dt.datetime, *, free_slots: int | None = None) -> list[Decision]:
        """Check the time-based triggers whose moment has come (call as time advances)."""
        ts = _ts(now)
        out: list[Decision] = []
        for course, learner_key, exercise in self.store.due(ts):
            state = self.store.exercise(course, learner_key, exercise)
            learner = self.store.learner(course, learner_key)
            book = self.book(course)
            plan = self._plan(book, exercise)
            out.extend(
                self._decide(
                    course,
                    learner_key,
                    exercise,
                    state,
                    learner,
                    book,
                    plan,
                    ts,
                    None,
                    free_slots,
                )
            )
            due = self._due(plan, state, ts)
            self.store.set_timer((course, learner_key, exercise), due)
            self.store.save_exercise(course, learner_key, exercise, state)
            self.store.save_learner(course, learner_key, learner)
        return out

    def score(self, course: str, learner: str, exercise: str, now: dt.datetime) -> float | None:
        """The learned score for a (learner, exercise) at ``now`` (None without a model)."""
        if self.model is None:
            return None
        return self.model.predict(self.features(course, learner, exercise, now))

    def features(self, course: str, learner: str, exercise: str, now: dt.datetime) -> list[float]:
        return features(
            self.store.exercise(course, learner, exercise),
            self.store.learner(course, learner),
            self.peers.exercise(course, exercise),
            self.peers.course(course),
            _ts(now),
        )

    # -- internals -------------------------------------------------------------------------
    def _left(self, course: str, learner_key: str, exercise: str, learner: LearnerState) -> None:
        """The learner moved on: an exercise left unsolved after failing counts as a struggle."""
        state = self.store.exercise(course, learner_key, exercise)
        if not state.solved and state.failures and not state.struggle_counted:
            self._struggle(course, exercise, state, learner, leaving=True)
            self.store.save_exercise(course, learner_key, exercise, state)

    def _struggle(
        self,
        course: str,
        exercise: str,
        state: ExerciseState,
        learner: LearnerState,
        *,
        leaving: bool,
    ) -> None:
        state.struggle_counted = True
        state.struggle_from_leaving = leaving
        failed = state.failures > 0
        learner.struggled += 1
        learner.failed_struggled += int(failed)
        learner.note_outcome(True)
        self.peers.struggled(course, exercise, failed=failed)

    def _due(self, plan: _Plan, state: ExerciseState, now: float) -> float | None:
        due: float | None = None
        for trigger in plan.time_triggers:
            at = trigger.due_at(state)
            if at is not None and at > now and (due is None or at < due):
                due = at
        return due

    def _decide(
        self,
        course: str,
        learner_key: str,
        exercise: str,
        state: ExerciseState,
        learner: LearnerState,
        book: RuleBook,
        plan: _Plan,
        now: float,
        event: ActivityEvent | None,
        free_slots: int | None,
    ) -> list[Decision]:
        selector = plan.select if event is not None else plan.time_select
        if not selector.rules:
            return []
        # Only the rules whose gates hold can fire; the others are not evaluated.
        candidates = selector.select(state)
        ladder = state.offer_rule is not None and not state.escalated and not state.solved
        if not candidates and not ladder:
            return []
        ctx = Context(state, learner, self.peers.exercise(course, exercise), now, event)
        when = dt.datetime.fromtimestamp(now, dt.UTC)

        def decision(rule: str, action: str, severity: float, reason: str) -> Decision:
            score = None
            if self.model is not None:
                score = self.model.predict(
                    features(state, learner, ctx.peers, self.peers.course(course), now)
                )
            return Decision(
                course,
                learner_key,
                exercise,
                rule,
                action,
                round(severity, 4),
                reason,
                state.last_order,
                when,
                score,
            )

        # The ladder: an offer followed by more failures is escalated (once per offer).
        if ladder:
            assert state.offer_rule is not None
            offered = plan.by_name.get(state.offer_rule)
            if (
                offered is not None
                and offered.escalate
                and state.failures - state.offer_failures >= offered.escalate_after_failures
            ):
                state.escalated = True
                failed_since = state.failures - state.offer_failures
                return [
                    decision(
                        offered.name,
                        ESCALATE,
                        min(1.0, state.offer_severity + 0.2),
                        f"still failing after the offer ({failed_since} more failed attempts)",
                    )
                ]

        best: tuple[float, str, Rule] | None = None
        for rule in candidates:
            fired = rule.fire(ctx)
            if fired is not None and (best is None or fired[0] > best[0]):
                best = (fired[0], fired[1], rule)
        if best is None:
            return []
        severity, reason, rule = best
        policy = book.policy
        # The learner's own "I'm stuck" is never held back by the cooldown or the daily limit.
        self_report = event is not None and event.kind is ActivityKind.STUCK
        day = int(now // 86400)
        if learner.alert_day != day:
            learner.alert_day, learner.alerts_today = day, 0
        if not self_report:
            if (
                state.last_alert_at is not None
                and now - state.last_alert_at < policy.cooldown_minutes * 60.0
            ):
                return []
            if policy.daily_limit and learner.alerts_today >= policy.daily_limit:
                return []
        if (
            free_slots is not None
            and free_slots <= 0
            and severity < policy.full_capacity_min_severity
        ):
            return []
        learner.alerts_today += 1
        state.alerts += 1
        state.last_alert_at = now
        state.offer_rule = rule.name
        state.offer_severity = severity
        state.offer_failures = state.failures
        state.escalated = False
        return [decision(rule.name, OFFER, severity, reason)]
