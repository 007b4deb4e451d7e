"""Each trigger kind: when it fires, when it does not, and how it refuses bad parameters."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import numpy as np
import pytest

from lti_tool.activity.model import ActivityEvent, ActivityKind
from lti_tool.detection.peers import ExerciseStats, Sketch
from lti_tool.detection.state import ExerciseState, LearnerState, StateSettings
from lti_tool.detection.triggers import KINDS, Context, RuleError, build_trigger

T0 = dt.datetime(2024, 3, 1, 9, 0, tzinfo=dt.UTC)
SETTINGS = StateSettings()


def ev(
    kind: str = "submit",
    minute: float = 0,
    correct: bool | None = None,
    error: str | None = None,
    code_length: int | None = None,
    score: float | None = None,
) -> ActivityEvent:
    return ActivityEvent(
        learner="l1",
        exercise="e1",
        kind=ActivityKind(kind),
        at=T0 + dt.timedelta(minutes=minute),
        correct=correct,
        error=error,
        code_length=code_length,
        score=score,
    )


def fold(events: list[ActivityEvent]) -> tuple[ExerciseState, LearnerState]:
    state, learner = ExerciseState(), LearnerState()
    for e in events:
        state.update(e, e.at.timestamp(), SETTINGS, learner)
        learner.last_event_at = e.at.timestamp()
    return state, learner


def check(
    raw: dict[str, Any],
    events: list[ActivityEvent],
    *,
    peers: ExerciseStats | None = None,
    now_minute: float | None = None,
    on_event: bool = True,
) -> str | None:
    """The trigger's reason if it fires after ``events`` (at ``now_minute``), else None."""
    trigger = build_trigger(raw)
    state, learner = fold(events)
    now = (T0 + dt.timedelta(minutes=now_minute)).timestamp() if now_minute is not None else None
    last = events[-1]
    ctx = Context(
        state,
        learner,
        peers or ExerciseStats(),
        now if now is not None else last.at.timestamp(),
        last if on_event else None,
    )
    fired = trigger.check(ctx)
    if fired is None:
        return None
    assert 0.0 <= fired.strength <= 1.0
    return fired.reason


def fails(n: int, start: float = 0, step: float = 2, **kw: Any) -> list[ActivityEvent]:
    return [ev(minute=start + i * step, correct=False, **kw) for i in range(n)]


def peers_with(measure: str, values: list[float]) -> ExerciseStats:
    stats = ExerciseStats()
    for v in values:
        stats.sketch(measure).add(v)
    stats.solved = len(values)
    return stats


# -- consecutive failures -------------------------------------------------------------------


def test_consecutive_failures_absolute() -> None:
    raw = {"trigger": "consecutive_failures", "threshold": 3}
    assert check(raw, fails(2)) is None
    assert check(raw, fails(3)) == "3 failed attempts in a row"
    # a pass in between resets the run; solving silences it for good
    assert check(raw, [*fails(2), ev(minute=5, correct=True), *fails(2, start=6)]) is None
    assert check(raw, [ev(correct=True), *fails(5, start=1)]) is None


def test_consecutive_failures_relative_to_peers() -> None:
    raw = {
        "trigger": "consecutive_failures",
        "threshold": {"peer_percentile": 80, "fallback": 4, "floor": 2, "min_peers": 5},
    }
    # too few peers: the fallback (4) applies
    few = peers_with("streak_before_solve", [1, 1])
    assert check(raw, fails(3), peers=few) is None
    assert check(raw, fails(4), peers=few) is not None
    # ten peers, 80th percentile of their longest streak = 2: three failures exceed it
    many = peers_with("streak_before_solve", [0, 0, 1, 1, 1, 2, 2, 2, 6, 7])
    reason = check(raw, fails(3), peers=many)
    assert reason is not None and "more than 80% of the 10 classmates who solved it" in reason
    assert check(raw, fails(2), peers=many) is None  # not above the percentile
    # the floor holds even when every peer sailed through
    easy = peers_with("streak_before_solve", [0] * 10)
    assert check(raw, fails(1), peers=easy) is None
    assert check(raw, fails(2), peers=easy) is not None


# -- repeated error ----------------------------------------------------------------------------


def test_repeated_error_streak() -> None:
    raw = {"trigger": "repeated_error", "streak": 3}
    same = fails(3, error="SyntaxError: invalid syntax")
    assert check(raw, same) == "the same error (SyntaxError: invalid syntax) 3 times in a row"
    mixed = [*fails(2, error="NameError"), *fails(1, start=5, error="TypeError")]
    assert check(raw, mixed) is None
    assert check(raw, fails(5)) is None  # wrong answers without an error are not "an error"


def test_error_quotient_and_red() -> None:
    errors = fails(4, error="SyntaxError")
    state, _ = fold(errors)
    # three pairs, each both-in-error and same type: (8 + 3) / 11 = 1.0
    assert state.eq_pairs == 3 and state.error_quotient == pytest.approx(1.0)
    # one run of 4 identical errors: r = 3 repeats, RED = 9 / 4
    assert state.repeated_error_density == pytest.approx(9 / 4)
    alternating = [
        ev(minute=i, correct=False, error="NameError" if i % 2 else "TypeError") for i in range(4)
    ]
    state, _ = fold(alternating)
    assert state.error_quotient == pytest.approx(8 / 11)
    assert state.repeated_error_density == 0.0
    assert check({"trigger": "repeated_error", "eq": 0.9}, errors) is not None
    assert check({"trigger": "repeated_error", "eq": 0.9}, alternating) is None
    assert check({"trigger": "repeated_error", "eq": 0.5, "min_pairs": 4}, errors) is None
    assert check({"trigger": "repeated_error", "red": 2.0}, errors) is not None
    assert check({"trigger": "repeated_error", "red": 2.0}, alternating) is None


# -- no progress -----------------------------------------------------------------------------


def test_no_progress_counts_wheel_spinning_not_real_edits() -> None:
    raw = {"trigger": "no_progress", "attempts": 3}
    spinning = [ev(minute=i, correct=False, code_length=100 + (i % 2)) for i in range(4)]
    assert check(raw, spinning) == "3 attempts without progress"
    editing = [ev(minute=i, correct=False, code_length=100 + 20 * i) for i in range(6)]
    assert check(raw, editing) is None
    # a better score is progress even with the same code
    scored = [
        ev(minute=i, correct=False, code_length=100, score=s)
        for i, s in enumerate([0.2, 0.4, 0.6, 0.8])
    ]
    assert check(raw, scored) is None


def test_no_progress_minutes_excludes_idle_gaps() -> None:
    raw = {"trigger": "no_progress", "minutes": 15}
    busy = [ev(minute=i * 4, correct=False, code_length=50) for i in range(6)]  # 20 minutes
    assert check(raw, busy) == "20 active minutes without progress"
    # the same attempts with an hour's break in the middle: the break does not count
    idle = [ev(minute=m, correct=False, code_length=50) for m in (0, 4, 8, 68, 72)]
    assert check(raw, idle) is None


# -- time on exercise ---------------------------------------------------------------------------


def test_time_on_exercise_against_peers() -> None:
    raw = {"trigger": "time_on_exercise", "minutes": {"peer_percentile": 90, "fallback": 20}}
    peers = peers_with("seconds_to_solve", [60.0 * m for m in (3, 4, 5, 5, 6, 6, 7, 8, 9, 10)])
    long = fails(7, step=2)  # 12 active minutes
    reason = check(raw, long, peers=peers)
    assert reason is not None and reason.startswith("12 active minutes on this exercise")
    assert check(raw, fails(4, step=2), peers=peers) is None  # 6 minutes
    # without peers the fallback (20 minutes) applies
    assert check(raw, long) is None
    assert check(raw, fails(12, step=2)) is not None
    # min_failures: a learner who has not failed yet is left alone
    quiet = [ev("run", minute=i * 3) for i in range(10)]
    assert check(raw, quiet, peers=peers) is None


# -- silent after a failure ---------------------------------------------------------------------


def test_silent_after_failure_fires_only_once_time_has_passed() -> None:
    raw = {"trigger": "silent_after_failure", "minutes": 10}
    history = fails(2)
    assert check(raw, history, on_event=True) is None  # at the event itself
    assert check(raw, history, now_minute=9, on_event=False) is None
    reason = check(raw, history, now_minute=12.5, on_event=False)
    assert reason == "stopped after 2 failed attempts (10 minutes without another try)"
    # not after a success, nor after a hint (they did something)
    assert check(raw, [*history, ev(minute=3, correct=True)], now_minute=60) is None
    assert check(raw, [*history, ev("hint", minute=3)], now_minute=60) is None
    assert check({**raw, "min_failures": 3}, history, now_minute=60) is None
    trigger = build_trigger(raw)
    state, _ = fold(history)
    assert trigger.time_based
    assert trigger.due_at(state) == (T0 + dt.timedelta(minutes=12)).timestamp()
    solved, _ = fold([*history, ev(minute=3, correct=True)])
    assert trigger.due_at(solved) is None


# -- rapid guessing -----------------------------------------------------------------------------


def test_rapid_guessing() -> None:
    raw = {"trigger": "rapid_guessing", "count": 3}
    quick = fails(4, step=0.5)  # 30 s apart: three quick ones after the first
    assert check(raw, quick) == "3 quick failed attempts in a row (guessing?)"
    slow = fails(4, step=3)
    assert check(raw, slow) is None


# -- hints ----------------------------------------------------------------------------------------


def test_hints_heavy_and_never() -> None:
    heavy = {"trigger": "hints", "at_least": 3}
    many = [*fails(1), ev("hint", minute=1), ev("hint", minute=2), ev("hint", minute=3)]
    assert check(heavy, many) == "3 hints so far"
    assert check(heavy, many[:3]) is None
    never = {"trigger": "hints", "none_after_failures": 4}
    assert check(never, fails(4)) == "4 failed attempts and no hint asked for"
    assert check(never, fails(3)) is None
    assert check(never, [*fails(4), ev("hint", minute=20)]) is None
    relative = {"trigger": "hints", "at_least": {"peer_percentile": 50, "fallback": 5}}
    peers = peers_with("hints_before_solve", [0, 0, 1, 1, 1, 1])
    assert check(relative, many, peers=peers) is not None


# -- self report ----------------------------------------------------------------------------------


def test_stuck_fires_on_the_learners_own_request_only() -> None:
    raw = {"trigger": "stuck"}
    assert check(raw, [ev("stuck")]) == "asked for help"
    assert check(raw, [ev("stuck"), ev(minute=1, correct=False)]) is None
    assert check(raw, [ev("stuck")], now_minute=5, on_event=False) is None


# -- parameter validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"trigger": "nope"}, "unknown trigger kind 'nope' (known: consecutive_failures"),
        (
            {"trigger": "consecutive_failures", "threshold": 0},
            "trigger 'consecutive_failures': parameter 'threshold' must be >= 1, not 0",
        ),
        (
            {"trigger": "consecutive_failures", "threshold": 2.5},
            "parameter 'threshold' must be a whole number, not 2.5",
        ),
        (
            {"trigger": "consecutive_failures", "threshold": "3"},
            "parameter 'threshold' must be a number or a peer threshold object, not '3'",
        ),
        (
            {"trigger": "consecutive_failures", "threshold": {"peer_percentile": 120}},
            "parameter 'threshold.peer_percentile' must be <= 100, not 120",
        ),
        (
            {"trigger": "consecutive_failures", "threshold": {"peer_percentile": 80}},
            "parameter 'threshold.fallback' is required",
        ),
        (
            {
                "trigger": "consecutive_failures",
                "threshold": {"peer_percentile": 80, "fallback": 3, "min_peer": 5},
            },
            "parameter 'threshold.min_peer' is unknown",
        ),
        (
            {"trigger": "consecutive_failures", "treshold": 3},
            "trigger 'consecutive_failures': unknown parameter 'treshold' (known: threshold)",
        ),
        (
            {"trigger": "repeated_error"},
            "trigger 'repeated_error': give at least one of the parameters 'streak', 'eq' or 'red'",
        ),
        ({"trigger": "repeated_error", "streak": 1}, "parameter 'streak' must be >= 2, not 1"),
        ({"trigger": "repeated_error", "eq": 1.5}, "parameter 'eq' must be <= 1, not 1.5"),
        ({"trigger": "repeated_error", "red": 0}, "parameter 'red' must be > 0, not 0"),
        (
            {"trigger": "no_progress"},
            "trigger 'no_progress': give at least one of the parameters 'attempts' or 'minutes'",
        ),
        ({"trigger": "no_progress", "minutes": -1}, "parameter 'minutes' must be >= 0, not -1"),
        (
            {"trigger": "time_on_exercise", "min_failures": -1},
            "parameter 'min_failures' must be >= 0, not -1",
        ),
        (
            {"trigger": "time_on_exercise", "minutes": float("nan")},
            "parameter 'minutes' must be a finite number, not nan",
        ),
        (
            {"trigger": "silent_after_failure", "minutes": 0},
            "trigger 'silent_after_failure': parameter 'minutes' must be > 0, not 0",
        ),
        (
            {"trigger": "silent_after_failure", "minutes": True},
            "parameter 'minutes' must be a number, not True",
        ),
        ({"trigger": "rapid_guessing", "count": 1}, "parameter 'count' must be >= 2, not 1"),
        (
            {"trigger": "hints"},
            "trigger 'hints': give exactly one of the parameters 'at_least' or"
            " 'none_after_failures'",
        ),
        (
            {"trigger": "hints", "at_least": 2, "none_after_failures": 3},
            "give exactly one of the parameters",
        ),
        ({"trigger": "stuck", "minutes": 3}, "trigger 'stuck': unknown parameter 'minutes'"),
    ],
)
def test_parameters_are_validated_with_a_clear_message(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(RuleError) as caught:
        build_trigger(raw)
    assert message in str(caught.value)


def test_every_kind_round_trips_through_json() -> None:
    examples: dict[str, dict[str, Any]] = {
        "consecutive_failures": {"threshold": {"peer_percentile": 80, "fallback": 3}},
        "repeated_error": {"streak": 3, "eq": 0.5},
        "no_progress": {"attempts": 4},
        "time_on_exercise": {},
        "silent_after_failure": {"minutes": 5},
        "rapid_guessing": {"count": 4},
        "hints": {"none_after_failures": 3},
        "stuck": {},
    }
    assert set(examples) == set(KINDS)
    for kind, params in examples.items():
        trigger = build_trigger({"trigger": kind, **params})
        assert trigger.as_json() == {"trigger": kind, **params}
        assert build_trigger(trigger.as_json()).as_json() == trigger.as_json()


# -- the peer sketch ----------------------------------------------------------------------------


def test_sketch_percentiles_are_exact_for_small_counts_and_close_above() -> None:
    rng = random.Random(7)
    sketch = Sketch()
    values: list[int] = []
    for _ in range(500):
        v = rng.randint(0, 25)
        values.append(v)
        sketch.add(v)
        for q in (50, 80, 90):
            # nearest-rank percentile, recomputed from scratch, equals the incremental one
            assert sketch.percentile(q) == float(np.percentile(values, q, method="inverted_cdf"))
    big = Sketch()
    seconds = [rng.uniform(30, 5000) for _ in range(300)]
    for v in seconds:
        big.add(v)
    exact = float(np.percentile(seconds, 90, method="inverted_cdf"))
    assert abs(big.percentile(90) - exact) / exact < 0.1
    assert big.rank(1e9) == 1.0 and Sketch().rank(3) == 0.5 and Sketch().percentile(50) == 0.0
    assert Sketch.from_dict(big.as_dict()).percentile(90) == big.percentile(90)
    assert len(big.counts) <= Sketch.BINS
