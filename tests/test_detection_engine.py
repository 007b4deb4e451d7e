"""The engine: rule trees, per-exercise rules, the policy, the ladder, ticks, no look-ahead,
bounded state, pluggable stores, and the learned score."""

from __future__ import annotations

import datetime as dt
import json
import random
from typing import Any

import numpy as np
import pytest

from lti_tool.activity.model import ActivityEvent, ActivityKind
from lti_tool.detection import (
    ESCALATE,
    OFFER,
    Decision,
    Engine,
    ExerciseState,
    InMemoryStore,
    LearnerState,
    LogisticModel,
    PeerStats,
    RuleBook,
    RuleError,
    default_rules,
    threshold_for_budget,
)
from lti_tool.detection.score import FEATURES, roc_auc
from lti_tool.detection.state import Key

T0 = dt.datetime(2024, 3, 1, 9, 0, tzinfo=dt.UTC)
COURSE = "c1"


def at(minute: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minute)


def ev(
    learner: str,
    exercise: str,
    minute: float,
    kind: str = "submit",
    correct: bool | None = False,
    error: str | None = None,
    order: int = 0,
) -> ActivityEvent:
    return ActivityEvent(
        learner=learner,
        exercise=exercise,
        kind=ActivityKind(kind),
        at=at(minute),
        order=order,
        correct=correct if kind == "submit" else None,
        error=error,
        code_length=40,
    )


def book(rules: list[dict[str, Any]], **policy: Any) -> RuleBook:
    return RuleBook.parse(
        {"policy": {"cooldown_minutes": 30, "daily_limit": 0, **policy}, "rules": rules}
    )


def cf(n: int, name: str = "fails", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "when": {"trigger": "consecutive_failures", "threshold": n},
        **extra,
    }


def run(engine: Engine, events: list[ActivityEvent], **kw: Any) -> list[Decision]:
    out: list[Decision] = []
    for e in events:
        out.extend(engine.process(COURSE, e, **kw))
    return out


def failures(
    learner: str, exercise: str, n: int, start: float = 0, **kw: Any
) -> list[ActivityEvent]:
    return [ev(learner, exercise, start + i, order=int(start) * 100 + i, **kw) for i in range(n)]


# -- AND / OR --------------------------------------------------------------------------------------


def test_all_needs_every_branch_and_any_needs_one() -> None:
    same_error = {"trigger": "repeated_error", "streak": 2}
    three = {"trigger": "consecutive_failures", "threshold": 3}
    both = book([{"name": "both", "when": {"all": [three, same_error]}}])
    either = book([{"name": "either", "when": {"any": [three, same_error]}}])
    varied = [ev("a", "e", i, error=f"E{i}", order=i) for i in range(3)]  # 3 different errors
    repeated = [ev("a", "e", i, error="E", order=i) for i in range(2)]  # same error twice
    assert run(Engine(both), varied) == []
    assert run(Engine(both), repeated) == []
    assert [d.rule for d in run(Engine(either), varied)] == ["either"]
    assert [d.rule for d in run(Engine(either), repeated)] == ["either"]
    fired = run(Engine(both), [ev("a", "e", i, error="E", order=i) for i in range(3)])
    assert len(fired) == 1 and fired[0].order == 2
    assert "3 failed attempts in a row" in fired[0].reason
    assert "the same error (E) 3 times in a row" in fired[0].reason
    nested = book(
        [{"name": "n", "when": {"any": [{"all": [three, same_error]}, {"trigger": "stuck"}]}}]
    )
    assert run(Engine(nested), varied) == []
    assert [d.rule for d in run(Engine(nested), [ev("a", "e", 0, "stuck")])] == ["n"]


def test_rule_book_errors_say_where() -> None:
    with pytest.raises(
        RuleError,
        match=r"rule 'x'\.when\.all\[1\]: trigger 'consecutive_failures'"
        r": parameter 'threshold' must be >= 1",
    ):
        RuleBook.parse(
            {
                "rules": [
                    {
                        "name": "x",
                        "when": {
                            "all": [
                                {"trigger": "stuck"},
                                {"trigger": "consecutive_failures", "threshold": 0},
                            ]
                        },
                    }
                ]
            }
        )
    cases = [
        ({"rules": [{"name": "x"}]}, "rule 'x': 'when' is required"),
        ({"rules": [{"name": "x", "when": {"all": []}}]}, "expected a non-empty list"),
        ({"rules": [{"name": "x", "when": {"all": [], "any": []}}]}, "exactly one of"),
        ({"rules": [{"name": "x", "when": {"trigger": "stuck"}, "severity": 2}]}, "'severity'"),
        ({"rules": [cf(3, "a"), cf(4, "a")]}, "two rules are named 'a'"),
        ({"policy": {"daily_limit": -1}}, "policy: 'daily_limit' must be a whole number >= 0"),
        ({"policy": {"cooldown": 3}}, "policy: unknown key 'cooldown'"),
        ({"rulez": []}, "rule book: unknown key 'rulez'"),
        ({"exercises": {"e": {"rules": [cf(0)]}}}, "exercise 'e': rule 'fails'.when: trigger"),
        ({"exercises": {"e": {"rules": [{}]}}}, "exercise 'e': rule #1: 'name' must be"),
    ]
    for raw, message in cases:
        with pytest.raises(RuleError) as caught:
            RuleBook.parse(raw)
        assert message in str(caught.value), (raw, str(caught.value))


def test_exercise_rules_override_and_extend_course_rules() -> None:
    rules = RuleBook.parse(
        {
            "policy": {"daily_limit": 0},
            "rules": [cf(3, "fails", escalate=False)],
            "exercises": {
                # the same name replaces the course rule
                "hard": {"rules": [cf(5, "fails", escalate=False)]},
                "extra": {"rules": [{"name": "help", "when": {"trigger": "stuck"}}]},
                "alone": {"inherit": False, "rules": [cf(2, "two", escalate=False)]},
            },
        }
    )
    assert [r.name for r in rules.for_exercise("plain")] == ["fails"]
    assert [r.name for r in rules.for_exercise("extra")] == ["fails", "help"]
    assert [r.name for r in rules.for_exercise("alone")] == ["two"]
    assert [d.order for d in run(Engine(rules), failures("a", "plain", 6))] == [2]
    assert [d.order for d in run(Engine(rules), failures("a", "hard", 6))] == [4]
    assert [d.order for d in run(Engine(rules), failures("a", "alone", 6))] == [1]
    assert RuleBook.parse(rules.as_json()).as_json() == rules.as_json()
    round_trip = RuleBook.parse(json.loads(json.dumps(default_rules().as_json())))
    assert round_trip.as_json() == default_rules().as_json()


# -- the policy ------------------------------------------------------------------------------------


def test_cooldown_per_learner_and_exercise() -> None:
    engine = Engine(book([cf(3, escalate=False)], cooldown_minutes=30))
    first = run(engine, failures("a", "e", 10))  # fires at minute 2; held back until 32
    assert [d.order for d in first] == [2]
    assert run(engine, failures("b", "e", 3)) != []  # another learner: own cooldown
    assert run(engine, failures("a", "f", 3)) != []  # another exercise: own cooldown
    later = run(engine, failures("a", "e", 3, start=40))
    assert [(d.action, d.at) for d in later] == [(OFFER, at(40))]


def test_daily_limit_per_learner_and_self_reports_pass() -> None:
    engine = Engine(book([cf(2), {"name": "help", "when": {"trigger": "stuck"}}], daily_limit=2))
    assert len(run(engine, failures("a", "e1", 2))) == 1
    assert len(run(engine, failures("a", "e2", 2, start=5))) == 1
    assert run(engine, failures("a", "e3", 2, start=10)) == []  # third of the day
    assert [d.rule for d in run(engine, [ev("a", "e3", 12, "stuck")])] == ["help"]
    assert len(run(engine, failures("b", "e3", 2, start=10))) == 1  # other learners unaffected
    next_day = run(engine, failures("a", "e4", 2, start=24 * 60))
    assert len(next_day) == 1


def test_no_free_tutor_lets_only_the_strongest_signals_through() -> None:
    rules = book(
        [cf(2, severity=0.5), {"name": "help", "severity": 0.9, "when": {"trigger": "stuck"}}],
        full_capacity_min_severity=0.8,
    )
    assert run(Engine(rules), failures("a", "e", 2), free_slots=0) == []
    assert len(run(Engine(rules), failures("a", "e", 2), free_slots=1)) == 1
    assert len(run(Engine(rules), failures("a", "e", 2))) == 1
    strong = run(Engine(rules), [ev("a", "e", 0, "stuck")], free_slots=0)
    assert [(d.rule, d.severity) for d in strong] == [("help", 0.95)]


def test_severity_grows_with_the_signal() -> None:
    engine = Engine(book([cf(2, severity=0.4)], cooldown_minutes=0))
    severities = [d.severity for d in run(engine, failures("a", "e", 6))]
    assert severities == sorted(severities) and severities[0] < severities[-1] <= 1.0
    assert all(0.4 <= s <= 1.0 for s in severities)


# -- the ladder ------------------------------------------------------------------------------------


def test_offer_then_escalate_once_if_failures_continue() -> None:
    engine = Engine(book([cf(3, escalate_after_failures=2)]))
    decisions = run(engine, failures("a", "e", 9))
    assert [(d.action, d.order) for d in decisions] == [(OFFER, 2), (ESCALATE, 4)]
    assert decisions[1].severity > decisions[0].severity
    assert decisions[1].reason == "still failing after the offer (2 more failed attempts)"
    # a success after the offer ends the ladder
    engine = Engine(book([cf(3)]))
    events = [*failures("a", "e", 3), ev("a", "e", 5, correct=True), *failures("a", "e", 3, 6)]
    assert [d.action for d in run(engine, events)] == [OFFER]
    # a rule may forbid escalation
    engine = Engine(book([cf(3, escalate=False)]))
    assert [d.action for d in run(engine, failures("a", "e", 9))] == [OFFER]


# -- time-based triggers ---------------------------------------------------------------------------


def test_silence_after_failure_is_found_on_tick() -> None:
    engine = Engine(
        book([{"name": "quiet", "when": {"trigger": "silent_after_failure", "minutes": 10}}])
    )
    assert run(engine, [ev("a", "e", 0, order=7)]) == []
    assert engine.tick(at(9)) == []
    fired = engine.tick(at(11))
    assert [(d.rule, d.order, d.learner, d.at) for d in fired] == [("quiet", 7, "a", at(11))]
    assert engine.tick(at(30)) == []  # reported once
    # another try resets the clock; a success disarms it
    run(engine, [ev("b", "e", 0), ev("b", "e", 8)])
    assert engine.tick(at(12)) == []
    assert len(engine.tick(at(18))) == 1
    run(engine, [ev("c", "e", 20), ev("c", "e", 21, correct=True)])
    assert engine.tick(at(60)) == []


# -- no look-ahead ---------------------------------------------------------------------------------


def _stream(seed: int, n: int) -> list[ActivityEvent]:
    rng = random.Random(seed)
    out: list[ActivityEvent] = []
    for i in range(n):
        out.append(
            ActivityEvent(
                learner=f"l{rng.randrange(30)}",
                exercise=f"e{rng.randrange(5)}",
                kind=ActivityKind.HINT if rng.random() < 0.05 else ActivityKind.SUBMIT,
                at=at(i * 0.7),
                order=i,
                correct=rng.random() < 0.3,
                error=rng.choice([None, "SyntaxError", "NameError"]),
                code_length=rng.randrange(20, 200),
            )
        )
    return [e if e.kind is ActivityKind.SUBMIT else _hint(e) for e in out]


def _hint(e: ActivityEvent) -> ActivityEvent:
    return ActivityEvent(e.learner, e.exercise, ActivityKind.HINT, e.at, e.order)


def _replay(events: list[ActivityEvent], rules: RuleBook) -> tuple[list[Decision], Engine]:
    engine = Engine(rules)
    out: list[Decision] = []
    for e in events:
        out.extend(engine.tick(e.at))
        out.extend(engine.process(COURSE, e))
    return out, engine


def test_decisions_up_to_a_point_do_not_depend_on_later_events() -> None:
    rules = RuleBook.parse(
        {
            "policy": {"daily_limit": 0},
            "rules": [
                {
                    "name": "peers",
                    "when": {
                        "trigger": "consecutive_failures",
                        "threshold": {"peer_percentile": 60, "fallback": 3, "min_peers": 3},
                    },
                },
                {"name": "quiet", "when": {"trigger": "silent_after_failure", "minutes": 5}},
                {"name": "time", "when": {"trigger": "time_on_exercise"}},
            ],
        }
    )
    events = _stream(1, 1500)
    cut = 900
    past, future = events[:cut], events[cut:]
    shuffled = future[:]
    random.Random(2).shuffle(shuffled)
    # the same future instants, but other learners / outcomes happen in them
    other_future = [
        ActivityEvent(
            s.learner,
            s.exercise,
            s.kind,
            f.at,
            f.order,
            s.correct,
            s.score,
            s.error,
            s.code_length,
        )
        for f, s in zip(future, shuffled, strict=True)
    ]
    a, engine_a = _replay(past + future, rules)
    b, _ = _replay(past + other_future, rules)
    horizon = past[-1].order
    early_a = [d for d in a if d.order <= horizon and d.at <= past[-1].at]
    early_b = [d for d in b if d.order <= horizon and d.at <= past[-1].at]
    assert early_a and early_a == early_b
    assert len(a) != len(b) or a != b  # the futures did differ
    # and the peer statistics after the cut are those of the past alone
    prefix = Engine(rules)
    for e in past:
        prefix.tick(e.at)
        prefix.process(COURSE, e)
    assert prefix.peers.as_dict() != engine_a.peers.as_dict()
    _, again = _replay(past, rules)
    assert again.peers.as_dict() == prefix.peers.as_dict()


def test_peer_percentiles_follow_the_solvers_so_far() -> None:
    engine = Engine(book([cf(3)]))
    streaks: list[int] = []
    rng = random.Random(5)
    minute = 0.0
    for learner in range(40):
        streak = rng.randrange(0, 8)
        for _ in range(streak):
            engine.process(COURSE, ev(f"l{learner}", "e", minute))
            minute += 1
        engine.process(COURSE, ev(f"l{learner}", "e", minute, correct=True))
        minute += 1
        streaks.append(streak)
        sketch = engine.peers.exercise(COURSE, "e").sketch("streak_before_solve")
        assert sketch.n == len(streaks)
        expected = float(np.percentile(streaks, 80, method="inverted_cdf"))
        assert sketch.percentile(80) == expected
    stats = engine.peers.exercise(COURSE, "e")
    assert stats.started == stats.solved == 40
    assert PeerStats.from_dict(json.loads(json.dumps(engine.peers.as_dict()))).as_dict() == (
        engine.peers.as_dict()
    )


# -- constant work ---------------------------------------------------------------------------------


def test_state_stays_the_same_size_however_long_the_history() -> None:
    engine = Engine(default_rules())
    rng = random.Random(11)
    sizes: list[tuple[int, int, int]] = []
    for i in range(6000):
        e = ActivityEvent(
            "marathon",
            f"e{i % 3}",
            ActivityKind.SUBMIT,
            at(i * 0.5),
            i,
            correct=False,
            error=rng.choice([None, "SyntaxError: invalid syntax", "NameError"]),
            code_length=rng.randrange(10, 500),
        )
        engine.tick(e.at)
        engine.process(COURSE, e)
        if i in (100, 5999):
            state = engine.store.exercise(COURSE, "marathon", "e0")
            learner = engine.store.learner(COURSE, "marathon")
            sizes.append(
                (
                    len(json.dumps(state.as_dict())),
                    len(json.dumps(learner.as_dict())),
                    len(json.dumps(engine.peers.as_dict())),
                )
            )
    (s1, l1, p1), (s2, l2, p2) = sizes
    assert set(engine.store.exercise(COURSE, "marathon", "e0").as_dict()) == set(
        ExerciseState().as_dict()
    )
    # only the digits of the counters grow (bounded well below any per-event growth)
    assert s2 - s1 < 60 and l2 - l1 < 40 and p2 - p1 < 600
    assert s2 < 1500 and l2 < 600


class JsonStore(InMemoryStore):
    """A store that, like a database, hands out copies and keeps only what is saved."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, str] = {}

    def exercise(self, course: str, learner: str, exercise: str) -> ExerciseState:
        raw = self.rows.get(f"x|{course}|{learner}|{exercise}")
        return ExerciseState.from_dict(json.loads(raw)) if raw else ExerciseState()

    def learner(self, course: str, learner: str) -> LearnerState:
        raw = self.rows.get(f"l|{course}|{learner}")
        return LearnerState.from_dict(json.loads(raw)) if raw else LearnerState()

    def save_exercise(self, course: str, learner: str, exercise: str, state: ExerciseState) -> None:
        self.rows[f"x|{course}|{learner}|{exercise}"] = json.dumps(state.as_dict())

    def save_learner(self, course: str, learner: str, state: LearnerState) -> None:
        self.rows[f"l|{course}|{learner}"] = json.dumps(state.as_dict())

    def set_timer(self, key: Key, due: float | None) -> None:
        super().set_timer(key, due)


def test_a_copying_store_gives_the_same_decisions() -> None:
    events = _stream(4, 1200)
    a, _ = _replay(events, default_rules())
    engine = Engine(default_rules(), store=JsonStore())
    b: list[Decision] = []
    for e in events:
        b.extend(engine.tick(e.at))
        b.extend(engine.process(COURSE, e))
    assert a and a == b


# -- the learned score -----------------------------------------------------------------------------


def test_logistic_fit_is_calibrated_serialisable_and_fast_to_apply() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    x = rng.normal(size=(n, len(FEATURES)))
    true = np.zeros(len(FEATURES))
    true[0], true[3] = 1.5, -1.0
    p = 1 / (1 + np.exp(-(x @ true - 0.5)))
    y = (rng.random(n) < p).astype(float)
    model = LogisticModel.fit(x, y, l2=1.0)
    assert model.coef[0] > 1.2 and model.coef[3] < -0.8
    assert max(abs(c) for i, c in enumerate(model.coef) if i not in (0, 3)) < 0.2
    predicted = model.predict_many(x)
    assert abs(float(predicted.mean()) - float(y.mean())) < 0.01  # calibrated in the large
    assert roc_auc(y, predicted) > 0.75
    again = LogisticModel.from_json(json.loads(json.dumps(model.as_json())))
    assert again.predict(list(x[0])) == pytest.approx(model.predict(list(x[0])))
    assert model.predict(list(x[1])) == pytest.approx(float(predicted[1]))
    stronger = LogisticModel.fit(x, y, l2=1000.0)
    assert sum(abs(c) for c in stronger.coef) < sum(abs(c) for c in model.coef)
    with pytest.raises(ValueError, match="not a logistic model"):
        LogisticModel.from_json({"kind": "tree"})


def test_roc_auc_matches_pairwise_counting() -> None:
    rng = random.Random(3)
    y = [rng.randrange(2) for _ in range(200)]
    s = [rng.choice([0.1, 0.2, 0.3, 0.5]) + 0.1 * yi for yi in y]
    pairs = [
        (si, sj)
        for si, yi in zip(s, y, strict=True)
        if yi
        for sj, yj in zip(s, y, strict=True)
        if not yj
    ]
    expected = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
    assert roc_auc(y, s) == pytest.approx(expected)
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([1, 1], [0.2, 0.3])


def test_threshold_follows_the_tutor_budget() -> None:
    scores = [i / 1000 for i in range(1000)]
    # 100 events an hour, 2 tutors at 5 alerts an hour: 10% of events may alert
    assert threshold_for_budget(
        scores, events_per_hour=100, alerts_per_tutor_hour=5, tutors=2
    ) == pytest.approx(0.9)
    tight = threshold_for_budget(scores, events_per_hour=1000, alerts_per_tutor_hour=5)
    assert tight == pytest.approx(0.995)
    assert threshold_for_budget(scores, events_per_hour=1, alerts_per_tutor_hour=5) == 0.0
    with pytest.raises(ValueError, match="events_per_hour"):
        threshold_for_budget(scores, events_per_hour=0, alerts_per_tutor_hour=5)


def test_engine_attaches_the_learned_score_to_decisions() -> None:
    coef = [0.0] * len(FEATURES)
    coef[FEATURES.index("log_consecutive_failures")] = 2.0
    model = LogisticModel(
        FEATURES, [0.0] * len(FEATURES), [1.0] * len(FEATURES), coef, intercept=-2.0
    )
    engine = Engine(book([cf(3)]), model=model)
    [decision] = run(engine, failures("a", "e", 3))
    assert decision.score is not None
    assert decision.score == pytest.approx(engine.score(COURSE, "a", "e", at(2)) or -1)
    assert decision.score == pytest.approx(1 / (1 + np.exp(-(-2.0 + 2.0 * np.log1p(3)))))
    assert Engine(book([cf(3)])).score(COURSE, "a", "e", at(2)) is None


# -- gates: rules that cannot fire are skipped, and the decisions stay the same -------------


def _random_trigger(rnd: random.Random) -> dict[str, Any]:
    def threshold(low: int, high: int) -> Any:
        if rnd.random() < 0.4:
            return {
                "peer_percentile": rnd.choice([50, 75, 90]),
                "fallback": rnd.randint(low, high),
                "floor": rnd.randint(low, high),
                "min_peers": rnd.randint(1, 4),
            }
        return rnd.randint(low, high)

    kind = rnd.choice(
        [
            "consecutive_failures",
            "no_progress",
            "rapid_guessing",
            "repeated_error",
            "hints",
            "time_on_exercise",
            "silent_after_failure",
            "stuck",
        ]
    )
    if kind == "consecutive_failures":
        return {"trigger": kind, "threshold": threshold(1, 5)}
    if kind == "no_progress":
        out: dict[str, Any] = {"trigger": kind}
        if rnd.random() < 0.7:
            out["attempts"] = threshold(1, 5)
        if rnd.random() < 0.5 or "attempts" not in out:
            out["minutes"] = threshold(0, 3)
        return out
    if kind == "rapid_guessing":
        return {"trigger": kind, "count": rnd.randint(2, 4)}
    if kind == "repeated_error":
        out = {"trigger": kind}
        if rnd.random() < 0.7:
            out["streak"] = rnd.randint(2, 4)
        if rnd.random() < 0.3:
            out["eq"] = rnd.choice([0.3, 0.6])
        if rnd.random() < 0.3 or len(out) == 1:
            out["red"] = rnd.choice([0.5, 2.0])
        return out
    if kind == "hints":
        if rnd.random() < 0.5:
            return {"trigger": kind, "at_least": threshold(1, 3)}
        return {"trigger": kind, "none_after_failures": rnd.randint(1, 5)}
    if kind == "time_on_exercise":
        return {
            "trigger": kind,
            "minutes": threshold(0, 4),
            "min_failures": rnd.randint(0, 2),
        }
    if kind == "silent_after_failure":
        return {"trigger": kind, "minutes": rnd.choice([1, 5]), "min_failures": rnd.randint(1, 3)}
    return {"trigger": kind}


def _random_node(rnd: random.Random, depth: int = 0) -> dict[str, Any]:
    if depth < 2 and rnd.random() < 0.4:
        op = rnd.choice(["all", "any"])
        return {op: [_random_node(rnd, depth + 1) for _ in range(rnd.randint(1, 3))]}
    return _random_trigger(rnd)


def _decisions(book: RuleBook, events: list[ActivityEvent]) -> list[Decision]:
    engine = Engine(book)
    out: list[Decision] = []
    for i, event in enumerate(events):
        out.extend(engine.process(COURSE, event, free_slots=i % 3 - 1))
        if i % 7 == 0:
            out.extend(engine.tick(event.at + dt.timedelta(minutes=3)))
    return out


@pytest.mark.parametrize("seed", range(12))
def test_gated_rules_decide_exactly_as_evaluating_every_rule(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lti_tool.detection import engine as engine_module

    rnd = random.Random(seed)
    book = RuleBook.parse(
        {
            "policy": {
                "cooldown_minutes": rnd.choice([0, 5]),
                "daily_limit": rnd.choice([0, 4]),
                "full_capacity_min_severity": rnd.choice([0.0, 0.7]),
            },
            "rules": [
                {
                    "name": f"r{i}",
                    "severity": rnd.choice([0.3, 0.5, 0.8]),
                    "escalate": rnd.random() < 0.5,
                    "when": _random_node(rnd),
                }
                for i in range(rnd.randint(5, 25))
            ],
        }
    )
    kinds = [ActivityKind.SUBMIT] * 6 + [
        ActivityKind.RUN,
        ActivityKind.COMPILE_ERROR,
        ActivityKind.RUNTIME_ERROR,
        ActivityKind.HINT,
        ActivityKind.STUCK,
    ]
    events = []
    minute = 0.0
    for order in range(1, 1500):
        kind = rnd.choice(kinds)
        minute += rnd.choice([0.05, 0.2, 1.0, 4.0])
        events.append(
            ActivityEvent(
                learner=f"l{rnd.randrange(12)}",
                exercise=f"e{rnd.randrange(3)}",
                kind=kind,
                at=at(minute),
                order=order,
                correct=(rnd.random() < 0.25) if kind is ActivityKind.SUBMIT else None,
                score=rnd.choice([None, None, 0.2, 0.6, 1.0])
                if kind is ActivityKind.SUBMIT
                else None,
                error=rnd.choice([None, "NameError", "TypeError"])
                if kind in (ActivityKind.SUBMIT, ActivityKind.RUNTIME_ERROR)
                else None,
                code_length=rnd.choice([None, 100, 104, 130]),
            )
        )
    gated = _decisions(book, events)
    monkeypatch.setattr(engine_module._Selector, "select", lambda self, state: self.rules)
    assert _decisions(RuleBook.parse(book.as_json()), events) == gated
    assert gated  # the comparison means something
