"""The learned score's feature pipeline: no look-ahead, no label leakage, grouped CV, and the
features meaning what their names say. Synthetic streams where a leak would show."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random

import numpy as np
import pytest

from lti_tool.activity.model import ActivityEvent, ActivityKind
from lti_tool.detection import Engine, ExerciseState, LearnerState, LogisticModel, default_rules
from lti_tool.detection.evaluate import COURSE, Replay, cross_validate, replay
from lti_tool.detection.score import BASELINE_FEATURES, FEATURES
from lti_tool.detection.state import StateSettings

T0 = dt.datetime(2024, 3, 1, 9, 0, tzinfo=dt.UTC)


def at(minute: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minute)


def submit(
    learner: str,
    exercise: str,
    minute: float,
    correct: bool,
    length: int,
    order: int,
    error: str | None = None,
) -> ActivityEvent:
    return ActivityEvent(
        learner=learner,
        exercise=exercise,
        kind=ActivityKind.SUBMIT,
        at=at(minute),
        order=order,
        correct=correct,
        error=error,
        code_length=length,
    )


def hint(learner: str, exercise: str, minute: float, order: int) -> ActivityEvent:
    return ActivityEvent(learner, exercise, ActivityKind.HINT, at(minute), order)


def stream(seed: int, learners: int = 30, exercises: int = 5) -> list[ActivityEvent]:
    """Learners working through exercises at staggered times: fail, retry, solve, ask for a
    hint or give up, with code lengths and syntax errors; sorted like a ProgSnap2 replay."""
    rng = random.Random(seed)
    events: list[ActivityEvent] = []
    order = 0
    for i in range(learners):
        learner = f"L{i:02d}"
        minute = rng.uniform(0, 600)
        for x in range(exercises):
            exercise = f"e{x}"
            size = 60 + 40 * x
            for _ in range(rng.randint(0, 4)):
                order += 1
                error = "SyntaxError: invalid syntax" if rng.random() < 0.3 else None
                length = int(size * rng.uniform(0.3, 1.6))
                events.append(submit(learner, exercise, minute, False, length, order, error))
                minute += rng.choice([0.5, 1, 2, 4])
            r = rng.random()
            order += 1
            if r < 0.6:
                length = int(size * rng.uniform(0.9, 1.1))
                events.append(submit(learner, exercise, minute, True, length, order))
            elif r < 0.8:
                events.append(hint(learner, exercise, minute, order))
            minute += rng.choice([1, 3, 15, 40])
    events.sort(key=lambda e: (e.at, e.order))
    return events


def first_failure_rows(result: Replay) -> dict[tuple[str, str], list[float]]:
    return {
        key: result.rows[seq.first_failure_row]
        for key, seq in result.sequences.items()
        if seq.first_failure_row is not None
    }


# -- no look-ahead -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
def test_rows_depend_only_on_the_events_before_them(seed: int) -> None:
    """Replaying a prefix gives exactly the rows the full replay had by then, and replacing
    everything after a moment by a different future changes none of the rows before it."""
    events = stream(seed)
    full = replay(events, default_rules())
    assert len(full.rows) > 100 and all(len(r) == len(FEATURES) for r in full.rows)
    for cut in (len(events) // 4, len(events) // 2, 3 * len(events) // 4):
        part = replay(events[:cut], default_rules())
        assert part.rows == full.rows[: len(part.rows)]
        assert part.row_learner == full.row_learner[: len(part.row_learner)]
        # a different future (other outcomes, other code, other peers) from the cut on
        moment = events[cut - 1].at
        other = [e for e in stream(seed + 100) if e.at > moment + dt.timedelta(minutes=11)]
        changed = replay(events[:cut] + other, default_rules())
        assert changed.rows[: len(part.rows)] == part.rows


def test_a_later_event_would_change_the_features_if_it_leaked() -> None:
    """The row at a learner's first failure equals the features at that moment, not those
    computed from the state after the peers and the learner went on (which differ)."""
    events = [submit(f"P{i}", "e", i, True, 100, i) for i in range(6)]  # peers solve e
    events += [submit("A", "e", 10, False, 20, 10, "SyntaxError: x")]  # A's first failure
    later = [submit(f"Q{i}", "e", 11 + i, True, 20, 11 + i) for i in range(8)]  # short solutions
    later += [hint("A", "e", 30, 30), submit("A", "e", 31, False, 25, 31)]
    engine = Engine(default_rules())
    for e in events:
        engine.process(COURSE, e)
    at_failure = engine.features(COURSE, "A", "e", at(10))
    for e in later:
        engine.process(COURSE, e)
    after = engine.features(COURSE, "A", "e", at(10))  # the same moment, read from later state
    result = replay(events + later, default_rules())
    row = result.sequences[("A", "e")].first_failure_row
    assert row is not None and result.rows[row] == at_failure
    for name in ("code_length_distance", "code_length_rank", "log_hints", "log_attempts"):
        i = FEATURES.index(name)
        assert after[i] != at_failure[i], name  # a leak of any of these would be visible


def test_the_score_at_a_first_failure_ignores_the_learners_own_future() -> None:
    """Grouped CV plus no look-ahead: whether learner Z then solves or gives up changes Z's
    label, but not Z's out-of-fold score at the first failure."""
    base = stream(5)
    end = max(e.at for e in base)
    start = (end - T0).total_seconds() / 60 + 30
    order = max(e.order for e in base)
    z_first = [submit("Z", "e1", start, False, 70, order + 1, "SyntaxError: x")]
    solves = [submit("Z", "e1", start + 2, True, 100, order + 2)]
    gives_up = [
        hint("Z", "e1", start + 2, order + 2),
        submit("Z", "e1", start + 3, False, 30, order + 3),
    ]
    a = replay(base + z_first + solves, default_rules())
    b = replay(base + z_first + gives_up, default_rules())
    assert a.sequences[("Z", "e1")].label is False and b.sequences[("Z", "e1")].label is True
    sa, sb = cross_validate(a), cross_validate(b)
    ra, rb = a.sequences[("Z", "e1")].first_failure_row, b.sequences[("Z", "e1")].first_failure_row
    assert ra is not None and rb is not None
    assert a.rows[ra] == b.rows[rb]
    assert sa.oof[ra] == pytest.approx(sb.oof[rb], abs=1e-12)
    # ... while the model fitted on everyone (Z included) did see the difference
    assert sa.model.coef != sb.model.coef


def test_an_outcome_decided_after_the_first_failure_is_not_predictable() -> None:
    """Leak canary: every sequence fails once, then a coin decides (solve, or hint and leave).
    Read at the first failure the score must be at chance; the same pipeline fed the state at
    the end of the replay (a leak) separates the two at once."""
    rng = random.Random(7)
    events: list[ActivityEvent] = []
    order = 0
    for i in range(80):
        minute = rng.uniform(0, 300)
        for x in range(5):
            order += 1
            length = rng.randint(40, 160)
            events.append(submit(f"L{i}", f"e{x}", minute, False, length, order))
            order += 1
            if rng.random() < 0.5:
                events.append(submit(f"L{i}", f"e{x}", minute + 2, True, length + 5, order))
            else:
                events.append(hint(f"L{i}", f"e{x}", minute + 2, order))
            minute += 5
    events.sort(key=lambda e: (e.at, e.order))
    honest = replay(events, default_rules())
    score = cross_validate(honest)
    assert score.n_first_failure == 400
    assert abs(score.auc_first_failure - 0.5) < 0.1

    engine = Engine(default_rules())
    for e in events:
        engine.process(COURSE, e)
    end = events[-1].at
    leaked_rows = list(honest.rows)
    for (learner, exercise), seq in honest.sequences.items():
        assert seq.first_failure_row is not None
        leaked_rows[seq.first_failure_row] = engine.features(COURSE, learner, exercise, end)
    leaked = dataclasses.replace(honest, rows=leaked_rows)
    assert cross_validate(leaked).auc_first_failure > 0.9


# -- the features ----------------------------------------------------------------------------------


def test_code_length_is_read_against_the_peers_working_solutions() -> None:
    engine = Engine(default_rules())
    for i in range(10):  # peers' solutions: 95..104 characters
        engine.process(COURSE, submit(f"P{i}", "e", i, True, 95 + i, i))
    rows = {}
    for learner, length in (("near", 100), ("short", 25), ("long", 400)):
        engine.process(COURSE, submit(learner, "e", 20, False, length, 20))
        rows[learner] = engine.features(COURSE, learner, "e", at(20))
    d, r = FEATURES.index("code_length_distance"), FEATURES.index("code_length_rank")
    assert rows["near"][d] < 0.05 < rows["long"][d] and rows["near"][d] < rows["short"][d]
    assert rows["short"][r] == 0.0 and rows["long"][r] == 1.0 and 0.0 < rows["near"][r] <= 1.0
    # no peer has solved it yet: neutral values, not an error
    engine.process(COURSE, submit("first", "fresh", 30, False, 80, 30))
    alone = engine.features(COURSE, "first", "fresh", at(30))
    assert alone[r] == 0.5


def test_history_counts_and_code_change() -> None:
    engine = Engine(default_rules())
    events = [
        submit("a", "e1", 0, True, 50, 1),
        submit("a", "e2", 2, False, 50, 2),
        hint("a", "e2", 3, 3),
        submit("a", "e3", 5, False, 50, 4),
        submit("a", "e3", 6, False, 80, 5),
    ]
    for e in events:
        engine.process(COURSE, e)
    row = dict(zip(FEATURES, engine.features(COURSE, "a", "e3", at(6)), strict=True))
    assert row["log_learner_solved"] == pytest.approx(np.log1p(1))
    assert row["log_learner_hinted"] == pytest.approx(np.log1p(1))
    assert row["log_learner_struggled"] == pytest.approx(np.log1p(1))
    assert row["log_code_change"] == pytest.approx(np.log1p(30))
    assert row["log_runs"] == 0.0 and row["has_score"] == 0.0


def test_runs_and_scores_where_the_source_has_them() -> None:
    engine = Engine(default_rules())
    run = ActivityEvent("a", "e", ActivityKind.RUN, at(0), 1, code_length=10)
    err = ActivityEvent("a", "e", ActivityKind.COMPILE_ERROR, at(1), 2, error="E1")
    graded = ActivityEvent("a", "e", ActivityKind.SUBMIT, at(2), 3, correct=False, score=0.4)
    for e in (run, err, graded):
        engine.process(COURSE, e)
    row = dict(zip(FEATURES, engine.features(COURSE, "a", "e", at(2)), strict=True))
    assert row["log_runs"] == pytest.approx(np.log1p(2))
    assert row["best_score"] == pytest.approx(0.4) and row["has_score"] == 1.0


def test_older_states_and_models_still_load() -> None:
    """State saved before ``last_code_change`` existed loads; a model over fewer features
    (fitted before features were appended, or on a subset) scores a full feature vector."""
    old = ExerciseState().as_dict()
    del old["last_code_change"]
    state, learner = ExerciseState.from_dict(old), LearnerState()
    state.update(submit("a", "e", 0, False, 10, 1), 0.0, StateSettings(), learner)
    state.update(submit("a", "e", 1, False, 14, 2), 60.0, StateSettings(), learner)
    assert state.last_code_change == 4

    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, len(FEATURES)))
    y = (x[:, 0] + rng.normal(size=300) > 0).astype(float)
    small = LogisticModel.fit(x[:, :37], y, names=FEATURES[:37])
    assert small.predict(list(x[0])) == pytest.approx(small.predict(list(x[0, :37])))
    assert small.predict_many(x)[3] == pytest.approx(small.predict(list(x[3, :37])))
    chosen = [FEATURES.index(n) for n in BASELINE_FEATURES]
    base = LogisticModel.fit(x[:, chosen], y, names=BASELINE_FEATURES)
    assert base.predict(list(x[5])) == pytest.approx(base.predict(list(x[5, chosen])))
    with pytest.raises(ValueError, match="expects 37 features"):
        small.predict([0.0] * 5)


def test_baseline_features_in_the_same_harness() -> None:
    result = replay(stream(3, learners=40), default_rules())
    ours = cross_validate(result)
    base = cross_validate(result, names=BASELINE_FEATURES)
    assert base.names == BASELINE_FEATURES and len(base.model.coef) == len(BASELINE_FEATURES)
    assert ours.n_first_failure == base.n_first_failure > 0
    assert len(ours.fold_auc_first_failure) == 10
    assert np.isfinite(ours.fold_mean) and 0.0 <= ours.fold_std < 0.5
    assert first_failure_rows(result)  # the synthetic stream does have first failures
