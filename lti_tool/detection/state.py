"""Detection state: a fixed set of counters per (learner, exercise) and per learner.

Every event updates the counters in constant time; nothing here keeps a list of past events,
so the state of a learner who made ten thousand attempts is as small as one who made three
(``ExerciseState`` and ``LearnerState`` have a fixed set of scalar fields). The engine reaches
state only through ``StateStore``; ``InMemoryStore`` is the implementation used by tests and
the offline replay, and a database- or Redis-backed store only has to implement the same few
methods (the states serialise to flat dicts with ``as_dict`` / ``from_dict``).
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ..activity.model import ActivityEvent, ActivityKind

# Kinds that are an attempt at the exercise (as opposed to a hint or a cry for help).
ATTEMPT_KINDS = frozenset(
    {
        ActivityKind.SUBMIT,
        ActivityKind.RUN,
        ActivityKind.COMPILE_ERROR,
        ActivityKind.RUNTIME_ERROR,
    }
)


@dataclass(frozen=True)
class StateSettings:
    """How raw events become counters. These are measurement choices, not alert thresholds."""

    idle_cap_minutes: float = 10.0  # a gap longer than this is a break, not working time
    rapid_gap_seconds: float = 60.0  # a failed submission this soon after the previous is rapid
    min_edit_chars: int = 8  # without scores, a code change this large counts as progress

    def __post_init__(self) -> None:
        if not self.idle_cap_minutes > 0:
            raise ValueError("idle_cap_minutes must be > 0")
        if not self.rapid_gap_seconds >= 0:
            raise ValueError("rapid_gap_seconds must be >= 0")
        if self.min_edit_chars < 1:
            raise ValueError("min_edit_chars must be >= 1")


SESSION_GAP = 30 * 60.0  # seconds without any event that end a work session
RECENT_ALPHA = 0.3  # weight of the newest outcome in LearnerState.recent_struggle

_S = TypeVar("_S", bound="_Flat")


class _Flat:
    """Flat-dict round trip for the persistence of a state dataclass."""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload, no-any-return]

    @classmethod
    def from_dict(cls: type[_S], data: dict[str, Any]) -> _S:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(slots=True)
class LearnerState(_Flat):
    """One learner across the exercises of a course (learner history)."""

    started: int = 0  # exercises with at least one event
    solved: int = 0
    struggled: int = 0  # exercises where they asked for a hint or left unsolved after failing
    hinted: int = 0  # exercises where they asked for a hint
    failed: int = 0  # exercises where they failed at least once
    failed_struggled: int = 0  # ... and then asked for a hint or left unsolved
    submits: int = 0
    failures: int = 0
    first_tries: int = 0  # exercises whose first graded attempt we saw
    first_try_correct: int = 0
    last_event_at: float | None = None
    current_exercise: str | None = None
    recent_struggle: float = -1.0  # moving average of recent outcomes (1 struggle, 0 solved)
    session_start: float | None = None  # a gap over SESSION_GAP starts a new work session
    session_exercises: int = 0
    alert_day: int = -1  # UTC day number of ``alerts_today``
    alerts_today: int = 0

    def note_outcome(self, struggled: bool) -> None:
        if self.recent_struggle < 0:
            self.recent_struggle = float(struggled)
        else:
            self.recent_struggle += RECENT_ALPHA * (float(struggled) - self.recent_struggle)

    def prior_struggle_rate(self, current: ExerciseState, prior: float, weight: float) -> float:
        """Share of the learner's *other* exercises that were a struggle, shrunk to ``prior``."""
        started = self.started - 1
        struggled = self.struggled - (1 if current.struggle_counted else 0)
        return (struggled + prior * weight) / (max(started, 0) + weight)

    def prior_struggle_after_failing(
        self, current: ExerciseState, prior: float, weight: float
    ) -> float:
        """Share of the other exercises they failed at that became a struggle, shrunk."""
        failed = self.failed - (1 if current.failures else 0)
        struggled = self.failed_struggled - (
            1 if current.struggle_counted and current.failures else 0
        )
        return (struggled + prior * weight) / (max(failed, 0) + weight)

    def prior_hint_rate(self, current: ExerciseState, prior: float, weight: float) -> float:
        """Share of the learner's other exercises where they asked for a hint, shrunk."""
        started = self.started - 1
        hinted = self.hinted - (1 if current.hints else 0)
        return (hinted + prior * weight) / (max(started, 0) + weight)

    def failure_rate(self, prior: float, weight: float) -> float:
        return (self.failures + prior * weight) / (self.submits + weight)

    def first_try_rate(self, prior: float, weight: float) -> float:
        return (self.first_try_correct + prior * weight) / (self.first_tries + weight)


@dataclass(slots=True)
class ExerciseState(_Flat):
    """One learner on one exercise. Times are POSIX seconds."""

    first_at: float | None = None
    last_at: float | None = None
    last_order: int = 0
    events: int = 0
    attempts: int = 0
    submits: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    max_consecutive_failures: int = 0
    last_failure_at: float | None = None
    last_event_failed: bool = False
    # errors: the same error again, Jadud's Error Quotient, Becker's Repeated Error Density
    last_error: str | None = None
    same_error_streak: int = 0
    prev_attempt_seen: bool = False
    prev_attempt_error: str | None = None
    eq_sum: float = 0.0
    eq_pairs: int = 0
    red_done: float = 0.0
    red_repeats: int = 0
    # progress
    best_score: float | None = None
    ref_code_length: int | None = None  # code length at the last progress
    last_code_length: int | None = None
    last_code_change: int | None = None  # |change in code length| at the last attempt
    last_progress_at: float | None = None
    attempts_since_progress: int = 0
    active_since_progress: float = 0.0  # seconds
    unchanged_streak: int = 0  # consecutive attempts whose code did not change
    # time
    active_seconds: float = 0.0
    # help
    hints: int = 0
    stuck_reports: int = 0
    rapid_streak: int = 0
    last_attempt_at: float | None = None
    solved: bool = False
    solved_at: float | None = None
    struggle_counted: bool = False
    struggle_from_leaving: bool = False
    # offers (the ladder) and the silence timer
    last_alert_at: float | None = None
    offer_rule: str | None = None
    offer_severity: float = 0.0
    offer_failures: int = 0
    escalated: bool = False
    alerts: int = 0
    timer_due: float | None = None

    # -- derived measures --------------------------------------------------------------
    @property
    def error_quotient(self) -> float:
        """Jadud's EQ: mean pair score over consecutive attempts (0 with no pair yet)."""
        return self.eq_sum / self.eq_pairs if self.eq_pairs else 0.0

    @property
    def repeated_error_density(self) -> float:
        """Becker's RED: sum over runs of r repeated identical errors of r^2 / (r + 1)."""
        r = self.red_repeats
        return self.red_done + (r * r / (r + 1) if r else 0.0)

    def idle_seconds(self, now: float) -> float:
        return now - self.last_at if self.last_at is not None else 0.0

    def minutes_on_exercise(self) -> float:
        return self.active_seconds / 60.0

    # -- the update ----------------------------------------------------------------------
    def update(
        self, event: ActivityEvent, at: float, settings: StateSettings, learner: LearnerState
    ) -> None:
        """Fold one event in. Constant work: only the fields above are read and written."""
        cap = settings.idle_cap_minutes * 60.0
        previous = self.last_at if self.last_at is not None else learner.last_event_at
        gap = at - previous if previous is not None else 0.0
        active = gap if 0.0 <= gap <= cap else 0.0
        if self.first_at is None:
            self.first_at = at
            self.last_progress_at = at
        self.events += 1
        self.active_seconds += active
        self.active_since_progress += active
        self.last_at = at
        self.last_order = event.order
        kind = event.kind
        if kind is ActivityKind.HINT:
            self.hints += 1
            self.last_event_failed = False
            return
        if kind is ActivityKind.STUCK:
            self.stuck_reports += 1
            return
        if kind not in ATTEMPT_KINDS:  # pragma: no cover - every kind is handled above
            return
        self._attempt(event, at, settings)

    def _attempt(self, event: ActivityEvent, at: float, settings: StateSettings) -> None:
        kind = event.kind
        prev_error = self.prev_attempt_error
        self.attempts += 1
        graded = kind is ActivityKind.SUBMIT and (
            event.correct is not None or event.score is not None
        )
        error = event.error
        if error is None and kind in (ActivityKind.COMPILE_ERROR, ActivityKind.RUNTIME_ERROR):
            error = kind.value
        correct = bool(event.correct) or (event.score is not None and event.score >= 1.0)
        failed = (graded and not correct) or error is not None
        if kind is ActivityKind.SUBMIT:
            self.submits += 1

        # Jadud EQ (pair: 8 if both end in error, +3 if the same error type; / 11) and
        # Becker RED (runs of identical errors).
        if self.prev_attempt_seen:
            pair = 0.0
            if error is not None and self.prev_attempt_error is not None:
                pair = 8.0 + (3.0 if error == self.prev_attempt_error else 0.0)
            self.eq_sum += pair / 11.0
            self.eq_pairs += 1
        if error is not None and error == self.prev_attempt_error:
            self.red_repeats += 1
        else:
            r = self.red_repeats
            if r:
                self.red_done += r * r / (r + 1)
            self.red_repeats = 0
        self.prev_attempt_seen = True
        self.prev_attempt_error = error

        if error is not None and error == self.last_error:
            self.same_error_streak += 1
        else:
            self.same_error_streak = 1 if error is not None else 0
        self.last_error = error

        # rapid guessing: failed attempts in quick succession
        quick = (
            self.last_attempt_at is not None
            and at - self.last_attempt_at <= settings.rapid_gap_seconds
        )
        self.last_attempt_at = at

        # progress: correct, a better score, an error fixed, or (no scores) a real code change
        length = event.code_length
        unchanged = length is not None and length == self.last_code_length
        self.unchanged_streak = self.unchanged_streak + 1 if unchanged else 0
        progress = correct
        if event.score is not None and (self.best_score is None or event.score > self.best_score):
            progress = progress or self.best_score is not None
            self.best_score = event.score
        if not progress and event.score is None:
            fixed_error = error is None and prev_error is not None
            edited = (
                length is not None
                and self.ref_code_length is not None
                and abs(length - self.ref_code_length) >= settings.min_edit_chars
            )
            first_code = length is not None and self.ref_code_length is None
            progress = fixed_error or edited or first_code
        if length is not None and self.last_code_length is not None:
            self.last_code_change = abs(length - self.last_code_length)
        self.last_code_length = length if length is not None else self.last_code_length
        if progress:
            self.last_progress_at = at
            self.attempts_since_progress = 0
            self.active_since_progress = 0.0
            if length is not None:
                self.ref_code_length = length
        else:
            self.attempts_since_progress += 1

        if failed:
            self.failures += 1
            self.consecutive_failures += 1
            self.max_consecutive_failures = max(
                self.max_consecutive_failures, self.consecutive_failures
            )
            self.last_failure_at = at
            self.last_event_failed = True
            self.rapid_streak = self.rapid_streak + 1 if quick else 0
        else:
            self.consecutive_failures = 0
            self.last_event_failed = False
            self.rapid_streak = 0
        if correct and not self.solved:
            self.solved = True
            self.solved_at = at


Key = tuple[str, str, str]  # (course, learner, exercise)


class StateStore(Protocol):
    """Where the engine keeps per-learner state. Implement this to persist it elsewhere.

    ``exercise`` and ``learner`` return the live object (created empty when unknown); the engine
    mutates it and then calls ``save_*`` so a store that copies in and out can write back.
    Timers wake the engine for time-based triggers: ``set_timer`` replaces any earlier one for
    the key and ``due`` pops those due by ``now``.
    """

    def exercise(self, course: str, learner: str, exercise: str) -> ExerciseState: ...

    def learner(self, course: str, learner: str) -> LearnerState: ...

    def save_exercise(
        self, course: str, learner: str, exercise: str, state: ExerciseState
    ) -> None: ...

    def save_learner(self, course: str, learner: str, state: LearnerState) -> None: ...

    def set_timer(self, key: Key, due: float | None) -> None: ...

    def due(self, now: float) -> list[Key]: ...


class InMemoryStore:
    """Dicts and a heap of timers; everything lives as long as the process."""

    def __init__(self) -> None:
        self._exercises: dict[Key, ExerciseState] = {}
        self._learners: dict[tuple[str, str], LearnerState] = {}
        self._timers: dict[Key, float] = {}
        self._heap: list[tuple[float, Key]] = []

    def exercise(self, course: str, learner: str, exercise: str) -> ExerciseState:
        key = (course, learner, exercise)
        found = self._exercises.get(key)
        if found is None:
            found = self._exercises[key] = ExerciseState()
        return found

    def learner(self, course: str, learner: str) -> LearnerState:
        key = (course, learner)
        found = self._learners.get(key)
        if found is None:
            found = self._learners[key] = LearnerState()
        return found

    def save_exercise(self, course: str, learner: str, exercise: str, state: ExerciseState) -> None:
        self._exercises[(course, learner, exercise)] = state

    def save_learner(self, course: str, learner: str, state: LearnerState) -> None:
        self._learners[(course, learner)] = state

    def set_timer(self, key: Key, due: float | None) -> None:
        if due is None:
            self._timers.pop(key, None)
            return
        if self._timers.get(key) == due:
            return
        self._timers[key] = due
        heapq.heappush(self._heap, (due, key))

    def due(self, now: float) -> list[Key]:
        out: list[Key] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, key = heapq.heappop(heap)
            if self._timers.get(key) == due:  # stale entries (replaced timers) are skipped
                del self._timers[key]
                out.append(key)
        return out

    def exercise_states(self) -> Iterator[tuple[Key, ExerciseState]]:
        yield from self._exercises.items()

    def __len__(self) -> int:
        return len(self._exercises)
