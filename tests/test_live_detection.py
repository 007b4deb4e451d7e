"""Live detection end to end: events through the real SDK endpoint run the engine inside
ingestion, decisions become offers (rows + ``offer.*`` events on the learner's own stream),
and the learner accepts (a help request with the offer's severity and their recent activity)
or declines; cooldown, daily limit, tutor capacity, the escalation ladder, "I'm stuck", and the
time-based trigger through the periodic sweep."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from lti_tool import jobs
from lti_tool.detection import live
from lti_tool.detection.models import (
    DetectionExerciseState,
    DetectionPeerStats,
    Offer,
    OfferStatus,
)
from lti_tool.help.models import HelpEvent, HelpRequest
from tests.activity_helpers import Course_, make_course
from tests.helpers import Actor, launch_as
from tests.test_sdk import bearer, token_of

SDK = "/api/activity/sdk"


@pytest.fixture
def course(app: Flask, platform: Any) -> Course_:
    return make_course(app, platform)


def tutor_available(app: Flask, platform: Any, course: Course_) -> Actor:
    tutor = launch_as(app, platform, "tutor", "ta-1", "Tim Tutor", context_id=course.context_id)
    assert tutor.get("/tutor/").status_code == 200  # joins the course's pool
    answer = tutor.post("/tutor/availability", {"availability": "available"})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return tutor


def send(course: Course_, token: str, *events: dict[str, Any]) -> None:
    response = course.client.post(SDK, json={"events": list(events)}, headers=bearer(token))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert all(r["status"] == "accepted" for r in response.get_json()["results"])


def fail(error: str = "NameError", at: dt.datetime | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "kind": "submit",
        "correct": False,
        "error": error,
    }
    if at is not None:
        body["at"] = at.isoformat()
    return body


def solve() -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "kind": "submit", "correct": True}


def offers(app: Flask) -> list[Offer]:
    with app.extensions["lifeline"].db.transaction() as session:
        rows = list(session.scalars(select(Offer).order_by(Offer.id)))
        session.expunge_all()
        return rows


def offer_events(app: Flask) -> list[HelpEvent]:
    with app.extensions["lifeline"].db.transaction() as session:
        rows = list(
            session.scalars(
                select(HelpEvent).where(HelpEvent.kind.like("offer.%")).order_by(HelpEvent.id)
            )
        )
        session.expunge_all()
        return rows


def set_rules(app: Flask, course: Course_, raw: dict[str, Any]) -> None:
    with app.extensions["lifeline"].db.transaction() as session:
        live.save_rules(session, course.course_id, raw)


def test_failing_submissions_make_an_offer_only_that_learner_sees(
    app: Flask, platform: Any, course: Course_
) -> None:
    tutor_available(app, platform, course)
    alice, bob = course.learners["alice"], course.learners["bob"]
    token = token_of(alice)
    send(course, token, *[fail() for _ in range(4)])
    assert offers(app) == []  # four in a row: the default rules want five (fewer than 5 peers)

    after = alice.get(f"/l/{alice.launch_id}/offers", json=True).get_json()["last_event_id"]
    send(course, token, fail())
    [offer] = offers(app)
    assert (offer.learner_id, offer.exercise_id) == (
        course.people["alice"],
        course.exercises["link-2"],
    )
    assert offer.rule == "failing-more-than-peers" and offer.status == "offered"
    assert 0.6 <= offer.severity <= 1.0 and "5" in offer.reason
    [event] = offer_events(app)
    assert event.kind == "offer.created" and event.course_id == course.course_id
    assert event.data["learner_id"] == course.people["alice"]
    assert event.data["offer_id"] == offer.id

    mine = alice.get(f"/l/{alice.launch_id}/offers", json=True).get_json()
    assert [o["id"] for o in mine["offers"]] == [offer.id]
    assert mine["offers"][0]["headline"].startswith("Looks like this one is fighting back")
    polled = alice.get(f"/l/{alice.launch_id}/offers/events.json?after={after}").get_json()
    assert [(e["kind"], e["offer_id"]) for e in polled["events"]] == [("offer.created", offer.id)]

    # Bob, in the same course, sees none of it: not in his list, not on his stream.
    assert bob.get(f"/l/{bob.launch_id}/offers", json=True).get_json()["offers"] == []
    assert bob.get(f"/l/{bob.launch_id}/offers/events.json?after=0").get_json()["events"] == []
    assert bob.post(f"/l/{bob.launch_id}/offers/{offer.id}/accept").status_code == 404
    assert bob.post(f"/l/{bob.launch_id}/offers/{offer.id}/decline").status_code == 404
    assert offers(app)[0].status == "offered"


def test_accepting_opens_a_request_with_the_offers_severity_and_recent_activity(
    app: Flask, platform: Any, course: Course_
) -> None:
    tutor_available(app, platform, course)
    alice = course.learners["alice"]
    token = token_of(alice)
    send(course, token, *[fail("TypeError") for _ in range(4)], fail("IndexError"))
    [offer] = offers(app)

    form = alice.get(f"/l/{alice.launch_id}/help/new").get_data(as_text=True)
    assert "5 shared" in form and "IndexError" in form  # the help form shows the same context

    accepted = alice.post(f"/l/{alice.launch_id}/offers/{offer.id}/accept")
    assert accepted.status_code == 200, accepted.get_data(as_text=True)
    body = accepted.get_json()
    assert body["url"] == f"/l/{alice.launch_id}/help/{body['request_id']}"
    with app.extensions["lifeline"].db.transaction() as session:
        request = session.get(HelpRequest, body["request_id"])
        assert request is not None and request.status == "queued"
        assert request.severity == pytest.approx(offer.severity)
        assert request.learner_id == course.people["alice"]
        assert request.exercise_id == course.exercises["link-2"]
        assert request.context["last_error"] == "IndexError"
        assert [a["error"] for a in request.context["attempts"]] == ["IndexError"] + [
            "TypeError"
        ] * 4
        assert "Lifeline noticed" in request.question
    again = alice.post(f"/l/{alice.launch_id}/offers/{offer.id}/accept")
    assert again.get_json()["request_id"] == body["request_id"]  # a double click
    [row] = offers(app)
    assert (row.status, row.request_id) == ("accepted", body["request_id"])
    assert [e.kind for e in offer_events(app)] == ["offer.created", "offer.accepted"]
    assert alice.get(f"/l/{alice.launch_id}/offers", json=True).get_json()["offers"] == []

    # While the request is open, more failures make no new offer.
    send(course, token, *[fail() for _ in range(6)])
    assert len(offers(app)) == 1


def test_declining_hides_the_offer_and_it_cannot_be_accepted_after(
    app: Flask, platform: Any, course: Course_
) -> None:
    tutor_available(app, platform, course)
    alice = course.learners["alice"]
    send(course, token_of(alice), *[fail() for _ in range(5)])
    [offer] = offers(app)
    declined = alice.post(f"/l/{alice.launch_id}/offers/{offer.id}/decline")
    assert declined.status_code == 200 and declined.get_json()["status"] == "declined"
    assert alice.get(f"/l/{alice.launch_id}/offers", json=True).get_json()["offers"] == []
    late = alice.post(f"/l/{alice.launch_id}/offers/{offer.id}/accept")
    assert late.status_code == 409 and "declined" in late.get_json()["error"]
    with app.extensions["lifeline"].db.transaction() as session:
        assert session.scalars(select(HelpRequest)).first() is None
    assert [e.kind for e in offer_events(app)] == ["offer.created", "offer.declined"]


def test_cooldown_and_the_daily_limit_hold_offers_back(
    app: Flask, platform: Any, course: Course_
) -> None:
    tutor_available(app, platform, course)
    set_rules(
        app,
        course,
        {
            "policy": {"cooldown_minutes": 30, "daily_limit": 1},
            "rules": [
                {
                    "name": "two-in-a-row",
                    "severity": 0.5,
                    "escalate": False,
                    "when": {"trigger": "consecutive_failures", "threshold": 2},
                }
            ],
        },
    )
    alice = course.learners["alice"]
    send(course, token_of(alice), fail(), fail())
    assert [o.rule for o in offers(app)] == ["two-in-a-row"]
    send(course, token_of(alice), *[fail() for _ in range(4)])  # same exercise: cooldown
    assert len(offers(app)) == 1
    # Another exercise: past the cooldown's scope, but the daily limit (1) is used up.
    other = launch_as(
        app, platform, "learner", "alice", context_id=course.context_id, resource_link="link-1"
    )
    send(course, token_of(other), *[fail() for _ in range(4)])
    assert len(offers(app)) == 1
    # Bob has his own limit.
    send(course, token_of(course.learners["bob"]), fail(), fail())
    assert [o.learner_id for o in offers(app)] == [course.people["alice"], course.people["bob"]]


def test_no_free_tutor_holds_back_weak_signals_but_not_im_stuck(
    app: Flask, course: Course_
) -> None:
    alice = course.learners["alice"]  # no tutor is available in this course
    token = token_of(alice)
    send(course, token, *[fail() for _ in range(6)])
    assert offers(app) == []  # severity 0.6 < 0.8 with no free slot
    send(course, token, {"id": str(uuid.uuid4()), "kind": "stuck"})
    [offer] = offers(app)
    assert offer.rule == "asked-for-help" and offer.severity >= 0.9


def test_no_offer_when_no_rule_fires(app: Flask, platform: Any, course: Course_) -> None:
    tutor_available(app, platform, course)
    token = token_of(course.learners["alice"])
    send(course, token, fail(), fail(), solve(), fail(), fail(), fail(), solve())
    send(course, token, {"id": str(uuid.uuid4()), "kind": "run"}, {"id": "h1", "kind": "hint"})
    assert offers(app) == [] and offer_events(app) == []
    with app.extensions["lifeline"].db.transaction() as session:
        # ... but the state and the peers were kept, incrementally.
        [state] = session.scalars(select(DetectionExerciseState)).all()
        assert state.state["attempts"] == 8 and state.state["solved"] is True  # 7 + the run
        peers = {row.exercise_key: row.stats for row in session.scalars(select(DetectionPeerStats))}
        assert peers[str(course.exercises["link-2"])]["solved"] == 1
        assert peers[""]["submits"] == 8  # course-wide: every attempt, the run too


def _escalating(app: Flask, course: Course_) -> None:
    set_rules(app, course, {"escalate": True})  # the default rules, allowed to escalate


def test_escalation_with_consent_opens_a_request_carrying_the_context(
    app: Flask, platform: Any, course: Course_
) -> None:
    tutor_available(app, platform, course)
    _escalating(app, course)
    alice = course.learners["alice"]
    token = token_of(alice)
    send(course, token, *[fail("ZeroDivisionError") for _ in range(5)])
    [offer] = offers(app)
    listed = alice.get(f"/l/{alice.launch_id}/offers", json=True).get_json()["offers"]
    assert listed[0]["can_consent"] is True
    assert alice.post(f"/l/{alice.launch_id}/offers/{offer.id}/consent").status_code == 200
    send(course, token, fail("ZeroDivisionError"))
    assert offers(app)[0].status == "offered"  # one more failure: not yet
    send(course, token, fail("ZeroDivisionError"))
    [row] = offers(app)
    assert row.status == "escalated" and row.request_id is not None
    with app.extensions["lifeline"].db.transaction() as session:
        request = session.get(HelpRequest, row.request_id)
        assert request is not None and request.status == "queued"
        assert request.severity > offer.severity  # the escalation is stronger
        assert request.context["last_error"] == "ZeroDivisionError"
        assert len(request.context["attempts"]) == live.RECENT_ATTEMPTS
    assert [e.kind for e in offer_events(app)] == ["offer.created", "offer.escalated"]


def test_escalation_without_consent_is_a_second_stronger_offer(
    app: Flask, platform: Any, course: Course_
) -> None:
    tutor_available(app, platform, course)
    _escalating(app, course)
    alice = course.learners["alice"]
    send(course, token_of(alice), *[fail() for _ in range(7)])
    first, second = offers(app)
    assert (first.status, first.level) == ("expired", 1)
    assert (second.status, second.level) == ("offered", 2)
    assert second.severity > first.severity
    listed = alice.get(f"/l/{alice.launch_id}/offers", json=True).get_json()["offers"]
    assert [o["id"] for o in listed] == [second.id]
    assert listed[0]["headline"].startswith("Still fighting back")
    with app.extensions["lifeline"].db.transaction() as session:
        assert session.scalars(select(HelpRequest)).first() is None  # never without consent


def test_without_the_course_setting_there_is_no_escalation_nor_consent(
    app: Flask, platform: Any, course: Course_
) -> None:
    tutor_available(app, platform, course)
    alice = course.learners["alice"]
    send(course, token_of(alice), *[fail() for _ in range(5)])
    [offer] = offers(app)
    listed = alice.get(f"/l/{alice.launch_id}/offers", json=True).get_json()["offers"]
    assert listed[0]["can_consent"] is False
    assert alice.post(f"/l/{alice.launch_id}/offers/{offer.id}/consent").status_code == 403
    send(course, token_of(alice), *[fail() for _ in range(4)])
    assert [(o.status, o.level) for o in offers(app)] == [("offered", 1)]


def test_silence_after_a_failure_is_offered_by_the_sweep(
    app: Flask, platform: Any, course: Course_
) -> None:
    tutor_available(app, platform, course)
    alice = course.learners["alice"]
    earlier = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=12)
    send(course, token_of(alice), fail(at=earlier))
    with app.extensions["lifeline"].db.transaction() as session:
        [state] = session.scalars(select(DetectionExerciseState)).all()
        assert state.due_at is not None and state.due_at < time.time()
    assert offers(app) == []  # nothing until the clock is checked
    context: jobs.JobContext = app.extensions["lifeline"].jobs
    assert context.run_now(jobs.SWEEP)
    [offer] = offers(app)
    assert offer.rule == "stopped-after-failing" and offer.status == OfferStatus.OFFERED.value
    with app.extensions["lifeline"].db.transaction() as session:
        [state] = session.scalars(select(DetectionExerciseState)).all()
        assert state.due_at is None  # fired once, not again on the next sweep
    assert context.run_now(jobs.SWEEP)
    assert len(offers(app)) == 1


def test_rules_are_validated_when_saved(app: Flask, course: Course_) -> None:
    from lti_tool.detection import RuleError

    with pytest.raises(RuleError, match="'count' must be >= 2"):
        set_rules(
            app,
            course,
            {"rules": [{"name": "x", "when": {"trigger": "rapid_guessing", "count": 1}}]},
        )
    with pytest.raises(RuleError, match="escalate"):
        set_rules(app, course, {"escalate": "yes"})
    with app.extensions["lifeline"].db.transaction() as session:
        assert live.load_rules(session, course.course_id)[1] is False  # nothing was stored


# -- storage: no course-wide lock held through a batch, one load per batch -------------------------


def test_peer_statistics_of_overlapping_batches_add_up(app: Flask, course: Course_) -> None:
    """Two transactions read the same peer rows without a lock and both add to them: the
    stored counts are the sum (the course-wide row is never held while a batch runs)."""
    db = app.extensions["lifeline"].db
    exercise = str(course.exercises["link-1"])
    with db.transaction() as session:
        base = live.DbPeers(session, course.course_id)
        base.load([exercise])
        base.started(str(course.course_id), exercise)
        base.merge()
    first, second = db.sessionmaker(), db.sessionmaker()
    try:
        a = live.DbPeers(first, course.course_id)
        b = live.DbPeers(second, course.course_id)
        a.load([exercise])
        b.load([exercise])  # both read started == 1
        for peers, n in ((a, 2), (b, 3)):
            for _ in range(n):
                peers.attempted(str(course.course_id), exercise, failed=True)
        a.solved(str(course.course_id), exercise, {"failures_before_solve": 4})
        a.merge()
        first.commit()  # a's lock is gone with its commit
        b.merge()
        second.commit()
    finally:
        first.close()
        second.close()
    with db.transaction() as session:
        rows = {r.exercise_key: r.stats for r in session.scalars(select(DetectionPeerStats))}
    assert rows[exercise]["started"] == 1 and rows[""]["started"] == 1
    assert rows[exercise]["submits"] == 5 and rows[exercise]["failures"] == 5
    assert rows[""]["submits"] == 5
    assert rows[exercise]["solved"] == 1
    assert rows[exercise]["sketches"]["failures_before_solve"] == {"4": 1}


def test_a_batch_loads_its_state_once_even_when_learners_move_between_exercises(
    app: Flask, course: Course_
) -> None:
    """``Engine._left`` reads the exercise a learner leaves: the batch loads it up front with
    its own rows, so a learner moving on costs no query of its own (it cost one SELECT … FOR
    UPDATE per move, ~226 per 500-statement batch in the benchmark)."""
    from sqlalchemy import event as sa_event

    from lti_tool.activity import ingest, sdk
    from lti_tool.activity.ingest import Scope
    from lti_tool.db import utcnow

    db = app.extensions["lifeline"].db
    scope = Scope(course.platform_id, course.course_id)
    links = [course.exercises["link-1"], course.exercises["link-2"]]
    learners = [course.people["alice"], course.people["bob"]]

    def batch(exercises: list[int]) -> list[Any]:
        now = utcnow()
        events = []
        for exercise in exercises:
            for learner in learners:
                events.append(sdk.parse_event(fail(), len(events), learner, exercise, now))
        return events

    with db.transaction() as session:  # every state row exists, each learner last on link-2
        ingest.store(session, scope, sdk.SOURCE, batch(links))
    statements: list[str] = []

    def count(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        if "detection_exercise_states" in sql and sql.lstrip().upper().startswith("SELECT"):
            statements.append(sql)

    sa_event.listen(db.engine, "before_cursor_execute", count)
    try:
        with db.transaction() as session:
            # Both move back to link-1: leaving link-2 reads its state (struggle counting).
            ingest.store(session, scope, sdk.SOURCE, batch([links[0]] * 10))
    finally:
        sa_event.remove(db.engine, "before_cursor_execute", count)
    assert len(statements) == 1, statements  # link-1 and link-2 rows of both, in one query
    with db.transaction() as session:
        states = {
            (s.learner_id, s.exercise_id): s.state
            for s in session.scalars(select(DetectionExerciseState))
        }
    for learner in learners:
        assert states[(learner, links[0])]["failures"] == 11
        assert states[(learner, links[1])]["struggle_counted"] is True  # left unsolved


def test_a_batch_of_decisions_makes_the_same_offers_and_events_as_one_at_a_time(
    app: Flask, course: Course_
) -> None:
    """``act_many`` (the consumer's batches) against ``act`` applied decision by decision:
    a learner already in line gets nothing, an open offer on the same exercise is expired
    and replaced, two decisions on one exercise in one batch replace each other, in order."""
    from lti_tool.courses import Course, Person
    from lti_tool.detection.engine import Decision
    from lti_tool.help import operations as ops

    db = app.extensions["lifeline"].db
    alice, bob = course.people["alice"], course.people["bob"]
    ex1, ex2 = course.exercises["link-1"], course.exercises["link-2"]
    now = dt.datetime.now(dt.UTC)
    with db.transaction() as session:
        session.add(
            Offer(
                course_id=course.course_id,
                learner_id=alice,
                exercise_id=ex1,
                rule="old",
                level=1,
                severity=0.2,
                reason="earlier",
                status="offered",
                created_at=now,
            )
        )
        ops.request_help(
            session,
            learner=session.get(Person, bob),
            course=session.get(Course, course.course_id),
            exercise_id=ex2,
            new=ops.NewRequest(question="Stuck on the loop"),
        )

    def decision(learner: int, exercise: int, rule: str, severity: float) -> Decision:
        return Decision(
            str(course.course_id),
            str(learner),
            str(exercise),
            rule,
            "offer",
            severity,
            f"reason {rule}",
            1,
            now,
        )

    decisions = [
        decision(alice, ex1, "r1", 0.5),  # replaces the earlier offer
        decision(bob, ex1, "r2", 0.6),  # bob is in line: nothing
        decision(alice, ex2, "r3", 0.7),
        decision(alice, ex2, "r4", 0.8),  # replaces r3 in the same batch
    ]

    def outcome(batched: bool) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        with db.engine.connect() as conn:
            outer = conn.begin()
            from sqlalchemy.orm import Session

            session = Session(bind=conn)
            try:
                if batched:
                    made = live.act_many(session, course.course_id, decisions, False)
                else:
                    made = [
                        o
                        for d in decisions
                        if (o := live.act(session, course.course_id, d, False)) is not None
                    ]
                session.flush()
                offers_ = [
                    (o.learner_id, o.exercise_id, o.rule, o.level, o.severity, o.reason, o.status)
                    for o in session.scalars(select(Offer).order_by(Offer.id))
                ]
                ids = {o.id: o.rule for o in session.scalars(select(Offer))}
                events_ = [
                    (
                        e.kind,
                        e.course_id,
                        ids[e.data["offer_id"]],
                        {k: v for k, v in e.data.items() if k != "offer_id"},
                    )
                    for e in session.scalars(
                        select(HelpEvent)
                        .where(HelpEvent.kind.like("offer.%"))
                        .order_by(HelpEvent.id)
                    )
                ]
                assert [o.rule for o in made] == ["r1", "r3", "r4"]
                return offers_, events_
            finally:
                session.close()
                outer.rollback()

    one_by_one, batched = outcome(False), outcome(True)
    assert batched == one_by_one
    offers_, events_ = batched
    assert [(o[2], o[6]) for o in offers_] == [
        ("old", "expired"),
        ("r1", "offered"),
        ("r3", "expired"),
        ("r4", "offered"),
    ]
    assert [(e[0], e[2]) for e in events_] == [
        ("offer.expired", "old"),
        ("offer.created", "r1"),
        ("offer.created", "r3"),
        ("offer.expired", "r3"),
        ("offer.created", "r4"),
    ]
